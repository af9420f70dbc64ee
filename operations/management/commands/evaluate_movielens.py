import json
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from operations.evaluation.movielens import MovieLensError, movielens_load
from operations.evaluation.pipeline import evaluate
from operations.evaluation.scratch import SCRATCH_REDIS_DB, SCRATCH_SUFFIX, ScratchError, scratch_stores
from operations.evaluation.split import SPLIT_SEED


class Command(BaseCommand):
    help = (
        "Evaluate what the platform serves on a folder in the MovieLens 100K layout (u.data, u.item, optional "
        "u.user) with the Microsoft Recommenders protocol (stratified 75/25 split by item; top 10 without the "
        "user's training items; MAP, nDCG@10, Precision@10, Recall@10). The catalog and the training ratings go in "
        "through the platform's services (ratings as purchase events through the ingest service, timestamps moved "
        "to end a minute ago), the scheduled training chain runs as Celery beat runs it, and each test user's slate "
        "comes from the function that answers GET /api/v1/recommendations. Prints one JSON document on stdout "
        "(progress on stderr). ISOLATION: the run never touches live data. It drops and recreates a scratch "
        f"PostgreSQL database named '<current database>{SCRATCH_SUFFIX}' on the same server, migrates it and "
        "points Django's default connection at it for the run (dropped at the end unless --keep-scratch), and "
        f"uses Redis database number --redis-db (default {SCRATCH_REDIS_DB}) of the same Redis server, flushed at "
        "the start; it refuses the live Redis database number. Redis pub/sub spans databases, so the channel layer's "
        "prefix is renamed for the run too: no live WebSocket hears of the scratch catalog."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, help="Folder with u.data and u.item (e.g. ../shared/data/ml-100k).")
        parser.add_argument(
            "--validation",
            action="store_true",
            help="Score the validation split carved out of the training rows instead of the test split.",
        )
        parser.add_argument(
            "--seed",
            type=int,
            default=SPLIT_SEED,
            help=f"Seed of the split and of training's samples (default {SPLIT_SEED}, the published protocol's).",
        )
        parser.add_argument("--redis-db", type=int, default=SCRATCH_REDIS_DB, help="Scratch Redis database number.")
        parser.add_argument("--keep-scratch", action="store_true", help="Keep the scratch database afterwards.")
        parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1, the workers' setting).")

    def handle(self, *args: object, **options: object) -> None:
        # Load every library that brings its own BLAS first: threadpool_limits only limits those already loaded.
        import implicit.als  # noqa: F401
        import lightgbm  # noqa: F401
        from threadpoolctl import threadpool_limits

        path = options["path"]
        try:
            data = movielens_load(folder=path)
        except (MovieLensError, OSError, ValueError) as error:
            raise CommandError(str(error)) from error
        progress = getattr(self.stderr, "_out", sys.stderr)
        previous_seed = settings.TRAINING_SEED
        settings.TRAINING_SEED = options["seed"]
        try:
            with (
                threadpool_limits(limits=options["threads"]),
                scratch_stores(redis_db=options["redis_db"], keep=options["keep_scratch"]) as stores,
            ):
                progress.write(f"scratch stores: database {stores.database}, {stores.redis_url}\n")
                result = evaluate(
                    data=data,
                    validation=options["validation"],
                    seed=options["seed"],
                    progress=lambda message: progress.write(message + "\n"),
                )
        except ScratchError as error:
            raise CommandError(str(error)) from error
        finally:
            settings.TRAINING_SEED = previous_seed
        document = {"data": str(path), **result.as_dict()}
        self.stdout.write(json.dumps(document, indent=2, default=str))
