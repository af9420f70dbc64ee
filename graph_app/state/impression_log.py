"""The impression log and the bandit's decision log in PostgreSQL (control plane): the stream consumer stores the
impression entries the serving path appended (`graph_app.state.impressions`), and attribution reads slates back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.db import transaction

from graph_app.state.models import BanditDecision, Impression, RankerSlate
from graph_app.state.ranker_log import ranker_slate_row


def impression_slates_logged(*, request_ids: list[str], since: datetime) -> dict[str, dict[str, Any]]:
    """Slates served longer ago than Redis keeps them (SURFACE_SLATE_KEEP_SECONDS), rebuilt from the impression
    log, if served since `since` (the attribution window). An id that matches nothing (never served, or too
    old) costs this one indexed query per batch."""
    rows = (
        Impression.objects.filter(request_id__in=request_ids, served_at__gte=since)
        .order_by("request_id", "slot")
        .values_list("request_id", "placement", "model_version", "item_id", "slot", "score", "source")
    )
    slates: dict[str, dict[str, Any]] = {}
    for request_id, placement, model_version, item_id, slot, score, source in rows:
        slate = slates.setdefault(request_id, {"placement": placement, "model_version": model_version, "items": []})
        slate["items"].append({"item_id": item_id, "slot": slot, "score": score, "source": source})
    return slates


def impressions_store(*, impressions: list[dict[str, Any]]) -> None:
    """One row per item shown, one per decision of the contextual bandit (what it could have shown) and one per
    logged ranker pool (what the ranker drew from); a replayed entry is ignored (unique on request id, slot and
    serving time, which a replay repeats, and on request id)."""
    rows = [
        _impression_row(record, item, experiment=record.get("experiment") or {})
        for record in impressions
        for item in record["items"]
    ]
    decisions = [
        BanditDecision(
            request_id=record["request_id"],
            placement=record["placement"],
            served_at=datetime.fromtimestamp(record["served_at"], tz=UTC),
            shared=record["bandit"]["shared"],
            # Every offered action once: the picked ones carry their features on their item.
            actions=[[item["item_id"], item["features"]] for item in record["items"] if item.get("features")]
            + [list(action) for action in record["bandit"]["unshown"]],
        )
        for record in impressions
        if record.get("bandit")
    ]
    pools = [pool for record in impressions if (pool := ranker_slate_row(record)) is not None]
    with transaction.atomic():
        Impression.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
        if decisions:
            BanditDecision.objects.bulk_create(decisions, ignore_conflicts=True, batch_size=1000)
        if pools:
            RankerSlate.objects.bulk_create(pools, ignore_conflicts=True, batch_size=200)


def _impression_row(record: dict[str, Any], item: dict[str, Any], *, experiment: dict[str, Any]) -> Impression:
    return Impression(
        request_id=record["request_id"],
        user_key=record["user_key"],
        placement=record["placement"],
        item_id=item["item_id"],
        slot=item["slot"],
        score=item.get("score"),
        source=item.get("source") or "",
        model_version=record.get("model_version") or "",
        served_at=datetime.fromtimestamp(record["served_at"], tz=UTC),
        propensity=item.get("propensity"),
        logging_propensity=item.get("logging_propensity"),
        variant=record.get("variant") or "",
        rules=item.get("rules") or [],
        path=record.get("path") or "",
        experiment_id=experiment.get("id"),
        experiment_variant=experiment.get("variant") or "",
        experiment_unit=experiment.get("unit") or "",
        serving_ms=record.get("serving_ms"),
        degraded=bool(record.get("degraded")),
    )
