"""Benchmark harness: the raw aiokafka loop, bare and reference Faust agents and the worker.

Run it with `python -m bench run` (see docs/benchmarks.md). It is never part of the test suite.
"""
