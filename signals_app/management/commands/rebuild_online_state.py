from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser

from graph_app.state.interface import online_state_rebuild
from signals_app.identity import identity_links_read


class Command(BaseCommand):
    help = (
        "Recompute the Redis online state from the PostgreSQL event log, as ingesting the logged events live would "
        "have built it: each user's recent items, affinities, purchased and cool-down sets, and the items' counters "
        "and popularity windows. After restoring the log or losing Redis. Run it while ingest is paused (a user's "
        "or item's events ingested meanwhile may be counted twice or not at all)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        only = parser.add_mutually_exclusive_group()
        only.add_argument("--users-only", action="store_true", help="Only the users' state.")
        only.add_argument("--items-only", action="store_true", help="Only the items' counters.")

    def handle(self, *args: object, users_only: bool, items_only: bool, **options: object) -> None:
        report = online_state_rebuild(
            sessions_to_users=identity_links_read(), users=not items_only, items=not users_only
        )
        self.stdout.write(
            f"{report.users} users, {report.items} items, {report.placement_items} item x placement records"
        )
