"""Assemble the slate a storefront shows, and log the impression with it."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field

from redis.exceptions import RedisError

from personalization import redis_keys
from personalization.redis_client import get_redis
from scoring_app.engine.retrieval import Candidate, candidates_retrieve, user_state_fetch
from surface_app.serving.impressions import NoScriptError, impression_script

logger = logging.getLogger(__name__)

# Served slates are kept this long so that later clicks and purchases can be attributed to them.
SLATE_TTL_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Slate:
    request_id: str
    placement: str
    items: list[Candidate]
    confidence: float
    model_version: str | None
    degraded: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "request_id": self.request_id,
            "placement": self.placement,
            "items": [asdict(candidate) for candidate in self.items],
            "confidence": self.confidence,
            "model_version": self.model_version,
            "degraded": self.degraded,
        }


def slate_serve(*, user_key: str, placement: str, k: int) -> Slate:
    state = user_state_fetch(user_key=user_key, popular_depth=k * 3 + 20)
    candidates, retrieval_degraded = candidates_retrieve(state=state, k=k)
    personalized = sum(1 for candidate in candidates if candidate.source != "popular")
    slate = Slate(
        request_id=uuid.uuid4().hex,
        placement=placement,
        items=candidates,
        # The share of slots filled by personalised sources: the Surface decides how much to trust the slate.
        confidence=round(personalized / k, 4) if k else 0.0,
        model_version=state.model_version,
        degraded=state.degraded + retrieval_degraded,
    )
    _impression_log(slate=slate, user_key=user_key)
    return slate


def _impression_log(*, slate: Slate, user_key: str) -> None:
    """The served slate, kept for attribution (7 days) and logged as impressions, in one round trip."""
    served_at = time.time()
    items: list[dict[str, object]] = [
        {"item_id": candidate.item_id, "slot": slot, "score": candidate.score, "source": candidate.source}
        for slot, candidate in enumerate(slate.items)
    ]
    record = {
        "request_id": slate.request_id,
        "user_key": user_key,
        "placement": slate.placement,
        "model_version": slate.model_version,
        "served_at": served_at,
        "items": items,
    }
    client = get_redis()
    for attempt in range(2):
        try:
            pipeline = client.pipeline(transaction=False)
            pipeline.set(redis_keys.slate(slate.request_id), json.dumps(record), ex=SLATE_TTL_SECONDS)
            if items:
                impression_script.queue(
                    client, pipeline, user_key=user_key, placement=slate.placement, served_at=served_at,
                    record=record, item_ids=[candidate.item_id for candidate in slate.items],
                )  # fmt: skip
            pipeline.execute()
            return
        except NoScriptError:
            impression_script.forget()
            if attempt:
                break
        except RedisError as error:
            logger.warning("surface.impression_log_failed", extra={"error": str(error), "request_id": slate.request_id})
            break
    slate.degraded.append("impression_log_failed")
