"""Start-up cost of the ``secstate`` command, against a bare interpreter.

Times, in the same run and interleaved (a, b, c, a, b, c, ...): ``python -c pass``,
``secstate --help``, and a one-event command (``secstate account open NAME`` on a SQLite
home that already exists), each a fresh process. Prints the median wall time of each and
its ratio to the bare start, and the median CPU time (user + system) of each, which
other work on a shared machine disturbs less than the wall time.

``--before DIR`` compares with an earlier commit in the same run: DIR is a checkout of it
(``git worktree add --detach DIR COMMIT``), whose packages are put first on the path
(``PYTHONPATH=DIR``) of a second run of each case, interleaved with this tree's.

    .venv/bin/python -m benchmarks.bench_startup [--repeat 15] [--secstate PATH] [--before DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import print_table


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wall(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run of ``argv``."""
    cpu = cpu_of_children()
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, cpu_of_children() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--secstate", default=str(Path(sys.executable).with_name("secstate")))
    parser.add_argument("--before", type=Path, help="a checkout of the commit to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "SECSTATE_HOME": home}
        envs = {"after": env}
        if args.before is not None:
            before_path = [str(args.before.resolve()), env.get("PYTHONPATH", "")]
            envs = {
                "before": {**env, "PYTHONPATH": os.pathsep.join(filter(None, before_path))},
                **envs,
            }
        subprocess.run([args.secstate, "account", "open", "bench-0"], env=env, check=True, cwd=home)
        cases: dict[str, Callable[[int, str], list[str]]] = {
            "python -c pass": lambda i, tree: [sys.executable, "-c", "pass"],
            "secstate --help": lambda i, tree: [args.secstate, "--help"],
            "secstate account open": lambda i, tree: [
                args.secstate,
                "account",
                "open",
                f"bench-{tree}-{i}",
            ],
        }
        times: dict[tuple[str, str], list[tuple[float, float]]] = {
            (name, tree): [] for name in cases for tree in envs
        }
        for i in range(1, args.repeat + 1):
            for name, argv in cases.items():
                for tree, tree_env in envs.items():
                    if name == "python -c pass" and tree != "after":
                        continue
                    times[name, tree].append(wall(argv(i, tree), tree_env))
    bare = statistics.median(w for w, _ in times["python -c pass", "after"])
    headers = ["command"]
    for tree in envs:
        prefix = f"{tree}: " if len(envs) > 1 else ""
        headers += [f"{prefix}median ms", f"{prefix}vs bare python", f"{prefix}CPU ms"]
    rows = []
    for name in cases:
        row = [name]
        for tree in envs:
            runs = times[name, tree] or times[name, "after"]  # one bare python for both
            median = statistics.median(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            row += [f"{median * 1000:.0f}", f"{median / bare:.1f}x", f"{cpu * 1000:.0f}"]
        rows.append(row)
    print_table(f"start-up, median of {args.repeat} runs each", headers, rows)


if __name__ == "__main__":
    main()
