import os
from typing import Any

from celery import Celery, signals

from personalization.log_config import context_clear, task_context_bind

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("personalization")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _task_log_context_bind(task_id: str, task: Any, **_: Any) -> None:
    """Every line a task logs carries its id and name (personalization/log_config.py)."""
    task_context_bind(task_id=task_id, task_name=task.name)


def _task_log_context_clear(**_: Any) -> None:
    context_clear()


signals.task_prerun.connect(_task_log_context_bind)
signals.task_postrun.connect(_task_log_context_clear)
