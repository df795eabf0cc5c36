"""``--trace FILE``: every byte on the wire and every USB control transfer, with timestamps.

What a user attaches to a bug report. One line per event, time in seconds since the trace
started, then the direction and the data in hex::

       0.000812  uart >  7f
       0.001033  uart <  79
       0.101544  uart    dtr=0
       0.204410  usb  >  21 01 wValue=0x0002 wIndex=0 len=2048  (DNLOAD)
       0.205101  usb  <  a1 03 wValue=0x0000 wIndex=0 -> 00 00 00 00 05 00  (GETSTATUS)

``>`` is host to chip, ``<`` chip to host. ``FILE`` is ``-`` for stderr. UART tracing wraps
the open serial port (:class:`TracedSerial`); USB tracing is the hook the DFU protocol calls
for each control transfer (:func:`usb`), active while a :class:`Tracer` is installed.

``stmflash batch --trace`` programs boards in parallel threads, so each worker thread installs
its own tracer (:func:`for_thread`, from a :class:`BatchTrace`): either one file per board in
a directory, or one shared log whose every line starts with the board's target, so that the
traffic of boards in parallel never interleaves unreadably::

       /dev/ttyUSB0     0.000812  uart >  7f
       /dev/ttyUSB1     0.000840  uart >  7f
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

_current: Tracer | None = None
_local = threading.local()  # a worker thread's own tracer (batch --trace)

_DFU_REQUESTS = {0: "DETACH", 1: "DNLOAD", 2: "UPLOAD", 3: "GETSTATUS", 4: "CLRSTATUS", 5: "GETSTATE", 6: "ABORT"}


class Tracer:
    """Writes trace lines to ``out``; ``prefix`` (a board's target) starts every line, and
    tracers sharing one ``out`` share its ``lock`` and time origin ``t0``."""

    def __init__(self, out: IO[str], *, prefix: str = "", lock: Any = None, t0: float | None = None) -> None:
        self.out = out
        self.prefix = prefix
        self.t0 = time.perf_counter() if t0 is None else t0
        self.lock = lock if lock is not None else threading.Lock()

    def line(self, link: str, direction: str, text: str) -> None:
        with self.lock:
            self.out.write(f"{self.prefix}{time.perf_counter() - self.t0:12.6f}  {link:<4} {direction:<2} {text}\n")
            self.out.flush()

    def data(self, link: str, direction: str, data: bytes) -> None:
        if data:
            self.line(link, direction, data.hex(" "))


def open_trace(path: str) -> Tracer:
    """Install a tracer writing to ``path`` (``-``: stderr)."""
    global _current
    out = sys.stderr if path == "-" else open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
    _current = Tracer(out)
    return _current


def current() -> Tracer | None:
    """The tracer for this thread: its own (batch boards), else the process's (None: not tracing)."""
    return getattr(_local, "tracer", None) or _current


def wrap(ser: Any) -> Any:
    """``ser`` traced when a tracer is installed, else ``ser`` itself."""
    tracer = current()
    return TracedSerial(ser, tracer) if tracer is not None else ser


@contextlib.contextmanager
def for_thread(tracer: Tracer | None) -> Iterator[None]:
    """Install ``tracer`` for the calling thread only (None: leave tracing as it is)."""
    old = getattr(_local, "tracer", None)
    _local.tracer = tracer if tracer is not None else old
    try:
        yield
    finally:
        _local.tracer = old


class BatchTrace:
    """``batch --trace PATH``: a tracer per board.

    An existing directory gets one file per target (``<target>.trace``, the target's name
    with every character other than letters, digits, ``.``, ``-`` and ``_`` replaced by
    ``_``); a file (or ``-``, stderr) gets one log with every line prefixed by the target.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.directory = path != "-" and os.path.isdir(path)
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        self._files: dict[str, IO[str]] = {}
        self._shared: IO[str] | None = None
        if not self.directory:
            self._shared = sys.stderr if path == "-" else open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def file_for(self, label: str) -> str:
        """The file a board's trace goes to in directory mode."""
        name = re.sub(r"[^A-Za-z0-9._-]", "_", label).strip("._") or "board"
        return os.path.join(self.path, name + ".trace")

    def board(self, label: str, width: int = 0) -> Tracer:
        """The tracer for the board on target ``label``."""
        with self._lock:
            if self.directory:
                out = self._files.get(label)
                if out is None:
                    path, n = self.file_for(label), 1
                    taken = {f.name for f in self._files.values()}
                    while path in taken:  # two targets that spell alike: -2, -3, ...
                        n += 1
                        path = self.file_for(label)[: -len(".trace")] + f"-{n}.trace"
                    out = self._files[label] = open(path, "w", encoding="utf-8")  # noqa: SIM115
                return Tracer(out, t0=self._t0)
            assert self._shared is not None
            return Tracer(self._shared, prefix=f"{label:<{width}}  ", lock=self._lock, t0=self._t0)

    def close(self) -> None:
        with self._lock:
            for out in self._files.values():
                out.close()
            self._files.clear()
            if self._shared is not None and self._shared is not sys.stderr:
                self._shared.close()
            self._shared = None


def close() -> None:
    global _current
    tracer, _current = _current, None
    if tracer is not None and tracer.out is not sys.stderr:
        tracer.out.close()


def usb(rtype: int, req: int, value: int, index: int, data_or_len: Any, result: Any) -> None:
    """The DFU protocol's hook: one control transfer and its answer."""
    tracer = current()
    if tracer is None:
        return
    name = _DFU_REQUESTS.get(req, "")
    head = f"{rtype:02x} {req:02x} wValue=0x{value:04x} wIndex={index}"
    if rtype & 0x80:  # device to host
        got = bytes(result) if result is not None else b""
        shown = got[:32].hex(" ") + (" ..." if len(got) > 32 else "")
        tracer.line("usb", "<", f"{head} -> {shown}  ({name}, {len(got)} bytes)")
    else:
        sent = bytes(data_or_len) if data_or_len else b""
        shown = sent[:32].hex(" ") + (" ..." if len(sent) > 32 else "")
        tracer.line("usb", ">", f"{head} len={len(sent)} {shown}  ({name})")


class TracedSerial:
    """A serial port that writes every byte and control-line change to the tracer."""

    def __init__(self, ser: Any, tracer: Tracer) -> None:
        object.__setattr__(self, "_ser", ser)
        object.__setattr__(self, "_tracer", tracer)

    def write(self, data: bytes) -> int:
        self._tracer.data("uart", ">", bytes(data))
        return self._ser.write(data)

    def read(self, size: int = 1) -> bytes:
        got = self._ser.read(size)
        self._tracer.data("uart", "<", bytes(got))
        return got

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ser, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("dtr", "rts", "break_condition", "baudrate", "parity"):
            self._tracer.line("uart", "", f"{name}={int(value) if isinstance(value, bool) else value}")
        setattr(self._ser, name, value)


__all__ = ["BatchTrace", "TracedSerial", "Tracer", "close", "current", "for_thread", "open_trace", "usb", "wrap"]
