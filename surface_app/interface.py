"""What other apps may use of Surface (Sentry's cross-app service idea): keyword-only functions and plain data,
never Surface's models or tables. Re-exports of the modules that implement them.

- Serving: a placement's slate for a user, as the API serves it (`slate_serve`), for the offline evaluation.
- Set-up: the default placements, caps and rules of a new platform (`surface_defaults_install`).
- Erasure: Surface's part of erasing a shopper (its keys in Redis, its cached slates), which `operations.erasure`
  orchestrates.

Graph and Signal never call Surface: they publish their changes on `personalization.live_updates`, to which
Surface subscribes. The console (`rules_admin`) administers Surface's models and is the one app above it that uses
them directly.
"""

from __future__ import annotations

from surface_app.configuration import surface_defaults_install
from surface_app.erasure import shopper_surface_keys, slates_forget
from surface_app.serving.slates import Slate, slate_serve

__all__ = ["Slate", "shopper_surface_keys", "slate_serve", "slates_forget", "surface_defaults_install"]
