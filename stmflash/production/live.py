"""Batch output: one event stream, three renderings.

Workers only emit events (``emit(event, target, **fields)``); this module renders them as
JSON lines on stdout (``--json``, for the line's MES), as a live table with one line per
target on a terminal, or as plain timestamped lines when stderr is a log file. Keeping
workers ignorant of rendering is what lets 16 threads share one terminal.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from stmflash.progress import Reporter

_REDRAW_S = 0.1


@dataclass
class _Row:
    target: str
    phase: str = "waiting"
    done: int = 0
    total: int | None = None
    result: str = ""
    detail: str = ""

    def line(self, width: int) -> str:
        if self.result:
            state = self.result.upper()
        elif self.total:
            state = f"{self.phase:<8} {min(100.0, 100.0 * self.done / self.total):5.1f}%"
        else:
            state = self.phase
        return f"{self.target[:width]:<{width}}  {state:<16} {self.detail}"[:160]


def _default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


class Events:
    """Thread-safe sink for batch events."""

    def __init__(self, *, json_out: bool = False, stdout: TextIO | None = None, stderr: TextIO | None = None,
                 live: bool | None = None, quiet: bool = False) -> None:
        self.json_out = json_out
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.quiet = quiet
        if live is None:
            live = bool(getattr(self.stderr, "isatty", lambda: False)())
        self.live = live and not quiet
        self._lock = threading.Lock()
        self._rows: dict[str, _Row] = {}
        self._drawn_lines = 0
        self._last_draw = 0.0
        self._dirty = False
        self.started = time.monotonic()
        self.passed = 0
        self.failed = 0
        self.history: list[dict[str, Any]] = []  # every event (tests, summaries)

    # ---- API for workers --------------------------------------------------------------
    def emit(self, event: str, target: str | None = None, **fields: Any) -> None:
        obj: dict[str, Any] = {"event": event}
        if target is not None:
            obj["target"] = target
        obj.update(fields)
        obj["time"] = round(time.monotonic() - self.started, 3)
        with self._lock:
            if event != "progress":
                self.history.append(obj)
            if event == "board":
                if fields.get("result") == "passed":
                    self.passed += 1
                else:
                    self.failed += 1
            if self.json_out:
                self.stdout.write(json.dumps(obj, default=_default) + "\n")
                self.stdout.flush()
            if target is not None:
                self._update_row(event, target, fields)
            self._render(obj)

    def reporter(self, target: str) -> TargetReporter:
        return TargetReporter(self, target)

    def close(self) -> None:
        with self._lock:
            if self.live and self._dirty:
                self._draw(force=True)

    # ---- rendering --------------------------------------------------------------------
    def _update_row(self, event: str, target: str, f: dict[str, Any]) -> None:
        row = self._rows.setdefault(target, _Row(target))
        if event == "phase":
            row.phase, row.total, row.done, row.result = f.get("phase", ""), f.get("total"), 0, ""
        elif event == "progress":
            row.done, row.total = f.get("done", row.done), f.get("total", row.total)
        elif event == "board":
            row.result = f.get("result", "")
            if row.result == "passed":
                row.detail = " ".join(x for x in (f.get("serial"), f.get("uid") and f"uid {f['uid']}") if x)
            else:
                row.detail = f.get("error", "")
            row.phase = "done"
        elif event == "waiting":
            row.phase, row.result, row.total, row.detail = "waiting", "", None, f.get("message", "")
        elif event == "attempt" and f.get("attempt", 1) > 1:
            row.detail = f"retry {f['attempt'] - 1}: {f.get('error', '')}"
        elif event == "identified":
            row.detail = f"{f.get('device', '')} {f.get('serial') or ''}".strip()

    def _render(self, obj: dict[str, Any]) -> None:
        if self.quiet:
            # errors, failed boards and the summary still reach a person watching stderr
            failed_board = obj["event"] == "board" and obj.get("result") != "passed"
            if not self.json_out and (obj["event"] in ("error", "summary") or failed_board):
                self.stderr.write(self._plain(obj) + "\n")
                self.stderr.flush()
            return
        if self.live:
            if obj["event"] in ("warning", "error", "summary", "info"):
                self._clear()
                self.stderr.write(self._plain(obj) + "\n")
                self._drawn_lines = 0
                self._draw(force=True)
            else:
                self._draw(force=obj["event"] != "progress")
            return
        if self.json_out and obj["event"] not in ("warning", "error", "summary"):
            return  # stdout already carries everything; keep stderr for problems
        if obj["event"] in ("progress",):
            return
        self.stderr.write(self._plain(obj) + "\n")
        self.stderr.flush()

    def _plain(self, obj: dict[str, Any]) -> str:
        ev = obj["event"]
        t = obj.get("target")
        head = f"[{obj['time']:8.2f}] {t}: " if t else f"[{obj['time']:8.2f}] "
        if ev == "phase":
            total = obj.get("total")
            return head + f"{obj.get('phase')}" + (f" ({total} bytes)" if total else "")
        if ev == "board":
            if obj.get("result") == "passed":
                extra = f" serial {obj['serial']}" if obj.get("serial") else ""
                return head + f"PASSED uid {obj.get('uid', '')}{extra} in {obj.get('duration_s', 0):.2f}s"
            return head + f"FAILED: {obj.get('error', '')}"
        if ev in ("warning", "error"):
            return head + f"{ev}: {obj.get('message', '')}"
        if ev == "summary":
            return head + (
                f"summary: {obj.get('passed', 0)} passed, {obj.get('failed', 0)} failed of {obj.get('boards', 0)}"
                + (f"; report {obj['report']}" if obj.get("report") else "")
            )
        rest = {k: v for k, v in obj.items() if k not in ("event", "target", "time")}
        detail = rest.pop("message", "")
        tail = " ".join(f"{k}={v}" for k, v in rest.items())
        return head + " ".join(x for x in (ev, str(detail), tail) if x)

    def _clear(self) -> None:
        if self._drawn_lines:
            self.stderr.write(f"\x1b[{self._drawn_lines}F\x1b[J")
            self._drawn_lines = 0

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < _REDRAW_S:
            self._dirty = True
            return
        self._last_draw = now
        self._dirty = False
        width = max((len(t) for t in self._rows), default=8)
        width = min(max(width, 8), 40)
        lines = [r.line(width) for r in self._rows.values()]
        lines.append(f"passed {self.passed}  failed {self.failed}  elapsed {now - self.started:6.1f}s")
        self._clear()
        self.stderr.write("\n".join(lines) + "\n")
        self.stderr.flush()
        self._drawn_lines = len(lines)


class TargetReporter(Reporter):
    """The pipeline's Reporter for one target: progress becomes batch events."""

    def __init__(self, events: Events, target: str) -> None:
        super().__init__()
        self.events = events
        self.target = target
        self._last = 0.0
        self.durations: dict[str, float] = {}  # seconds per phase, for the run record

    def phase(self, name: str, total: int | None = None) -> None:
        self._clock()
        super().phase(name, total)
        self.events.emit("phase", self.target, phase=name, total=total)

    def close(self) -> None:
        self._clock()
        super().close()

    def _clock(self) -> None:
        now = time.monotonic()
        if self.name is not None:
            self.durations[self.name] = self.durations.get(self.name, 0.0) + now - self.phase_started
        self.phase_started = now

    def take_durations(self) -> dict[str, float]:
        """Phase durations since the last call (one board attempt), rounded to ms."""
        self._clock()
        out = {k: round(v, 3) for k, v in self.durations.items()}
        self.durations = {}
        return out

    def advance(self, n: int) -> None:
        super().advance(n)
        now = time.monotonic()
        if now - self._last >= 0.2 or (self.total is not None and self.done >= self.total):
            self._last = now
            self.events.emit("progress", self.target, phase=self.name, done=self.done, total=self.total)

    def info(self, msg: str) -> None:
        self.events.emit("info", self.target, message=msg)

    def warn(self, msg: str) -> None:
        self.events.emit("warning", self.target, message=msg)

    def result(self, **fields: Any) -> None:
        self.events.emit("programmed", self.target, **fields)
