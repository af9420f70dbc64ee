"""The one script mechanism (`personalization.redis_client.ShaScript.from_files`): Lua files with named KEYS, ARGV
and records; and core's scripts, each against the tests' Valkey: the item cache's (`cache_*.lua`) and the rate
limits' token bucket (`rate_limit_bucket.lua`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from personalization import cache, rate_limits, redis_keys
from personalization.redis_client import ShaScript, lua_source


def _lua(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / "anchor.py")


def test_names_become_positions_and_records_offsets(tmp_path):
    anchor = _lua(
        tmp_path,
        "s.lua",
        "--! KEYS: hash stream\n--! ARGV: ts rows...\n--! RECORD ROW: item\n--! RECORD ROW: weight\n"
        "return {KEYS[{{KEYS.stream}}], ARGV[{{ARGV.rows}}], {{ROW}}, {{ROW.weight}}, {{LIMIT}}}\n",
    )

    source, records = lua_source(anchor, "s.lua", constants={"LIMIT": 7})

    assert source.endswith("return {KEYS[2], ARGV[2], 2, 2, 7}\n")
    assert records["ROW"].values(item="a", weight=2) == ["a", 2]
    script = ShaScript(source, records)
    assert script.arguments(hash="h", stream="s", ts="1.5", rows=["a", 2, "b", 3]) == (
        ["h", "s"],
        ["1.5", "a", 2, "b", 3],
    )


def test_a_missing_or_unknown_name_is_refused(tmp_path):
    script = ShaScript.from_files(_lua(tmp_path, "s.lua", "--! KEYS: hash\n--! ARGV: ts\nreturn 1\n"), "s.lua")

    with pytest.raises(TypeError, match="ts"):
        script.arguments(hash="h")
    with pytest.raises(TypeError, match="tss"):
        script.arguments(hash="h", ts=1, tss=2)
    with pytest.raises(TypeError, match="weight"):
        ShaScript.from_files(
            _lua(tmp_path, "r.lua", "--! RECORD ROW: item weight\nreturn {{ROW.item}}\n"), "r.lua"
        ).record("ROW").values(item="a")


def test_a_placeholder_nothing_fills_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"ARGV\.nope"):
        lua_source(_lua(tmp_path, "s.lua", "--! ARGV: ts\nreturn ARGV[{{ARGV.nope}}]\n"), "s.lua")


def test_a_name_both_a_key_and_an_argument_is_refused(tmp_path):
    with pytest.raises(ValueError, match="both"):
        ShaScript.from_files(_lua(tmp_path, "s.lua", "--! KEYS: ts\n--! ARGV: ts\nreturn 1\n"), "s.lua")


def test_cache_claim_script_takes_the_lock_of_a_missing_value_once(clean_redis):
    named = {"value": "cache:{i1}:v", "lock": "cache:{i1}:l", "lock_ms": 5000, "fresh_after": 0}

    first = cache._claim_script.call_named(clean_redis, token="t1", **named)
    second = cache._claim_script.call_named(clean_redis, token="t2", **named)

    assert (first, second) == ([2, None], [0, None])
    assert clean_redis.get("cache:{i1}:l") == b"t1"
    assert 0 < clean_redis.pttl("cache:{i1}:l") <= 5000


def test_cache_store_script_stores_fresh_under_the_lock_and_stale_without_it(clean_redis):
    clean_redis.set("cache:{i1}:l", "t1")
    stamp = b"%016d" % 1_700_000_000_000

    kept = cache._store_script.call_named(
        clean_redis, value="cache:{i1}:v", lock="cache:{i1}:l", token="t1", stamp=stamp, payload=b"P", ttl_ms=60_000
    )
    assert kept == 1
    assert clean_redis.get("cache:{i1}:v") == b"i1" + stamp + b"P"
    assert clean_redis.exists("cache:{i1}:l") == 0

    late = cache._store_script.call_named(
        clean_redis, value="cache:{i2}:v", lock="cache:{i2}:l", token="t9", stamp=stamp, payload=b"Q", ttl_ms=60_000
    )
    assert late == -1
    assert clean_redis.get("cache:{i2}:v") == b"i1" + b"0" * 16 + b"Q"


def test_cache_release_script_releases_only_its_own_lock(clean_redis):
    clean_redis.set("cache:{i1}:l", "mine")

    assert cache._release_script.call_named(clean_redis, lock="cache:{i1}:l", token="theirs") == 0
    assert clean_redis.get("cache:{i1}:l") == b"mine"
    assert cache._release_script.call_named(clean_redis, lock="cache:{i1}:l", token="mine") == 1
    assert clean_redis.exists("cache:{i1}:l") == 0


def test_cache_invalidate_script_marks_the_value_stale_and_drops_the_lock(clean_redis):
    clean_redis.set("cache:{i1}:v", b"i1" + b"1" * 16 + b"P", px=60_000)
    clean_redis.set("cache:{i1}:l", "builder")

    assert cache._invalidate_script.call_named(clean_redis, value="cache:{i1}:v", lock="cache:{i1}:l") == 1

    assert clean_redis.get("cache:{i1}:v") == b"i1" + b"0" * 16 + b"P"
    assert clean_redis.pttl("cache:{i1}:v") > 0
    assert clean_redis.exists("cache:{i1}:l") == 0


def test_rate_limit_bucket_script_takes_a_token_and_refuses_when_none_is_left(clean_redis):
    bucket = redis_keys.api_key_rate_bucket(-7)
    script = rate_limits.token_bucket_script

    first = script.call_named(clean_redis, bucket=bucket, quota=2, per_second=1, cost=1)
    second = script.call_named(clean_redis, bucket=bucket, quota=2, per_second=1, cost=1)
    third = script.call_named(clean_redis, bucket=bucket, quota=2, per_second=1, cost=1)

    assert [first[:2], second[:2], third[:2]] == [[1, 1], [1, 0], [0, 0]]
    assert 0 < third[2] <= 1000  # ms until a token is there
    assert float(clean_redis.hget(bucket, "t")) < 1
    looked = script.call_named(clean_redis, bucket=redis_keys.api_key_rate_bucket(-8), quota=2, per_second=1, cost=0)
    assert looked[0] == 1
    assert clean_redis.exists(redis_keys.api_key_rate_bucket(-8)) == 0  # a look writes nothing
