"""Fixtures of the Signal-layer tests."""

from tests.signals_app.helpers import catalog  # noqa: F401  (fixture)
