import json
import sys
import time
from datetime import date
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from operations.evaluation.replay import ReplayConfig, ReplayError, purchases_read, replay_run
from operations.evaluation.scratch import SCRATCH_REDIS_DB, SCRATCH_SUFFIX, ScratchError, scratch_stores


class Command(BaseCommand):
    help = (
        "Replay a real shop's history (the UCI Online Retail CSV, e.g. ../shared/data/online-retail/"
        "online-retail.csv.gz) through the storefront API and score what the platform serves against what each "
        "customer bought after a cut-off date. Purchases before --cutoff are loaded as the shop's history (catalog "
        "through POST /api/v1/items/batch, purchases through POST /api/v1/events, shifted to end a day before "
        "now), the scheduled training chain runs, then GET /api/v1/recommendations is asked for --customers test "
        "customers (home: HR@10, nDCG@10 on the new items they bought after the cut-off) and for --baskets "
        "post-cut invoices (product_page with one item of the invoice as context: HR@10 on the others), beside "
        "offline popularity and item kNN baselines. Prints one JSON document on stdout (progress on stderr). "
        "ISOLATION: as evaluate_movielens, the run happens in a scratch PostgreSQL database "
        f"'<current database>{SCRATCH_SUFFIX}' (dropped afterwards unless --keep-scratch) and Redis database "
        f"--redis-db (default {SCRATCH_REDIS_DB}, flushed first); live data is never touched."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        defaults = ReplayConfig()
        parser.add_argument("path", type=Path, help="The Online Retail CSV (gzipped or not).")
        parser.add_argument(
            "--cutoff",
            type=date.fromisoformat,
            default=defaults.cutoff,
            help=f"Purchases before this date are history (default {defaults.cutoff}).",
        )
        parser.add_argument(
            "--customers",
            type=int,
            default=defaults.customers,
            help=f"Test customers drawn with --seed (default {defaults.customers}; 0: all).",
        )
        parser.add_argument(
            "--baskets",
            type=int,
            default=defaults.baskets,
            help=f"Post-cut invoices for the product-page task (default {defaults.baskets}; 0: all).",
        )
        parser.add_argument("--seed", type=int, default=defaults.seed)
        parser.add_argument("--redis-db", type=int, default=SCRATCH_REDIS_DB, help="Scratch Redis database number.")
        parser.add_argument("--keep-scratch", action="store_true", help="Keep the scratch database afterwards.")

    def handle(self, *args: object, **options: object) -> None:
        # One BLAS thread, as the workers run training; load the libraries that bring their own BLAS first, since
        # threadpool_limits only limits those already loaded.
        import implicit.als  # noqa: F401
        import lightgbm  # noqa: F401
        from threadpoolctl import threadpool_limits

        config = ReplayConfig(
            cutoff=options["cutoff"], customers=options["customers"], baskets=options["baskets"], seed=options["seed"]
        )
        progress = getattr(self.stderr, "_out", sys.stderr)

        def say(message: str) -> None:
            progress.write(message + "\n")
            progress.flush()

        started = time.monotonic()
        try:
            purchases = purchases_read(path=options["path"])
        except ReplayError as error:
            raise CommandError(str(error)) from error
        read_seconds = round(time.monotonic() - started, 2)
        say(f"read {len(purchases):,} clean purchases in {read_seconds:.1f} s")
        try:
            started = time.monotonic()
            with (
                threadpool_limits(limits=1),
                scratch_stores(redis_db=options["redis_db"], keep=options["keep_scratch"]) as stores,
            ):
                say(f"scratch stores: database {stores.database}, {stores.redis_url}")
                scratch_seconds = round(time.monotonic() - started, 2)
                document = replay_run(purchases=purchases, config=config, progress=say)
        except (ScratchError, ReplayError) as error:
            raise CommandError(str(error)) from error
        document = {"data": str(options["path"]), **document}
        document["seconds_by_phase"] = {"read": read_seconds, "scratch": scratch_seconds,
                                        **document["seconds_by_phase"]}  # fmt: skip
        self.stdout.write(json.dumps(document, indent=2, default=str))
