from celery import shared_task

from signals_app.popularity import popularity_refresh


@shared_task(name="signals.popularity_refresh", autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def popularity_refresh_task() -> dict[str, object]:
    report = popularity_refresh()
    return {"items": report.items, "top_item": report.top_item}
