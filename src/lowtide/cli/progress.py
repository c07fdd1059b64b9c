"""What the command line shows while a batch runs, and how a command that waited for one ends.

``batch submit --wait``, ``batch wait`` and ``run`` share one renderer: a live bar (status,
done / failed / total, rate, ETA) when stderr is a terminal, and plain lines otherwise, so that
CI logs and ``2> log.txt`` stay readable. They also share the exit codes that scripts rely on,
and the way result files are written (a temporary file renamed into place, so that a file
that exists is complete).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from lowtide.cli import EXIT_INTERRUPTED

__all__ = [
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "TERMINAL",
    "BatchProgress",
    "Counts",
    "RateMeter",
    "errors_path_for",
    "exit_code",
    "format_eta",
    "stderr_console",
]

TERMINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})

#: Exit codes of the commands that end with a batch in a terminal state. ``completed`` is 0
#: even when some lines failed: those are in the error file, as the hosted APIs do it.
EXIT_CODES: Final[Mapping[str, int]] = {"completed": 0, "failed": 3, "expired": 4, "cancelled": 5}
#: An API, network or file error (click's own usage errors exit with 2).
EXIT_ERROR: Final = 1


def exit_code(status: str) -> int:
    return EXIT_CODES.get(status, EXIT_ERROR)


def stderr_console() -> Console:
    # highlight=False: rich would otherwise colour numbers and ids in plain messages.
    return Console(stderr=True, highlight=False)


# --------------------------------------------------------------------------- counting


@dataclass(frozen=True, slots=True)
class Counts:
    status: str
    completed: int = 0
    failed: int = 0
    total: int = 0
    #: What holds the batch up, when something does ("waiting for backend X: ...").
    note: str | None = None
    #: Lines a second and seconds left as the server reports them (lowtide's
    #: ``lines_per_minute`` and ``estimated_completion_at``); None: measured here instead.
    rate: float | None = None
    left: float | None = None

    @property
    def done(self) -> int:
        """Lines with a result, in either file."""
        return self.completed + self.failed


class RateMeter:
    """Lines finished per second over the last ``window`` seconds.

    A sliding window rather than the average since start, so that the ETA follows a backend
    that slows down or a batch that was half done when we started watching it.
    """

    def __init__(self, window: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.clock = window, clock
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, done: int) -> None:
        now = self.clock()
        self.samples.append((now, done))
        # Keep one sample older than the window, so the rate spans the whole window.
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        if t1 <= t0 or d1 < d0:
            return None
        return (d1 - d0) / (t1 - t0)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _format_rate(rate: float | None) -> str:
    return "-/s" if rate is None else f"{rate:.1f}/s"


def _eta(counts: Counts, rate: float | None) -> float | None:
    if counts.status in TERMINAL or not counts.total:
        return None
    if counts.left is not None:
        return counts.left
    if not rate:
        return None
    return max(0, counts.total - counts.done) / rate


def _counts_text(counts: Counts) -> str:
    return f"{counts.completed} done · {counts.failed} failed · {counts.total} total"


# --------------------------------------------------------------------------- rendering


class BatchProgress:
    """Show a batch's progress until the block exits: ``with BatchProgress(id) as p: p.update(c)``.

    ``plain_every``: in plain mode, the least seconds between two lines while only the counts
    change (a change of status is always written at once).
    """

    def __init__(
        self, label: str, console: Console | None = None, *, plain_every: float = 5.0
    ) -> None:
        self.label = label
        self.console = console or stderr_console()
        self.plain_every = plain_every
        self.meter = RateMeter()
        # A dumb terminal (TERM=dumb, some CI runners) cannot redraw a line: plain lines there.
        self.live = self.console.is_terminal and not self.console.is_dumb_terminal
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last: Counts | None = None
        self._last_line: str | None = None
        self._last_line_at = 0.0

    def __enter__(self) -> BatchProgress:
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[counts]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA {task.fields[eta]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._task = self._progress.add_task(
                escape(self.label), total=None, counts="", rate="", eta="-"
            )
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
        elif self._last is not None and exc is None:
            self._plain(self._last, force=True)

    def update(self, counts: Counts) -> None:
        self.meter.add(counts.done)
        if self._progress is not None and self._task is not None:
            note = f" [yellow]{escape(counts.note)}[/]" if counts.note else ""
            self._progress.update(
                self._task,
                description=f"{escape(self.label)} [bold]{counts.status}[/]{note}",
                total=counts.total or None,
                completed=counts.done,
                counts=_counts_text(counts),
                rate=_format_rate(self._rate(counts)),
                eta=format_eta(_eta(counts, self._rate(counts))),
            )
        else:
            status_changed = self._last is None or self._last.status != counts.status
            self._plain(counts, force=status_changed)
        self._last = counts

    def _rate(self, counts: Counts) -> float | None:
        """The server's rate where it gives one (it sees every line end), else the one
        measured here from successive looks."""
        return counts.rate if counts.rate is not None else self.meter.rate()

    def _plain(self, counts: Counts, *, force: bool) -> None:
        line = self.plain_line(counts)
        now = time.monotonic()
        due = now - self._last_line_at >= self.plain_every
        if line != self._last_line and (force or due):
            # markup off: a label or status is data, never rich markup.
            self.console.print(line, markup=False, soft_wrap=True)
            self._last_line, self._last_line_at = line, now

    def plain_line(self, counts: Counts) -> str:
        text = f"{self.label}: {counts.status}, {_counts_text(counts).replace(' · ', ', ')}"
        if counts.status in TERMINAL:
            return text
        rate = self._rate(counts)
        text = f"{text}, {_format_rate(rate)}, ETA {format_eta(_eta(counts, rate))}"
        return f"{text}; {counts.note}" if counts.note else text


# --------------------------------------------------------------------------- result files


def errors_path_for(output: Path) -> Path:
    """The error file beside an output file: ``results.jsonl`` -> ``results.errors.jsonl``."""
    return output.with_name(f"{output.stem if output.suffix else output.name}.errors.jsonl")
