"""How a recommendation request travels through the code: files, stops, and returns to a file or app already left.

Serves warm users' home shelves in process (`surface_app.serving.slates.slate_serve`, as the REST API does) on the
store of `benchmarks/recommendations_e2e.py` (run that first), and traces the serving thread's calls into the
project's own code (sys.setprofile; retrieval sources running in pool threads are not followed). It counts the calls
from one file into another, those from one layer app into another (the shared core apart), and the distinct
caller-callee pairs of those (the seams a reader must follow), and the calls up the layers (callbacks). Not a speed
measurement.

    .venv/bin/python benchmarks/request_path.py [--store-dir .data/bench-e2e] [--users 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Higher calls lower: a call into a higher layer is a callback against the layers' direction.
LAYER_RANK = {
    "personalization": 0,
    "graph_app": 1,
    "signals_app": 2,
    "scoring_app": 2,
    "surface_app": 3,
    "rules_admin": 4,
}
PLACEMENT = "home"


@dataclass(frozen=True)
class Call:
    caller: str  # file:function
    callee: str


def path_trace(serve: Callable[[], object]) -> list[Call]:
    """Every call the serving thread makes from one project file into another, in order."""
    calls: list[Call] = []
    root = f"{ROOT}/"

    def where(frame: FrameType | None) -> str | None:
        name = frame.f_code.co_filename if frame is not None else ""
        if not name.startswith(root) or "/.venv/" in name or "/benchmarks/" in name:
            return None
        return f"{name[len(root) :]}:{frame.f_code.co_name}"  # type: ignore[union-attr]

    def profile(frame: FrameType, event: str, _arg: object) -> None:
        if event != "call":
            return
        callee = where(frame)
        if callee is None:
            return
        caller = where(frame.f_back)
        if caller is not None and caller.split(":")[0] != callee.split(":")[0]:
            calls.append(Call(caller, callee))

    sys.setprofile(profile)
    try:
        serve()
    finally:
        sys.setprofile(None)
    return calls


def path_figures(calls: list[Call]) -> dict[str, int]:
    """Crossings between layer apps (calls into the shared core are counted apart: every layer uses it)."""
    between_apps = [call for call in calls if _app(call.caller) != _app(call.callee)]
    between_layers = [call for call in between_apps if _app(call.callee) != "personalization"]
    files = {call.caller.split(":")[0] for call in calls} | {call.callee.split(":")[0] for call in calls}
    return {
        "files": len(files),
        "file_crossings": len(calls),
        "layer_crossings": len(between_layers),
        "layer_seams": len({(call.caller, call.callee) for call in between_layers}),
        "upward_calls": sum(1 for call in between_apps if _rank(call.callee) > _rank(call.caller)),
        "core_calls": len(between_apps) - len(between_layers),
    }


def _rank(where: str) -> int:
    return LAYER_RANK.get(_app(where), len(LAYER_RANK))


def _app(where: str) -> str:
    return where.split("/", 1)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store-dir", type=Path, default=ROOT / ".data" / "bench-e2e")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--show", action="store_true", help="print the first request's path")
    args = parser.parse_args()
    os.environ["PERSONALIZATION_DATA_DIR"] = str(args.store_dir.resolve())
    from benchmarks.common import django_setup

    django_setup()
    from django.db import connection

    from surface_app.serving import slates

    with connection.cursor() as cursor:
        # The users with the latest events: the e2e benchmark gave its warm users fresh ones.
        cursor.execute(
            "SELECT user_id FROM signals_app_event WHERE user_id <> '' GROUP BY user_id ORDER BY max(occurred_at) DESC "
            "LIMIT %s",
            [args.users],
        )
        users = [row[0] for row in cursor.fetchall()]
    figures = []
    for index, user in enumerate(users):
        slates.slate_serve(user_key=user, placement=PLACEMENT, k=10)  # warm: caches, models, connections
        calls = path_trace(lambda user=user: slates.slate_serve(user_key=user, placement=PLACEMENT, k=10))
        if args.show and index == 0:
            layer_calls = [call for call in calls if _app(call.caller) != _app(call.callee)]
            print("\n".join(f"{call.caller} -> {call.callee}" for call in layer_calls))
        figures.append(path_figures(calls))
    print(f"{len(figures)} warm users, placement {PLACEMENT!r}, median per request:")
    for name in figures[0]:
        print(f"  {name:16} {statistics.median(figure[name] for figure in figures):g}")


if __name__ == "__main__":
    main()
