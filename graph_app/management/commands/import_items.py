import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from graph_app.catalog_import import (
    ITEM_IMPORT_BATCH_SIZE,
    ITEM_IMPORT_WORKERS,
    STOCK,
    STOCK_IMPORT_BATCH_SIZE,
    ItemImportCounts,
    ItemImportReport,
    items_import,
)
from personalization.errors import ApplicationError
from personalization.file_import import ImportFileError, checkpoint_path_for


class Command(BaseCommand):
    help = (
        "Import a shop's catalog feed: CSV (a header of item fields: item_id,title,description,category,price,"
        "in_stock,availability,brand,attributes,entities; attributes and entities as JSON), JSON lines (one item a "
        "line, as the item batch API takes it) or a Google Merchant Center TSV feed (.tsv or .txt), optionally "
        "gzipped. Rows are validated like the item API's; an item already in the catalog is updated, so importing "
        "a file again changes nothing. A stock feed (only the id with price and/or in_stock or availability; "
        "detected from the header or the first line, or forced with --partial) changes just price and stock of "
        "items already in the catalog. Rows that repeat what the catalog holds are not written again (unless "
        "--rewrite). Resumable: a checkpoint next to the file records each committed batch, and "
        "running the command again continues from it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path, help=".csv, .jsonl, .ndjson, .tsv or .txt (Merchant Center), or .gz")
        parser.add_argument("--format", choices=["csv", "jsonl", "gmc"], help="Instead of guessing from the name.")
        parser.add_argument(
            "--partial", action="store_true", help="A stock feed: change only price and stock, whatever else it has."
        )
        parser.add_argument(
            "--rewrite",
            action="store_true",
            help="Write every row, even one repeating what the catalog holds (e.g. to republish the online catalog).",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            help=f"Rows per transaction (default {ITEM_IMPORT_BATCH_SIZE}, a stock feed {STOCK_IMPORT_BATCH_SIZE}).",
        )
        parser.add_argument(
            "--rejects", type=Path, help="Write rejected rows here, as JSON lines: {line, errors, row}."
        )
        parser.add_argument("--checkpoint", type=Path, help="Default: FILE.import-checkpoint.json beside the file.")
        parser.add_argument("--restart", action="store_true", help="Ignore the checkpoint and start from the top.")
        parser.add_argument("--max-batches", type=int, help="Stop after this many batches (resume later).")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar on stderr.")
        parser.add_argument(
            "--workers",
            type=int,
            default=ITEM_IMPORT_WORKERS,
            help=f"Processes running batches side by side, each with its own database connection (default "
            f"{ITEM_IMPORT_WORKERS}; 1: batches run in this process).",
        )
        parser.add_argument(
            "--bulk-load",
            action="store_true",
            help="For a large load of new items (e.g. a first catalog): drop the items' vector index during "
            "the import and build it once after it, many times faster than inserting each new vector into it. "
            "Vector searches stay right meanwhile, only slower (exact).",
        )

    def handle(
        self,
        *args: object,
        file: Path,
        format: str | None,
        partial: bool,
        rewrite: bool,
        batch_size: int | None,
        rejects: Path | None,
        checkpoint: Path | None,
        restart: bool,
        max_batches: int | None,
        no_progress: bool,
        bulk_load: bool,
        workers: int,
        **options: object,
    ) -> None:
        if not file.is_file():
            raise CommandError(f"No such file: {file}")
        if batch_size is not None and batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        if workers < 1:
            raise CommandError("--workers must be at least 1.")
        # The raw stream: tqdm redraws its line with carriage returns, which the command's wrapper would break.
        progress = None if no_progress else getattr(self.stderr, "_out", sys.stderr)
        try:
            report = items_import(
                path=file,
                file_format=format,
                partial=partial,
                rewrite=rewrite,
                batch_size=batch_size,
                rejects_path=rejects,
                checkpoint_path=checkpoint,
                restart=restart,
                max_batches=max_batches,
                progress=progress,
                bulk_load=bulk_load,
                workers=workers,
            )
        except ImportFileError as error:
            raise CommandError(str(error)) from error
        except ApplicationError as error:
            # The catalog refused a whole batch (its constraints): nothing of it was stored.
            raise CommandError(
                f"The catalog refused a batch ({error.message}); run again to resume after the last committed one."
            ) from error
        except KeyboardInterrupt:
            raise CommandError("Interrupted: run the command again to resume after the last committed batch.") from None
        self._summary(report, rejects=rejects, checkpoint=checkpoint or checkpoint_path_for(file))

    def _summary(self, report: ItemImportReport, *, rejects: Path | None, checkpoint: Path) -> None:
        if report.mode == STOCK:
            self.stdout.write("A stock feed: only price and stock change, of items already in the catalog.")
        if report.resumed_at_line:
            self.stdout.write(f"Resumed after line {report.resumed_at_line}.")
        rate = report.counts.read / report.seconds if report.seconds else 0.0
        self.stdout.write(f"{self._counts(report, report.counts)} in {report.seconds:.1f} s ({rate:,.0f} rows/s).")
        if report.resumed_at_line:
            self.stdout.write(f"Since the start of this file: {self._counts(report, report.totals)}.")
        if report.errors:
            self.stdout.write("First problems:")
            for problem in report.errors:
                self.stdout.write(f"  line {problem.line}: {problem.field}: {problem.message}")
        if (report.counts.rejected or report.counts.missing) and rejects is not None:
            self.stdout.write(f"Rejected rows written to {rejects}.")
        if report.index_seconds:
            self.stdout.write(f"Vector index built again in {report.index_seconds:.1f} s.")
        if report.finished:
            self.stdout.write(self.style.SUCCESS("Done: the whole file is in the catalog."))
        else:
            self.stdout.write(
                f"Stopped after line {report.last_line} ({report.batches} batches); run again to resume "
                f"(checkpoint: {checkpoint})."
            )

    @staticmethod
    def _counts(report: ItemImportReport, counts: ItemImportCounts) -> str:
        again = f", repeated in a batch {counts.repeated}" if counts.repeated else ""
        if report.mode == STOCK:
            return (
                f"Read {counts.read}, updated {counts.updated}, unchanged {counts.unchanged}, not in the catalog "
                f"{counts.missing}, rejected {counts.rejected}{again}"
            )
        return (
            f"Read {counts.read}, created {counts.created}, updated {counts.updated}, unchanged {counts.unchanged}, "
            f"rejected {counts.rejected}{again}"
        )
