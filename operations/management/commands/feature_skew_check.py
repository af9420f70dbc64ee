from collections.abc import Iterable

from django.core.management.base import BaseCommand, CommandParser

from graph_app.interface import DEFAULT_TOLERANCE, FeatureSkew, feature_skew_check
from scoring_app.interface import retrieval_skew_check
from signals_app.interface import events_drain_all


class Command(BaseCommand):
    help = (
        "Compare the online (Redis) and offline (PostgreSQL log) values of every feature for sampled users and "
        "items at the same instant, and the retrieval features of the candidate set serving builds for sampled users "
        "with the same features computed the way training computes them. Exits 1 when any value differs beyond the "
        "tolerance."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--users", type=int, default=25)
        parser.add_argument("--items-per-user", type=int, default=20)
        parser.add_argument("--placement", default="default")
        parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
        parser.add_argument("--seed", default="skew")

    def handle(self, *args: object, **options: object) -> None:
        # Both sides must have seen the same events: write what is still in the streams to the log first.
        while events_drain_all().read:
            pass
        report = feature_skew_check(
            users=options["users"], items_per_user=options["items_per_user"], placement=options["placement"],
            tolerance=options["tolerance"], seed=options["seed"],
        )  # fmt: skip
        self.stdout.write(f"{report.rows} rows ({report.users} users), relative tolerance {report.tolerance:g}")
        self._features_write(report.features.values())
        retrieval = retrieval_skew_check(users=options["users"], tolerance=options["tolerance"], seed=options["seed"])
        self.stdout.write(f"retrieval features: {retrieval.rows} candidates ({retrieval.users} users)")
        self._features_write(retrieval.features.values())
        if report.mismatched or retrieval.mismatched:
            raise SystemExit(1)

    def _features_write(self, features: Iterable[FeatureSkew]) -> None:
        for skew in features:
            state = "ok" if not skew.mismatched else f"{skew.mismatched} MISMATCHED"
            self.stdout.write(f"  {skew.name:<34} max |diff| {skew.max_difference:.3g}  {state}")
            for example in skew.examples:
                self.stdout.write(f"      {example}")
