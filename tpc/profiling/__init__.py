"""The single timing path shared by every runtime."""
