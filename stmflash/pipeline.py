"""The one programming pipeline: plan, erase, write, verify, start — for any Link.

UART and DFU share this so that the safety rules live in one place: erase only what the
image covers, never report success without verification, and on parts that boot their ROM
while the first flash word is blank ("empty check"), write the vector-table unit last so an
interrupted flash leaves a chip that still enters its bootloader and can be flashed again.

On a noisy line nothing is concluded from one reading: data read back is believed only
when two reads agree (:func:`confirmed_read`; AN3155 answers carry no checksum), and
"write-protected" or "mismatch" is reported only after a second look on a resynced link
(:func:`holds`). A line too noisy to read the same bytes twice is a LinkError (exit 3),
never a protection or verification verdict.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from stmflash.devices import Device, EraseUnit, Region
from stmflash.errors import NackError, UsageError, VerifyError
from stmflash.image.model import Image
from stmflash.link import Link
from stmflash.progress import Reporter

ERASE_MODES = ("auto", "all", "none")
AFTER_MODES = ("go", "reset", "stay")

# Erase progress granularity: how many uniform pages one erase command covers. Pages are
# fast (tens of ms) so a few per command keeps the bar moving at negligible cost.
_PAGES_PER_ERASE_CALL = 32
_VERIFY_READ_CHUNK = 4096


@dataclass
class ProgramResult:
    """What was done; serialised as the ``result`` JSON event."""

    device: Device
    uid: str | None
    image_crc32: int
    image_bytes: int
    bytes_written: int
    bytes_skipped: int
    duration_s: float
    erase: dict[str, Any] = field(default_factory=dict)
    verified: bool = False
    verify_method: str = "none"
    started: str = "stay"
    usb_serial: str | None = None  # the DFU ROM's iSerial: not the UID (README "JSON output")

    def to_dict(self) -> dict[str, Any]:
        extra = {"usb_serial": self.usb_serial} if self.usb_serial is not None else {}
        return {
            "device": self.device.name,
            "pid": f"0x{self.device.pid:03X}",
            "flash_size": self.device.flash_size,
            "uid": self.uid,
            **extra,
            "image_crc32": f"0x{self.image_crc32:08X}",
            "image_bytes": self.image_bytes,
            "bytes_written": self.bytes_written,
            "bytes_skipped": self.bytes_skipped,
            "duration_s": round(self.duration_s, 3),
            "erase": self.erase,
            "verified": self.verified,
            "verify_method": self.verify_method,
            "after": self.started,
        }


def clip(image: Image, region: Region) -> Image:
    """The part of ``image`` inside ``region``."""
    out = Image(source=image.source, format=image.format)
    for s in image.segments:
        lo, hi = max(s.address, region.start), min(s.end, region.end)
        if lo < hi:
            out.add(lo, s.data[lo - s.address : hi - s.address])
    return out


def writable_regions(device: Device) -> list[tuple[str, Region]]:
    """Regions a host may write with the ROM's write command besides nothing else."""
    regions = [("flash", device.flash)]
    if device.otp is not None:
        regions.append(("OTP", device.otp))
    if device.ram_usable is not None:
        regions.append(("RAM", device.ram_usable))
    return regions


def split_image(image: Image, device: Device) -> tuple[Image, Image]:
    """(flash part, other writable part); data anywhere else is a UsageError."""
    regions = writable_regions(device)
    for s in image.segments:
        addr = s.address
        while addr < s.end:
            hit = next((r for _, r in regions if addr in r), None)
            if hit is None:
                where = f"{image.source}: " if image.source else ""
                hint = ""
                if device.option_bytes is not None and addr in device.option_bytes:
                    hint = " (option bytes: use --write-option-bytes)"
                raise UsageError(
                    f"{where}data at 0x{addr:08X} is outside the flash of {device.name} "
                    f"(0x{device.flash_start:08X}-0x{device.flash.end - 1:08X}){hint}"
                )
            addr = min(s.end, hit.end)
    flash = clip(image, device.flash)
    other = Image(source=image.source, format=image.format)
    for name, r in regions:
        if name != "flash":
            for seg in clip(image, r).segments:
                other.add(seg.address, seg.data)
    return flash, other


def _plan(flash_img: Image, device: Device, erase: str) -> tuple[bool, list[EraseUnit], dict[str, Any]]:
    """(mass, units, summary) for the requested erase mode."""
    if erase == "none" or not flash_img:
        return False, [], {"mode": erase, "mass": False, "units": 0, "bytes": 0}
    if erase == "all":
        units = list(device.erase_units)
        mass = device.mass_erase
    else:
        from stmflash.erase_plan import plan_erase

        # "auto" never wipes flash the image does not cover (EEPROM emulation, calibration,
        # a bootloader): a mass erase only when the image needs every unit anyway, even on
        # parts where one global erase costs no more than a page erase.
        plan = plan_erase(flash_img, device, allow_mass=False)
        mass = device.mass_erase and len(plan.units) == len(device.erase_units)
        units = list(device.erase_units) if mass else list(plan.units)
    summary = {
        "mode": erase,
        "mass": mass,
        "units": len(units),
        "bytes": sum(u.size for u in units),
        "first": f"0x{units[0].address:08X}" if units else None,
        "end": f"0x{units[-1].end:08X}" if units else None,
    }
    return mass, units, summary


def unit_image(image: Image, unit: EraseUnit, erased: int = 0xFF) -> bytes:
    """What ``unit`` holds once ``image`` is flashed: its bytes, erased elsewhere (0xFF, or
    0x00 on L0/L1: ``erased`` in the device table)."""
    out = bytearray(bytes([erased]) * unit.size)
    for s in image.segments:
        lo, hi = max(s.address, unit.address), min(s.end, unit.end)
        if lo < hi:
            out[lo - unit.address : hi - unit.address] = s.data[lo - s.address : hi - s.address]
    return bytes(out)


def unchanged_units(link: Link, image: Image, device: Device) -> set[int]:
    """Fast re-flash: indices of the units the image touches that already hold exactly what
    they would hold after flashing (on-chip CRC per unit). Only links with a pipelined
    ``checksums(ranges)`` (the RAM stub) offer it; for the others the set is empty."""
    from stmflash.image.crc import stm32_crc

    batch = getattr(link, "checksums", None)
    if batch is None or not image:
        return set()
    touched: dict[int, EraseUnit] = {}
    for seg in image.segments:
        for u in device.units_covering(seg.address, seg.end):
            touched[u.index] = u
    units = [touched[i] for i in sorted(touched)]
    crcs = batch([(u.address, u.size) for u in units])
    return {u.index for u, crc in zip(units, crcs, strict=True) if crc == stm32_crc(unit_image(image, u, device.erased))}


def _without_units(image: Image, device: Device, indices: set[int]) -> Image:
    """``image`` minus the bytes inside the erase units ``indices``."""
    if not indices:
        return image
    out = Image(source=image.source, format=image.format)
    for unit, addr, data in _pieces(image, device):
        if unit is None or unit.index not in indices:
            out.add(addr, data)
    return out


def _erase_batches(units: list[EraseUnit], device: Device) -> Iterator[list[EraseUnit]]:
    if not device.uniform_pages:
        for u in units:  # sectors take seconds each: one per call keeps the bar honest
            yield [u]
        return
    for i in range(0, len(units), _PAGES_PER_ERASE_CALL):
        yield units[i : i + _PAGES_PER_ERASE_CALL]


def write_blocks(image: Image, device: Device, block: int, *, skip_blank: bool) -> tuple[list[tuple[int, bytes]], int]:
    """Blocks to write, in the order to write them, and the number of blank bytes skipped."""
    blocks: list[tuple[int, bytes]] = []
    skipped = 0
    blank = device.erased_bytes * block  # what the erase left: no need to write it
    for addr, data in image.chunks(block):
        if skip_blank and data == blank[: len(data)]:
            skipped += len(data)
            continue
        blocks.append((addr, data))
    if device.empty_check and device.erase_units:
        first = device.erase_units[0]
        head = [b for b in blocks if first.address <= b[0] < first.end]
        if head:
            blocks = [b for b in blocks if not (first.address <= b[0] < first.end)] + head
    return blocks, skipped


def start_address(image: Image, device: Device) -> int:
    """Where Go should jump: the flash start, or the image's own vector table."""
    if not image or device.flash_start in [s.address for s in image.segments]:
        return device.flash_start
    first = next((s for s in image.segments if s.address in device.flash), None)
    if first is not None and len(first.data) >= 8:
        sp = int.from_bytes(first.data[0:4], "little")
        pc = int.from_bytes(first.data[4:8], "little")
        if device.ram_region_of(sp - 1) is not None and (pc & ~1) in device.flash:
            return first.address
    return device.flash_start


def _pieces(image: Image, device: Device) -> list[tuple[EraseUnit | None, int, bytes]]:
    """The image cut at erase-unit boundaries: a failed piece names the unit to repair."""
    out: list[tuple[EraseUnit | None, int, bytes]] = []
    for seg in image.segments:
        addr = seg.address
        while addr < seg.end:
            unit = device.unit_at(addr)
            stop = min(seg.end, unit.end) if unit is not None else seg.end
            out.append((unit, addr, seg.data[addr - seg.address : stop - seg.address]))
            addr = stop
    return out


def verify_image(
    link: Link,
    image: Image,
    reporter: Reporter,
    repair: Callable[[EraseUnit], bool] | None = None,
) -> str:
    """Check the chip against ``image``; returns the method used. Raises VerifyError.

    ``repair(unit)`` (erase and rewrite one unit) is offered a failing unit before giving
    up: a block garbled on the wire can pass AN3155's XOR check and be programmed wrong.
    """
    from stmflash.image.crc import stm32_crc

    device = link.device
    reporter.phase("verify", image.size)
    method = "checksum"
    pieces = _pieces(image, device)
    ahead: dict[int, int] = {}
    batch = getattr(link, "checksums", None)
    if batch is not None:  # one pipelined batch of CRCs instead of a turnaround each
        even = [(a, len(d)) for _, a, d in pieces if a % 4 == 0 and len(d) % 4 == 0]
        ahead = dict(zip([a for a, _ in even], batch(even), strict=True))
    for unit, addr, data in pieces:
        while True:
            try:
                crc = None
                if method == "checksum" and len(data) % 4 == 0 and addr % 4 == 0:
                    crc = ahead.pop(addr) if addr in ahead else link.checksum(addr, len(data))
                if crc is None:
                    method = "read-back"
                    _read_back(link, addr, data, Reporter())
                elif crc != stm32_crc(data):
                    # ask again on a resynced link before believing it
                    resync(link)
                    if link.checksum(addr, len(data)) != stm32_crc(data):
                        # locate the first difference (raises VerifyError when two reads
                        # agree on wrong content); content that reads back right is right
                        _read_back(link, addr, data, Reporter())
            except VerifyError:
                if unit is not None and repair is not None and repair(unit):
                    continue
                raise
            break
        reporter.advance(len(data))
    return method if image.segments else "none"


def _read_back(link: Link, address: int, expected: bytes, reporter: Reporter) -> None:
    block = max(link.max_read, 1)
    step = max(block, _VERIFY_READ_CHUNK - _VERIFY_READ_CHUNK % block)
    for off in range(0, len(expected), step):
        want = expected[off : off + step]
        got = link.read(address + off, len(want))
        if got != want:
            # a byte garbled on its way back is not a flash error: the blocks that differ
            # are read again until two reads agree, and "mismatch" is reported only when the
            # agreed content, read once more on a resynced link, still differs
            for boff in range(0, len(want), block):
                w = want[boff : boff + block]
                if got[boff : boff + block] == w:
                    continue
                at = address + off + boff
                if not holds(link, at, w, confirm=True):
                    _mismatch(at, confirmed_read(link, at, len(w)), w)
        reporter.advance(len(want))


def resync(link: Link) -> None:
    """Bring the link back into step (UART: drain and resync; DFU: back to dfuIDLE)."""
    fn = getattr(link, "resync", None)
    if fn is not None:
        fn()


def confirmed_read(link: Link, address: int, length: int, *, tries: int = 6) -> bytes:
    """A read believed only when two reads agree (AN3155 data carries no checksum).

    A piece whose reads never agree is re-read in halves (a shorter frame is less likely
    to be hit); when even 16 bytes never read the same twice the line is too noisy to say
    anything, which is a :class:`LinkError` — never a protection or mismatch diagnosis.
    """
    out = bytearray()
    step = max(link.max_read, 1)
    for off in range(0, length, step):
        out += _confirmed_piece(link, address + off, min(step, length - off), tries)
    return bytes(out)


def _confirmed_piece(link: Link, address: int, n: int, tries: int) -> bytes:
    seen: list[bytes] = []
    for _ in range(tries):
        got = link.read(address, n)
        if got in seen:
            return got
        seen.append(got)
    if n > 16:
        half = n // 2
        return _confirmed_piece(link, address, half, tries) + _confirmed_piece(link, address + half, n - half, tries)
    from stmflash.errors import LinkError

    raise LinkError(
        f"no two reads of 0x{address:08X} agree (line noise): cannot tell what the chip holds there"
    )


def holds(link: Link, address: int, want: bytes, *, confirm: bool = False) -> bool:
    """True when the chip holds ``want`` at ``address`` (confirmed read). With ``confirm``,
    a "no" is checked once more on a resynced link before it is believed."""
    if confirmed_read(link, address, len(want)) == want:
        return True
    if not confirm:
        return False
    resync(link)
    return confirmed_read(link, address, len(want)) == want


def _protected(unit: EraseUnit) -> Exception:
    from stmflash.errors import ProtectionError

    return ProtectionError(
        f"flash unit {unit.index} at 0x{unit.address:08X} does not change when erased or "
        "written: it is write-protected (remove the protection first, e.g. --write-unprotect)"
    )


def _mismatch(address: int, got: bytes, want: bytes) -> None:
    i = next(k for k in range(len(want)) if k >= len(got) or got[k] != want[k])
    at = address + i
    seen = f"0x{got[i]:02X}" if i < len(got) else "nothing"
    raise VerifyError(
        f"verify failed at 0x{at:08X}: read {seen}, expected 0x{want[i]:02X} "
        "(the flash is NOT what was asked)"
    )


def _write_all(
    link: Link, blocks: list[tuple[int, bytes]], device: Device, rep: Reporter, *, repair: bool = True
) -> None:
    """Write blocks in order; a flash block damaged by line noise (the ROM accepted a
    garbled payload whose checksum happened to match) is repaired by erasing its unit
    again and rewriting what that unit already received."""
    done: list[tuple[int, bytes]] = []
    repairs: dict[int, int] = {}
    for addr, data in blocks:
        unit = device.unit_at(addr)
        while True:
            try:
                _write_confirmed(link, addr, data)
            except NackError:
                if unit is None or not repair:
                    raise
                got = confirmed_read(link, addr, len(data))
                if got == device.erased_bytes * len(data) or repairs.get(unit.index, 0) >= 2:
                    raise
                repairs[unit.index] = repairs.get(unit.index, 0) + 1
                rep.warn(
                    f"flash at 0x{addr:08X} holds garbled data (line noise); erasing unit "
                    f"{unit.index} again and rewriting it"
                )
                span = device.units_covering(addr, addr + len(data))
                try:
                    link.erase(span)
                    for a, d in done:
                        if a < span[-1].end and span[0].address < a + len(d):
                            _write_confirmed(link, a, d)
                except NackError:
                    continue  # the rewrite was hit too: erase the unit again
                continue  # now the block itself
            break
        done.append((addr, data))
        rep.advance(len(data))


def _write_confirmed(link: Link, addr: int, data: bytes) -> None:
    """Write one block; a refusal is believed only when the flash does not already hold the
    block (its ACK may have been lost after programming, and a second write is refused)."""
    try:
        link.write(addr, data)
    except NackError:
        if confirmed_read(link, addr, len(data)) != data:
            raise


def program(
    link: Link,
    image: Image,
    *,
    erase: str = "auto",
    verify: bool = True,
    after: str = "go",
    reporter: Reporter | None = None,
) -> ProgramResult:
    """Program ``image`` through ``link`` and (by default) verify it; see module docstring."""
    if erase not in ERASE_MODES:
        raise UsageError(f"bad erase mode {erase!r} (use {', '.join(ERASE_MODES)})")
    if after not in AFTER_MODES:
        raise UsageError(f"bad --after {after!r} (use {', '.join(AFTER_MODES)})")
    if not image:
        raise UsageError(f"{image.source or 'image'}: image is empty")
    rep = reporter or Reporter()
    t0 = time.monotonic()
    device = link.device
    flash_img, other_img = split_image(image, device)
    # a short last unit is completed with the erased value: the bytes the image leaves out
    # read as erased, as the rest of the unit does (and as unit_image() assumes)
    flash_img = flash_img.aligned(device.write_align, fill=device.erased)
    other_img = other_img.aligned(4)
    whole = flash_img
    same: set[int] = set()
    if erase == "auto":
        same = unchanged_units(link, flash_img, device)
        if same:
            rep.info(f"{len(same)} flash unit(s) already hold the image: not erased, not written")
        flash_img = _without_units(flash_img, device, same)
    mass, units, erase_summary = _plan(flash_img, device, erase)
    if same:
        erase_summary["unchanged_units"] = len(same)

    if mass:
        rep.phase("erase", device.flash_size)
        link.mass_erase()
        rep.advance(device.flash_size)
    elif units:
        rep.phase("erase", sum(u.size for u in units))
        for batch in _erase_batches(units, device):
            link.erase(batch)
            rep.advance(sum(u.size for u in batch))

    blocks, skipped = write_blocks(flash_img, device, link.max_write, skip_blank=True)
    oblocks, _ = write_blocks(other_img, device, link.max_write, skip_blank=False)
    # RAM/OTP first: the flash's vector-table unit must stay the very last write
    all_blocks = oblocks + blocks
    total = sum(len(d) for _, d in all_blocks)
    rep.phase("write", total)
    _write_all(link, all_blocks, device, rep, repair=bool(units or mass))
    flush = getattr(link, "flush", None)
    if callable(flush):
        flush()  # links that keep writes in flight: every one done (or its error raised)

    method = "none"
    if verify:
        checked = Image()
        for img in (flash_img, other_img):
            for s in img.segments:
                checked.add(s.address, s.data)
        repaired: dict[int, int] = {}

        def repair(unit: EraseUnit) -> bool:
            if repaired.get(unit.index, 0) >= 3 or not units and not mass:
                return False  # nothing erased by us: rewriting cannot help
            repaired[unit.index] = repaired.get(unit.index, 0) + 1
            rep.warn(f"flash unit {unit.index} at 0x{unit.address:08X} differs; erasing and rewriting it")
            # blocks overlapping the unit, and every unit those blocks touch (L0/L1 pages
            # are smaller than a 256-byte block)
            mine = [(a, d) for a, d in blocks if a < unit.end and unit.address < a + len(d)]
            lo = min([unit.address] + [a for a, _ in mine])
            hi = max([unit.end] + [a + len(d) for a, d in mine])
            span = device.units_covering(lo, hi)
            mine = [(a, d) for a, d in blocks if a < span[-1].end and span[0].address < a + len(d)]
            blank = device.erased_bytes * len(mine[0][1]) if mine else b""
            for attempt in range(3):
                link.erase(span)
                # a garbled page list can pass the XOR check and erase another unit:
                # conclude "write-protected" only when erasing never takes, confirmed on a
                # resynced link
                if not mine or holds(link, mine[0][0], blank, confirm=attempt == 2):
                    break
                if attempt == 2:
                    raise _protected(unit)
            for addr, data in mine:
                try:
                    _write_confirmed(link, addr, data)
                except NackError:
                    return True  # the block still differs: verification finds it and repairs again
            if mine:
                a, d = mine[0]
                for attempt in range(3):
                    if confirmed_read(link, a, len(d)) != blank:
                        break
                    if attempt == 2:
                        resync(link)
                        if confirmed_read(link, a, len(d)) == blank:
                            raise _protected(unit)  # writing changes nothing
                        break
                    link.write(a, d)
            return True

        method = verify_image(link, checked, rep, repair)

    started = "stay"
    if after == "go":
        link.start(start_address(whole or other_img, device))
        started = "go"
    elif after == "reset":
        link.reset()
        started = "reset"
    rep.close()
    uid = getattr(link, "uid", None)
    usb_serial = None
    if getattr(link, "uid_is_usb_serial", False):  # DFU: the link's identity is the iSerial
        usb_serial, uid = uid, None
    return ProgramResult(
        device=device,
        uid=uid.hex().upper() if isinstance(uid, bytes | bytearray) else uid,
        usb_serial=usb_serial,
        image_crc32=image.crc32(),
        image_bytes=image.size,
        bytes_written=total,
        bytes_skipped=skipped,
        duration_s=time.monotonic() - t0,
        erase=erase_summary,
        verified=verify,
        verify_method=method,
        started=started,
    )
