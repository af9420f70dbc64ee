"""The one settings module. Every deployment knob is an environment variable with a safe local default;
production (DJANGO_ENV=production) refuses to start without the settings it must not guess."""

from __future__ import annotations

import os
import re
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from personalization import embedded, log_config

BASE_DIR = Path(__file__).resolve().parent.parent
DJANGO_ENV = os.environ.get("DJANGO_ENV", "development")
IS_PRODUCTION = DJANGO_ENV == "production"


def _env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str, default: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, default).split(",") if part.strip()]


def _required_in_production(name: str, local_default: str) -> str:
    value = os.environ.get(name)
    if value:
        return value
    if IS_PRODUCTION:
        raise ImproperlyConfigured(f"{name} must be set when DJANGO_ENV=production")
    return local_default


SECRET_KEY = _required_in_production("DJANGO_SECRET_KEY", "local-development-only-not-secret")


def _debug() -> bool:
    """`DEBUG` is the one name. `DJANGO_DEBUG`, read before, still works with a warning; the two disagreeing is
    refused, since which one wins would be a guess."""
    if "DJANGO_DEBUG" not in os.environ:
        return _env_bool("DEBUG", not IS_PRODUCTION)
    if "DEBUG" in os.environ and _env_bool("DEBUG", False) != _env_bool("DJANGO_DEBUG", False):
        raise ImproperlyConfigured("DEBUG and DJANGO_DEBUG disagree: set DEBUG only (DJANGO_DEBUG is deprecated).")
    warnings.warn("DJANGO_DEBUG is deprecated: set DEBUG instead.", FutureWarning, stacklevel=1)
    return _env_bool("DJANGO_DEBUG", not IS_PRODUCTION)


DEBUG = _debug()
ALLOWED_HOSTS = _env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = _env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "http://localhost:8000,http://127.0.0.1:8000")
# HTTPS: on by default in production (README, "Production settings"); HSTS is opted into with its max-age, since a
# browser that saw it refuses plain HTTP to the host until it expires.
SECURE_SSL_REDIRECT = _env_bool("DJANGO_SECURE_SSL_REDIRECT", IS_PRODUCTION)
# Load balancers probe health over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = _env_bool("DJANGO_SECURE_COOKIES", IS_PRODUCTION)
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = _env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)
# Behind a proxy that terminates TLS and sets X-Forwarded-Proto (only then: a client could send the header itself).
if _env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Embedded servers live here when DATABASE_URL / REDIS_URL are unset (see personalization/embedded.py).
DATA_DIR = embedded.default_data_dir(BASE_DIR)
DATABASE_URL = os.environ.get("DATABASE_URL") or (
    _required_in_production("DATABASE_URL", "") or embedded.ensure_postgres(DATA_DIR)
)
# Redis Cluster mode: "host:port,host:port" of some of its nodes. Platform state (hot path, ingest, control plane,
# event streams) then lives on the cluster; REDIS_URL (by default CELERY_BROKER_URL) names a standalone Redis for
# what cannot run on a cluster (Celery's broker and results: kombu has no Redis Cluster transport; Django's cache).
REDIS_CLUSTER_NODES = _env_list("REDIS_CLUSTER_NODES", "")
if REDIS_CLUSTER_NODES and not os.environ.get("CELERY_BROKER_URL"):
    raise ImproperlyConfigured(
        "REDIS_CLUSTER_NODES is set: CELERY_BROKER_URL must name a standalone Redis (Celery cannot use a cluster)."
    )
if REDIS_CLUSTER_NODES:
    REDIS_URL = os.environ.get("REDIS_URL") or os.environ["CELERY_BROKER_URL"]
else:
    REDIS_URL = os.environ.get("REDIS_URL") or (
        _required_in_production("REDIS_URL", "") or embedded.ensure_valkey(DATA_DIR)
    )
# Before every Redis key of the platform, its cache, its WebSocket layer and Celery's broker (empty: none), so that
# deployments or test runs sharing one Redis keep to their own keys. Letters, digits and ".:_-" only: a brace would
# change the keys' Cluster slots, a glob character the key scans.
REDIS_KEY_PREFIX = os.environ.get("REDIS_KEY_PREFIX", "")
if not re.fullmatch(r"[A-Za-z0-9.:_-]*", REDIS_KEY_PREFIX):
    raise ImproperlyConfigured(f"REDIS_KEY_PREFIX may hold letters, digits and .:_- only, not {REDIS_KEY_PREFIX!r}.")
# The hot path's Redis socket and connect timeouts (personalization/redis_client.py): a Redis that does not answer
# becomes a degraded answer within the 100 ms contract. Only the test suite loosens it (tests/embedded_test_env.py).
REDIS_HOT_PATH_TIMEOUT_SECONDS = float(os.environ.get("REDIS_HOT_PATH_TIMEOUT_SECONDS", "0.05"))
# Event ingest's Redis socket timeout (personalization/redis_client.py): the hot path's 50 ms cut batches short on a
# loaded machine (BENCHMARKS.md, "Signal layer: ingest under CPU load").
REDIS_INGEST_SOCKET_TIMEOUT_SECONDS = float(os.environ.get("REDIS_INGEST_SOCKET_TIMEOUT_SECONDS", "2.0"))
# Redis Cluster mode: an ingest waits (WAIT, in its own pipeline) until this many replicas of each master it wrote
# to have its events, up to REDIS_INGEST_WAIT_TIMEOUT_MS, so that a master killed right after the 202 loses none of
# them (replication is asynchronous). Short of it the events are acknowledged all the same, and counted
# (signals_ingest_replicas_short_total). 0: no wait. Single-node mode never waits.
REDIS_INGEST_REPLICAS_WAIT = int(os.environ.get("REDIS_INGEST_REPLICAS_WAIT", "1" if REDIS_CLUSTER_NODES else "0"))
REDIS_INGEST_WAIT_TIMEOUT_MS = int(os.environ.get("REDIS_INGEST_WAIT_TIMEOUT_MS", "200"))
# Read replicas: reads from the control plane may go there; the hot path reads Redis and the primary.
DATABASE_REPLICA_URLS = _env_list("DATABASE_REPLICA_URLS", "")
# personalization/db_router.py: reads inside lag_tolerant_reads() go to a replica whose probe (cached per process this
# long) connects within the timeout and finds it caught up or behind by less than the maximum lag.
DATABASE_REPLICA_MAX_LAG_SECONDS = float(os.environ.get("DATABASE_REPLICA_MAX_LAG_SECONDS", "30"))
DATABASE_REPLICA_HEALTH_CACHE_SECONDS = float(os.environ.get("DATABASE_REPLICA_HEALTH_CACHE_SECONDS", "5"))
# A stopped replica must fail fast, so that its reads fall back to the primary within a request's deadline (libpq
# counts whole seconds).
DATABASE_REPLICA_CONNECT_TIMEOUT_SECONDS = int(os.environ.get("DATABASE_REPLICA_CONNECT_TIMEOUT_SECONDS", "2"))

INSTALLED_APPS = [
    # The admin with the console's site (its index lists the sections in the order merchandisers use them).
    "rules_admin.site.ConsoleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "simple_history",
    "import_export",
    "axes",
    "channels",
    "personalization",
    "graph_app",
    "signals_app",
    "scoring_app",
    "surface_app",
    "rules_admin",
    # Above every layer: what drives several of them at once (first run, demo data, erasure, evaluation).
    "operations",
]

MIDDLEWARE = [
    # Binds the request id to every log line of the request and returns it in X-Request-ID.
    "personalization.middleware.RequestIdMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # A Content-Security-Policy on the console's and the demo's pages (scripts by nonce).
    "personalization.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # gzip request bodies to the API are inflated (with a cap) before anything reads them.
    "personalization.request_encoding.RequestBodyDecodingMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Console changes record who made them (django-simple-history's `changed by`).
    "simple_history.middleware.HistoryRequestMiddleware",
    # Repeated failed logins are throttled (django-axes); it must be the last middleware.
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

# The largest request body the API inflates from gzip (Segment's and RudderStack's libraries compress); past it,
# 413. Each endpoint's own limit then applies to the inflated body.
API_INFLATED_BODY_MAX_BYTES = int(os.environ.get("API_INFLATED_BODY_MAX_BYTES", str(8 * 1024 * 1024)))

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


# pgvector: how many of the items' vector index's lists a search reads (`graph_app.item_vector_index`: about twice
# the square root of the catalog's size, 2,000 at a million items). 60 of 2,000 found recall@10 0.95 for shoppers'
# vectors at a million items, p50 7-9 ms; a smaller catalog reads a larger share of its lists, all of them up to 900
# items. Filtered searches (in stock, not the user's recent items) keep reading lists until they have enough rows
# (iterative scans).
IVFFLAT_PROBES = int(os.environ.get("IVFFLAT_PROBES", "60"))
_PGVECTOR_OPTIONS = f"-c ivfflat.probes={IVFFLAT_PROBES} -c ivfflat.iterative_scan=relaxed_order"


def _database_from_url(url: str) -> dict[str, Any]:
    """dj-database-url's reading of the URL (percent-decoded user and password; query parameters such as sslmode,
    sslrootcert or connect_timeout passed to libpq), with the project's connection settings added."""
    config: dict[str, Any] = dict(
        dj_database_url.parse(
            url,
            engine="django_prometheus.db.backends.postgresql",
            conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
            conn_health_checks=True,
        )
    )
    options = dict(config.get("OPTIONS") or {})
    # The embedded server listens on a Unix socket given as ?host=/path: that is the connection's host.
    config["HOST"] = options.pop("host", None) or config["HOST"]
    config["NAME"] = config["NAME"] or "postgres"
    options.setdefault("connect_timeout", 3)
    options["options"] = f"{options['options']} {_PGVECTOR_OPTIONS}" if options.get("options") else _PGVECTOR_OPTIONS
    config["OPTIONS"] = options
    return config


DATABASES = {"default": _database_from_url(DATABASE_URL)}
for _index, _replica_url in enumerate(DATABASE_REPLICA_URLS):
    DATABASES[f"replica_{_index}"] = _database_from_url(_replica_url)
    DATABASES[f"replica_{_index}"]["OPTIONS"]["connect_timeout"] = DATABASE_REPLICA_CONNECT_TIMEOUT_SECONDS
DATABASE_ROUTERS = ["personalization.db_router.ReplicaRouter"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out username and address before the password is even checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Failed logins (django-axes, stored in PostgreSQL, listed in the admin under Axes): after AXES_FAILURE_LIMIT
# failures for one username from one address, that pair is locked out for AXES_COOLOFF_MINUTES.
AXES_FAILURE_LIMIT = int(os.environ.get("AXES_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=float(os.environ.get("AXES_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_ENABLED = _env_bool("AXES_ENABLED", True)

# CSV import / export in the console (django-import-export): the uploaded file waits for confirmation in the
# cache (Redis), so any web process can finish the import; importing needs the change permission.
IMPORT_EXPORT_TMP_STORAGE_CLASS = "import_export.tmp_storages.CacheStorage"
IMPORT_EXPORT_IMPORT_PERMISSION_CODE = "change"
IMPORT_EXPORT_EXPORT_PERMISSION_CODE = "view"
IMPORT_EXPORT_USE_TRANSACTIONS = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve admin assets straight from the apps without collectstatic in development.
WHITENOISE_USE_FINDERS = not IS_PRODUCTION

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"{REDIS_KEY_PREFIX}cache",
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "personalization.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["personalization.authentication.ScopedAccess"],
    "DEFAULT_THROTTLE_CLASSES": ["personalization.authentication.ApiKeyRateLimit"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["personalization.parsers.BoundedJSONParser"],
    "EXCEPTION_HANDLER": "personalization.exception_handler.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "personalization.schema.JsonBodyAutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Personalization platform API",
    "DESCRIPTION": (
        "Storefront API: catalog upserts, event ingest and personalized recommendations. Every call needs an API key "
        "(`Authorization: Bearer <key>`; **Authorize** above, then *Try it out*); this page and the schema are public. "
        "Placements configured on a new platform: `home` (a shopper's shelf), `product_page` (items like the "
        "`item_id` shown) and `cart` (cross-sell for the cart's items: `item_id` comma-separated); the console adds "
        "others."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and the docs are public (what the API offers is no secret); every call they describe needs a key.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # The interactive docs are served from the project itself, no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Generated clients: a request body gets its own component (no read-only fields, defaults not required), and
    # every operation declares the error responses it can answer (personalization.schema).
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "personalization.schema.error_responses_declare",
    ],
}

# The WebSocket layer's Redis servers (comma list of redis:// URLs). Each group lives on one of them (channels_redis
# hashes it); on a cluster, PUBLISH reaches the subscribers of every node, so each node may serve as a host.
CHANNEL_LAYER_HOSTS = _env_list(
    "CHANNEL_LAYER_HOSTS", ",".join(f"redis://{node}" for node in REDIS_CLUSTER_NODES) or REDIS_URL
)
CHANNEL_LAYERS = {
    "default": {
        # Pub/sub: a group send is one PUBLISH, fanned out by Redis to the WebSocket processes that subscribed.
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": CHANNEL_LAYER_HOSTS, "prefix": f"{REDIS_KEY_PREFIX}channels"},
    }
}

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": REDIS_KEY_PREFIX} if REDIS_KEY_PREFIX else {}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = CELERY_BROKER_TRANSPORT_OPTIONS
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_RESULT_EXPIRES = 3600
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# The event log's consumers get their own queue (and worker), so a long training run never delays them.
CELERY_TASK_ROUTES = {"signals.events_drain": {"queue": "events"}}
CELERY_TASK_ALWAYS_EAGER = _env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# Workers log through LOGGING (the same lines, with the task id), not Celery's own format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# Verified API keys are remembered in each process this long: a revocation elsewhere takes effect within it.
API_KEY_CACHE_SECONDS = float(os.environ.get("API_KEY_CACHE_SECONDS", "10"))
# An unknown key is remembered as unknown this long in each process, so that repeating it costs no database query.
API_KEY_NEGATIVE_CACHE_SECONDS = float(os.environ.get("API_KEY_NEGATIVE_CACHE_SECONDS", "60"))
# Requests a second a key may make (a token bucket in Redis holding as many: a second's burst), by scope, unless the
# key sets its own in the admin. A public key is shared by every browser of a shop, and the first to be abused.
API_RATE_LIMIT_DEFAULTS = {
    "public": int(os.environ.get("API_RATE_LIMIT_PUBLIC", "100")),
    "server": int(os.environ.get("API_RATE_LIMIT_SERVER", "1000")),
    "admin": int(os.environ.get("API_RATE_LIMIT_ADMIN", "1000")),
}
# 0 turns the keys' request limits off (benchmarks compare the two); wrong keys are limited either way.
API_RATE_LIMITS_ENABLED = _env_bool("API_RATE_LIMITS_ENABLED", True)
# A client address may present this many wrong keys in this many seconds (a token bucket again); then 429.
API_AUTH_FAILURES_MAX = int(os.environ.get("API_AUTH_FAILURES_MAX", "20"))
API_AUTH_FAILURES_WINDOW_SECONDS = int(os.environ.get("API_AUTH_FAILURES_WINDOW_SECONDS", "60"))
# Reverse proxies in front of the API that append to X-Forwarded-For: the client address is the one the outermost
# of them saw. 0: REMOTE_ADDR (no proxy, or one that rewrites REMOTE_ADDR), since the header is the client's to forge.
API_TRUSTED_PROXY_COUNT = int(os.environ.get("API_TRUSTED_PROXY_COUNT", "0"))
# Shopper tokens (X-Shopper-Token) are the hex HMAC-SHA256 of the shopper's id with this secret, which the
# storefront's back end shares; unset, no key can require them.
SHOPPER_TOKEN_SECRET = os.environ.get("SHOPPER_TOKEN_SECRET", "")
# A stream entry pending this long belongs to a consumer presumed dead and is reclaimed by another.
EVENT_RECLAIM_IDLE_MS = int(os.environ.get("EVENT_RECLAIM_IDLE_MS", "60000"))
# Online state and event streams are split into this many partitions (by user); see personalization/redis_keys.py.
# Every recommendation reads the item counters of every partition: one suits a single Redis node, and a Redis Cluster
# one a master (3 on three masters; personalization.redis_keys.cluster_partition_tag places partition p on master
# p mod 3). 12 cost 50 % more web CPU and twice the Valkey CPU a recommendation (BENCHMARKS.md, "Issue 23:
# throughput"). Fixed once data exists: keys and stream entries stay in the partition they were written to.
EVENT_PARTITIONS = int(os.environ.get("EVENT_PARTITIONS", "3" if REDIS_CLUSTER_NODES else "1"))

# A served slate stays in Redis this long for the attribution of the clicks and purchases that carry its request id
# (about 1.1 KB a slate of 10: at 200 requests/s an hour holds 0.8 GB, a week would hold 130 GB). Later ones are
# attributed from the impression log in PostgreSQL, within SIGNALS_ATTRIBUTION_WINDOW_SECONDS of the slate's serving.
SURFACE_SLATE_KEEP_SECONDS = int(os.environ.get("SURFACE_SLATE_KEEP_SECONDS", "3600"))
# The impression log in PostgreSQL (about ten rows a served slate, 0.45 KB each with its indexes) keeps its daily
# partitions this many days (0: forever); KPIs, training rows and attribution read at most the last 30.
IMPRESSION_LOG_RETENTION_DAYS = int(os.environ.get("IMPRESSION_LOG_RETENTION_DAYS", "90"))
SIGNALS_ATTRIBUTION_WINDOW_SECONDS = int(os.environ.get("SIGNALS_ATTRIBUTION_WINDOW_SECONDS", str(7 * 24 * 3600)))
# Each user's purchased set (items placements may leave out) keeps their latest purchases, this many (serving reads
# the whole set with the user's state).
SIGNALS_PURCHASED_ITEMS_KEPT = int(os.environ.get("SIGNALS_PURCHASED_ITEMS_KEPT", "1000"))
# Each user's affinity hash keeps this many entities (categories, brands, tags...), the strongest by decayed counter
# (`graph_app.features.user_affinity`): a heavy user's hash stays small and, with its two meta fields, within Redis
# 7's hash-max-listpack-entries (128), the compact encoding.
SIGNALS_AFFINITY_ENTITIES_KEPT = int(os.environ.get("SIGNALS_AFFINITY_ENTITIES_KEPT", "100"))

# Retrieval sources that query PostgreSQL run in this many threads per process, each against its own deadline
# (0 runs them one after another in the request's thread, checking deadlines after the fact).
SCORE_RETRIEVAL_THREADS = int(os.environ.get("SCORE_RETRIEVAL_THREADS", "6"))
# Multiplies every time budget of serving, the retrieval sources' deadlines and the placements' (e.g. 2 on a slow or
# busy machine; the budgets themselves are in code and in the placements).
SCORE_RETRIEVAL_DEADLINE_FACTOR = float(os.environ.get("SCORE_RETRIEVAL_DEADLINE_FACTOR", "1"))
# Candidates handed from retrieval to ranking per request (50-500): features and the ranker cost grow with it.
SCORE_CANDIDATES = int(os.environ.get("SCORE_CANDIDATES", "300"))
# How long a serving process reuses the popular items it read (0: every request reads them).
SCORE_POPULAR_SHARED_SECONDS = float(os.environ.get("SCORE_POPULAR_SHARED_SECONDS", "1"))
# Each serving process keeps the catalog facts (static facts, embedding, entities) of at most this many items, read
# at start-up and as requests need them, until the catalog's version in Redis changes; 0 reads them from Redis for
# every request.
FEATURE_CATALOG_CACHE_ITEMS = int(os.environ.get("FEATURE_CATALOG_CACHE_ITEMS", "200000"))
# After each embeddings training, the items nearest each user's vector are computed in batch for at most this many
# users (those with the most interactions first; about 4 KB of Redis each); retrieval queries pgvector for the
# others. 0 turns the lists off.
USER_NEAREST_LISTS_MAX_USERS = int(os.environ.get("USER_NEAREST_LISTS_MAX_USERS", "100000"))
# The item-to-item model (graph_app.item_model, EASE) beside the embeddings covers at most this many items, those
# most users interacted with: its dense items x items inverse takes 3 x 4 bytes x items² of memory while it trains
# (5,000 items: 300 MB, about 17 s on one core) and its time grows with the cube. Its lists go to the same users as the
# nearest lists (about 3 KB of Redis each). 0 turns it off.
ITEM_MODEL_MAX_ITEMS = int(os.environ.get("ITEM_MODEL_MAX_ITEMS", "5000"))
# The items' similar lists are exact up to this many items with a vector, approximate above (graph_app.similar_lists:
# exact top-k grows with the square of the catalog, about 20 minutes of a core at a million items).
SIMILAR_LISTS_EXACT_MAX_ITEMS = int(os.environ.get("SIMILAR_LISTS_EXACT_MAX_ITEMS", "200000"))
# A serving process collects its young objects after this many more allocations than deallocations (Python's
# default is 700: a request allocates thousands of short-lived candidates, so it collected on most requests).
SERVING_GC_THRESHOLD = int(os.environ.get("SERVING_GC_THRESHOLD", "5000"))
# One feature read in this many per process observes the features' ages (feature_age_seconds); 1 observes every one.
FEATURE_AGE_SAMPLE_EVERY = int(os.environ.get("FEATURE_AGE_SAMPLE_EVERY", "10"))
# Serving compiles LightGBM rankers to machine code (lleaves) when it loads them; 0 scores with LightGBM itself.
SCORE_RANKER_COMPILE = _env_bool("SCORE_RANKER_COMPILE", True)
# Below this ranking confidence (share of top items the ranker knew the user for) the bandit explores a slot or two.
SCORE_MIN_RANKER_CONFIDENCE = float(os.environ.get("SCORE_MIN_RANKER_CONFIDENCE", "0.3"))
# The bandit chooses at most this many slots (the last ones shown, never the first three) of a ranked slate: a new
# item's slot, and below SCORE_MIN_RANKER_CONFIDENCE its picks among the ranker's next-best candidates (0: none;
# at most 2). The whole slate is the bandit's only for users with no history when no ranker serves.
SCORE_EXPLORATION_SLOTS = int(os.environ.get("SCORE_EXPLORATION_SLOTS", "1"))
# The bandit's picks for a user in a placement are drawn with the same random numbers for this long (each user's
# window starts at an offset of their own), so that repeated requests do not reshuffle the shelf (0: every request).
SCORE_EXPLORATION_RESEED_SECONDS = int(os.environ.get("SCORE_EXPLORATION_RESEED_SECONDS", "3600"))
# Ranker exploration, so that a candidate ranker can be evaluated off-policy from the log
# (scoring_app/engine/ranking_exploration.py): this share of ranker slates is drawn (Plackett-Luce over the pool's
# standardized scores at this temperature) instead of being the deterministic top k, from the POOL best candidates
# (at least k), and every slot logs its item's probability at that slot; 0 turns it off (every propensity 1). The
# defaults are the off-policy simulator's cheapest setting that meets issue 22's goal (self-normalized IPS and DR
# within 5 % at 50,000 logged impressions): it costs about 5 % of the serving ranker's clicks there. Less share or
# a lower temperature costs less and needs a longer log for the same error (share 0.3: 3 %, about 3 times the
# log); a larger pool lets a candidate bring in more of the retrieved items and costs more (BENCHMARKS.md,
# "Issue 22: off-policy evaluation").
SCORE_RANKER_EXPLORATION_SHARE = float(os.environ.get("SCORE_RANKER_EXPLORATION_SHARE", "0.5"))
SCORE_RANKER_EXPLORATION_TEMPERATURE = float(os.environ.get("SCORE_RANKER_EXPLORATION_TEMPERATURE", "1.5"))
SCORE_RANKER_EXPLORATION_POOL = int(os.environ.get("SCORE_RANKER_EXPLORATION_POOL", "12"))
# The share of ranker slates whose pool (items, feature rows, scores: about 3 KB in the stream and 1.8 KB a row in
# PostgreSQL at 12 items, where a 10-slot slate's impressions take 1.2 KB) is logged for off-policy evaluation
# (graph_app_rankerslate); every ranker slot logs its propensity regardless. 1 logs them all; lower it when the
# log's size matters more than the evaluation's precision (the intervals widen as 1 / sqrt(share)).
SCORE_RANKER_POOL_LOG_SHARE = float(os.environ.get("SCORE_RANKER_POOL_LOG_SHARE", "1.0"))
# A placement whose logged ranker slates gate the training's automatic promotion of a new ranker: it is not promoted
# when off-policy evaluation finds it significantly worse than the serving policy there (scoring_app/
# policy_evaluation.py `ranker_off_policy_gate`). Empty (the default): no such gate.
SCORE_RANKER_OPE_GATE_PLACEMENT = os.environ.get("SCORE_RANKER_OPE_GATE_PLACEMENT", "")

# Scheduled training tunes itself: each embeddings and ranker training holds out the latest slice of each user's
# history and searches its settings on it within this many seconds each (0 or TRAINING_SEARCH=0: the default
# settings only, still gated). TRAINING_SEED fixes every sample and split, so a training is reproducible.
TRAINING_SEARCH = _env_bool("TRAINING_SEARCH", True)
TRAINING_SEARCH_SECONDS = float(os.environ.get("TRAINING_SEARCH_SECONDS", "300"))
TRAINING_SEED = int(os.environ.get("TRAINING_SEED", "42"))
# A training's numeric work uses this many threads (0: every core), at this CPU niceness (0-19; serving runs at 0
# and is scheduled first): `personalization.training_compute`.
TRAINING_THREADS = int(os.environ.get("TRAINING_THREADS", "0"))
TRAINING_NICENESS = int(os.environ.get("TRAINING_NICENESS", "10"))

# The embedding size of every vector column; changing it needs a migration and a retrain.
EMBEDDING_DIMENSIONS = 64
# Public address of the WebSocket server, shown to the demo page (served by a separate ASGI process).
WEBSOCKET_PUBLIC_URL = os.environ.get("WEBSOCKET_PUBLIC_URL", "ws://127.0.0.1:8001")

# Logs: one JSON object a line (LOG_FORMAT=json, the default without DEBUG) or readable key=value lines (console:
# development and `make run`); a request's lines carry its request id, a Celery task's its task id.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "console" if DEBUG else "json")
if LOG_FORMAT not in {"json", "console"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or console, not {LOG_FORMAT!r}")
LOGGING = log_config.logging_settings(
    log_format=LOG_FORMAT,
    level=os.environ.get("LOG_LEVEL", "INFO"),
    # Beat sends these every second or minute: Celery's lines about them are at DEBUG, and each task logs at INFO
    # itself when it did something (moved events, learned from rewards).
    routine_tasks=["signals.events_drain", "scoring.models_serving_publish", "scoring.bandit_learn"],
)
