"""DFU facts of a device-table entry: descriptors, transfer size, ROM quirks.

Both ends read the same facts: the virtual STM32 builds its USB descriptors from them and
the client uses them to recognise a device and to know which ROM quirks to expect.  The
facts come from the ``dfu`` table of ``devices.toml``; when an entry has none we derive a
plausible set from the device's geometry (and record which facts were guessed, so the gap
in the table stays visible).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from stmflash.devices import Device, all_devices, generic, lookup
from stmflash.dfu.layout import AltLayout, normalise_name, parse_alt, try_parse_alt

DEFAULT_BCD = 0x2200
DEFAULT_TRANSFER = 2048


@dataclass(frozen=True)
class DfuFacts:
    bcd_device: int
    transfer_size: int
    serial: str  # "uid" (derived from the unique ID as the ROM does) or "fixed:TEXT"
    alts: tuple[str, ...]
    quirks: frozenset[str] = frozenset()
    product: str = "STM32  BOOTLOADER"
    manufacturer: str = "STMicroelectronics"
    guessed: tuple[str, ...] = field(default_factory=tuple)

    def layouts(self) -> list[AltLayout]:
        return [try_parse_alt(a) for a in self.alts]


def _render(alt: str, device: Device) -> str:
    return alt.replace("{flash}", device.dfu_flash_layout())


def dfu_facts(device: Device) -> DfuFacts:
    """The DFU facts of ``device`` (table values, else derived fallbacks)."""
    d = dict(device.dfu or {})
    guessed: list[str] = []
    if "bcd_device" not in d:
        guessed.append("bcd_device")
    if "transfer_size" not in d:
        guessed.append("transfer_size")
    alts = d.get("alts")
    if not alts:
        guessed.append("alts")
        alts = [f"@Internal Flash  /0x{device.flash_start:08X}/{{flash}}"]
        if device.option_bytes is not None:
            ob = device.option_bytes
            alts.append(f"@Option Bytes  /0x{ob.start:08X}/01*{ob.size:03d} e")
        if device.otp is not None:
            otp = device.otp
            alts.append(f"@OTP Memory /0x{otp.start:08X}/01*{otp.size:03d} e")
    return DfuFacts(
        bcd_device=int(d.get("bcd_device", DEFAULT_BCD)),
        transfer_size=int(d.get("transfer_size", DEFAULT_TRANSFER)),
        serial=str(d.get("serial", "uid")),
        alts=tuple(_render(a, device) for a in alts),
        quirks=frozenset(d.get("quirks", ())),
        product=str(d.get("product", "STM32  BOOTLOADER")),
        manufacturer=str(d.get("manufacturer", "STMicroelectronics")),
        guessed=tuple(guessed),
    )


def serial_string(facts: DfuFacts, uid: bytes) -> str:
    """The iSerial a ROM with these facts presents for a chip with this unique ID."""
    if facts.serial == "uid":
        return uid_serial(uid)
    return facts.serial.split(":", 1)[1] if facts.serial.startswith("fixed:") else facts.serial


def uid_serial(uid: bytes) -> str:
    """The iSerial string ST's USB device library derives from the 96-bit unique ID:
    8 hex digits of word0+word2, then the top 4 hex digits of word1."""
    uid = bytes(uid).ljust(12, b"\0")
    w0, w1, w2 = (int.from_bytes(uid[i : i + 4], "little") for i in (0, 4, 8))
    return f"{(w0 + w2) & 0xFFFFFFFF:08X}{w1 >> 16:04X}"


# ---- recognising a device from its descriptors ------------------------------------------
def _pages(layout: AltLayout) -> list[tuple[int, int]]:
    return [(a, s) for a, s, _k in layout.pages()]


def identify(
    layouts: Iterable[AltLayout], bcd_device: int | None = None, product: str = ""
) -> Device:
    """The table entry whose DFU descriptors match what the device presents.

    The ROM's iProduct names the product ID on some parts ("STM32 0x418 DFU Bootloader");
    otherwise the flash alt's page map picks the candidates and the rest of the descriptors
    rank them: bcdDevice, and every other alternate setting (option bytes, OTP, device
    feature) by name and address, a match counting for the entry and an alt that only one
    side has, or has at another address, against it (an L552 and a G0B1 share bcdDevice and
    flash map; only the L552 has no option-bytes alt and its OTP at 0x0BFA0000). Without a
    match, a generic profile is built from the descriptor's own page map so the device can
    still be programmed.
    """
    layouts = list(layouts)
    flash = find_alt(layouts, "Internal Flash")
    m = re.search(r"0x([0-9A-Fa-f]{3})\b", product or "")
    if m:
        dev = lookup(int(m.group(1), 16), warn=False)
        if not dev.generic:
            return _sized(dev, flash)
    if flash is not None and flash.sectors:
        pages = _pages(flash)
        others = _other_alts(layouts)
        best: tuple[int, Device] | None = None
        for dev in all_devices():
            if "dfu" not in dev.interfaces and not dev.dfu:
                continue
            facts = dfu_facts(dev)
            dl = facts.layouts()
            dflash = find_alt(dl, "Internal Flash")
            if dflash is None or _pages(dflash)[: len(pages)] != pages:
                continue
            score = 1
            if bcd_device is not None and facts.bcd_device == bcd_device:
                score += 2
            theirs = _other_alts(dl)
            score += len(others & theirs) - len(others ^ theirs)
            if len(_pages(dflash)) == len(pages):
                score += 1
            if best is None or score > best[0]:
                best = (score, dev)
        if best is not None:
            return _sized(best[1], flash)
        return _from_layout(flash)
    return generic(0)


def _other_alts(layouts: Iterable[AltLayout]) -> set[tuple[str, int | None]]:
    """(name, start) of every alternate setting but the internal flash."""
    return {(normalise_name(lay.name), lay.start) for lay in layouts
            if not normalise_name(lay.name).startswith(normalise_name("Internal Flash"))}


def _sized(dev: Device, flash: AltLayout | None) -> Device:
    if flash is not None and flash.sectors:
        return dev.with_flash_size(flash.size)
    return dev


def _from_layout(flash: AltLayout) -> Device:
    import dataclasses

    groups = ",".join(f"{s.count}x{s.size}" for s in flash.sectors)
    base = generic(0)
    return dataclasses.replace(
        base,
        name="unknown STM32 (DfuSe)",
        flash_start=flash.start or base.flash_start,
        flash_size=flash.size,
        flash_layout=groups,
    )


def find_alt(layouts: Iterable[AltLayout], name: str) -> AltLayout | None:
    """The first layout whose name starts with ``name`` (case/space-insensitive)."""
    want = normalise_name(name)
    for lay in layouts:
        if normalise_name(lay.name).startswith(want):
            return lay
    return None


__all__ = ["DfuFacts", "dfu_facts", "uid_serial", "identify", "find_alt", "parse_alt"]
