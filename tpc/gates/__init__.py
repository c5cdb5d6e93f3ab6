"""Latency gates: budgets on profiled metrics that CI can enforce."""
