"""One registry of the ways into the ROM bootloader (``--enter CHAIN``), for every link.

``--enter`` is a comma-separated chain tried in order until one works, each item
``NAME[:ARG][*N]`` (``*N``: try that one N times before falling back). The same chain
grammar serves ``stmflash uart`` (strategies act on the open serial port, then the ROM is
synced with 0x7F) and ``stmflash dfu`` (strategies make a running application re-enumerate
as the ROM's DFU device). Each strategy says which of the two it can do:

===========  ===========================  =================================
name         serial (``uart``)            USB (``dfu``)
===========  ===========================  =================================
``none``     already in the bootloader    already in DFU mode
``pins``     DTR/RTS on BOOT0/NRST        --
``command``  stmflash trigger frame       --
``1200``     1200-baud touch, then sync   1200-baud touch, wait for df11
``detach``   DFU_DETACH, then sync        DFU_DETACH, wait for df11
===========  ===========================  =================================

This module holds only the registry and the chain grammar; the strategies live with the
code they need (``stmflash.uart.entry``: pins; ``stmflash.trigger.host``: command, 1200,
detach) and are imported when a chain names them, so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from stmflash.errors import UsageError

#: (argument, inverted lines) -> a strategy with ``enter(ser)`` for a serial port
SerialFactory = Callable[[str, frozenset[str]], Any]
#: (argument, timeout seconds) -> a strategy with ``enter() -> UsbSeen | None``
UsbFactory = Callable[[str, float], Any]

SERIAL: dict[str, SerialFactory] = {}
USB: dict[str, UsbFactory] = {}

#: where each built-in strategy registers itself (imported on first use)
PROVIDERS: dict[str, str] = {
    "none": "stmflash.enter",
    "pins": "stmflash.uart.entry",
    "command": "stmflash.trigger.host",
    "1200": "stmflash.trigger.host",
    "detach": "stmflash.trigger.host",
}

MAX_REPEAT = 20


class EntryStrategy:
    """One way into the bootloader over a serial port. ``enter`` acts on the open port; the
    caller then syncs."""

    name = "none"
    #: seconds to wait after ``enter`` before the first 0x7F (ROM start-up)
    settle_s = 0.0

    def enter(self, ser: Any) -> None:
        """Put the chip into its bootloader (nothing: it is assumed to be there)."""

    def exit(self, ser: Any) -> None:
        """Undo/finish at the end of the session (e.g. BOOT0 low + reset)."""

    def can_reset(self) -> bool:
        return False

    def reset(self, ser: Any) -> None:
        raise UsageError(f"entry strategy {self.name!r} cannot reset the chip")

    def describe(self) -> str:
        return self.name


class NoEntry(EntryStrategy):
    """The chip is already in its bootloader (BOOT0 strap, jumper, or a previous session)."""


class NoUsbEntry:
    """``--enter none`` for DFU: the device is expected in DFU mode already."""

    def enter(self) -> None:
        return None


def register(name: str, *, serial: SerialFactory | None = None, usb: UsbFactory | None = None) -> None:
    """Make ``name`` usable in ``--enter`` for a serial port, for USB, or both."""
    key = name.lower()
    if serial is not None:
        SERIAL[key] = serial
    if usb is not None:
        USB[key] = usb


def known() -> list[str]:
    return sorted(set(PROVIDERS) | set(SERIAL) | set(USB))


def _load(key: str) -> None:
    module = PROVIDERS.get(key)
    if module is not None and key not in SERIAL and key not in USB:
        import importlib

        importlib.import_module(module)


def split_repeat(item: str) -> tuple[str, int]:
    """``"pins:rts,-rts*3"`` -> (``"pins:rts,-rts"``, 3): a strategy tried N times before the
    chain falls back (auto-baud misses and slow resets are often cured by trying again)."""
    text = item.rstrip()
    head, star, count = text.rpartition("*")
    if not star or not count.isdigit():
        return item, 1
    n = int(count)
    if not 1 <= n <= MAX_REPEAT:
        raise UsageError(f"--enter {item!r}: repeat count must be 1..{MAX_REPEAT}")
    return head, n


def _is_head(token: str, names: Iterable[str]) -> bool:
    token = split_repeat(token)[0]
    name = token.split(":", 1)[0].strip().lower()
    return name in names and (":" in token or token.strip().lower() == name)


def parse_chain(spec: str | None) -> list[tuple[str, str]]:
    """``--enter`` text -> ``[(name, arg), ...]`` in the order to try, repeats expanded.

    Commas separate strategies, except inside a ``pins:`` sequence (whose steps are also
    separated by commas): a new item starts only at a known strategy name.
    """
    if not spec or not spec.strip():
        return [("none", "")]
    names = set(known())
    groups: list[str] = []
    for part in spec.split(","):
        if not groups or _is_head(part, names):
            groups.append(part)
        else:
            groups[-1] += "," + part
    chain: list[tuple[str, str]] = []
    for group in groups:
        g, times = split_repeat(group)
        name, _, arg = g.partition(":")
        key = name.strip().lower()
        if key not in names:
            raise UsageError(f"unknown --enter strategy {name.strip()!r} (known: {', '.join(known())})")
        chain.extend([(key, arg)] * times)
    return chain


def serial_chain(spec: str | None, invert: Iterable[str] = ()) -> list[Any]:
    """The chain as serial-port strategies (``stmflash uart``)."""
    inv = frozenset(s.lower() for s in invert)
    out = []
    for key, arg in parse_chain(spec):
        _load(key)
        factory = SERIAL.get(key)
        if factory is None:
            raise UsageError(f"--enter {key} works only over USB (stmflash dfu)")
        out.append(factory(arg, inv))
    return out


def usb_chain(spec: str | None, timeout: float) -> list[tuple[str, Any]]:
    """The chain as USB strategies (``stmflash dfu``): ``[(item text, strategy)]``."""
    out = []
    for key, arg in parse_chain(spec):
        _load(key)
        factory = USB.get(key)
        if factory is None:
            raise UsageError(
                f"--enter {key!r} is not a USB entry (use 1200, detach or none; "
                "pins/command need a serial port: stmflash uart)"
            )
        out.append((f"{key}:{arg}" if arg else key, factory(arg, timeout)))
    return out


def failure_summary(failures: list[tuple[str, Exception]]) -> str:
    """Every strategy's failure, not only the last one's."""
    if len(failures) == 1:
        return str(failures[0][1])
    return f"no --enter strategy worked ({len(failures)} tried): " + "; ".join(
        f"{what}: {exc}" for what, exc in failures
    )


register("none", serial=lambda arg, inv: NoEntry(), usb=lambda arg, timeout: NoUsbEntry())

__all__ = [
    "MAX_REPEAT",
    "EntryStrategy",
    "NoEntry",
    "NoUsbEntry",
    "PROVIDERS",
    "failure_summary",
    "known",
    "parse_chain",
    "register",
    "serial_chain",
    "split_repeat",
    "usb_chain",
]
