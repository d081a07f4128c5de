"""What a person sees in the terminal: one line per step, a progress bar per long step, the headline figures.

Ray, its libraries and the worker processes print a great deal (progress bars of internal
datasets, worker logs, Tune's status tables). While a command runs inside `Console.capture`,
everything written to the process's stdout and stderr (file descriptors 1 and 2, so C++ logs and
forwarded worker output too) goes to the run directory's log file instead, and the console keeps
the original terminal for drray's own lines, its progress bars, and drray's warnings and errors.
The last line of a command names the log file; nothing is thrown away.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import IO, Iterator

from drray import storage

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Console:
    """Lines and progress bars for the terminal, and the capture of everything else into a log file."""

    def __init__(self, stream: IO[str] | None = None, quiet: bool = False):
        self._stream = stream
        self.quiet = quiet
        self.log_path: str | None = None
        self._t0 = time.perf_counter()

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    def print(self, *parts: object, end: str = "\n") -> None:
        if not self.quiet:
            print(*parts, end=end, file=self.stream, flush=True)

    def step(self, index: int, total: int, name: str, what: str) -> "Step":
        """A step line `[i/n] name  what` whose end is printed by `Step.done`."""
        return Step(self, f"[{index}/{total}] {name:<9}", what)

    def progress(self, total: int | None, desc: str, unit: str = "it"):
        """A tqdm bar on the terminal (shown only on an interactive terminal; CI logs get the step lines)."""
        from tqdm.auto import tqdm

        interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        return tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=False, dynamic_ncols=True,
                    disable=self.quiet or not interactive or bool(os.environ.get("TQDM_DISABLE")))

    @contextlib.contextmanager
    def capture(self, run_dir: str | os.PathLike, verbose: bool = False) -> Iterator["Console"]:
        """Send fds 1 and 2 (and every logger) to RUN/logs/drray.log; keep the terminal for this console.

        drray's own warnings still reach the terminal. A run directory on object storage gets the
        log uploaded when the command ends.
        """
        from drray.rundir import RunDir

        run = RunDir(run_dir)
        remote = storage.is_uri(run.root)
        local_log = (os.path.join(tempfile.mkdtemp(prefix="drray-log-"), "drray.log") if remote
                     else os.path.abspath(run.log_file))
        os.makedirs(os.path.dirname(local_log), exist_ok=True)
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        saved_out, saved_err = os.dup(1), os.dup(2)
        terminal = io.TextIOWrapper(os.fdopen(os.dup(saved_out), "wb", buffering=0), write_through=True,
                                    line_buffering=True)
        terminal_err = io.TextIOWrapper(os.fdopen(os.dup(saved_err), "wb", buffering=0), write_through=True,
                                        line_buffering=True)
        log_file = open(local_log, "a", buffering=1)
        old_stream, self._stream = self._stream, terminal
        root = logging.getLogger()
        handlers = _install_handlers(root, log_file, terminal_err, verbose)
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        self.log_path = run.log_file
        try:
            yield self
        finally:
            for s in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    s.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            for h in handlers:
                root.removeHandler(h)
            self._stream = old_stream
            log_file.close()
            terminal.close()
            terminal_err.close()
            if remote:
                storage.write_bytes(run.log_file, open(local_log, "rb").read())
                shutil.rmtree(os.path.dirname(local_log), ignore_errors=True)


class _DrrayWarnings(logging.Filter):
    """drray's warnings and errors (never Ray's chatter) for the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "drray" or record.name.startswith("drray.")


def _install_handlers(root: logging.Logger, log_file: IO[str], terminal_err: IO[str], verbose: bool):
    to_file = logging.StreamHandler(log_file)
    to_file.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    to_file.setLevel(logging.DEBUG if verbose else logging.INFO)
    to_terminal = logging.StreamHandler(terminal_err)
    to_terminal.setFormatter(logging.Formatter("   %(levelname)s: %(message)s"))
    to_terminal.setLevel(logging.DEBUG if verbose else logging.WARNING)
    to_terminal.addFilter(_DrrayWarnings())
    root.addHandler(to_file)
    root.addHandler(to_terminal)
    root.setLevel(min(root.level or logging.WARNING, logging.DEBUG if verbose else logging.INFO))
    logging.captureWarnings(True)  # Python warnings go to the log (py.warnings logger) with the rest
    return [to_file, to_terminal]


class Step:
    """One step line: the name when it starts, the outcome and its time when it ends."""

    def __init__(self, console: Console, head: str, what: str):
        self.console, self.head, self.what = console, head, what
        self.start = time.perf_counter()
        console.print(f"{head} {what}")

    def done(self, outcome: str, *where: object) -> None:
        seconds = time.perf_counter() - self.start
        to = f" -> {', '.join(str(w) for w in where)}" if where else ""
        self.console.print(f"{' ' * len(self.head)} {outcome} ({_duration(seconds)}){to}")


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
