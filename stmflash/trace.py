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
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

_current: Tracer | None = None

_DFU_REQUESTS = {0: "DETACH", 1: "DNLOAD", 2: "UPLOAD", 3: "GETSTATUS", 4: "CLRSTATUS", 5: "GETSTATE", 6: "ABORT"}


class Tracer:
    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.t0 = time.perf_counter()
        self.lock = threading.Lock()

    def line(self, link: str, direction: str, text: str) -> None:
        with self.lock:
            self.out.write(f"{time.perf_counter() - self.t0:12.6f}  {link:<4} {direction:<2} {text}\n")
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
    """The installed tracer (None: not tracing)."""
    return _current


def wrap(ser: Any) -> Any:
    """``ser`` traced when a tracer is installed, else ``ser`` itself."""
    return TracedSerial(ser, _current) if _current is not None else ser


def close() -> None:
    global _current
    tracer, _current = _current, None
    if tracer is not None and tracer.out is not sys.stderr:
        tracer.out.close()


def usb(rtype: int, req: int, value: int, index: int, data_or_len: Any, result: Any) -> None:
    """The DFU protocol's hook: one control transfer and its answer."""
    tracer = _current
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


__all__ = ["TracedSerial", "Tracer", "close", "current", "open_trace", "usb", "wrap"]
