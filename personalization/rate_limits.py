"""Request rate limits: a token bucket in Redis per API key, and one per client address for wrong keys.

A bucket holds up to `quota` tokens and gains `quota / window` a second; a request takes one or is refused (429).
One Lua script reads, refills and takes in one step (no race between processes), with Redis's own clock (no skew
between web machines); each bucket is one hash-tagged key, so a script call touches one Redis Cluster slot. The
recommendation path queues the script on the request's existing state round trip (`RateLimitCheck`); other
endpoints spend a round trip of their own. Redis down: requests are let through (serving degrades on its own,
and an outage of Redis must not become an outage of everything), with a warning logged.

The headers follow draft-ietf-httpapi-ratelimit-headers-09 (March 2025, sections 3 and 4: the two structured fields
that replaced RateLimit-Limit/-Remaining/-Reset): `RateLimit-Policy: "key";q=100;w=1` (quota and window of the
policy) and `RateLimit: "key";r=0;t=1` (what remains, and the seconds until a request is allowed again when
nothing does, else until the bucket is full).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Final

import redis
from django.conf import settings
from redis.exceptions import RedisError

from personalization import redis_keys
from personalization.errors import error_body
from personalization.redis_client import ShaScript, get_redis

logger = logging.getLogger(__name__)

KEY_POLICY: Final = "key"
AUTH_FAILURES_POLICY: Final = "auth-failures"

# The token bucket (`rate_limit_bucket.lua`): one per API key, one per client address for wrong keys.
token_bucket_script = ShaScript.from_files(__file__, "rate_limit_bucket.lua")


@dataclass(frozen=True)
class RatePolicy:
    name: str
    quota: int
    window_seconds: int

    @property
    def per_second(self) -> float:
        return self.quota / self.window_seconds


@dataclass(frozen=True)
class RateDecision:
    policy: RatePolicy
    allowed: bool
    remaining: int
    retry_after_seconds: int  # 0 when allowed
    full_in_seconds: int

    def headers(self) -> dict[str, str]:
        """The IETF fields (see the module), and Retry-After when refused."""
        reset = self.retry_after_seconds if not self.allowed else self.full_in_seconds
        headers = {
            "RateLimit-Policy": f'"{self.policy.name}";q={self.policy.quota};w={self.policy.window_seconds}',
            "RateLimit": f'"{self.policy.name}";r={self.remaining};t={reset}',
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_seconds)
        return headers


class RateLimitExceeded(Exception):
    """Answered 429 with the decision's headers (`personalization.exception_handler`, `surface_app.fast_path`)."""

    def __init__(self, decision: RateDecision, detail: str) -> None:
        super().__init__(detail)
        self.decision = decision
        self.detail = detail


def rate_limited_body(exc: RateLimitExceeded) -> dict[str, Any]:
    return error_body(detail=exc.detail, code="rate_limited")


def key_policy(*, scope: str, rate_limit_per_second: int | None) -> RatePolicy:
    """A key's own rate, else its scope's default: so many requests, refilled within a second."""
    quota = rate_limit_per_second or settings.API_RATE_LIMIT_DEFAULTS[scope]
    return RatePolicy(KEY_POLICY, quota, 1)


def auth_failures_policy() -> RatePolicy:
    return RatePolicy(AUTH_FAILURES_POLICY, settings.API_AUTH_FAILURES_MAX, settings.API_AUTH_FAILURES_WINDOW_SECONDS)


@dataclass(frozen=True)
class RateLimitCheck:
    """One request against a key's bucket, to be queued on a pipeline the caller sends anyway."""

    api_key_id: int
    policy: RatePolicy

    def queue(self, pipeline: redis.client.Pipeline) -> None:
        token_bucket_script.queue_named(get_redis(), pipeline, **self._named)

    def decide(self, reply: Any) -> RateDecision:
        return _decision(self.policy, reply)

    def raise_if_refused(self, reply: Any) -> RateDecision:
        decision = self.decide(reply)
        if not decision.allowed:
            raise RateLimitExceeded(decision, _key_refusal(decision))
        return decision

    def take(self) -> RateDecision | None:
        """In a round trip of its own; None (let through) when Redis does not answer."""
        try:
            reply = token_bucket_script.call_named(get_redis(), **self._named)
        except RedisError as error:
            logger.warning("auth.rate_limit_unavailable", extra={"error": str(error)})
            return None
        return self.raise_if_refused(reply)

    @property
    def _named(self) -> dict[str, Any]:
        return {
            "bucket": redis_keys.api_key_rate_bucket(self.api_key_id),
            "quota": self.policy.quota,
            "per_second": self.policy.per_second,
            "cost": 1,
        }


def rate_limit_check(*, api_key_id: int, scope: str, rate_limit_per_second: int | None) -> RateLimitCheck | None:
    """The check a key's request goes through, or None when limits are off (API_RATE_LIMITS_ENABLED)."""
    if not settings.API_RATE_LIMITS_ENABLED:
        return None
    return RateLimitCheck(api_key_id, key_policy(scope=scope, rate_limit_per_second=rate_limit_per_second))


def auth_failures_blocked(*, client_address: str) -> RateDecision | None:
    """The refusal when this address has used up its wrong keys (nothing is taken), else None. Redis down: None."""
    decision = _auth_failures(client_address, cost=0)
    return decision if decision is not None and not decision.allowed else None


def auth_failure_record(*, client_address: str) -> RateDecision | None:
    """Counts a wrong key from this address: the refusal when it had none left, else None. Redis down: None."""
    decision = _auth_failures(client_address, cost=1)
    return decision if decision is not None and not decision.allowed else None


def auth_failures_refusal(decision: RateDecision) -> RateLimitExceeded:
    detail = f"Too many wrong API keys from this address; retry after {decision.retry_after_seconds} s."
    return RateLimitExceeded(decision, detail)


def _auth_failures(client_address: str, *, cost: int) -> RateDecision | None:
    policy = auth_failures_policy()
    try:
        reply = token_bucket_script.call_named(
            get_redis(),
            bucket=redis_keys.auth_failures_bucket(client_address),
            quota=policy.quota,
            per_second=policy.per_second,
            cost=cost,
        )
    except RedisError as error:
        logger.warning("auth.failure_limit_unavailable", extra={"error": str(error)})
        return None
    return _decision(policy, reply)


def _decision(policy: RatePolicy, reply: Any) -> RateDecision:
    allowed, remaining, wait_ms, full_ms = (int(value) for value in reply)
    return RateDecision(
        policy=policy,
        allowed=bool(allowed),
        remaining=max(remaining, 0),
        # Retry-After is whole seconds: rounded up, and at least one when refused.
        retry_after_seconds=0 if allowed else max(1, math.ceil(wait_ms / 1000)),
        full_in_seconds=math.ceil(full_ms / 1000),
    )


def _key_refusal(decision: RateDecision) -> str:
    return (
        f"Over this API key's rate of {decision.policy.quota} requests a second; "
        f"retry after {decision.retry_after_seconds} s."
    )
