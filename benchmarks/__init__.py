"""Benchmarks for secstate: run each as a module, e.g. ``python -m benchmarks.bench_ledger``.

Figures and how they were taken are in docs/benchmarks.md; raw results go to
benchmarks/results/ (git-ignored).
"""
