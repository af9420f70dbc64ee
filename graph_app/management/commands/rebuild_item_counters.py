from __future__ import annotations

from django.core.management.base import BaseCommand

from graph_app.state.counters import item_counters_rebuild


class Command(BaseCommand):
    help = (
        "Recompute the online item counters (popularity windows, clicks and impressions per placement) from the "
        "PostgreSQL log, late events included: after upgrading from a version that kept them in sorted sets, or "
        "after Redis lost them (`rebuild_online_state` also rebuilds the users' state). Run it while ingest is "
        "paused (events ingested meanwhile may be counted twice or not at all)."
    )

    def handle(self, *args: object, **options: object) -> None:
        report = item_counters_rebuild()
        self.stdout.write(f"{report.items} items, {report.placement_items} item x placement records")
