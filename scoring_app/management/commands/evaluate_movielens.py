import dataclasses
import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from scoring_app.evaluation.movielens import MovieLensError, movielens_load
from scoring_app.evaluation.pipeline import EvaluationConfig, evaluate
from scoring_app.evaluation.scratch import SCRATCH_REDIS_DB, SCRATCH_SUFFIX, ScratchError, scratch_stores


class Command(BaseCommand):
    help = (
        "Evaluate the platform offline on a folder in the MovieLens 100K layout (u.data, u.item, optional u.user) "
        "with the Microsoft Recommenders protocol (stratified 75/25 split by item, seed 42; top 10 over every item "
        "seen in training minus the user's training items; MAP, nDCG@10, Precision@10, Recall@10). The data goes "
        "through the platform's own ingest, feature store, embeddings and ranker. Prints one JSON document on "
        "stdout (progress on stderr). ISOLATION: the run never touches live data. It drops and recreates a "
        f"scratch PostgreSQL database named '<current database>{SCRATCH_SUFFIX}' on the same server, migrates it "
        "and points Django's default connection at it for the run (dropped at the end unless --keep-scratch), and "
        f"uses Redis database number --redis-db (default {SCRATCH_REDIS_DB}) of the same Redis server, flushed at "
        "the start; it refuses the live Redis database number. Redis pub/sub spans databases, so the channel layer's "
        "prefix is renamed for the run too: no live WebSocket hears of the scratch catalog."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        defaults = EvaluationConfig()
        parser.add_argument("path", type=Path, help="Folder with u.data and u.item (e.g. ../shared/data/ml-100k).")
        parser.add_argument(
            "--validation",
            action="store_true",
            help="Score the validation split carved out of the training rows (for tuning) instead of the test split.",
        )
        parser.add_argument("--redis-db", type=int, default=SCRATCH_REDIS_DB, help="Scratch Redis database number.")
        parser.add_argument("--keep-scratch", action="store_true", help="Keep the scratch database afterwards.")
        parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1, the workers' setting).")
        parser.add_argument("--label-folds", type=int, default=defaults.label_folds)
        parser.add_argument("--als-candidates", type=int, default=defaults.als_candidates)
        parser.add_argument("--graph-candidates", type=int, default=defaults.graph_candidates)
        parser.add_argument("--popular-candidates", type=int, default=defaults.popular_candidates)
        parser.add_argument("--ranker-rounds", type=int, default=defaults.ranker_rounds)
        parser.add_argument(
            "--ranker-params",
            type=json.loads,
            default={},
            help="LightGBM parameters over the tuned ones, as JSON (e.g. '{\"num_leaves\": 15}').",
        )
        parser.add_argument("--als-regularization", type=float, default=defaults.als.regularization)
        parser.add_argument("--als-alpha", type=float, default=defaults.als.alpha)
        parser.add_argument("--als-iterations", type=int, default=defaults.als.iterations)

    def handle(self, *args: object, **options: object) -> None:
        # Load every library that brings its own BLAS first: threadpool_limits only limits those already loaded.
        import implicit.als  # noqa: F401
        import lightgbm  # noqa: F401
        from threadpoolctl import threadpool_limits

        path = options["path"]
        defaults = EvaluationConfig()
        config = dataclasses.replace(
            defaults,
            als=dataclasses.replace(
                defaults.als,
                regularization=options["als_regularization"],
                alpha=options["als_alpha"],
                iterations=options["als_iterations"],
            ),
            label_folds=options["label_folds"],
            als_candidates=options["als_candidates"],
            graph_candidates=options["graph_candidates"],
            popular_candidates=options["popular_candidates"],
            ranker_rounds=options["ranker_rounds"],
            ranker_params={**defaults.ranker_params, **options["ranker_params"]},
        )
        try:
            data = movielens_load(folder=path)
        except (MovieLensError, OSError, ValueError) as error:
            raise CommandError(str(error)) from error
        progress = getattr(self.stderr, "_out", sys.stderr)
        try:
            with (
                threadpool_limits(limits=options["threads"]),
                scratch_stores(redis_db=options["redis_db"], keep=options["keep_scratch"]) as stores,
            ):
                progress.write(f"scratch stores: database {stores.database}, {stores.redis_url}\n")
                result = evaluate(
                    data=data,
                    config=config,
                    validation=options["validation"],
                    progress=lambda message: progress.write(message + "\n"),
                )
        except ScratchError as error:
            raise CommandError(str(error)) from error
        document = {"data": str(path), **result.as_dict()}
        self.stdout.write(json.dumps(document, indent=2))
