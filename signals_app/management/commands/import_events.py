import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from personalization.file_import import ImportFileError, checkpoint_path_for
from signals_app.importer import IMPORT_BATCH_SIZE, ImportReport, events_import


class Command(BaseCommand):
    help = (
        "Import historical events into the durable event log (PostgreSQL) from CSV (a header row of event field "
        "names: event_id,type,user_id,session_id,item_id,timestamp,placement,request_id,slot,value,context, the "
        "context as a JSON string) or JSON lines (one event object a line), optionally gzipped. Every row is "
        "validated like the API's events (and must have a timestamp); event ids already in the log are skipped. "
        "Each committed batch's new events also build the Redis online state (recent items, affinities, item "
        "counters, purchased sets), as if they had been received live. Resumable: a checkpoint next to the file "
        "records each committed batch, and running the command again continues from it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path, help=".csv, .jsonl or .ndjson, optionally .gz")
        parser.add_argument("--format", choices=["csv", "jsonl"], help="Instead of guessing from the extension.")
        parser.add_argument("--batch-size", type=int, default=IMPORT_BATCH_SIZE, help="Rows per transaction.")
        parser.add_argument(
            "--rejects", type=Path, help="Write rejected rows here, as JSON lines: {line, errors, row}."
        )
        parser.add_argument("--checkpoint", type=Path, help="Default: FILE.import-checkpoint.json beside the file.")
        parser.add_argument("--restart", action="store_true", help="Ignore the checkpoint and start from the top.")
        parser.add_argument("--max-batches", type=int, help="Stop after this many batches (resume later).")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar on stderr.")
        parser.add_argument(
            "--no-online-state",
            action="store_true",
            help="Store the events in the log only, then run `manage.py rebuild_online_state` once (with ingest "
            "paused): for a large history (a first load) several times faster than applying every batch.",
        )

    def handle(
        self,
        *args: object,
        file: Path,
        format: str | None,
        batch_size: int,
        rejects: Path | None,
        checkpoint: Path | None,
        restart: bool,
        max_batches: int | None,
        no_progress: bool,
        no_online_state: bool,
        **options: object,
    ) -> None:
        if not file.is_file():
            raise CommandError(f"No such file: {file}")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        # The raw stream: tqdm redraws its line with carriage returns, which the command's wrapper would break.
        progress = None if no_progress else getattr(self.stderr, "_out", sys.stderr)
        try:
            report = events_import(
                path=file,
                file_format=format,
                batch_size=batch_size,
                rejects_path=rejects,
                checkpoint_path=checkpoint,
                restart=restart,
                max_batches=max_batches,
                progress=progress,
                online_state=not no_online_state,
            )
        except ImportFileError as error:
            raise CommandError(str(error)) from error
        except KeyboardInterrupt:
            raise CommandError("Interrupted: run the command again to resume after the last committed batch.") from None
        self._summary(report, rejects=rejects, checkpoint=checkpoint or checkpoint_path_for(file))
        if no_online_state:
            self.stdout.write(
                "The online state was left alone: run `manage.py rebuild_online_state` once the import is done."
            )

    def _summary(self, report: ImportReport, *, rejects: Path | None, checkpoint: Path) -> None:
        counts, totals = report.counts, report.totals
        rate = counts.read / report.seconds if report.seconds else 0.0
        if report.resumed_at_line:
            self.stdout.write(f"Resumed after line {report.resumed_at_line}.")
        self.stdout.write(
            f"Read {counts.read}, imported {counts.imported}, duplicates {counts.duplicates}, rejected "
            f"{counts.rejected} in {report.seconds:.1f} s ({rate:,.0f} rows/s)."
        )
        if report.resumed_at_line:
            self.stdout.write(
                f"Since the start of this file: read {totals.read}, imported {totals.imported}, duplicates "
                f"{totals.duplicates}, rejected {totals.rejected}."
            )
        if report.partitions_created:
            self.stdout.write(f"Partitions created: {', '.join(report.partitions_created)}.")
        if report.errors:
            self.stdout.write("First errors:")
            for problem in report.errors:
                self.stdout.write(f"  line {problem.line}: {problem.field}: {problem.message}")
        if counts.rejected and rejects is not None:
            self.stdout.write(f"Rejected rows written to {rejects}.")
        if report.finished:
            self.stdout.write(self.style.SUCCESS("Done: the whole file is in the log."))
        else:
            self.stdout.write(
                f"Stopped after line {report.last_line} ({report.batches} batches); run again to resume "
                f"(checkpoint: {checkpoint})."
            )
