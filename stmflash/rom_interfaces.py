"""Which interfaces and pins a part's ROM bootloader listens on (ST AN2606, per product).

The facts live in ``stmflash/data/rom_interfaces.toml`` beside the device table, keyed on a
device entry's ``name`` (and bootloader IDs where AN2606 gives one table per bootloader
version), each entry citing its AN2606 section and table.  They answer the question a user has
before wiring: can this link reach the ROM at all?  A USB CDC adapter on a part whose ROM has
no USB DFU will never see a DFU device; the ROM listens on the USART pins instead
(``--enter command`` over the application's CDC port uses :func:`usb_dfu` to say so).

A device without an entry is "not recorded": nothing is guessed.
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from stmflash.devices import Device

PIN_RE = re.compile(r"^P([A-Z])(1[0-5]|[0-9])$")

# interface name -> (kind, the pin roles AN2606 lists for it, in display order)
_KINDS: tuple[tuple[re.Pattern[str], str, tuple[str, ...]], ...] = (
    (re.compile(r"^(USART|UART|LPUART)\d$"), "usart", ("tx", "rx")),
    (re.compile(r"^I2C\d$"), "i2c", ("scl", "sda")),
    (re.compile(r"^I3C\d$"), "i3c", ("scl", "sda")),
    (re.compile(r"^SPI\d$"), "spi", ("nss", "sck", "miso", "mosi")),
    (re.compile(r"^(CAN|FDCAN)\d$"), "can", ("tx", "rx")),
    (re.compile(r"^USB DFU$"), "dfu", ("dm", "dp")),
)


def parse_pin(text: str) -> tuple[str, int]:
    """``"PA9"`` -> ``("A", 9)``; raises ValueError for anything that is not a GPIO name."""
    m = PIN_RE.match(text)
    if m is None:
        raise ValueError(f"bad pin {text!r} (expected P<port letter><0..15>, e.g. PA9)")
    return m.group(1), int(m.group(2))


@dataclass(frozen=True)
class RomInterface:
    """One peripheral the ROM enables, with its pins (role -> pin, AN2606 order)."""

    name: str
    kind: str
    pins: tuple[tuple[str, str], ...]

    def pin(self, role: str) -> str:
        return dict(self.pins)[role]

    def text(self) -> str:
        """``USART1 TX PA9 / RX PA10``, ``USB DFU DM PA11 / DP PA12``."""
        return self.name + " " + " / ".join(f"{role.upper()} {pin}" for role, pin in self.pins)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "pins": dict(self.pins)}


@dataclass(frozen=True)
class RomPart:
    """The ROM interfaces of one device entry (or of some of its bootloader IDs)."""

    device: str
    bl_ids: tuple[int, ...]
    source: str
    note: str
    interfaces: tuple[RomInterface, ...]

    @property
    def has_usb_dfu(self) -> bool:
        return any(i.kind == "dfu" for i in self.interfaces)

    @property
    def usarts(self) -> tuple[RomInterface, ...]:
        return tuple(i for i in self.interfaces if i.kind == "usart")

    def to_dict(self) -> dict[str, Any]:
        from stmflash.jsonfmt import hexid

        return {
            "bl_ids": [hexid(b, 2) for b in self.bl_ids] or None,
            "source": self.source,
            "note": self.note or None,
            "interfaces": [i.to_dict() for i in self.interfaces],
        }


def _interface(raw: dict[str, Any], where: str) -> RomInterface:
    name = str(raw.get("name", ""))
    match = next(((k, r) for pattern, k, r in _KINDS if pattern.match(name)), None)
    if match is None:
        raise ValueError(f"{where}: unknown interface name {name!r}")
    kind, roles = match
    given = set(raw) - {"name"}
    if given != set(roles):
        raise ValueError(f"{where}: {name} needs pins {', '.join(roles)}, not {', '.join(sorted(given))}")
    for role in roles:
        parse_pin(str(raw[role]))
    return RomInterface(name, kind, tuple((role, str(raw[role])) for role in roles))


def _part(raw: dict[str, Any]) -> RomPart:
    device = str(raw.get("device", ""))
    where = f"rom_interfaces.toml entry {device!r}"
    if not raw.get("source", "").startswith("AN2606"):
        raise ValueError(f"{where}: every entry cites its AN2606 section (source)")
    interfaces = tuple(_interface(i, where) for i in raw.get("interfaces", []))
    if not interfaces:
        raise ValueError(f"{where}: no interfaces")
    return RomPart(device, tuple(int(b) for b in raw.get("bl_ids", [])), raw["source"], raw.get("note", ""), interfaces)


@functools.lru_cache(maxsize=1)
def all_parts() -> tuple[RomPart, ...]:
    """Every entry of the table, validated (pin names, roles per kind, a source each)."""
    text = resources.files("stmflash").joinpath("data/rom_interfaces.toml").read_text(encoding="utf-8")
    return tuple(_part(raw) for raw in tomllib.loads(text).get("part", []))


def parts_for(dev: Device, bl_id: int | None = None) -> list[RomPart]:
    """The entries that apply to ``dev``: its name, and its bootloader ID(s) where the entry
    is per bootloader version (``bl_id`` narrows to the one a chip answered).  Empty: not
    recorded."""
    wanted = {bl_id} if bl_id is not None else set(dev.bl_ids)
    out = []
    for p in all_parts():
        if p.device != dev.name:
            continue
        if p.bl_ids and wanted and not (set(p.bl_ids) & wanted):
            continue
        out.append(p)
    return out


def usb_dfu(dev: Device, bl_id: int | None = None) -> bool | None:
    """Whether the part's ROM has a USB DFU interface: True/False from AN2606, None when the
    part is not recorded.  True when any applicable entry lists it (never claim "no USB" for
    a variant that may have it)."""
    parts = parts_for(dev, bl_id)
    if not parts:
        return None
    return any(p.has_usb_dfu for p in parts)


def usart_pins(dev: Device, bl_id: int | None = None) -> list[str]:
    """``["USART1 TX PA9 / RX PA10", ...]`` for every applicable entry, without repeats."""
    seen: list[str] = []
    for p in parts_for(dev, bl_id):
        for i in p.usarts:
            if i.text() not in seen:
                seen.append(i.text())
    return seen


def no_usb_reason(dev: Device, bl_id: int | None = None) -> str | None:
    """One clause for a part whose ROM has no USB DFU (AN2606), naming where it listens;
    None when the ROM has USB DFU or the part is not recorded (nothing is claimed then)."""
    if usb_dfu(dev, bl_id) is not False:
        return None
    sources = "; ".join(p.source for p in parts_for(dev, bl_id))
    return (f"the {dev.name} ROM bootloader has no USB DFU ({sources}): it listens on "
            + ", ".join(usart_pins(dev, bl_id)))


__all__ = ["PIN_RE", "RomInterface", "RomPart", "all_parts", "no_usb_reason", "parse_pin", "parts_for", "usart_pins", "usb_dfu"]
