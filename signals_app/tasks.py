import logging

from celery import shared_task

from graph_app.state.interface import popularity_refresh
from personalization.training_compute import training_priority_lower

logger = logging.getLogger(__name__)

# Beat sends one every second; a drain that waited longer than this in the queue is dropped, the next one covers it.
EVENTS_DRAIN_EXPIRES_SECONDS = 10


@shared_task(name="signals.events_drain", ignore_result=True, expires=EVENTS_DRAIN_EXPIRES_SECONDS)
def events_drain_task() -> dict[str, object]:
    from signals_app.consumer import events_drain_all

    report = events_drain_all()
    summary = {
        "read": report.read,
        "stored": report.stored,
        "dead_lettered": report.dead_lettered,
        "skipped": report.skipped,
    }
    # Beat sends it every second: a drain that found nothing to move is not worth a line at INFO.
    did_something = report.read or report.reclaimed or report.dead_lettered
    logger.log(logging.INFO if did_something else logging.DEBUG, "signals.events_drained", extra=summary)
    return summary


@shared_task(name="signals.popularity_refresh", autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def popularity_refresh_task() -> dict[str, object]:
    training_priority_lower()
    report = popularity_refresh()
    return {"items": report.items, "top_item": report.top_item}


@shared_task(name="signals.event_log_partitions_ensure", autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def event_log_partitions_ensure_task(months_ahead: int = 2) -> list[str]:
    """Daily: the event log's monthly partitions exist for this month and the next ones (idempotent)."""
    from graph_app.state.interface import event_log_partitions_ensure

    return event_log_partitions_ensure(months_ahead=months_ahead)


@shared_task(name="signals.impression_log_maintain", autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def impression_log_maintain_task() -> dict[str, object]:
    """Daily: the impression log's partitions exist a week ahead and the days past the retention are dropped."""
    from graph_app.state.interface import impression_log_maintain

    report = impression_log_maintain()
    return {
        "created": report.created,
        "dropped": report.dropped,
        "default_rows_deleted": report.default_rows_deleted,
        "ranker_slates_deleted": report.ranker_slates_deleted,
    }
