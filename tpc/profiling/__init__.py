"""Profiling: the one stage timer every runtime shares, the profiler, its JSON schema and plots."""
