from celery import shared_task

from signals_app.popularity import popularity_refresh

# Beat sends one every second; a drain that waited longer than this in the queue is dropped, the next one covers it.
EVENTS_DRAIN_EXPIRES_SECONDS = 10


@shared_task(name="signals.events_drain", ignore_result=True, expires=EVENTS_DRAIN_EXPIRES_SECONDS)
def events_drain_task() -> dict[str, object]:
    from signals_app.consumer import events_drain_all

    report = events_drain_all()
    return {
        "read": report.read,
        "stored": report.stored,
        "dead_lettered": report.dead_lettered,
        "skipped": report.skipped,
    }


@shared_task(name="signals.popularity_refresh", autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def popularity_refresh_task() -> dict[str, object]:
    report = popularity_refresh()
    return {"items": report.items, "top_item": report.top_item}


@shared_task(name="signals.event_log_partitions_ensure", autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def event_log_partitions_ensure_task(months_ahead: int = 2) -> list[str]:
    """Daily: the event log's monthly partitions exist for this month and the next ones (idempotent)."""
    from signals_app.log import event_log_partitions_ensure

    return event_log_partitions_ensure(months_ahead=months_ahead)


@shared_task(name="signals.impression_log_maintain", autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def impression_log_maintain_task() -> dict[str, object]:
    """Daily: the impression log's partitions exist a week ahead and the days past the retention are dropped."""
    from signals_app.log import impression_log_maintain

    report = impression_log_maintain()
    return {"created": report.created, "dropped": report.dropped, "default_rows_deleted": report.default_rows_deleted}
