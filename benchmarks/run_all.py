"""Every benchmark of benchmarks/, one after the other, each in its own process (`make bench`).

Each runs with the arguments BENCHMARKS.md records for it (the scripts' own defaults), so a run reproduces the
published figures and replaces them; the quick ones go first. A benchmark added to the folder later runs last,
with its defaults. A failure does not stop the others; the exit status says whether any failed.

    .venv/bin/python benchmarks/run_all.py [--only NAME ...] [--skip NAME ...] [--dry-run]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"__init__", "common", "run_all"}
# Roughly from the quickest to the longest (embeddings_refresh builds 1M events on its first run). bandit_choose
# and ranker_compile write to BENCHMARKS.md only when asked.
KNOWN: dict[str, list[str]] = {
    "bandit_choose": ["--record"],
    "ranker_compile": ["--record"],
    "feature_fetch": [],
    "serving_modes": [],
    "ingest": ["--rate", "500", "--seconds", "20"],
    "import_events": [],
    "vector_recall": ["--items", "100000", "--queries", "500"],
    "score_path": [],
    "embeddings_refresh": ["--events", "1000000"],
}


def benchmarks() -> dict[str, list[str]]:
    present = {path.stem for path in HERE.glob("*.py")} - NOT_BENCHMARKS
    ordered = {name: arguments for name, arguments in KNOWN.items() if name in present}
    ordered.update({name: [] for name in sorted(present - set(KNOWN))})
    return ordered


def main() -> int:
    available = benchmarks()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(available), help="run just these")
    parser.add_argument("--skip", nargs="+", choices=sorted(available), default=[], help="leave these out")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = parser.parse_args()

    chosen = [name for name in available if (not args.only or name in args.only) and name not in args.skip]
    failed: list[str] = []
    for name in chosen:
        command = [sys.executable, f"benchmarks/{name}.py", *available[name]]
        print(f"==> {' '.join(command[1:])}", flush=True)
        if args.dry_run:
            continue
        started = time.perf_counter()
        returncode = subprocess.run(command, cwd=HERE.parent, check=False).returncode
        outcome = "ok" if returncode == 0 else f"failed ({returncode})"
        print(f"<== {name}: {outcome} in {time.perf_counter() - started:.0f} s", flush=True)
        if returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
