"""Every Redis key the platform writes, in one place.

Online state is split into partitions by user: every key an event touches carries the `{pN}` hash tag of its
user's partition, so one Lua script can update them all atomically and, on a Redis Cluster, each partition's
keys live in one slot (partitions spread over the nodes). The partition count is EVENT_PARTITIONS.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import zlib

from django.conf import settings
from redis.crc import key_slot

# Before every key (REDIS_KEY_PREFIX, empty by default): deployments, or a test run, that share one Redis keep out
# of each other's keys. Outside the hash tags, so it moves no key to another Cluster slot.
PREFIX: str = settings.REDIS_KEY_PREFIX


def partition_of(user_key: str) -> int:
    return zlib.crc32(user_key.encode()) % settings.EVENT_PARTITIONS


def partitions() -> range:
    return range(settings.EVENT_PARTITIONS)


def _tag(partition: int) -> str:
    if settings.REDIS_CLUSTER_NODES:
        return cluster_partition_tag(partition)
    return f"{{p{partition}}}"


CLUSTER_SLOTS = 16384
# Partitions go round the masters of a cluster formed with equal slot ranges (personalization.embedded_cluster,
# redis-cli --cluster create): partition p on the (p mod 3)-th third of the slots.
CLUSTER_PARTITION_SPREAD = 3


@functools.cache
def cluster_partition_tag(partition: int) -> str:
    """The hash tag of a partition on a Redis Cluster: `{pN}`, or `{pN.k}` with the smallest k that puts it in its
    share of the slots, so that the partitions (and their streams and state) spread evenly over the masters;
    `{pN}` alone lands unevenly (12 partitions: 3, 3 and 6 on three masters)."""
    third = partition % CLUSTER_PARTITION_SPREAD
    low = third * CLUSTER_SLOTS // CLUSTER_PARTITION_SPREAD
    high = (third + 1) * CLUSTER_SLOTS // CLUSTER_PARTITION_SPREAD
    for salt in itertools.chain([""], (f".{k}" for k in itertools.count())):
        name = f"p{partition}{salt}"
        if low <= key_slot(name.encode()) < high:
            return f"{{{name}}}"
    raise AssertionError("unreachable")


# Per partition.
def event_stream(partition: int) -> str:
    return f"{PREFIX}events:{_tag(partition)}"


def dead_letter_stream(partition: int) -> str:
    return f"{PREFIX}events:{_tag(partition)}:dead"


def event_tries(partition: int) -> str:
    """The event-log consumer's tries of each pending entry of the partition's stream (entry id -> tries)."""
    return f"{PREFIX}events:{_tag(partition)}:tries"


def event_seen(partition: int, level: str, shard: int) -> str:
    """One set of the 64-bit hashes of the event ids the partition's online state applied (`graph_app.state.dedupe`):
    level "<day>.<level>" of the generations by arrival day, shard chosen by bits of the id's digest."""
    return f"{event_seen_prefix(partition, level)}{shard}"


def event_seen_prefix(partition: int, level: str) -> str:
    return f"{PREFIX}seen:{_tag(partition)}:{level}:"


def event_seen_layout(partition: int) -> str:
    """The partition's dedupe generations: "b:<day>" -> shard bits of each level, "n:<day>" -> ids added."""
    return f"{PREFIX}seen:{_tag(partition)}:layout"


def item_trend(partition: int, window: str) -> str:
    return f"{PREFIX}items:{_tag(partition)}:trend:{window}"


def item_trend_epochs(partition: int) -> str:
    return f"{PREFIX}items:{_tag(partition)}:trend-epochs"


def item_counters(partition: int) -> str:
    """item id -> packed doubles: its popularity windows (decayed to its latest weighted event), then that event's
    time. What the feature store reads for 500 candidates in one HMGET (`graph_app.features.online`)."""
    return f"{PREFIX}items:{_tag(partition)}:counters"


def placement_counters(partition: int, placement: str) -> str:
    """item id -> packed doubles: attributed clicks and served impressions in the placement (decayed to the time of
    the latest of them), then that time: the click-through-rate feature."""
    return f"{PREFIX}ctr:{_tag(partition)}:{placement}"


def catalog_entities(partition: int) -> str:
    """item id -> "kind:id|kind:id" of its knowledge-graph entities (a copy per partition, for the ingest script)."""
    return f"{PREFIX}catalog:{_tag(partition)}:entities"


def session_alias(session_id: str) -> str:
    user_key = f"session:{session_id}"
    return f"{PREFIX}alias:{_tag(partition_of(user_key))}:{session_id}"


# Per user (in the user's partition).
def user_recent_items(user_key: str) -> str:
    """The user's latest items of interest, newest first (RECENT_ITEMS_KEPT of them)."""
    return f"{PREFIX}user:{_tag(partition_of(user_key))}:{user_key}:recent"


def user_recent_last(user_key: str) -> str:
    """Time of the user's latest item of interest (their recent items start afresh after a long gap)."""
    return f"{PREFIX}user:{_tag(partition_of(user_key))}:{user_key}:recent-last"


def user_session_items(user_key: str, session_id: str) -> str:
    return f"{PREFIX}user:{_tag(partition_of(user_key))}:{user_key}:session:{session_id}"


def user_traits(user_key: str) -> str:
    """The user's traits (JSON), for rule audiences."""
    return f"{PREFIX}user:{_tag(partition_of(user_key))}:{user_key}:traits"


def user_last_slate(user_key: str, placement: str) -> str:
    """The item ids of the last slate served to the user in a placement (a fallback of last resort)."""
    return f"{PREFIX}user:{_tag(partition_of(user_key))}:{user_key}:last:{placement}"


def user_affinity(user_key: str) -> str:
    """The user's decayed counter of each entity: one field an entity, packed doubles (the layout and its one
    decoder: `graph_app.features.user_affinity`)."""
    return f"{PREFIX}user:{_tag(partition_of(user_key))}:{user_key}:affinity"


def user_cap_counts(user_key: str) -> str:
    """Frequency caps: hash of what the user was shown (item, category, entity, campaign, slates of a placement)
    -> the times of its recent impressions."""
    return f"{PREFIX}user:{_tag(partition_of(user_key))}:{user_key}:caps"


def user_cap_touched(user_key: str) -> str:
    """Frequency caps: sorted set of the fields of `user_cap_counts` by last write (to drop the stale ones)."""
    return f"{PREFIX}user:{_tag(partition_of(user_key))}:{user_key}:caps-touched"


def user_cap_blocks(user_key: str) -> str:
    """Frequency caps: hash "<cap signature>\x1f<what>" -> until when that cap refuses it (read on the hot path)."""
    return f"{PREFIX}user:{_tag(partition_of(user_key))}:{user_key}:caps-blocked"


def user_purchased(user_key: str) -> str:
    """Items the user bought (sorted set, by time): placements may leave them out."""
    return f"{PREFIX}user:{_tag(partition_of(user_key))}:{user_key}:purchased"


def user_cooldown(user_key: str) -> str:
    """Sorted set item id -> time of the user's latest hide or skip of it: cool-downs."""
    return f"{PREFIX}user:{_tag(partition_of(user_key))}:{user_key}:cooldown"


def user_assignment_unit(user_key: str) -> str:
    """The unit experiments assign the shopper by (`graph_app.state.assignment_unit`): set when a slate is served in
    an experiment, and inherited from the session when the session is identified, so the variant holds."""
    return f"{PREFIX}user:{_tag(partition_of(user_key))}:{user_key}:assignment-unit"


def erased_shopper(user_key: str) -> str:
    """The tombstone of an erased shopper (`signals_app.erasure`): the last stream entry of its partition at the
    erasure, so that the event-log consumer drops the shopper's entries up to it. Named by a digest of the user key,
    so that nothing in Redis names the shopper any more."""
    digest = hashlib.sha256(user_key.encode()).hexdigest()
    return f"{PREFIX}erased:{_tag(partition_of(user_key))}:{digest}"


# Not partitioned: read with one command each, written by the control plane.
CATALOG_STATIC = f"{PREFIX}catalog:static"  # item id -> packed (price, in stock, created at)
CATALOG_VECTORS = f"{PREFIX}catalog:vectors"  # item id -> float32 embedding bytes
# entity code -> entity key: the names of the users' affinity fields (`graph_app.features.user_affinity`).
CATALOG_ENTITY_NAMES = f"{PREFIX}catalog:entity-names"
# Bumped after every write of the catalog copies (static facts, embeddings, entity keys): serving processes keep
# the facts they read in memory until it changes (`graph_app.features.online`).
CATALOG_VERSION = f"{PREFIX}catalog:version"
# The latest versions, oldest first, each with the items whose facts it changed: "<version>\x1e<id>\x1f<id>..."
# ("*": any item). A serving process that sees a new version drops only those items' facts.
CATALOG_CHANGES = f"{PREFIX}catalog:changes"
# item id -> orjson [[neighbour id, cosine], ...], nearest first (graph_app.similar_lists); each build writes a
# `staging` key of its own and swaps it in.
ITEM_SIMILAR_LISTS = f"{PREFIX}similar:{{catalog}}"


# Per partition: user id -> orjson [[item id, cosine], ...], the items nearest the user's vector, nearest first
# (graph_app.user_lists); each build writes `staging` keys of its own and swaps them in, partition by partition.
def user_nearest_lists(partition: int) -> str:
    return f"{PREFIX}nearest:{_tag(partition)}"


# Per partition: user id -> orjson [[item id, score], ...], the user's best items by the item-to-item model
# (graph_app.item_model), built and swapped in as the nearest lists are.
def user_item_model_lists(partition: int) -> str:
    return f"{PREFIX}item_model:{_tag(partition)}"


def staging(key: str, run: str) -> str:
    """Where build `run` writes the next value of `key` before swapping it in: the same hash tag, so the same Cluster
    slot (a RENAME needs both keys in one)."""
    return f"{key}:staging:{run}"


def slate(request_id: str) -> str:
    return f"{PREFIX}slate:{{{request_id}}}"


def active_model(kind: str) -> str:
    return f"{PREFIX}model:active:{kind}"


# The Surface configuration's version (placements, rules, caps; catalog changes too): serving rebuilds its rules
# snapshot when it changes.
SURFACE_CONFIG_VERSION = f"{PREFIX}surface:config-version"

# Model registry snapshot for serving processes: kind -> {"active", "canary", "canary_percent"} (JSON).
MODELS_SERVING = f"{PREFIX}models:serving"


CUSTOM_EVENT_TYPES = f"{PREFIX}event-types:custom"


# Per item (graph layer): the item's one-hop neighbourhood, and the set of items that have one.
def item_neighbours(item_id: str) -> str:
    return f"{PREFIX}neighbours:{{{item_id}}}"


ITEM_NEIGHBOURS_INDEX = f"{PREFIX}neighbours:index"


# Caches (personalization.cache): one key per cached value, hash-tagged by its entity so that on a Redis Cluster
# the caches spread over the slots and an item cache's rebuild lock lives in its value's slot.
def user_cache(user_key: str, name: str) -> str:
    return f"{PREFIX}cache:user:{{{user_key}}}:{name}"


def item_cache(item_key: str, name: str) -> str:
    return f"{PREFIX}cache:item:{{{item_key}}}:{name}"


def item_cache_lock(item_key: str, name: str) -> str:
    return f"{PREFIX}cache:item-lock:{{{item_key}}}:{name}"


# Request rate limits (personalization.rate_limits): one token bucket a key, each hash-tagged by itself so that on a
# Redis Cluster the buckets spread over the slots and each script call touches one.
def api_key_rate_bucket(api_key_id: int) -> str:
    return f"{PREFIX}ratelimit:{{key:{api_key_id}}}"


def auth_failures_bucket(client_address: str) -> str:
    """Wrong API keys presented from a client address."""
    return f"{PREFIX}ratelimit:{{addr:{client_address}}}:auth-failures"
