"""Benchmarks: measured, never asserted; each module's docstring says how to run it."""
