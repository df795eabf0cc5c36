"""Progress and result reporting for people (bars on stderr) and for scripts (JSON lines).

Every command reports through a :class:`Reporter`, so a production line gets the same
events a person sees, one JSON object per line on stdout, while humans get bars with
bytes, rate and ETA on stderr. Output is throttled: a fast link must not be slowed by
its own progress bar.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

_THROTTLE_S = 0.1


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} MiB"  # pragma: no cover


class Reporter:
    """Silent base reporter; subclasses render. Also usable as a null reporter in libraries."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.total: int | None = None
        self.done = 0
        self.started = time.monotonic()
        self.phase_started = self.started

    def phase(self, name: str, total: int | None = None) -> None:
        self._end_phase()
        self.name, self.total, self.done = name, total, 0
        self.phase_started = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n

    def info(self, msg: str) -> None:
        pass

    def warn(self, msg: str) -> None:
        pass

    def result(self, **fields: Any) -> None:
        pass

    def close(self) -> None:
        self._end_phase()
        self.name = None

    def abort(self) -> None:
        """Stop reporting after an error: the current phase did not finish."""
        self.name = None

    def error(self, msg: str, exit_code: int) -> None:
        """An error ends the run (JSON reporters emit it; the CLI prints it for people)."""

    def _end_phase(self) -> None:
        pass

    # helpers for renderers
    def _rate_eta(self) -> tuple[float, float | None]:
        elapsed = max(time.monotonic() - self.phase_started, 1e-6)
        rate = self.done / elapsed
        eta = None
        if self.total and rate > 0:
            eta = max(self.total - self.done, 0) / rate
        return rate, eta


class ConsoleReporter(Reporter):
    """Bars on stderr: redrawn in place on a terminal, one line per phase otherwise."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self._drawn = False

    def phase(self, name: str, total: int | None = None) -> None:
        super().phase(name, total)
        self._last_draw = 0.0
        self._draw(force=True)

    def advance(self, n: int) -> None:
        super().advance(n)
        self._draw()

    def _line(self) -> str:
        rate, eta = self._rate_eta()
        if self.total:
            frac = min(self.done / self.total, 1.0)
            width = 24
            fill = int(frac * width)
            bar = "#" * fill + "-" * (width - fill)
            eta_s = f" ETA {eta:4.1f}s" if eta is not None and self.done < self.total else ""
            return (
                f"{self.name:<7} [{bar}] {frac * 100:5.1f}% {_human(self.done)}/{_human(self.total)}"
                f" {_human(rate)}/s{eta_s}"
            )
        return f"{self.name:<7} {_human(self.done)} {_human(rate)}/s"

    def _draw(self, force: bool = False) -> None:
        if self.quiet or not self.tty or self.name is None:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < _THROTTLE_S:
            return
        self._last_draw = now
        self.stream.write("\r" + self._line().ljust(79)[:120])
        self.stream.flush()
        self._drawn = True

    def _end_phase(self) -> None:
        if self.quiet or self.name is None:
            return
        elapsed = time.monotonic() - self.phase_started
        if self.tty:
            self.stream.write("\r" + self._line().ljust(79)[:120] + "\n")
        elif self.total:
            self.stream.write(f"{self.name}: {_human(self.done)} in {elapsed:.2f}s\n")
        self.stream.flush()
        self._drawn = False

    def abort(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
        super().abort()

    def _print(self, msg: str) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * 79 + "\r")
        self.stream.write(msg + "\n")
        self.stream.flush()
        self._drawn = False
        self._draw(force=True)

    def info(self, msg: str) -> None:
        if not self.quiet:
            self._print(msg)

    def warn(self, msg: str) -> None:
        self._print(f"stmflash: warning: {msg}")

    def result(self, **fields: Any) -> None:
        pass  # commands print their own human summary


class JsonReporter(Reporter):
    """One JSON object per line on stdout: phase, progress, info, warning, result."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stdout
        self._last = 0.0

    def _emit(self, **obj: Any) -> None:
        obj.setdefault("time", round(time.monotonic() - self.started, 3))
        self.stream.write(json.dumps(obj, default=_json_default) + "\n")
        self.stream.flush()

    def phase(self, name: str, total: int | None = None) -> None:
        super().phase(name, total)
        self._emit(event="phase", phase=name, total=total)

    def advance(self, n: int) -> None:
        super().advance(n)
        now = time.monotonic()
        if now - self._last >= 0.25 or (self.total is not None and self.done >= self.total):
            self._last = now
            rate, eta = self._rate_eta()
            self._emit(
                event="progress",
                phase=self.name,
                done=self.done,
                total=self.total,
                rate=round(rate, 1),
                eta=None if eta is None else round(eta, 2),
            )

    def info(self, msg: str) -> None:
        self._emit(event="info", message=msg)

    def warn(self, msg: str) -> None:
        self._emit(event="warning", message=msg)

    def result(self, **fields: Any) -> None:
        self._emit(event="result", **fields)

    def error(self, msg: str, exit_code: int) -> None:
        self._emit(event="error", message=msg, exit_code=exit_code)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return str(obj)


def make_reporter(json: bool = False, quiet: bool = False) -> Reporter:
    """The reporter for a command's ``--json``/``--quiet`` flags."""
    if json:
        return JsonReporter()
    return ConsoleReporter(quiet=quiet)
