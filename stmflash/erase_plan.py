"""Which pages/sectors an image needs erased: a pure function of the image and the device.

Erasing only what the image covers keeps a small change on an F4 from costing a 32 s mass
erase, and keeps data the image does not mention (calibration, a bootloader) intact. The
plan is also what the virtual chip's timing model and the progress bar are sized from, so it
carries the typical time too.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from stmflash.devices import Device, EraseUnit, Region
from stmflash.errors import UsageError
from stmflash.image.model import Image


@dataclass(frozen=True)
class ErasePlan:
    """The smallest set of erase units covering an image's flash data.

    ``mass`` says a global erase does the job strictly faster, or the image needs every unit anyway (and the device and the
    caller allow it); ``banks`` lists banks whose every unit is needed, so a link may use a
    bank erase instead of naming each page. ``units`` is always the full list, whatever
    shortcut the link takes.
    """

    units: list[EraseUnit] = field(default_factory=list)
    mass: bool = False
    banks: list[int] = field(default_factory=list)
    time_ms: float = 0.0

    @property
    def empty(self) -> bool:
        return not self.units

    @property
    def indices(self) -> list[int]:
        return [u.index for u in self.units]

    def describe(self) -> str:
        """One line for logs and ``--dry-run`` output."""
        if not self.units:
            return "nothing to erase"
        if self.mass:
            return f"mass erase ({len(self.units)} units, ~{self.time_ms / 1000:.1f} s)"
        size = sum(u.size for u in self.units)
        text = f"{len(self.units)} units ({size // 1024} KiB)"
        if self.banks:
            text += ", bank " + "+".join(str(b) for b in self.banks)
        return f"{text}, ~{self.time_ms / 1000:.1f} s"


def other_regions(device: Device) -> list[Region]:
    """Non-flash regions an image may legitimately carry data for (not erased by a plan)."""
    regions: list[Region] = list(device.ram)
    for r in (device.option_bytes, device.otp, device.eeprom, device.system_memory):
        if r is not None:
            regions.append(r)
    return regions


def _check_outside(device: Device, start: int, end: int) -> None:
    """Raise unless every byte of ``[start, end)`` lies in some known non-flash region."""
    addr = start
    regions = other_regions(device)
    while addr < end:
        hit = next((r for r in regions if addr in r), None)
        if hit is None:
            raise UsageError(
                f"image data at 0x{addr:08X} is outside {device.short_name}'s flash "
                f"(0x{device.flash_start:08X}-0x{device.flash.end - 1:08X}) and every other "
                "memory region it has"
            )
        addr = min(end, hit.end)


def flash_ranges(image: Image, device: Device) -> list[tuple[int, int]]:
    """The image's data clipped to flash, ``[(start, end), ...]``; data elsewhere is
    checked against the device's other regions (option bytes, OTP, RAM...)."""
    flash = device.flash
    out: list[tuple[int, int]] = []
    for seg in image.segments:
        s, e = seg.address, seg.end
        if s < flash.start:
            _check_outside(device, s, min(e, flash.start))
        if e > flash.end:
            _check_outside(device, max(s, flash.end), e)
        lo, hi = max(s, flash.start), min(e, flash.end)
        if lo < hi:
            out.append((lo, hi))
    return out


def plan_erase(image: Image, device: Device, *, allow_mass: bool = True) -> ErasePlan:
    """Plan the erase for ``image`` on ``device``.

    Every unit that holds at least one image byte is chosen and no other, so the plan is
    minimal by construction. Mass erase is chosen when the plan already covers all of flash
    or when the chip's global erase is no slower than the unit erases (F4: 128 KiB sectors
    add up fast), and only when the device's ROM accepts it (not L0/L1) and the caller
    allows it. Raises :class:`UsageError` naming the first address that no region holds.
    """
    units = device.erase_units
    starts = [u.address for u in units]
    chosen: dict[int, EraseUnit] = {}
    for lo, hi in flash_ranges(image, device):
        i = max(bisect.bisect_right(starts, lo) - 1, 0)
        while i < len(units) and units[i].address < hi:
            u = units[i]
            if u.end > lo:
                chosen[u.index] = u
            i += 1
    if not chosen:
        return ErasePlan()
    plan_units = [chosen[k] for k in sorted(chosen)]
    unit_time = sum(device.unit_erase_ms(u)[0] for u in plan_units)
    banks = sorted(
        b for b in {u.bank for u in units} if all(u.index in chosen for u in units if u.bank == b)
    )
    mass = False
    if allow_mass and device.mass_erase:
        covers_all = len(plan_units) == len(units)
        mass = covers_all or device.mass_erase_time_ms()[0] < unit_time
    time_ms = device.mass_erase_time_ms()[0] if mass else unit_time
    return ErasePlan(units=plan_units, mass=mass, banks=banks, time_ms=time_ms)
