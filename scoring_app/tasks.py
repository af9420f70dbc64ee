from celery import shared_task


@shared_task(name="scoring.ranker_train", autoretry_for=(Exception,), retry_backoff=True, max_retries=2)
def ranker_train_task() -> dict[str, object]:
    """Retrain the ranker; it serves only if its holdout nDCG@10 is not worse than the active model's."""
    from personalization.training_compute import training_priority_lower
    from scoring_app.training import ranker_train

    training_priority_lower()
    return ranker_train().__dict__


@shared_task(name="scoring.models_serving_publish")
def models_serving_publish_task() -> dict[str, object]:
    """Re-publish the registry's serving snapshot to Redis (heals a Redis restart); idempotent."""
    from graph_app.interface import models_serving_publish

    return models_serving_publish()


# Beat sends one a minute; a run that waited longer than that in the queue is dropped, the next one covers it.
BANDIT_LEARN_EXPIRES_SECONDS = 55


@shared_task(
    name="scoring.bandit_learn", autoretry_for=(Exception,), retry_backoff=True, max_retries=2,
    expires=BANDIT_LEARN_EXPIRES_SECONDS,
)  # fmt: skip
def bandit_learn_task() -> dict[str, object]:
    """Every minute: feed the contextual bandit its impressions' rewards, publish the updated model (idempotent)."""
    from scoring_app.bandit import bandit_learn

    return bandit_learn().__dict__
