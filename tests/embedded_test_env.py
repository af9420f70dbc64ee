"""Loaded with `-p` before Django's settings are imported: the tests get their own embedded servers
(under .data/test) unless DATABASE_URL / REDIS_URL point at real ones, so a running demo is never touched."""

import os
import shutil
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STARTED_EMBEDDED_SERVERS = not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"))
os.environ.setdefault("PERSONALIZATION_DATA_DIR", str(PROJECT_ROOT / ".data" / "test"))
# `make test` runs the suite on two workers (pytest-xdist, which names each in PYTEST_XDIST_WORKER before this
# module loads): each gets servers of its own under its own data folder, so that no test sees another's rows or keys.
# With external servers, pytest-django gives each worker a test database of its own, and here each worker takes
# its own Redis database (the URL's number plus the worker's).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["PERSONALIZATION_DATA_DIR"] += f"-{os.environ['PYTEST_XDIST_WORKER']}"
    if os.environ.get("REDIS_URL"):
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(os.environ["REDIS_URL"])
        database = int(parts.path.strip("/") or 0) + int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw"))
        os.environ["REDIS_URL"] = urlunsplit(parts._replace(path=f"/{database}"))
# TEST_REDIS_CLUSTER=1: the whole run on an embedded Valkey cluster (three masters, a replica each) under the worker's
# data folder, with the worker's single embedded Valkey as Celery's broker and the cache (README, "Development").
TEST_REDIS_CLUSTER = os.environ.get("TEST_REDIS_CLUSTER", "") in {"1", "true", "yes"}
if TEST_REDIS_CLUSTER and not os.environ.get("REDIS_CLUSTER_NODES"):  # a child process keeps its parent's cluster
    from personalization import embedded, embedded_cluster

    data_dir = Path(os.environ["PERSONALIZATION_DATA_DIR"])
    os.environ["REDIS_CLUSTER_NODES"] = ",".join(embedded_cluster.ensure_valkey_cluster(data_dir / "valkey-cluster"))
    os.environ["CELERY_BROKER_URL"] = os.environ.get("REDIS_URL") or embedded.ensure_valkey(data_dir)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Several partitions, so that the tests exercise the Redis Cluster layout (production default: one).
os.environ.setdefault("EVENT_PARTITIONS", "4")
# Tests run inside a transaction that threads' own connections cannot see: retrieval sources run inline here,
# and tests/scoring_app/test_retrieval.py covers the threaded path with committed data.
os.environ.setdefault("SCORE_RETRIEVAL_THREADS", "0")
# The suite shares two cores with its servers (and CI with other work): time budgets are five times looser, so that a
# cold cache is not read as a late Score. Tests of deadlines set their own.
os.environ.setdefault("SCORE_RETRIEVAL_DEADLINE_FACTOR", "5")
# Likewise the hot path's Redis timeout (50 ms in production): on a busy machine a fixture's or a request's Redis
# call may wait for a core longer than that, and the test would read a timeout it is not about. Tests of a Redis
# that does not answer build their own 50 ms client (tests/conftest.py, `dead_redis`).
os.environ.setdefault("REDIS_HOT_PATH_TIMEOUT_SECONDS", "2")
# The suite runs trainings in its own process: a lowered priority would stay with every test after the first one
# (tests/personalization/test_training_compute.py lowers it in a child process).
os.environ.setdefault("TRAINING_NICENESS", "0")


def pytest_unconfigure(config: object) -> None:
    if os.environ.get("KEEP_TEST_SERVERS"):
        return
    from personalization import embedded, embedded_cluster

    data_dir = Path(os.environ["PERSONALIZATION_DATA_DIR"])
    # The cluster tests' (always embedded), formed afresh by the next run: its ports may be taken by then.
    embedded_cluster.stop_valkey_cluster(data_dir / "valkey-cluster")
    shutil.rmtree(data_dir / "valkey-cluster", ignore_errors=True)
    if STARTED_EMBEDDED_SERVERS:
        embedded.stop_all(data_dir)
