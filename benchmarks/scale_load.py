"""A shop's size loaded as a shop would load it: `manage.py import_items` and `manage.py import_events` of the files
`benchmarks/scale_data.py` writes, into a persistent store, then what that store takes on disk and in memory.

    # the files (1 M items, 1 M users, 20 M events), then the load, then the measures (printed and kept as JSON)
    .venv/bin/python benchmarks/scale_data.py --out .data/scale-files/1m
    .venv/bin/python benchmarks/scale_load.py load --files .data/scale-files/1m
    .venv/bin/python benchmarks/scale_load.py measure
    .venv/bin/python benchmarks/scale_load.py rebuild   # the online state again from the log, timed, then measured

The store is `.data/bench-scale` (its own embedded PostgreSQL with pgvector and Valkey; `--data-dir` for another):
migrated, then each step is the real command in a child process, its wall time and peak memory taken by
`/usr/bin/time` and its output (a progress bar with the time left) kept in `<data dir>/scale-logs/`. The
catalog goes in with `--bulk-load` (its vector index built once after the rows, not a million inserts into it),
the events with `--no-online-state`, then `manage.py rebuild_online_state` builds the users' and items' online
state from the log once.
`measure` reads PostgreSQL's sizes (the event log's partitions with their indexes, the catalog) and Valkey's
memory: `used_memory`, and per kind of key the count (a SCAN of all of them) and the memory (`MEMORY USAGE` of up
to 300 keys of each kind, scaled by its count), so the online state per million users and the catalog state per
million items can be read off. Results: `<data dir>/scale-results.json`; BENCHMARKS.md, "Scale: 1 M items, 1 M
users, 20 M events".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, python_speed

DEFAULT_DATA_DIR = ROOT / ".data" / "bench-scale"
SAMPLE_PER_KIND = 300
TIME_FORMAT = "wall=%e maxrss_kb=%M"


def results_path(data_dir: Path) -> Path:
    return data_dir / "scale-results.json"


def results_read(data_dir: Path) -> dict[str, object]:
    path = results_path(data_dir)
    return json.loads(path.read_text()) if path.exists() else {}


def results_update(data_dir: Path, **entries: object) -> None:
    results = results_read(data_dir)
    results.update(entries)
    results_path(data_dir).write_text(json.dumps(results, indent=2, sort_keys=True))


def step(data_dir: Path, name: str, command: list[str], *, rows: int | None = None) -> dict[str, object]:
    """One command as a child process, timed by /usr/bin/time; its output shown and kept in a log."""
    logs = data_dir / "scale-logs"
    logs.mkdir(parents=True, exist_ok=True)
    timing = logs / f"{name}.time"
    env = {**os.environ, "PERSONALIZATION_DATA_DIR": str(data_dir)}
    print(f"== {name}: {' '.join(command)}", flush=True)
    started = datetime.now(UTC)
    with (logs / f"{name}.log").open("w") as log:
        child = subprocess.Popen(
            ["/usr/bin/time", "-f", TIME_FORMAT, "-o", str(timing), sys.executable, "manage.py", *command],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert child.stdout is not None
        for chunk in iter(lambda: child.stdout.read1(4096), b""):  # type: ignore[union-attr]
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            log.write(chunk.decode(errors="replace"))
            log.flush()
        code = child.wait()
    measured = dict(part.split("=") for part in timing.read_text().split()[-2:])
    outcome: dict[str, object] = {
        "command": "manage.py " + " ".join(command),
        "started": f"{started:%Y-%m-%d %H:%M:%S} UTC",
        "seconds": float(measured["wall"]),
        "peak_rss_mib": round(int(measured["maxrss_kb"]) / 1024),
        "exit_code": code,
        "speed": python_speed(),
    }
    if rows is not None:
        outcome["rows"] = rows
        outcome["rows_per_second"] = round(rows / float(measured["wall"]))
    print(f"== {name}: {json.dumps(outcome)}", flush=True)
    if code:
        raise SystemExit(f"{name} failed (exit {code}); see {logs / (name + '.log')}")
    return outcome


def line_count(path: Path) -> int:
    with path.open("rb") as stream:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 24), b"")) - 1


def load(args: argparse.Namespace) -> None:
    data_dir: Path = args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    steps = results_read(data_dir).get("steps", {})
    assert isinstance(steps, dict)
    steps["migrate"] = step(data_dir, "migrate", ["migrate", "-v", "0"])
    results_update(data_dir, steps=steps, files=str(args.files))
    if not args.skip_items:
        items = args.files / "items.csv"
        steps["import_items"] = step(
            data_dir,
            "import_items",
            # The store's own checkpoint: the same files may be loaded into other stores.
            ["import_items", str(items), "--bulk-load", "--checkpoint", str(data_dir / "items.checkpoint.json")],
            rows=line_count(items),
        )
        results_update(data_dir, steps=steps)
        results_update(data_dir, after_items=measures(data_dir))
    if not args.skip_events:
        events = args.files / "events.csv"
        # The log first, then each user's final state computed once (the documented way for a first load: a
        # replay of every event through the ingest script ran about five times slower).
        steps["import_events"] = step(
            data_dir,
            "import_events",
            [
                "import_events",
                str(events),
                "--no-online-state",
                "--checkpoint",
                str(data_dir / "events.checkpoint.json"),
            ],
            rows=line_count(events),
        )
        results_update(data_dir, steps=steps)
    if not args.skip_rebuild:
        steps["rebuild_online_state"] = step(data_dir, "rebuild_online_state", ["rebuild_online_state"])
        results_update(data_dir, steps=steps)
    results_update(data_dir, after_load=measures(data_dir))
    print(json.dumps(results_read(data_dir), indent=2))


def rebuild(args: argparse.Namespace) -> None:
    data_dir: Path = args.data_dir
    results = results_read(data_dir)
    steps = results.get("steps", {})
    assert isinstance(steps, dict)
    name = f"rebuild_online_state_{datetime.now(UTC):%H%M}"
    steps[name] = step(data_dir, name, ["rebuild_online_state", *args.extra])
    results_update(data_dir, steps=steps)
    results_update(data_dir, **{f"after_{name}": measures(data_dir)})
    print(json.dumps(results_read(data_dir)[f"after_{name}"], indent=2))


def measure(args: argparse.Namespace) -> None:
    data_dir: Path = args.data_dir
    found = measures(data_dir)
    results_update(data_dir, **{f"measure_{datetime.now(UTC):%H%M}": found})
    print(json.dumps(found, indent=2))


def measures(data_dir: Path) -> dict[str, object]:
    """PostgreSQL's and Valkey's sizes, from a child process set up against the store."""
    env = {**os.environ, "PERSONALIZATION_DATA_DIR": str(data_dir)}
    output = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "_measure"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def kind_of(key: str) -> str:
    """A key's kind: the partition tag, user keys and ids taken out (user:{p}:<user>:recent -> user:recent)."""
    parts = key.split(":")
    if parts[0] == "user" and len(parts) >= 4:
        return "user:" + parts[3]
    kind = re.sub(r"\{[^}]*\}", "{p}", key)
    return re.sub(r"\d+", "#", kind)


def _measure() -> None:
    from benchmarks.common import django_setup

    django_setup()
    from django.db import connection

    from personalization.redis_client import get_control_redis

    sizes: dict[str, object] = {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid), pg_indexes_size(c.oid), "
            "c.reltuples::bigint FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 2 DESC"
        )
        tables = {
            name: {"total": total, "heap": heap, "indexes": indexes, "rows_estimate": rows}
            for name, total, heap, indexes, rows in cursor.fetchall()
        }
        cursor.execute(
            "SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0)::bigint, "
            "coalesce(sum(pg_indexes_size(i.inhrelid)), 0)::bigint FROM pg_inherits AS i "
            "JOIN pg_class AS p ON p.oid = i.inhparent WHERE p.relname = 'signals_app_event'"
        )
        event_total, event_indexes = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM signals_app_event")
        (events,) = cursor.fetchone()
        cursor.execute("SELECT count(*), count(embedding) FROM graph_app_item")
        items, vectors = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM graph_app_shopper")
        (shoppers,) = cursor.fetchone()
        cursor.execute("SELECT pg_database_size(current_database())")
        (database,) = cursor.fetchone()
        cursor.execute("SELECT coalesce(pg_relation_size(to_regclass('item_embedding_ivfflat')), 0)")
        (vector_index,) = cursor.fetchone()
    sizes = {
        "database_bytes": database,
        "event_log_bytes": event_total,
        "event_log_index_bytes": event_indexes,
        "events": events,
        "items": items,
        "item_vectors": vectors,
        "shoppers": shoppers,
        "vector_index_bytes": vector_index,
        "tables": {name: facts for name, facts in tables.items() if facts["total"] > 1 << 20},
    }
    client = get_control_redis()
    info = client.info("memory")
    counts: dict[str, int] = {}
    samples: dict[str, list[str]] = {}
    generator = random.Random(19)
    for raw in client.scan_iter(count=5000):
        key = raw.decode(errors="replace")
        kind = kind_of(key)
        seen = counts.get(kind, 0) + 1
        counts[kind] = seen
        # A uniform sample of each kind's keys (reservoir sampling).
        bucket = samples.setdefault(kind, [])
        if len(bucket) < SAMPLE_PER_KIND:
            bucket.append(key)
        elif (slot := generator.randrange(seen)) < SAMPLE_PER_KIND:
            bucket[slot] = key
    kinds = {}
    for kind, keys in samples.items():
        pipeline = client.pipeline(transaction=False)
        for key in keys:
            pipeline.memory_usage(key, samples=0)
        usages = [usage or 0 for usage in pipeline.execute()]
        mean = sum(usages) / len(usages)
        kinds[kind] = {"keys": counts[kind], "mean_bytes": round(mean), "bytes": round(mean * counts[kind])}
    print(
        json.dumps(
            {
                "at": f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
                "postgres": sizes,
                "valkey": {
                    "used_memory": info["used_memory"],
                    "used_memory_dataset": info.get("used_memory_dataset"),
                    "used_memory_rss": info["used_memory_rss"],
                    "keys": sum(counts.values()),
                    "kinds": dict(sorted(kinds.items(), key=lambda pair: -pair[1]["bytes"])),
                },
            }
        )
    )


def ready(args: argparse.Namespace) -> None:
    """The note for whoever trains on the store next: where it is, what it holds, how to reach it."""
    results = results_read(args.data_dir)
    after = results.get("after_load", {})
    postgres = after.get("postgres", {}) if isinstance(after, dict) else {}
    note = (
        f"data dir: {args.data_dir}\n"
        f"items: {postgres.get('items')} (vectors {postgres.get('item_vectors')}), "
        f"shoppers: {postgres.get('shoppers')}, events: {postgres.get('events')}\n"
        f"run manage.py against it: cd {ROOT} && PERSONALIZATION_DATA_DIR={args.data_dir} .venv/bin/python manage.py "
        "<command>\n"
        "(DATABASE_URL and REDIS_URL unset: the store's own embedded PostgreSQL and Valkey, started on first use)\n"
        f"load results: {results_path(args.data_dir)}\n"
        f"written {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC\n"
    )
    args.ready.parent.mkdir(parents=True, exist_ok=True)
    args.ready.write_text(note)
    print(note)


_SAMPLED_USER_EVENTS_SQL = """
SELECT e.user_id, e.item_id, e.type, extract(epoch FROM e.occurred_at)::float8
FROM signals_app_event e
WHERE e.item_id <> '' AND e.type = ANY(%(types)s::text[]) AND e.user_id = ANY(%(users)s::text[])
ORDER BY 1, e.occurred_at, e.id
"""


def user_sample(args: argparse.Namespace) -> None:
    """The online state of a seeded sample of the log's users, rebuilt by the rebuild's own replay
    (`graph_app.state.rebuild.UserState`) and measured key by key: bytes per user at the log's events per user, where
    a rebuild of every user would take longer than there is time for."""
    os.environ["PERSONALIZATION_DATA_DIR"] = str(args.data_dir)
    from benchmarks.common import django_setup

    django_setup()
    import itertools
    import time

    from django.db import connection

    from graph_app.features.offline import catalog_entity_keys, event_types
    from graph_app.state.rebuild import UserState, _touches_user_state
    from personalization import redis_keys
    from personalization.redis_client import get_control_redis

    with connection.cursor() as cursor:
        cursor.execute("SELECT external_id FROM graph_app_shopper ORDER BY md5(external_id) LIMIT %s", [args.users])
        users = [row[0] for row in cursor.fetchall()]
    types = {name: kind for name, kind in event_types().items() if _touches_user_state(name, kind)}
    entities = catalog_entity_keys()
    client = get_control_redis()
    now, events, pipeline = time.time(), 0, client.pipeline(transaction=False)
    with connection.cursor() as cursor:
        cursor.execute(_SAMPLED_USER_EVENTS_SQL, {"types": sorted(types), "users": users})
        rows = cursor.fetchall()
    for user_key, user_rows in itertools.groupby(rows, key=lambda row: row[0]):
        state = UserState()
        for _, item_id, type_name, ts in user_rows:
            state.add(item=item_id, type_name=type_name, kind=types[type_name], ts=float(ts),
                      entities=entities.get(item_id, ""))  # fmt: skip
            events += 1
        state.queue_write(pipeline, user_key, now)
    pipeline.execute()
    kinds = {
        "affinity": redis_keys.user_affinity, "recent": redis_keys.user_recent_items,
        "recent-last": redis_keys.user_recent_last, "purchased": redis_keys.user_purchased,
        "cooldown": redis_keys.user_cooldown,
    }  # fmt: skip
    per_kind: dict[str, dict[str, int]] = {}
    for name, key_of in kinds.items():
        sizes = [client.memory_usage(key_of(user), samples=0) for user in users]
        present = [size for size in sizes if size]
        per_kind[name] = {"keys": len(present), "bytes": sum(present)}
    with_state = sum(
        1 for user in users if client.exists(redis_keys.user_affinity(user), redis_keys.user_recent_items(user))
    )
    total = sum(kind["bytes"] for kind in per_kind.values())
    found = {
        "users": len(users), "users_with_state": with_state, "events": events,
        "events_per_user": round(events / max(1, len(users)), 1), "per_kind": per_kind,
        "bytes_per_user_with_state": round(total / max(1, with_state)),
        "gib_per_million_users_with_state": round(total / max(1, with_state) * 1e6 / 2**30, 3),
    }  # fmt: skip
    results_update(args.data_dir, **{f"user_sample_{datetime.now(UTC):%H%M}": found})
    print(json.dumps(found, indent=2))


def main() -> None:
    if sys.argv[1:2] == ["_measure"]:
        _measure()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    commands = parser.add_subparsers(dest="command", required=True)
    loading = commands.add_parser("load", help="migrate, import the items, import the events, measure")
    loading.add_argument("--files", type=Path, required=True, help="The folder scale_data.py wrote.")
    loading.add_argument("--skip-items", action="store_true")
    loading.add_argument("--skip-events", action="store_true")
    loading.add_argument("--skip-rebuild", action="store_true", help="leave the online state to be rebuilt later")
    commands.add_parser("measure", help="PostgreSQL sizes and Valkey memory now")
    rebuilding = commands.add_parser("rebuild", help="manage.py rebuild_online_state, timed, then measure")
    rebuilding.add_argument("extra", nargs="*", help="Arguments passed to rebuild_online_state.")
    sampling = commands.add_parser("user-sample", help="online state of a sample of users, rebuilt and measured")
    sampling.add_argument("--users", type=int, default=20_000)
    readying = commands.add_parser("ready", help="write the note that the store is loaded")
    readying.add_argument("--ready", type=Path, default=Path("/tmp/scale/READY"))
    args = parser.parse_args()
    args.data_dir = args.data_dir.resolve()
    commands_run = {"load": load, "measure": measure, "rebuild": rebuild, "ready": ready, "user-sample": user_sample}
    commands_run[args.command](args)


if __name__ == "__main__":
    main()
