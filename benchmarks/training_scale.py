"""Training at a real shop's size: the scheduled training chain, timed task by task, while serving is measured.

Two measurements:

- `--ann ITEMS`: the items' similar lists above SIMILAR_LISTS_EXACT_MAX_ITEMS (`graph_app.similar_lists`, faiss's
  inverted-file index) on ITEMS synthetic 64-dim vectors (vector_recall.py's clustered mixture): build and search
  time, and recall@30 of the approximate lists against exact search on a seeded sample of SAMPLE_ROWS items.
- `--recall N`: on a trained store, serving's "user_vector" query for N sampled shoppers through the items' vector
  index (at IVFFLAT_PROBES) against exact search: recall@10 and latency.
- `--chain`: on a loaded store (PERSONALIZATION_DATA_DIR, e.g. the one `benchmarks/scale_data.py` and the importers
  fill), gunicorn as `make run` starts it and a separate load process asking GET /api/v1/recommendations open-loop
  at --rate for users sampled from the log, first alone (--baseline-seconds), then while `manage.py train` runs
  the scheduled training chain in its own process (what beat runs), then --after-seconds more. Reports each task's
  wall time and peak RSS (from the command's JSON) and the recommendation latency (p50 / p99 from the request's
  scheduled time) before, during each task, and after.

    PERSONALIZATION_DATA_DIR=.data/bench-scale .venv/bin/python benchmarks/training_scale.py --chain --rate 20
    .venv/bin/python benchmarks/training_scale.py --ann 1000000
    PERSONALIZATION_DATA_DIR=.data/bench-scale .venv/bin/python benchmarks/training_scale.py --recall 200

Figures are printed (and kept as JSON next to the store) for BENCHMARKS.md, "Training at 1 M items / 1 M users /
20 M events".
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, django_setup, free_port, machine_description, percentile, wait_for_http

SAMPLE_ROWS = 1000
K = 30
SEED = 19
PLACEMENT = "home"
SENDER_THREADS = 8
LOAD_USERS = 5000


# --- the approximate similar lists ---------------------------------------------------------------------------------


def ann_measure(items: int) -> dict[str, object]:
    os.environ.setdefault("PERSONALIZATION_DATA_DIR", str(ROOT / ".data" / "bench-training-ann"))
    django_setup()
    from django.conf import settings

    from benchmarks.vector_recall import Mixture
    from graph_app.similar_lists import ANN_PROBE_CELLS, similar_lists_compute

    vectors, _, _ = Mixture(np.random.default_rng(SEED)).sample(items)
    vectors = vectors.astype(np.float32)
    sample = np.sort(np.random.default_rng(SEED + 1).choice(items, min(SAMPLE_ROWS, items), replace=False))
    settings.SIMILAR_LISTS_EXACT_MAX_ITEMS = items + 1
    started = time.perf_counter()
    exact, _ = similar_lists_compute(vectors, k=K, rows=sample)
    exact_seconds = time.perf_counter() - started
    settings.SIMILAR_LISTS_EXACT_MAX_ITEMS = 0
    started = time.perf_counter()
    approximate, _ = similar_lists_compute(vectors, k=K)
    ann_seconds = time.perf_counter() - started
    recall = float(np.mean([len(set(approximate[row]) & set(exact[row])) / K for row in sample]))
    return {
        "items": items,
        "k": K,
        "probe_cells": ANN_PROBE_CELLS,
        "approximate_all_items_s": round(ann_seconds, 1),
        "exact_sample_s": round(exact_seconds, 1),
        "exact_all_items_extrapolated_s": round(exact_seconds * items / len(sample), 0),
        "recall_at_30": round(recall, 4),
        "sample_rows": len(sample),
    }


# --- recall of the items' vector index on the trained store ------------------------------------------------


def store_recall(queries: int) -> dict[str, object]:
    """Serving's "user_vector" query (`graph_app.catalog_queries.USER_VECTOR_SQL`: in-stock items nearest a
    shopper's vector, USER_VECTOR_NEIGHBOURS + RECENT_ITEMS_USED rows, the user's recent items left out after)
    through the items' vector index at the connection's settings (IVFFLAT_PROBES, relaxed iterative scan) against
    exact search, for a seeded sample of shoppers with a vector; the recent items are each user's latest distinct
    items in the log, as their online state holds them. Recall@10 of what serving keeps, by id and by distance (an
    item as near as the exact 10th counts: among equally near items either answer is right, as ann-benchmarks
    counts); also without the filters and the exclusion (the bare index)."""
    django_setup()
    from django.conf import settings
    from django.db import connection

    from graph_app.interface import USER_VECTOR_SQL
    from graph_app.item_vector_index import INDEX_NAME
    from scoring_app.engine.retrieval import RECENT_ITEMS_USED, USER_VECTOR_NEIGHBOURS

    bare_sql = (  # similarity, as serving's query returns it
        "SELECT external_id, 1 - (embedding <=> (SELECT embedding FROM graph_app_shopper "
        "WHERE external_id = %(user)s)) FROM graph_app_item WHERE embedding IS NOT NULL "
        "ORDER BY embedding <=> (SELECT embedding FROM graph_app_shopper WHERE external_id = %(user)s) LIMIT 10"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT external_id FROM graph_app_shopper TABLESAMPLE SYSTEM (1) REPEATABLE (%s) "
            "WHERE embedding IS NOT NULL ORDER BY external_id",
            [SEED],
        )
        users = [row[0] for row in cursor.fetchall()]
        users = [users[index] for index in np.random.default_rng(SEED).permutation(len(users))[:queries]]
        cursor.execute(
            "SELECT user_id, array_agg(item_id ORDER BY last DESC) FROM (SELECT user_id, item_id, max(occurred_at) "
            "AS last FROM signals_app_event WHERE user_id = ANY(%s) AND item_id <> '' GROUP BY 1, 2) AS u GROUP BY 1",
            [users],
        )
        recent = {user: items[:RECENT_ITEMS_USED] for user, items in cursor.fetchall()}
        cursor.execute("SELECT count(*) FROM graph_app_item WHERE embedding IS NOT NULL")
        (items,) = cursor.fetchone()
        limit = USER_VECTOR_NEIGHBOURS + RECENT_ITEMS_USED

        def served(user: str) -> list[tuple[str, float]]:
            cursor.execute(USER_VECTOR_SQL, {"user": user, "recent": [], "k": limit})
            left_out = set(recent.get(user, []))
            rows = [row for row in cursor.fetchall() if row[0] not in left_out]
            return sorted(rows, key=lambda row: row[1], reverse=True)[:10]

        def bare(user: str) -> list[tuple[str, float]]:
            cursor.execute(bare_sql, {"user": user})
            return cursor.fetchall()

        found: dict[str, list[list[tuple[str, float]]]] = {"served": [], "bare": []}
        latencies = []
        for user in users:  # warm-up pass, then the measured one
            served(user)
        for user in users:
            started = time.perf_counter()
            found["served"].append(served(user))
            latencies.append((time.perf_counter() - started) * 1000)
            found["bare"].append(bare(user))
        cursor.execute("EXPLAIN " + bare_sql, {"user": users[0]})
        plan = " ".join(row[0] for row in cursor.fetchall())
        cursor.execute("SET enable_indexscan = off")
        recalls: dict[str, list[float]] = {"served": [], "served_by_distance": [], "bare": [], "bare_by_distance": []}
        for position, user in enumerate(users):
            for name, query in (("served", served), ("bare", bare)):
                exact, approximate = query(user), found[name][position]
                ids = {row[0] for row in exact}
                recalls[name].append(len(ids & {row[0] for row in approximate}) / max(1, len(exact)))
                tenth = exact[-1][1] if exact else 0.0
                near = sum(1 for row in approximate if row[1] >= tenth - 1e-6)
                recalls[f"{name}_by_distance"].append(min(near, len(exact)) / max(1, len(exact)))
        cursor.execute("RESET enable_indexscan")
    return {
        "items_with_vector": items,
        "queries": len(users),
        "probes": settings.IVFFLAT_PROBES,
        "uses_index": INDEX_NAME in plan,
        **{f"recall_at_10_{name}": round(float(np.mean(values)), 4) for name, values in recalls.items()},
        "served_p50_ms": round(percentile(latencies, 0.5), 2),
        "served_p99_ms": round(percentile(latencies, 0.99), 2),
    }


def graph_study(queries: int) -> list[dict[str, object]]:
    """Which index reaches recall@10 0.95 for shoppers on this store's trained vectors: the items' and a seeded
    sample of shoppers' vectors read out, then faiss's HNSW (pgvector's graph: m neighbours a node, ef_construction,
    ef_search) and IVFFlat (pgvector's inverted lists: lists, probes) for a few settings against exact cosine
    search. A guide for choosing the index and its settings, not the served figure (`--recall` measures pgvector
    through serving's query)."""
    import faiss

    django_setup()
    from django.db import connection

    def vectors(sql: str, params: list[object]) -> np.ndarray:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = [np.frombuffer(row[0], dtype=">f4", offset=4).astype(np.float32) for row in cursor.fetchall()]
        matrix = np.vstack(rows)
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    items = vectors("SELECT vector_send(embedding) FROM graph_app_item WHERE embedding IS NOT NULL ORDER BY id", [])
    users = vectors(
        "SELECT vector_send(embedding) FROM graph_app_shopper TABLESAMPLE SYSTEM (1) REPEATABLE (%s) "
        "WHERE embedding IS NOT NULL ORDER BY external_id LIMIT %s",
        [SEED, queries],
    )
    exact_index = faiss.IndexFlatIP(items.shape[1])
    exact_index.add(items)
    exact_scores, exact_ids = exact_index.search(users, 10)
    results = []
    for m, ef_construction in ((16, 64), (24, 128), (32, 200)):
        index = faiss.IndexHNSWFlat(items.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        started = time.perf_counter()
        index.add(items)
        build = time.perf_counter() - started
        for ef_search in (40, 150, 400):
            index.hnsw.efSearch = ef_search
            scores, ids = index.search(users, 10)
            recall = np.mean([len(set(ids[row]) & set(exact_ids[row])) / 10 for row in range(len(users))])
            by_distance = np.mean(scores >= exact_scores[:, -1:] - 1e-6)
            results.append({"m": m, "ef_construction": ef_construction, "ef_search": ef_search,
                            "build_s": round(build, 1), "recall_at_10": round(float(recall), 4),
                            "distance_recall_at_10": round(float(by_distance), 4)})  # fmt: skip
            print(json.dumps(results[-1]), flush=True)
    for lists in (1000, 2000):
        dimensions = items.shape[1]
        inverted = faiss.IndexIVFFlat(faiss.IndexFlatIP(dimensions), dimensions, lists, faiss.METRIC_INNER_PRODUCT)
        started = time.perf_counter()
        sample = np.random.default_rng(SEED).choice(len(items), min(len(items), 50 * lists), replace=False)
        inverted.train(items[sample])
        inverted.add(items)
        build = time.perf_counter() - started
        for probes in (20, 40, 60, 80):
            inverted.nprobe = probes
            scores, ids = inverted.search(users, 10)
            recall = np.mean([len(set(ids[row]) & set(exact_ids[row])) / 10 for row in range(len(users))])
            results.append({"lists": lists, "probes": probes, "build_s": round(build, 1),
                            "recall_at_10": round(float(recall), 4)})  # fmt: skip
            print(json.dumps(results[-1]), flush=True)
    return results


# --- the load process (no Django) ----------------------------------------------------------------------------------


def load_worker() -> None:
    """Open loop at spec["rate"] until spec["stop_file"] exists; rows (scheduled unix time, latency ms, status) to
    spec["out"]. A request's latency counts from when it was due, not from when it was sent."""
    spec = json.loads(sys.stdin.read())
    users, rate, stop_file = spec["users"], spec["rate"], Path(spec["stop_file"])
    start = time.time() + 0.5
    rows: list[tuple[float, float, int]] = []
    lock = threading.Lock()

    def sender(offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", spec["port"], timeout=30)
        index = offset
        local = []
        while not stop_file.exists():
            scheduled = start + index / rate
            delay = scheduled - time.time()
            if delay > 0:
                time.sleep(delay)
            status = 0
            try:
                connection.request(
                    "GET", f"/api/v1/recommendations?user_id={users[index % len(users)]}&placement={PLACEMENT}&k=10",
                    headers={"Authorization": f"Bearer {spec['key']}"},
                )  # fmt: skip
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
            local.append((scheduled, (time.time() - scheduled) * 1000, status))
            index += SENDER_THREADS
        with lock:
            rows.extend(local)

    threads = [threading.Thread(target=sender, args=(offset,)) for offset in range(SENDER_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    Path(spec["out"]).write_text(json.dumps(sorted(rows)))


# --- the chain under load ------------------------------------------------------------------------------------------


def _users_sample(count: int) -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT user_id FROM signals_app_event TABLESAMPLE SYSTEM (1) REPEATABLE (%s) "
            "WHERE user_id <> '' ORDER BY user_id",
            [SEED],
        )
        users = [row[0] for row in cursor.fetchall()]
    generator = np.random.default_rng(SEED)
    return [users[index] for index in generator.permutation(len(users))[:count]]


def _figures(latencies: list[float], statuses: list[int]) -> dict[str, object]:
    if not latencies:
        return {"requests": 0}
    return {
        "requests": len(latencies),
        "errors": sum(1 for status in statuses if status != 200),
        "p50_ms": round(percentile(latencies, 0.5), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
    }


def chain_measure(args: argparse.Namespace) -> dict[str, object]:
    django_setup()
    from django.conf import settings

    from personalization.services import api_key_create

    data_dir = Path(settings.DATA_DIR)
    key = api_key_create(name="training scale benchmark", rate_limit_per_second=1_000_000).raw_key
    users = _users_sample(LOAD_USERS)
    env = {**os.environ, "DATABASE_URL": settings.DATABASE_URL, "REDIS_URL": settings.REDIS_URL}
    port = free_port()
    bin_dir = Path(sys.executable).parent
    stop_file = data_dir / "training-scale-stop"
    stop_file.unlink(missing_ok=True)
    rows_file = data_dir / "training-scale-requests.json"
    server_log = (data_dir / "training-scale-gunicorn.log").open("wb")
    server = subprocess.Popen(
        [str(bin_dir / "gunicorn"), "config.wsgi:application", "--config", "python:config.gunicorn",
         "--workers", str(args.workers), "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=server_log,
    )  # fmt: skip
    marks: list[tuple[float, str]] = []
    train_output = ""
    try:
        wait_for_http(port, timeout=180)
        loader = subprocess.Popen(
            [sys.executable, __file__, "--load-worker"], stdin=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert loader.stdin is not None
        loader.stdin.write(json.dumps({"port": port, "key": key, "rate": args.rate, "users": users,
                                       "stop_file": str(stop_file), "out": str(rows_file)}))  # fmt: skip
        loader.stdin.close()
        marks.append((time.time(), "baseline"))
        time.sleep(args.baseline_seconds)
        train_log = (data_dir / "training-scale-train.log").open("w")
        train = subprocess.Popen(
            [str(bin_dir / "python"), "manage.py", "train", *(f"--skip={task}" for task in args.skip)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert train.stderr is not None and train.stdout is not None
        stdout_chunks: list[str] = []
        reader = threading.Thread(target=lambda: stdout_chunks.append(train.stdout.read()))  # type: ignore[union-attr]
        reader.start()
        for line in train.stderr:
            now = time.time()
            train_log.write(f"{now:.1f} {line}")
            train_log.flush()
            started = re.match(r"^(\S+): running", line)
            if started:
                marks.append((now, started.group(1)))
            print(line, end="", file=sys.stderr)
        train.wait()
        reader.join()
        train_output = "".join(stdout_chunks)
        marks.append((time.time(), "after"))
        time.sleep(args.after_seconds)
        marks.append((time.time(), "end"))
        stop_file.touch()
        loader.wait()
    finally:
        stop_file.touch()
        server.terminate()
        server.wait()
    requests = json.loads(rows_file.read_text())
    phases: dict[str, dict[str, object]] = {}
    for (begin, name), (end, _) in itertools.pairwise(marks):
        chosen = [row for row in requests if begin <= row[0] < end]
        phases[name] = {"seconds": round(end - begin, 1), **_figures([r[1] for r in chosen], [r[2] for r in chosen])}
    during = [row for row in requests if marks[1][0] <= row[0] < marks[-2][0]]
    phases["whole training"] = {
        "seconds": round(marks[-2][0] - marks[1][0], 1),
        **_figures([r[1] for r in during], [r[2] for r in during]),
    }
    try:
        tasks = json.loads(train_output)
    except ValueError:
        tasks = {"unparsed": train_output[-2000:]}
    return {"machine": machine_description(), "rate": args.rate, "workers": args.workers, "tasks": tasks,
            "serving": phases}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--load-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ann", type=int, default=0, help="measure the approximate similar lists on this many items")
    parser.add_argument("--chain", action="store_true", help="run the training chain under serving load")
    parser.add_argument("--recall", type=int, default=0, help="recall@10 of serving's vector query, this many shoppers")
    parser.add_argument("--graph-study", type=int, default=0, help="faiss HNSW and IVF settings on the store's vectors")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--skip", action="append", default=[], help="a training task to leave out (manage.py train)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline-seconds", type=float, default=60.0)
    parser.add_argument("--after-seconds", type=float, default=30.0)
    args = parser.parse_args()
    if args.load_worker:
        load_worker()
        return
    if args.ann:
        result = ann_measure(args.ann)
        print(json.dumps({"machine": machine_description(), **result}, indent=2))
    if args.recall:
        print(json.dumps({"machine": machine_description(), **store_recall(args.recall)}, indent=2))
    if args.graph_study:
        print(json.dumps({"machine": machine_description(), "study": graph_study(args.graph_study)}, indent=2))
    if args.chain:
        result = chain_measure(args)
        from django.conf import settings

        (Path(settings.DATA_DIR) / "training-scale.json").write_text(json.dumps(result, indent=2, default=str))
        print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
