"""Example user package for tpc's plugin API (see README, "Your own method")."""
