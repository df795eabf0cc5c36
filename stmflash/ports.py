"""Open any serial port the user can name: device path, pyserial URL, or ``sim://DEVICE``.

The virtual STM32 is a pyserial URL handler (``stmflash.sim.protocol_sim``), so every
tool that takes a port also works without a board; registering it here keeps that true
for library users too.
"""

from __future__ import annotations

import os
from typing import Any

_PARITY = {"even": "E", "none": "N", "odd": "O", "e": "E", "n": "N", "o": "O"}


def _register_sim() -> None:
    import serial

    if "stmflash.sim" not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append("stmflash.sim")


def open_port(
    port: str,
    *,
    baud: int = 115200,
    parity: str = "even",
    timeout: float = 0.5,
    **kwargs: Any,
) -> Any:
    """A configured, open ``serial.Serial`` (8 data bits, 1 stop bit).

    A missing or unusable port raises :class:`~stmflash.errors.LinkError` naming it.
    """
    import serial

    from stmflash.errors import LinkError, UsageError

    _register_sim()
    par = _PARITY.get(parity.lower())
    if par is None:
        raise UsageError(f"bad parity {parity!r} (use even or none)")
    if "://" not in port and not os.path.exists(port) and not port.upper().startswith("COM"):
        raise LinkError(f"serial port {port} does not exist")

    # pyserial's rfc2217 client refuses write_timeout; elsewhere it keeps a stalled adapter
    # (flow control stuck, unplugged mid-write) from hanging the flash forever
    extra: dict[str, Any] = {} if port.lower().startswith("rfc2217://") else {"write_timeout": max(timeout, 5.0)}

    def _open(p: str) -> Any:
        return serial.serial_for_url(
            port,
            baudrate=baud,
            parity=p,
            bytesize=8,
            stopbits=1,
            timeout=timeout,
            **extra,
            **kwargs,
        )

    try:
        try:
            ser = _open(par)
        except Exception:
            # a Linux pseudo-terminal (the simulator's pty server, socat) refuses PARENB
            # after its first client and ignores parity anyway: open it 8N1
            if par != "N" and is_pty(port):
                ser = _open("N")
            else:
                raise
    except ValueError as exc:
        raise UsageError(f"cannot open {port}: {exc}") from None
    except Exception as exc:  # SerialException, OSError, termios.error
        raise LinkError(f"cannot open serial port {port}: {_why(exc)}") from None
    return ser


def is_pty(port: str) -> bool:
    """True for a pseudo-terminal slave (``/dev/pts/N``, or a link to one)."""
    if "://" in port:
        return False
    try:
        return os.path.realpath(port).startswith("/dev/pts/")
    except OSError:
        return False


def _why(exc: Exception) -> str:
    text = str(exc)
    # pyserial repeats the errno text with the path; keep it to one readable clause
    if "No such file" in text or "could not open port" in text and "Errno 2" in text:
        return "no such port"
    if "Permission denied" in text or "Errno 13" in text:
        return "permission denied (is your user in the dialout group?)"
    if "busy" in text.lower() or "Errno 16" in text:
        return "port is busy (another program has it open)"
    return text.splitlines()[0] if text else exc.__class__.__name__


def port_name(ser: Any) -> str:
    """The name the user gave for an open port (for error messages)."""
    return str(getattr(ser, "name", None) or getattr(ser, "port", None) or "the serial port")
