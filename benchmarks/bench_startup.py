"""Start-up cost of the ``secstate`` command, against a bare interpreter.

Times, in the same run and interleaved (a, b, c, a, b, c, ...): ``python -c pass``,
``secstate --help``, and a one-event command (``secstate account open NAME`` on a SQLite
home that already exists), each a fresh process. Prints the median wall time of each and
its ratio to the bare start.

    .venv/bin/python benchmarks/bench_startup.py [--repeat 15] [--secstate PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import print_table


def wall(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--secstate", default=str(Path(sys.executable).with_name("secstate")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "SECSTATE_HOME": home}
        subprocess.run([args.secstate, "account", "open", "bench-0"], env=env, check=True)
        cases = {
            "python -c pass": lambda i: [sys.executable, "-c", "pass"],
            "secstate --help": lambda i: [args.secstate, "--help"],
            "secstate account open": lambda i: [args.secstate, "account", "open", f"bench-{i}"],
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for i in range(1, args.repeat + 1):
            for name, argv in cases.items():
                times[name].append(wall(argv(i), env))
    bare = statistics.median(times["python -c pass"])
    rows = [
        (name, f"{statistics.median(t) * 1000:.0f}", f"{statistics.median(t) / bare:.1f}x")
        for name, t in times.items()
    ]
    print_table(
        f"start-up, median of {args.repeat} runs each",
        ["command", "median ms", "vs bare python"],
        rows,
    )


if __name__ == "__main__":
    main()
