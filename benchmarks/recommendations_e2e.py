"""Surface-layer benchmark: end-to-end GET /api/v1/recommendations at a fixed rate, from a separate load process.

Fills its own embedded servers (under .data/bench-e2e, unless DATABASE_URL / REDIS_URL are set) with the
synthetic catalog and log of `benchmarks/embeddings_refresh.py` at --items items, --users users and --events
events (a tenth of the items then go out of stock), and runs the real pipeline over it: `embeddings_train`,
`neighbourhoods_refresh`, `popularity_refresh`, `catalog_online_rebuild`, a LightGBM ranker of 100 trees (the
most production trains), a fresh bandit, `models_serving_publish`, then VACUUM ANALYZE. The data and models are
kept for the next run (rebuilt when the counts differ, or with --regenerate).

Every run then configures the "home" placement through the console's services (size 10, at most 3 items a
category, a boost on two categories, a pin, a block list, at most 3 impressions of an item a day), gives
--warm-users users of the log fresh events through the real ingest (10 each, within the last hour), resets the
frequency caps of the users it will ask for, warms the HNSW index, and starts gunicorn as `make run` does
(`config.gunicorn`, 2 sync workers). A separate process sends GET /api/v1/recommendations open-loop at --rate
requests/s for --seconds after a warm-up on other users: 9 requests in 10 for the warm users (in turn), 1 in 10
for cold users (half of them users of the log without online state, half new). Latency counts from each request's
scheduled time (no coordinated omission). Finally, optionally, the layers of `slate_serve` are timed in process.

    .venv/bin/python benchmarks/recommendations_e2e.py [--items 100000] [--users 50000] [--events 2000000]
        [--rate 200] [--seconds 30] [--regenerate] [--no-record]

With `--placement product_page` each request asks the default product page's shelf instead (context "item", its
size, 6; created by `surface_defaults_install` if missing: no rules or caps configured) about a catalog item,
`item_id=` (drawn from a 1 % sample of the log's events, in stock: the more viewed, the likelier), and the figures
add what the shelf held: the share of slates led by an item related to the page's item (found by the "context"
source, or similar to it as the "session" fallback), the mean share of such items in a slate, the mean share of
items found by popularity alone (the popular fallback or source), and the `degraded` reasons. Nothing recorded
(the comparisons in BENCHMARKS.md, "Product page under deadline pressure", are written by hand), no layer timings:

    .venv/bin/python benchmarks/recommendations_e2e.py --placement product_page --store-dir .data/bench-e2e-pp \
        --rate 200 --seconds 30 --json-out /tmp/pp.json

Against a store loaded and trained elsewhere (e.g. `benchmarks/scale_load.py`'s, after the scheduled training):
`--store-dir .data/bench-scale --reuse` generates and trains nothing (whatever models the store serves are used),
draws its users from a 1 % sample of the log's pages (any event ids), leaves the store's servers running, and
records nothing in BENCHMARKS.md (`--json-out FILE` keeps the figures):

    .venv/bin/python benchmarks/recommendations_e2e.py --store-dir .data/bench-scale --reuse --rate 100 \
        --seconds 30 --json-out /tmp/scale/e2e-1m.json
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PERSONALIZATION_DATA_DIR", str(Path(__file__).resolve().parent.parent / ".data" / "bench-e2e"))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from benchmarks.common import django_setup, free_port, percentile, precomputed_lists_ensure, record, wait_for_http

PLACEMENT = "home"
K = 10
OUT_OF_STOCK_SHARE = 0.1
RANKER_TREES = 100
EVENTS_PER_WARM_USER = 10
WARM_EVENT_TYPES = {"view": 0.7, "click": 0.2, "add_to_cart": 0.07, "purchase": 0.03}
WARM_UP_USERS = 200
MIN_LOG_EVENTS = 5
COLD_EVERY = 10  # one request in ten is for a cold user
# The log's events this benchmark generated (and looks its users up among): all of them in a reused store.
BENCH_EVENTS = "event_id LIKE 'bench-%%'"
ANY_EVENTS = "true"
SENDER_THREADS = 16
# What each request asks besides its user (and a product page's item): the home shelf, K items.
HOME_QUERY = f"placement={PLACEMENT}&k={K}"
MARKER = "bench-e2e-prepared.json"
SEED = 11
# The retrieval caches a user's requests fill (scoring_app.engine.retrieval).
USER_CACHES = ("candidates", "user_vector", "similar_to_recent")


# --- load generator (its own process: no Django here) ---------------------------------------------------------


def _context_figures(items: list[dict[str, object]]) -> tuple[bool, float, float]:
    """Whether the slate's first item relates to the request's context items (found by the "context" source, or
    similar to them as the "session" fallback), the share of such items, and of items found by popularity alone."""
    related = [
        "context" in item["sources"] or item["source"] == "session"  # type: ignore[operator]
        for item in items
    ]
    popular = [item["sources"] == ["popular"] for item in items]
    if not items:
        return False, 0.0, 0.0
    return related[0], sum(related) / len(items), sum(popular) / len(items)


def _fixed_rate(
    port: int, key: str, rate: float, plan: list[list[str]], query: str = HOME_QUERY, size: int = K
) -> dict[str, object]:
    """Open loop: request i is due at start + i / rate; its latency counts from then, not from when it was sent.
    A plan's row [user, kind, item] asks about that context item (a product page's)."""
    total = len(plan)
    start = time.perf_counter() + 0.5
    rows: list[tuple[float, float, float, str, int, str, tuple[str, ...], int, tuple[bool, float, float]]] = []
    lock = threading.Lock()

    def sender(offset: int) -> None:
        # gunicorn's sync workers close the connection after each response; http.client reconnects by itself.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        local = []
        for index in range(offset, total, SENDER_THREADS):
            user, kind, *context = plan[index]
            url = f"/api/v1/recommendations?user_id={user}&{query}" + (f"&item_id={context[0]}" if context else "")
            scheduled = start + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            status, path, degraded, count, figures = 0, "", (), 0, (False, 0.0, 0.0)
            try:
                connection.request(
                    "GET", url, headers={"Authorization": f"Bearer {key}"}
                )  # fmt: skip
                response = connection.getresponse()
                body = response.read()
                status = response.status
                if status == 200:
                    payload = json.loads(body)
                    path, degraded, count = payload["path"], tuple(payload["degraded"]), len(payload["items"])
                    figures = _context_figures(payload["items"])
            except (OSError, http.client.HTTPException, ValueError):
                connection.close()
            finished = time.perf_counter()
            local.append(((finished - scheduled) * 1000, (finished - sent) * 1000, finished, kind, status, path,
                          degraded, count, figures))  # fmt: skip
        with lock:
            rows.extend(local)

    threads = [threading.Thread(target=sender, args=(offset,)) for offset in range(min(SENDER_THREADS, total))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies = [row[0] for row in rows]
    service = [row[1] for row in rows]
    by_kind: dict[str, list[float]] = {}
    for row in rows:
        by_kind.setdefault(row[3], []).append(row[0])
    ok = [row for row in rows if row[4] == 200]
    # Every warm user's first request comes in the window's first seconds (the users are asked in turn): the
    # latency of that first pass, and of what follows it.
    scheduled = [row[2] - row[0] / 1000 for row in rows]
    firsts = [when for when, row in zip(scheduled, rows, strict=True) if row[3] == "warm, first in the run"]
    first_pass_end = max(firsts, default=start)
    by_phase: dict[str, list[float]] = {}
    for when, row in zip(scheduled, rows, strict=True):
        by_phase.setdefault("first pass" if when <= first_pass_end else "after it", []).append(row[0])

    def ms(values: list[float], fraction: float) -> float:
        return round(percentile(values, fraction), 2) if values else float("nan")

    return {
        "requests": total,
        "window_started": time.time() - (time.perf_counter() - start),
        "errors": total - len(ok),
        "statuses": dict(Counter(str(row[4]) for row in rows)),
        "achieved_rps": round(total / (max(row[2] for row in rows) - start), 1),
        "p50_ms": ms(latencies, 0.5),
        "p99_ms": ms(latencies, 0.99),
        "p999_ms": ms(latencies, 0.999),
        "max_ms": round(max(latencies), 2),
        "service_p50_ms": ms(service, 0.5),
        "service_p99_ms": ms(service, 0.99),
        "sent_late_over_5ms": sum(1 for row in rows if row[0] - row[1] > 5),
        "by_kind": {
            kind: {"requests": len(values), "p50_ms": ms(values, 0.5), "p99_ms": ms(values, 0.99)}
            for kind, values in sorted(by_kind.items())
        },
        "by_phase": {
            phase: {
                "requests": len(values),
                "seconds": round(
                    (first_pass_end - start) if phase == "first pass" else (max(scheduled) - first_pass_end), 1
                ),
                "p50_ms": ms(values, 0.5),
                "p99_ms": ms(values, 0.99),
            }
            for phase, values in by_phase.items()
        },
        # Where in the window the slow requests fell: each second's p99 and maximum.
        "by_second": {
            second: [ms(values, 0.99), round(max(values), 1)]
            for second, values in sorted(_by_second(scheduled, latencies, start).items())
        },
        "paths": dict(Counter(row[5] for row in ok)),
        "degraded_requests": sum(1 for row in ok if row[6]),
        "degraded": dict(Counter(reason for row in ok for reason in row[6]).most_common()),
        "short_slates": sum(1 for row in ok if row[7] < size),
        # Of the slates served (200): led by an item related to the context, mean shares of such items and of
        # items found by popularity alone.
        "first_from_context": round(sum(row[8][0] for row in ok) / len(ok), 3) if ok else float("nan"),
        "context_share_mean": round(sum(row[8][1] for row in ok) / len(ok), 3) if ok else float("nan"),
        "popular_only_share_mean": round(sum(row[8][2] for row in ok) / len(ok), 3) if ok else float("nan"),
    }


def _by_second(scheduled: list[float], latencies: list[float], start: float) -> dict[int, list[float]]:
    seconds: dict[int, list[float]] = {}
    for when, latency in zip(scheduled, latencies, strict=True):
        seconds.setdefault(int(when - start), []).append(latency)
    return seconds


def load_worker() -> None:
    """Entry point of the load process: the plan arrives as JSON on stdin, the figures leave as JSON on stdout."""
    spec = json.loads(sys.stdin.read())
    result = _fixed_rate(spec["port"], spec["key"], spec["rate"], spec["plan"], spec["query"], spec["size"])
    times = os.times()
    result["cpu_seconds"] = times.user + times.system
    print(json.dumps(result))


def load_run(
    port: int, key: str, rate: float, plan: list[list[str]], query: str = HOME_QUERY, size: int = K
) -> dict[str, object]:
    spec = {"port": port, "key": key, "rate": rate, "plan": plan, "query": query, "size": size}
    output = subprocess.run(
        [sys.executable, __file__, "--load-worker"], input=json.dumps(spec), check=True, capture_output=True, text=True
    ).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


# --- CPU time of the servers (from /proc: what a request costs, whatever else runs on the machine) ---------------


def _process_tree(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                pending += [int(child) for child in (task / "children").read_text().split()]
    return found


def cpu_seconds(pid: int | None) -> float | None:
    """User + system time of a process and its descendants, living (their own) and waited for (cutime, cstime)."""
    if pid is None:
        return None
    total = 0.0
    for member in _process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def _local_pid(pid: int, name: str) -> int | None:
    """The pid if it is a local process of that name (the servers may be remote)."""
    try:
        return pid if name in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") else None
    except OSError:
        return None


def server_pids() -> dict[str, int | None]:
    """The PostgreSQL postmaster (parent of this connection's backend) and the Valkey / Redis server."""
    from django.db import connection

    from personalization.redis_client import get_control_redis

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = _local_pid(cursor.fetchone()[0], "postgres")
    postmaster = None
    if backend is not None:
        parent = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
        postmaster = _local_pid(parent, "postgres")
    redis_pid = int(get_control_redis().info("server")["process_id"])
    return {"postgres": postmaster, "redis": _local_pid(redis_pid, "valkey") or _local_pid(redis_pid, "redis")}


# --- data, models and configuration ------------------------------------------------------------------------------


def _marker_path() -> Path:
    from django.conf import settings

    return Path(settings.DATA_DIR) / MARKER


def _marker_read() -> dict[str, object]:
    try:
        return dict(json.loads(_marker_path().read_text()))
    except (OSError, ValueError):
        return {}


def _marker_write(marker: dict[str, object]) -> None:
    _marker_path().write_text(json.dumps(marker))


def _timed(steps: dict[str, float], name: str, function: object) -> object:
    started = time.perf_counter()
    result = function()  # type: ignore[operator]
    steps[name] = round(time.perf_counter() - started, 1)
    print(f"  {name}: {steps[name]} s", flush=True)
    return result


def prepare_data(args: argparse.Namespace) -> dict[str, float]:
    """The log, catalog, embeddings, neighbourhoods, popularity, online catalog and models (when not already there).
    Returns the seconds each step took this time."""
    from django.db import connection

    from benchmarks.embeddings_refresh import log_fill
    from graph_app.model_registry.services import models_serving_publish
    from graph_app.neighbourhoods import neighbourhoods_refresh
    from graph_app.online import catalog_online_rebuild
    from graph_app.state.popularity import popularity_refresh
    from graph_app.training import embeddings_train
    from personalization import redis_keys
    from personalization.redis_client import get_control_redis

    wanted = {"items": args.items, "users": args.users, "events": args.events}
    marker = _marker_read()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM signals_app_event WHERE event_id LIKE 'bench-%%'")
        stored_events = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM graph_app_item WHERE external_id LIKE 'bench-sku-%%'")
        stored_items = cursor.fetchone()[0]
    steps: dict[str, float] = {}
    regenerate = (
        args.regenerate or marker.get("log") != wanted or (stored_events, stored_items) != (args.events, args.items)
    )
    if regenerate:
        print(f"generating {args.items:,} items, {args.users:,} users, {args.events:,} events", flush=True)
        _marker_write({})
        if not os.environ.get("REDIS_URL"):  # our own Valkey: nothing in it may outlive the catalog it describes
            get_control_redis().flushdb()
        _timed(steps, "log_fill", lambda: log_fill(args.events, items=args.items, users=args.users))
        with connection.cursor() as cursor:
            # A tenth of the catalog out of stock, the same items every time.
            cursor.execute(
                "UPDATE graph_app_item SET in_stock = false WHERE abs(hashtext(external_id)) %% 1000 < %s",
                [round(OUT_OF_STOCK_SHARE * 1000)],
            )
        _marker_write({"log": wanted})
        marker = _marker_read()
    if marker.get("pipeline") == wanted and get_control_redis().hlen(redis_keys.CATALOG_STATIC) != stored_items:
        marker.pop("pipeline")  # the online state is gone (a Redis without persistence, or emptied): rebuild it
    if marker.get("pipeline") != wanted:
        print("running the pipeline", flush=True)
        _timed(steps, "embeddings_train", embeddings_train)
        _timed(steps, "neighbourhoods_refresh", neighbourhoods_refresh)
        _timed(steps, "popularity_refresh", popularity_refresh)
        _timed(steps, "catalog_online_rebuild", catalog_online_rebuild)
        _timed(steps, "ranker_fit", ranker_publish)
        _timed(steps, "bandit", bandit_publish)
        models_serving_publish()

        def vacuum() -> None:
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE")

        _timed(steps, "vacuum_analyze", vacuum)
        _marker_write({"log": wanted, "pipeline": wanted})
    else:
        models_serving_publish()
    _timed(steps, "precomputed_lists_ensure", precomputed_lists_ensure)
    return steps


def ranker_publish() -> str:
    """A LightGBM lambdarank of RANKER_TREES trees, labelled by each user's held-out latest history as scheduled
    training labels it without impressions (`scoring_app.training`), published without its quality gate."""
    from graph_app.features.definitions import FEATURE_NAMES
    from graph_app.model_registry.services import model_version_publish
    from scoring_app import training
    from scoring_app.ranker import ranker_fit

    interactions = training.interactions_load()
    holdout = training.holdout_split(interactions)
    queries = training.holdout_queries(interactions=interactions, holdout=holdout)
    data = queries.ranking_data(with_positive_only=True)
    booster = ranker_fit(train=data, feature_names=list(FEATURE_NAMES), num_boost_round=RANKER_TREES)
    return model_version_publish(
        kind="ranker", artifact=booster.model_to_string().encode(), metrics={"trees": booster.num_trees()},
        feature_names=list(FEATURE_NAMES),
    ).version  # fmt: skip


def bandit_publish() -> str:
    from graph_app.model_registry.services import model_version_publish
    from scoring_app.engine.bandit import bandit_model_dump, bandit_model_new

    return model_version_publish(kind="bandit", artifact=bandit_model_dump(bandit_model_new()), metrics={}).version


def placement_configure() -> dict[str, object]:
    """The home shelf, its rules and its cap, through the console's services (each bumps the config version)."""
    from django.db import connection

    from surface_app.configuration import cap_save, placement_save, rule_save
    from surface_app.models import BusinessRule, FrequencyCap, Placement

    placement = Placement.objects.filter(name=PLACEMENT).first() or Placement(name=PLACEMENT)
    placement.title, placement.size, placement.max_per_category = "Home shelf", K, 3
    placement_save(placement=placement)
    with connection.cursor() as cursor:
        # Two mid-sized categories to boost; the most popular in-stock item to pin; the next ten to block.
        cursor.execute(
            "SELECT category FROM graph_app_item GROUP BY category ORDER BY count(*) DESC, category OFFSET 5 LIMIT 2"
        )
        boosted = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "SELECT i.external_id FROM graph_app_item i "
            "LEFT JOIN graph_app_itempopularity p ON p.item_id = i.external_id "
            "WHERE i.in_stock ORDER BY p.score DESC NULLS LAST, i.external_id LIMIT 11"
        )
        popular = [row[0] for row in cursor.fetchall()]
    rules = [
        ("e2e: boost two categories", BusinessRule.Kind.BOOST,
         {"condition": {"field": "category", "op": "in", "value": boosted}, "factor": 1.5}),
        ("e2e: campaign pin", BusinessRule.Kind.PIN,
         {"item_ids": popular[:1], "slot": 2, "campaign": "e2e-campaign",
          "valid_until": datetime.now(UTC) + timedelta(days=30)}),
        ("e2e: discontinued", BusinessRule.Kind.BLOCK, {"item_ids": popular[1:11]}),
    ]  # fmt: skip
    for name, kind, fields in rules:
        rule = BusinessRule.objects.filter(name=name).first() or BusinessRule(name=name)
        rule.kind, rule.placement, rule.enabled = kind, placement, True
        for field_name, value in fields.items():
            setattr(rule, field_name, value)
        rule_save(rule=rule)
    cap = FrequencyCap.objects.filter(name="e2e: an item 3 times a day").first() or FrequencyCap(
        name="e2e: an item 3 times a day"
    )
    cap.scope, cap.placement, cap.max_impressions, cap.window_seconds, cap.enabled = "item", placement, 3, 86400, True
    cap_save(cap=cap)
    return {"boosted": boosted, "pinned": popular[:1], "blocked": len(popular[1:11])}


def product_page_configure(placement: str) -> dict[str, object]:
    """The default placements (created when missing, never changed): the product page's shelf as shipped."""
    from surface_app.configuration import surface_defaults_install
    from surface_app.models import Placement

    created = surface_defaults_install()
    shelf = Placement.objects.get(name=placement)
    return {"created": created, "placement": placement, "context": shelf.context, "size": shelf.size}


def context_items_choose(count: int) -> list[str]:
    """The product pages asked about: the items of a 1 % sample of the log's events (the more viewed, the likelier),
    in stock, in a seeded order, as many as requests (repeated when fewer)."""
    import numpy as np
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT e.item_id FROM signals_app_event e TABLESAMPLE SYSTEM (1) REPEATABLE (%s) "
            "JOIN graph_app_item i ON i.external_id = e.item_id WHERE i.in_stock ORDER BY e.item_id",
            [SEED],
        )
        items = [row[0] for row in cursor.fetchall()]
    order = np.random.default_rng(SEED).permutation(len(items))
    return [items[order[index % len(items)]] for index in range(count)]


def users_choose(warm_users: int, *, reuse: bool = False) -> dict[str, list[str]]:
    """Users of the log with some history: the warm ones asked for, the warm-up's, and cold ones (no online state).
    In a reused store (tens of millions of events) from a 1 % sample of the log's pages instead of all of it: users
    with events there, the more active the likelier."""
    import numpy as np
    from django.db import connection

    with connection.cursor() as cursor:
        if reuse:
            cursor.execute(
                "SELECT DISTINCT user_id FROM signals_app_event TABLESAMPLE SYSTEM (1) REPEATABLE (%s) "
                "WHERE user_id <> '' ORDER BY user_id",
                [SEED],
            )
        else:
            cursor.execute(
                f"SELECT user_id FROM signals_app_event WHERE {BENCH_EVENTS} GROUP BY user_id "
                "HAVING count(*) >= %s ORDER BY user_id",
                [MIN_LOG_EVENTS],
            )
        candidates = [row[0] for row in cursor.fetchall()]
    generator = np.random.default_rng(SEED)
    candidates = [candidates[index] for index in generator.permutation(len(candidates))]
    warm = min(warm_users, int(len(candidates) * 0.6))
    warm_up = min(WARM_UP_USERS, int(len(candidates) * 0.1))
    return {
        "warm": candidates[:warm],
        "warm_up": candidates[warm : warm + warm_up],
        "cold_log": candidates[warm + warm_up :],
    }


def online_state_warm(users: list[str], *, events_filter: str = BENCH_EVENTS) -> float:
    """Fresh events for these users through the real ingest (their recent items, affinities, counters)."""
    import numpy as np
    from django.db import connection

    from signals_app.services import events_ingest

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT user_id, array_agg(item_id) FROM signals_app_event WHERE user_id = ANY(%s) "
            f"AND item_id <> '' AND {events_filter} GROUP BY user_id",
            [users],
        )
        histories = dict(cursor.fetchall())
    generator = np.random.default_rng(int(time.time()))
    types = list(WARM_EVENT_TYPES)
    now = time.time()
    run = time.time_ns()
    events = []
    for user_id in users:
        items = histories[user_id]
        moments = np.sort(now - generator.uniform(5, 3600, EVENTS_PER_WARM_USER))
        chosen_types = generator.choice(len(types), size=EVENTS_PER_WARM_USER, p=list(WARM_EVENT_TYPES.values()))
        for number in range(EVENTS_PER_WARM_USER):
            events.append(
                {"event_id": f"e2e-warm-{run}-{user_id}-{number}", "type": types[chosen_types[number]],
                 "user_id": user_id, "item_id": items[int(generator.integers(len(items)))],
                 "timestamp": float(moments[number])}
            )  # fmt: skip
    events.sort(key=lambda event: event["timestamp"])
    for start in range(0, len(events), 500):
        report = events_ingest(raw_events=events[start : start + 500])
        if report.rejected:
            raise RuntimeError(f"warm events rejected: {report.errors[:3]}")
    return time.perf_counter() - started


def per_user_state_reset(users: list[str], placement: str = PLACEMENT) -> None:
    """Frequency caps, last slates and retrieval caches of earlier runs: every run starts from the same state."""
    from personalization import redis_keys
    from personalization.redis_client import get_control_redis

    client = get_control_redis()
    for start in range(0, len(users), 500):
        pipeline = client.pipeline(transaction=False)
        for user in users[start : start + 500]:
            pipeline.delete(
                redis_keys.user_cap_counts(user), redis_keys.user_cap_touched(user), redis_keys.user_cap_blocks(user)
            )
            pipeline.delete(redis_keys.user_last_slate(user, placement))
            pipeline.delete(*(redis_keys.user_cache(user, name) for name in USER_CACHES))
        pipeline.execute()


def streams_drain() -> int:
    """Earlier runs' impressions and warm events into the log, so that the streams start empty."""
    from signals_app.consumer import events_drain_all

    drained = 0
    while True:
        report = events_drain_all()
        drained += report.stored
        if not report.read:
            return drained


def log_vacuum() -> str:
    """VACUUM ANALYZE what this run's preparation wrote (the drained impressions and bandit decisions, the warm
    events): left to autovacuum, which looks once a minute, its workers analyze and vacuum those tables inside the
    window, a third of a core for a second or two (seen landing in the window's first seconds)."""
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    return f"VACUUM ANALYZE in {time.perf_counter() - started:.1f} s"


def aof_rewrite() -> str:
    """Rewrite Redis's append-only file now, as VACUUM ANALYZE is run before measuring: the earlier runs' writes
    (warm events, caches, impressions) otherwise trigger a rewrite, a child process writing the whole data set with
    a core of its own for seconds, and on these shared two cores one landing in the window decides its p99."""
    from personalization.redis_client import get_control_redis

    client = get_control_redis()
    if not client.info("persistence").get("aof_enabled"):
        return "no append-only file"
    started = time.perf_counter()
    while client.info("persistence").get("aof_rewrite_in_progress"):
        time.sleep(0.2)
    client.bgrewriteaof()
    time.sleep(0.2)
    while client.info("persistence").get("aof_rewrite_in_progress") or client.info("persistence").get(
        "aof_rewrite_scheduled"
    ):
        time.sleep(0.2)
    return f"rewritten in {time.perf_counter() - started:.1f} s"


def vector_index_warm(queries: int = 1000) -> str:
    """The first queries after a build (or a restart) read the index from disk: warm it before measuring."""
    from django.db import DatabaseError, connection

    with connection.cursor() as cursor:
        try:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            cursor.execute("SELECT pg_prewarm('item_embedding_ivfflat'), pg_prewarm('graph_app_item')")
            how = "pg_prewarm"
        except DatabaseError:
            # Not in the embedded server: read the relation files into the page cache when they are local.
            how = "a query pass"
            try:
                cursor.execute(
                    "SELECT current_setting('data_directory'), pg_relation_filepath('item_embedding_ivfflat'), "
                    "pg_relation_filepath('graph_app_item')"
                )
                data_directory, *relations = cursor.fetchone()
                for relation in relations:
                    for segment in sorted(Path(data_directory).glob(Path(relation).name + "*")):
                        if segment.parent == (Path(data_directory) / relation).parent:
                            with segment.open("rb") as handle:
                                while handle.read(1 << 20):
                                    pass
                how = "reading the index and table files, then a query pass"
            except (DatabaseError, OSError):
                pass
        cursor.execute(
            "SELECT embedding::text FROM graph_app_shopper WHERE embedding IS NOT NULL ORDER BY random() LIMIT %s",
            [queries],
        )
        vectors = [row[0] for row in cursor.fetchall()]
        for vector in vectors:
            cursor.execute(
                "SELECT external_id FROM graph_app_item WHERE in_stock AND embedding IS NOT NULL "
                "ORDER BY embedding <=> %s::vector LIMIT 50",
                [vector],
            )
            cursor.fetchall()
    return f"{how} ({len(vectors)} HNSW queries)"


def plan_build(users: dict[str, list[str]], count: int, run: str) -> list[list[str]]:
    """Request i: a cold user when i % COLD_EVERY is the last, else the next warm user (in turn)."""
    plan: list[list[str]] = []
    seen: set[str] = set()
    warm_index = cold_index = 0
    for index in range(count):
        if index % COLD_EVERY == COLD_EVERY - 1:
            if cold_index % 2 == 0 and users["cold_log"]:
                plan.append([users["cold_log"][(cold_index // 2) % len(users["cold_log"])], "cold, log history only"])
            else:
                plan.append([f"e2e-new-{run}-{cold_index}", "cold, new user"])
            cold_index += 1
            continue
        user = users["warm"][warm_index % len(users["warm"])]
        warm_index += 1
        plan.append([user, "warm, repeat" if user in seen else "warm, first in the run"])
        seen.add(user)
    return plan


# --- in-process layer timings -------------------------------------------------------------------------------------


def layers_time(users: list[str], requests: int) -> dict[str, dict[str, float]]:
    """`slate_serve` one request after another in this process, its steps timed through wrappers: state (one Redis
    round trip), retrieval (candidate set rebuilt: the user's cache is deleted first), scoring, and the rest
    (rules, caps, impression logging) = Surface."""
    from personalization import redis_keys
    from personalization.redis_client import get_redis
    from scoring_app.engine.registry import models_refresh
    from scoring_app.engine.retrieval import retrieval_warm_up
    from surface_app.serving import slates

    retrieval_warm_up()
    models_refresh()
    timings: dict[str, float] = {}

    def timed(name: str, function: object) -> object:
        def wrapper(*args: object, **kwargs: object) -> object:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)  # type: ignore[operator]
            finally:
                timings[name] = timings.get(name, 0.0) + (time.perf_counter() - started) * 1000

        return wrapper

    originals = {name: getattr(slates, name) for name in ("user_state_fetch", "candidates_retrieve", "slate_score")}
    names = {"user_state_fetch": "state", "candidates_retrieve": "retrieval", "slate_score": "scoring"}
    for name, function in originals.items():
        setattr(slates, name, timed(names[name], function))
    client = get_redis()
    rows: dict[str, list[float]] = {"state": [], "retrieval": [], "scoring": [], "surface": [], "total": []}
    try:
        for index in range(requests + 50):
            user = users[index % len(users)]
            client.delete(redis_keys.user_cache(user, "candidates"))
            timings.clear()
            started = time.perf_counter()
            slates.slate_serve(user_key=user, placement=PLACEMENT, k=K)
            total = (time.perf_counter() - started) * 1000
            if index < 50:
                continue  # warm-up
            for name in ("state", "retrieval", "scoring"):
                rows[name].append(timings.get(name, 0.0))
            rows["surface"].append(total - sum(timings.values()))
            rows["total"].append(total)
    finally:
        for name, function in originals.items():
            setattr(slates, name, function)
    return {
        name: {"p50": round(percentile(values, 0.5), 2), "p99": round(percentile(values, 0.99), 2)}
        for name, values in rows.items()
    }


def served_run(
    args: argparse.Namespace, key: str, plan: list[list[str]], warm_up: list[list[str]], **env_extra: str
) -> tuple[dict[str, object], dict[str, float | None]]:
    """gunicorn as `make run` starts it (with `env_extra`), the warm-up, then the measured load: its figures and the
    CPU milliseconds a request cost each process (None: a server that is not local)."""
    from django.conf import settings

    from surface_app.models import Placement

    # The home shelf is asked for K items; another placement (a product page) for its own size, as shipped.
    query, size = HOME_QUERY, K
    if args.placement != PLACEMENT:
        query, size = f"placement={args.placement}", Placement.objects.get(name=args.placement).size
    metrics_dir = tempfile.mkdtemp(prefix="bench-e2e-metrics-")
    env = {**os.environ, "DATABASE_URL": settings.DATABASE_URL, "REDIS_URL": settings.REDIS_URL,
           "PROMETHEUS_MULTIPROC_DIR": metrics_dir, **env_extra}  # fmt: skip
    port = free_port()
    bin_dir = Path(sys.executable).parent
    server_log = Path(settings.DATA_DIR) / "bench-e2e-gunicorn.log"
    with server_log.open("wb") as log:
        server = subprocess.Popen(
            [str(bin_dir / "gunicorn"), "config.wsgi:application", "--config", "python:config.gunicorn",
             "--workers", str(args.workers), "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
            cwd=Path(__file__).resolve().parent.parent, env=env, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    pids = {"gunicorn": server.pid, **server_pids()}
    try:
        wait_for_http(port, timeout=120)
        load_run(port, key, args.rate, warm_up, query, size)
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        result = load_run(port, key, args.rate, plan, query, size)
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    cpu_ms: dict[str, float | None] = {
        name: (round((after[name] - before[name]) * 1000 / result["requests"], 2) if before[name] is not None else None)
        for name in pids
    }
    cpu_ms["load generator"] = round(result["cpu_seconds"] * 1000 / result["requests"], 2)
    return result, cpu_ms


LIMITER_SECTION = "API keys: the rate limiter on the recommendation path"


@contextlib.contextmanager
def state_fetch_timed() -> Iterator[list[float]]:
    """While inside, each request's state round trip (`slates.user_state_fetch`) appends its ms to the list
    yielded; the serving function is put back on leaving."""
    from surface_app.serving import slates

    fetch = slates.user_state_fetch
    spent: list[float] = []

    def timed(*args: object, **kwargs: object) -> object:
        started = time.perf_counter()
        try:
            return fetch(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            spent.append((time.perf_counter() - started) * 1000)

    slates.user_state_fetch = timed  # type: ignore[assignment]
    try:
        yield spent
    finally:
        slates.user_state_fetch = fetch  # type: ignore[assignment]


def state_round_trip_time(users: list[str], requests: int) -> dict[str, dict[str, float]]:
    """`slate_serve` in process, one request after another, with and without a key's rate limit (alternating request
    by request): the state round trip (which carries the bucket) and the whole request, p50 / p99 ms."""
    from personalization.rate_limits import RateLimitCheck, RatePolicy
    from scoring_app.engine.registry import models_refresh
    from scoring_app.engine.retrieval import retrieval_warm_up
    from surface_app.serving import slates

    retrieval_warm_up()
    models_refresh()
    check = RateLimitCheck(api_key_id=-1, policy=RatePolicy("key", 10**9, 1))
    rows: dict[str, list[float]] = {"state, limiter": [], "state, none": [], "total, limiter": [], "total, none": []}
    with state_fetch_timed() as spent:
        for index in range(2 * requests + 100):
            # Each user is asked twice in a row, the limiter first for every other user: the second request of a
            # user finds what the first cached.
            limited = (index % 2 == 0) != ((index // 2) % 2 == 1)
            spent.clear()
            started = time.perf_counter()
            slates.slate_serve(
                user_key=users[(index // 2) % len(users)],
                placement=PLACEMENT,
                k=K,
                rate_limit=check if limited else None,
            )
            total = (time.perf_counter() - started) * 1000
            if index < 100:
                continue  # warm-up
            name = "limiter" if limited else "none"
            rows[f"state, {name}"].append(spent[0])
            rows[f"total, {name}"].append(total)
    return {
        name: {"p50": round(percentile(values, 0.5), 3), "p99": round(percentile(values, 0.99), 3)}
        for name, values in rows.items()
    }


def bucket_script_cost(redis: object, calls: int = 5000) -> dict[str, float]:
    """Valkey's own time in the bucket script (INFO commandstats, nothing else running EVALSHA meanwhile)."""
    from personalization import redis_keys
    from personalization.rate_limits import token_bucket_script

    redis.config_resetstat()  # type: ignore[attr-defined]
    for call in range(calls):
        token_bucket_script.call(redis, [redis_keys.api_key_rate_bucket(-2 - call % 100)], [10**9, 10**9, 1])  # type: ignore[arg-type]
    stats = redis.info("commandstats").get("cmdstat_evalsha", {})  # type: ignore[attr-defined]
    return {"calls": stats.get("calls", 0), "usec_per_call": stats.get("usec_per_call", float("nan"))}


def limiter_compare(
    args: argparse.Namespace,
    users: dict[str, list[str]],
    plan: list[list[str]],
    warm_up: list[list[str]],
    started: float,
) -> None:
    """The same load with the keys' rate limits on and off (API_RATE_LIMITS_ENABLED), alternating in pairs, then in
    process; recorded in its own section of BENCHMARKS.md."""
    from django.db import connection

    from personalization.redis_client import get_control_redis
    from personalization.services import api_key_create

    # A browser's key, as a storefront page ships it; its rate far above the load, so that no request is refused.
    key = api_key_create(name="limiter benchmark", scope="public", rate_limit_per_second=1_000_000).raw_key
    connection.close()
    runs: list[tuple[str, dict[str, object], dict[str, float | None]]] = []
    for pair in range(args.limiter_pairs):
        order = ("1", "0") if pair % 2 == 0 else ("0", "1")
        for enabled in order:
            result, cpu_ms = served_run(args, key, plan, warm_up, API_RATE_LIMITS_ENABLED=enabled)
            label = "limiter" if enabled == "1" else "none"
            print(label, {k: result[k] for k in ("p50_ms", "p99_ms", "errors", "achieved_rps")}, cpu_ms, flush=True)
            runs.append((label, result, cpu_ms))
    in_process = state_round_trip_time(users["warm"], args.layer_requests or 500)
    script_stats = bucket_script_cost(get_control_redis())
    print("in process", in_process, "bucket script", script_stats, flush=True)

    def row(label: str, result: dict[str, object], cpu_ms: dict[str, float | None]) -> str:
        cpu = ", ".join(f"{name} {value}" for name, value in cpu_ms.items() if value is not None)
        return (
            f"| {label} | {result['p50_ms']} / {result['p99_ms']} ms | {result['achieved_rps']} | "
            f"{result['errors']} | {cpu} |"
        )

    def mean_cpu(label: str, process: str) -> float:
        values = [cpu[process] for name, _, cpu in runs if name == label and cpu.get(process) is not None]
        return sum(values) / len(values) if values else float("nan")  # type: ignore[arg-type]

    body = (
        f"The end-to-end benchmark's data and serving ({args.items:,} items, {args.users:,} users, {args.events:,} "
        f"events; placement `{PLACEMENT}`, k={K}; gunicorn, {args.workers} sync workers, the fast path), GET "
        f"/api/v1/recommendations open loop at {args.rate:g} requests/s for {args.seconds:g} s after a "
        f"{args.warm_up_seconds:g} s warm-up, with a public key (rate 1,000,000/s: nothing refused), gunicorn "
        "restarted for each run with `API_RATE_LIMITS_ENABLED` 1 (limiter) or 0 (none), the two alternating in "
        f"{args.limiter_pairs} pairs (order swapped pair by pair). With the limiter, the key's token bucket is one "
        "EVALSHA queued on the request's existing state round trip (no round trip of its own).\n\n"
        "| run | latency p50 / p99 | requests/s | errors | CPU ms a request (user + system, /proc) |\n"
        "|---|---|---|---|---|\n" + "\n".join(row(*run) for run in runs) + "\n\n"
        "Means of the CPU a request cost, limiter against none: "
        + ", ".join(
            f"{process} {mean_cpu('limiter', process):.2f} against {mean_cpu('none', process):.2f} ms"
            for process in ("gunicorn", "redis")
        )
        + ".\n\n"
        f"In process, one request at a time ({args.layer_requests or 500} warm users each way, alternating request "
        "by request, candidate sets cached as in steady state), p50 / p99: "
        + ", ".join(f"{name} {figures['p50']} / {figures['p99']} ms" for name, figures in in_process.items())
        + f". Valkey's own time in the bucket script: {script_stats.get('usec_per_call', '?')} µs a call "
        f"({script_stats.get('calls', 0):,} calls)."
    )
    print(body)
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    if not args.no_record:
        command = (
            f"python benchmarks/recommendations_e2e.py --items {args.items} --users {args.users} --events "
            f"{args.events} --rate {args.rate:g} --seconds {args.seconds:g} --warm-up-seconds "
            f"{args.warm_up_seconds:g} --warm-users {args.warm_users} --layer-requests {args.layer_requests} "
            f"--limiter-pairs {args.limiter_pairs}"
        )
        record(LIMITER_SECTION, command, body)


# --- main --------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--warm-up-seconds", type=float, default=10)
    parser.add_argument("--warm-users", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers (make run: 2)")
    parser.add_argument("--layer-requests", type=int, default=500, help="in-process layer timings (0: skip)")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument(
        "--placement",
        default=PLACEMENT,
        help="another placement (product_page): each request about a catalog item; implies --no-record",
    )
    parser.add_argument(
        "--limiter-pairs",
        type=int,
        default=0,
        help="instead: this many pairs of runs with the keys' rate limits on and off (BENCHMARKS.md, its own section)",
    )
    parser.add_argument("--no-record", action="store_true", help="print the figures, leave BENCHMARKS.md alone")
    parser.add_argument("--store-dir", type=Path, help="the store's data dir (default .data/bench-e2e)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="a store loaded and trained elsewhere: no generation or training, any event ids; implies --no-record",
    )
    parser.add_argument("--json-out", type=Path, help="also write the figures here (JSON)")
    parser.add_argument("--load-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_worker:
        load_worker()
        return
    if args.store_dir:
        os.environ["PERSONALIZATION_DATA_DIR"] = str(args.store_dir.resolve())
    if args.reuse:
        args.no_record = True
    events_filter = ANY_EVENTS if args.reuse else BENCH_EVENTS
    started = time.perf_counter()
    django_setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from personalization.services import api_key_create

    call_command("migrate", verbosity=0)
    steps = {} if args.reuse else prepare_data(args)
    preparation_seconds = time.perf_counter() - started
    product_page = args.placement != PLACEMENT
    if product_page:
        args.no_record, args.layer_requests = True, 0  # compared by hand; the layer timings are the home shelf's
    configuration = product_page_configure(args.placement) if product_page else placement_configure()
    users = users_choose(args.warm_users, reuse=args.reuse)
    drained = streams_drain()
    per_user_state_reset(users["warm"] + users["warm_up"] + users["cold_log"], args.placement)
    warm_seconds = online_state_warm(users["warm"] + users["warm_up"], events_filter=events_filter)
    vacuumed = log_vacuum()
    warmed = vector_index_warm()
    rewritten = aof_rewrite()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(*) FILTER (WHERE in_stock), count(*) FILTER (WHERE embedding IS NOT NULL) "
            "FROM graph_app_item"
        )
        items, in_stock, embedded = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM graph_app_shopper")
        shoppers = cursor.fetchone()[0]
        cursor.execute(f"SELECT count(*) FROM signals_app_event WHERE {events_filter}")
        events = cursor.fetchone()[0]
    print(
        f"{items:,} items ({in_stock:,} in stock, {embedded:,} with an embedding), {shoppers:,} users, {events:,} "
        f"events; {len(users['warm'])} warm users (+{len(users['warm_up'])} for the warm-up), "
        f"{len(users['cold_log'])} cold users of the log; drained {drained} stream entries; warm events in "
        f"{warm_seconds:.1f} s; HNSW warmed by {warmed}; append-only file {rewritten}; {vacuumed}; "
        f"configuration {configuration}",
        flush=True,
    )
    key = api_key_create(name="e2e recommendations benchmark").raw_key
    connection.close()

    run = f"{int(time.time())}"
    plan = plan_build(users, int(args.rate * args.seconds), run)
    warm_up = plan_build(
        {"warm": users["warm_up"], "cold_log": users["cold_log"][::-1]}, int(args.rate * args.warm_up_seconds),
        run + "w",
    )  # fmt: skip
    if product_page:
        for rows in (plan, warm_up):
            for row, item in zip(rows, context_items_choose(len(rows)), strict=True):
                row.append(item)
    if args.limiter_pairs:
        limiter_compare(args, users, plan, warm_up, started)
        return
    result, cpu_ms = served_run(args, key, plan, warm_up)
    print("load", json.dumps(result, indent=1), flush=True)
    print("CPU ms per request", cpu_ms, flush=True)
    layers = layers_time(users["warm"], args.layer_requests) if args.layer_requests else None
    if layers:
        print("layers", layers, flush=True)
    if args.json_out:
        from benchmarks.common import python_speed
        from personalization.redis_client import get_control_redis

        args.json_out.write_text(
            json.dumps(
                {"store": os.environ["PERSONALIZATION_DATA_DIR"], "placement": args.placement, "items": items,
                 "in_stock": in_stock, "embedded": embedded, "shoppers": shoppers, "events": events, "rate": args.rate,
                 "seconds": args.seconds, "result": result, "cpu_ms": cpu_ms, "layers": layers,
                 "models_serving": sorted(kind.decode() for kind in get_control_redis().hkeys("models:serving")),
                 "at": f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC", "speed": python_speed()},
                indent=1, default=str,
            )
        )  # fmt: skip
    connection.close()
    if product_page:
        print(
            f"{args.placement}: p50 / p99 {result['p50_ms']} / {result['p99_ms']} ms, {result['achieved_rps']} "
            f"requests/s, {result['errors']} errors; slates led by a related item {result['first_from_context']:.1%}; "
            f"of a slate, related items {result['context_share_mean']:.1%}, popular only "
            f"{result['popular_only_share_mean']:.1%}; degraded {result['degraded_requests']:,} requests: "
            f"{result['degraded']}; total wall time {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        servers_stop(args)
        return

    meets = result["p99_ms"] <= 25 and result["errors"] == 0
    kinds = "; ".join(
        f"{kind}: {figures['requests']:,} requests, p50 {figures['p50_ms']} / p99 {figures['p99_ms']} ms"
        for kind, figures in result["by_kind"].items()
    )
    phases = "; ".join(
        f"{phase} over the warm users ({figures['seconds']} s, {figures['requests']:,} requests): p50 "
        f"{figures['p50_ms']} / p99 {figures['p99_ms']} ms"
        if phase == "first pass"
        else f"after it ({figures['seconds']} s, {figures['requests']:,} requests): p50 {figures['p50_ms']} / p99 "
        f"{figures['p99_ms']} ms"
        for phase, figures in result["by_phase"].items()
    )
    degraded = ", ".join(f"`{reason}` {count}" for reason, count in result["degraded"].items()) or "none"
    body = (
        f"Synthetic catalog and log (the generator of `embeddings_refresh.py`): {items:,} items ({in_stock:,} in "
        f"stock), {shoppers:,} users, {events:,} events over 120 days; ALS embeddings, neighbourhoods, popularity, "
        f"a LightGBM lambdarank ranker of {RANKER_TREES} trees, a fresh bandit, VACUUM ANALYZE; HNSW warmed by "
        f"{warmed}. Before the window, the tables the run's preparation wrote were vacuumed ({vacuumed}: "
        f"autovacuum would otherwise do it inside the window). Placement `{PLACEMENT}`: {K} slots, at most 3 items "
        "a category, a boost (x1.5) on two categories, a pin at slot 2, a block list of 10 popular items, at most 3 "
        "impressions of an item a day per "
        f"user (configured through the console's services). {len(users['warm']):,} users of the log got "
        f"{EVENTS_PER_WARM_USER} fresh events each through the real ingest (within the last hour). Valkey's "
        f"append-only file: {rewritten} before the window (a rewrite started by earlier runs' writes would take a "
        "core for seconds inside it).\n\n"
        f"gunicorn as `make run` serves the API ({args.workers} sync workers, `config.gunicorn`, one retrieval "
        f"thread pool of {settings.SCORE_RETRIEVAL_THREADS} per worker), {settings.EVENT_PARTITIONS} event "
        "partition(s); the load generator is a separate process on the same 2 cores as gunicorn, PostgreSQL and "
        f"Valkey. Open loop: GET /api/v1/recommendations?placement={PLACEMENT}&k={K} scheduled at a fixed "
        f"{args.rate:g} requests/s for {args.seconds:g} s ({SENDER_THREADS} sender threads, a new connection per "
        f"request as the sync workers close it), after a {args.warm_up_seconds:g} s warm-up on other users; latency "
        "counts from each request's scheduled time. 9 requests in 10 go to the warm users in turn (each asked for "
        "about every 10 s, so a repeat finds its candidate set cached for 60 s), 1 in 10 to a cold user (half of "
        "them users of the log with no online state, half new).\n\n"
        "| measurement | result |\n|---|---|\n"
        f"| latency p50 / p99 / p99.9 / max | **{result['p50_ms']} / {result['p99_ms']} ms** / {result['p999_ms']} / "
        f"{result['max_ms']} ms |\n"
        f"| latency from the send (without the client's own lateness), p50 / p99 | {result['service_p50_ms']} / "
        f"{result['service_p99_ms']} ms |\n"
        f"| achieved rate, errors (non-200) | {result['achieved_rps']} requests/s, {result['errors']} errors "
        f"({result['requests']:,} requests; {result['sent_late_over_5ms']:,} sent over 5 ms after their time, "
        "every sender thread being busy) |\n"
        f"| by user | {kinds} |\n"
        f"| by phase | {phases} |\n"
        f"| path | {', '.join(f'{path} {count:,}' for path, count in result['paths'].items())} |\n"
        f"| degraded | {result['degraded_requests']:,} requests: {degraded} |\n"
        f"| slates shorter than {K} | {result['short_slates']:,} |\n"
    )
    if all(value is not None for value in cpu_ms.values()):
        total_cpu = sum(value for value in cpu_ms.values() if value is not None)
        body += (
            "| CPU time a request cost (user + system, from /proc) | "
            + ", ".join(f"{name} {value} ms" for name, value in cpu_ms.items())
            + f"; {total_cpu:.1f} ms in all, so {os.cpu_count()} cores saturate near "
            f"{os.cpu_count() * 1000 / total_cpu:.0f} requests/s |\n"
        )
    if layers:
        body += (
            f"| in process, one request at a time ({args.layer_requests} warm users, candidate set rebuilt), p50 / "
            "p99 | "
            + ", ".join(f"{name} {figures['p50']} / {figures['p99']} ms" for name, figures in layers.items())
            + " |\n"
        )
    body += (
        f"\nGoal (issue 6): p99 <= 25 ms at {args.rate:g} requests/s on this catalog: "
        + ("met." if meets else "**not met**.")
        + " In process, state = the request's one Redis round trip (user state, configuration version, caps), "
        "retrieval = the read-ahead and the sources (inline when cached, else in the thread pool), scoring = "
        "features + the compiled LightGBM model or the bandit, surface = "
        "rules, diversity, pins, caps enforced and the impression logged."
    )
    if steps:
        body += (
            f"\n\nData preparation this run: {round(sum(steps.values()))} s ("
            + ", ".join(f"{name} {seconds} s" for name, seconds in steps.items())
            + ")."
        )
    print(body)
    print(f"total wall time {time.perf_counter() - started:.0f} s (preparation {preparation_seconds:.0f} s)")
    if args.no_record:
        print("not recorded (--no-record)")
    else:
        command = "python benchmarks/recommendations_e2e.py" + (
            f" --items {args.items} --users {args.users} --events {args.events} --rate {args.rate:g} "
            f"--seconds {args.seconds:g}"
        )
        record("Surface layer: end-to-end recommendations", command, body)
    servers_stop(args)


def servers_stop(args: argparse.Namespace) -> None:
    if not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")) and not args.reuse:
        from personalization import embedded

        embedded.stop_all(Path(os.environ["PERSONALIZATION_DATA_DIR"]))  # the data stays for the next run


if __name__ == "__main__":
    main()
