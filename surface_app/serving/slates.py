"""Assemble the slate a storefront shows, and log the impression with it."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from personalization import redis_keys
from personalization.redis_client import get_redis
from scoring_app.engine.retrieval import candidates_retrieve, user_state_fetch
from scoring_app.engine.scoring import ScoredItem, slate_score
from surface_app.serving.impressions import NoScriptError, impression_script

if TYPE_CHECKING:
    from scoring_app.engine.bandit import BanditLog

logger = logging.getLogger(__name__)

# Served slates are kept this long so that later clicks and purchases can be attributed to them.
SLATE_TTL_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Slate:
    request_id: str
    placement: str
    items: list[ScoredItem]
    confidence: float
    model_version: str | None
    degraded: list[str] = field(default_factory=list)
    # Which part of the Score layer chose the items: ranker, bandit or fallback.
    path: str = "fallback"
    # Set when the contextual bandit chose items (`scoring_app.engine.bandit.bandit_log`): logged for its learning.
    bandit: BanditLog | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "request_id": self.request_id,
            "placement": self.placement,
            "items": [asdict(candidate) for candidate in self.items],
            "confidence": self.confidence,
            "model_version": self.model_version,
            "path": self.path,
            "degraded": self.degraded,
        }


def slate_serve(*, user_key: str, placement: str, k: int) -> Slate:
    state = user_state_fetch(user_key=user_key)
    candidate_set, retrieval_degraded = candidates_retrieve(state=state)
    result = slate_score(state=state, candidate_set=candidate_set, placement=placement, k=k)
    slate = Slate(
        request_id=uuid.uuid4().hex,
        placement=placement,
        items=result.items,
        confidence=result.confidence,
        model_version=result.model_version,
        degraded=[*state.degraded, *retrieval_degraded, *candidate_set.dropped, *result.degraded],
        path=result.path,
        bandit=result.bandit_log,
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
    record: dict[str, object] = {
        "request_id": slate.request_id,
        "user_key": user_key,
        "placement": slate.placement,
        "model_version": slate.model_version,
        "served_at": served_at,
        "items": items,
    }
    logged = record
    if slate.bandit is not None:
        # Only the log needs what the bandit learns from (not the slate kept 7 days in Redis for attribution): its
        # items carry their propensity and features, and the offered actions it did not pick ride along once.
        picks = slate.bandit.picks
        logged_items = [
            {**item, "propensity": pick.propensity, "features": pick.features}
            if (pick := picks.get(str(item["item_id"]))) is not None
            else item
            for item in items
        ]
        bandit = {"shared": slate.bandit.shared, "unshown": slate.bandit.unshown}
        logged = {**record, "items": logged_items, "bandit": bandit}
    client = get_redis()
    for attempt in range(2):
        try:
            pipeline = client.pipeline(transaction=False)
            pipeline.set(redis_keys.slate(slate.request_id), json.dumps(record), ex=SLATE_TTL_SECONDS)
            if items:
                impression_script.queue(
                    client, pipeline, user_key=user_key, placement=slate.placement, served_at=served_at,
                    record=logged, item_ids=[candidate.item_id for candidate in slate.items],
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
