"""Fixtures of the state package's tests: the rebuild's catalog is the history tests' (`tests.signals_app`)."""

from tests.signals_app.helpers import catalog  # noqa: F401  (fixture)
