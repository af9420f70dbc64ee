from celery import shared_task

from graph_app.training import embeddings_train


@shared_task(name="graph.embeddings_train", autoretry_for=(Exception,), retry_backoff=True, max_retries=2)
def embeddings_train_task() -> dict[str, object]:
    return embeddings_train().__dict__
