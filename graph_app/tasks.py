from celery import shared_task

from graph_app.training import embeddings_train
from personalization.training_compute import training_priority_lower


@shared_task(name="graph.embeddings_train", autoretry_for=(Exception,), retry_backoff=True, max_retries=2)
def embeddings_train_task() -> dict[str, object]:
    training_priority_lower()
    return embeddings_train().__dict__


@shared_task(name="graph.neighbourhoods_refresh", autoretry_for=(Exception,), retry_backoff=True, max_retries=2)
def neighbourhoods_refresh_task() -> dict[str, object]:
    """Hourly: every item's one-hop neighbours, recomputed from the catalog and the event log (idempotent)."""
    from graph_app.neighbourhoods import neighbourhoods_refresh

    training_priority_lower()
    return neighbourhoods_refresh().__dict__


@shared_task(name="graph.features_materialize", autoretry_for=(Exception,), retry_backoff=True, max_retries=3)
def features_materialize_task() -> dict[str, object]:
    from graph_app.features.materialize import features_materialize

    training_priority_lower()
    return features_materialize().__dict__
