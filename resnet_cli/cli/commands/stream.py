"""The one loop every command runs over an engine (RecordStream: signals installed, a progress bar on a
terminal, a stderr line per failure, the engine closed at the end, the exit code decided once), and the writing
of records that classify and explain share (write_records: the format, the output file, the report).

    with RecordStream(job, "embedding") as stream:
        for record in stream:
            ...
    code = stream.exit_code(failed)
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO, Callable, TextIO

from ...core.console import eprint, isatty, printable, progress_bar
from ...run.job import Job
from ...core.records import Failure, Record
from ...core.signals import StopSignals
from ...outputs.writers import Format, open_writer

if TYPE_CHECKING:
    from ...outputs.resume import Resume


def failure_line(rec: Failure) -> str:
    """A failure's stderr line: the path and the message (an HTTP reason phrase, a label) with control characters
    escaped, so nothing a file or a server says can drive the terminal."""
    return f"{printable(rec.path)}: {rec.type}: {printable(rec.message.replace(chr(10), ' '))}"


class RecordStream:
    """Iterates a job's records. `bar`: whether a progress bar may be drawn (it is, on a terminal stderr,
    unless the job is quiet); `failure_lines`: whether each failure gets its stderr line (never when quiet);
    `total`: the bar's total when the job's listing cannot tell it."""

    def __init__(self, job: Job, description: str, *, bar: bool = True, failure_lines: bool = True,
                 total: int | None = None, stderr: TextIO | None = None, records=None) -> None:
        self.job = job
        self.description = description
        self.stderr = stderr or sys.stderr
        self.failure_lines = failure_lines and not job.options.quiet
        self.show_bar = bar and not job.options.quiet and isatty(self.stderr)
        self.total = total
        self._records = records  # a stream made from the engine's (resume's reordering), else the engine's
        self.signals = StopSignals()
        self.bar = None
        self._announcer: threading.Thread | None = None

    def __enter__(self) -> "RecordStream":
        from ...run import engines

        self._installed = self.signals.installed()
        self._installed.__enter__()
        if self._records is None:
            self._records = engines.records(self.job, self.signals.event)
        elif callable(self._records):
            self._records = self._records(engines.records(self.job, self.signals.event))
        return self

    def __iter__(self) -> Iterator[Record]:
        task = None
        for rec in self._records:
            if self.show_bar and self.bar is None:  # after the first record: nothing to show while loading
                self.bar = progress_bar(self.stderr)
                self.bar.start()
                task = self.bar.add_task(self.description, total=self._total())
                self.signals.say = self._announce_stop
            if not rec.ok and self.failure_lines:
                self.say(failure_line(rec))
            yield rec
            if self.bar is not None:
                self.bar.update(task, advance=1, total=self._total())

    def _total(self) -> int | None:
        return self.total if self.total is not None else self.job.inputs.total

    def say(self, line: str) -> None:
        """A message on stderr that does not garble the progress bar."""
        if self.bar is not None:
            self.bar.console.print(f"resnet-classify: {line}", markup=False, highlight=False)
        else:
            eprint(line, self.stderr)

    def _announce_stop(self, text: str) -> None:
        """The first Ctrl-C's line while the bar is live. Called in the signal handler, which may have
        interrupted the main thread inside a write to the bar's console: a thread of its own prints the line
        through that console (rich puts it above the bar) and then stops the bar (no more redraws of a run
        that is ending)."""
        bar = self.bar

        def announce() -> None:
            bar.console.print(text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
            bar.stop()

        self._announcer = threading.Thread(target=announce, name="announce-stop", daemon=True)
        self._announcer.start()

    def __exit__(self, *exc) -> None:
        try:
            if self._announcer is not None:
                self._announcer.join(timeout=5)  # the stopping line comes before the run's last words
            if hasattr(self._records, "close"):
                self._records.close()  # the engine lets go of its threads and its cluster now
            if self.bar is not None:
                self.bar.stop()
        finally:
            self._installed.__exit__(*exc)

    @property
    def interrupted(self) -> bool:
        return self.signals.signum is not None

    def exit_code(self, failed: int) -> int:
        return int(self.signals.exit_code(failed))


def write_records(job: Job, fmt: Format, output: str | None, previous: Resume | None = None, *,
                  stdout: BinaryIO | None = None, stderr: TextIO | None = None, report: str | None = None,
                  each: Callable[[Record], Record] | None = None, description: str = "classifying",
                  title: str = "resnet-classify classify") -> int:
    """Classify the job's inputs and write the records (with `previous`, what --resume keeps, each record in
    its place); returns the exit code. The output is opened only once the engine has its first record (a usage
    error while the model loads leaves an earlier --output as it was), and finished (renamed into place) even
    when the run is interrupted, unless it resumes and was stopped before the kept records were confirmed
    (resume.Resume); an unexpected error leaves an earlier file untouched. `report`: also an HTML
    page (report.py), finished like the output. `each`: what a command does to each record before it is
    written (explain writes the overlay); `description` names the work on the progress bar, `title` the
    report."""
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr
    reorder = None if previous is None else (lambda records: previous.in_input_order(records, job.inputs))

    color = isatty(stdout) if fmt is Format.table and not output else False
    # A bar when results go elsewhere: results printed on the same terminal show the progress themselves, and a
    # bar redrawn between them would garble both. A table on the terminal already shows each failure in its
    # place, in red: the same line again on stderr, the same terminal, would only repeat it.
    stream = RecordStream(job, description, bar=not (isatty(stdout) and not output),
                          failure_lines=not (color and isatty(stderr)), stderr=stderr, records=reorder)
    explain = job.task.name == "explain"  # the csv writer adds the explanation's columns
    writer, failed, ok = None, 0, False
    page = None
    if report:
        from ...outputs.report import HtmlReport

        page = HtmlReport(report, title=title, subtitle=f"{job.weights.arch.name}, {job.weights.name}")
    with stream:
        try:
            for rec in stream:
                if each is not None:
                    done = each(rec)
                    if rec.ok and not done.ok and stream.failure_lines:  # its file could not be written
                        stream.say(failure_line(done))
                    rec = done
                if writer is None:
                    writer = open_writer(fmt, output, stdout=stdout, color=color, replace=previous is not None,
                                         explain=explain)
                writer.write(rec)
                if page is not None:
                    page.add(rec)
                failed += not rec.ok
            if writer is None:
                writer = open_writer(fmt, output, stdout=stdout, color=color, replace=previous is not None,
                                     explain=explain)
            ok = previous is None or previous.confirmed
        finally:
            if writer is not None:
                writer.close(ok=ok)
            if page is not None:
                page.close(ok=ok)
        code = stream.exit_code(failed)
    if writer.count == 0 and fmt is Format.table and not job.options.quiet:
        eprint("no images to classify", stderr)
    if stream.interrupted and not ok:  # even with --quiet
        eprint(f"interrupted before a kept result could be checked against this run: {output} is left as it was",
               stderr)
    elif stream.interrupted:  # even with --quiet: the user must learn how to continue
        where = f" to {output}" if output else ""
        if output and not explain:
            where += "; add --resume to the same command to continue"
        eprint(f"interrupted: {writer.count} record{'s' if writer.count != 1 else ''} written{where}", stderr)
    return code
