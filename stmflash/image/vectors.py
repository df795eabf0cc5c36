"""Sanity-check the Cortex-M vector table at the start of an image.

An image linked for the wrong part (or the wrong RAM size) flashes and verifies perfectly and
then hard-faults on reset; the first two words tell us early. Word 0 is the initial stack
pointer: it must point into RAM, and the *end* of a RAM region is the usual value (the stack
grows down and the first push pre-decrements). Word 1 is the reset handler: a Thumb address
(bit 0 set) that lands inside the image's data.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from stmflash.image.model import Image

if TYPE_CHECKING:
    from stmflash.devices import Device, Region


def generic_ram() -> tuple[tuple[int, int], ...]:
    """Every RAM region of every device in the table: the check used when the part is unknown."""
    from stmflash.devices import all_devices

    spans = sorted({(r.start, r.end) for d in all_devices() for r in d.ram})
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return tuple((a, b) for a, b in merged) or ((0x20000000, 0x20200000),)


def _ram_of(device: Device | None) -> tuple[tuple[int, int], ...]:
    if device is None or not device.ram:
        return generic_ram()
    regions: tuple[Region, ...] = device.ram
    return tuple((r.start, r.end) for r in regions)


def vector_table_address(image: Image, device: Device | None = None) -> int:
    """The flash start when the image covers it (the part boots from there), else the image
    start (an application placed behind a custom bootloader)."""
    if device is not None and any(s.address <= device.flash_start < s.end for s in image.segments):
        return device.flash_start
    return image.start


def check_vector_table(image: Image, device: Device | None = None) -> list[str]:
    """Problems with the vector table (empty list: looks bootable).

    Without a device, the stack pointer is checked against the RAM of every known part.
    """
    base = vector_table_address(image, device)
    words = image.read(base, 8, fill=0x00)
    covered = sum(max(0, min(s.end, base + 8) - max(s.address, base)) for s in image.segments)
    if covered < 8:
        return [f"no vector table: fewer than 8 bytes of data at 0x{base:08X}"]
    sp, reset = struct.unpack("<II", words)
    problems = []
    ram = _ram_of(device)
    where = f"{device.short_name} RAM" if device is not None else "the RAM of any known STM32"
    if not any(a <= sp <= b for a, b in ram):
        ranges = ", ".join(f"0x{a:08X}-0x{b:08X}" for a, b in ram)
        problems.append(f"initial stack pointer 0x{sp:08X} (word 0 at 0x{base:08X}) is not in {where} ({ranges})")
    if not reset & 1:
        problems.append(f"reset vector 0x{reset:08X} (word 1 at 0x{base + 4:08X}) is even: not a Thumb address")
    target = reset & ~1
    if not any(s.address <= target < s.end for s in image.segments):
        problems.append(f"reset vector 0x{reset:08X} (word 1 at 0x{base + 4:08X}) points outside the image's data")
    return problems
