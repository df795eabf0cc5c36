"""Application-header fields where a team's own bootloader expects them (``image stamp``).

stmflash's own header (:mod:`stmflash.image.stamp`) is one fixed 16-byte layout; a custom
bootloader has its own: a version here, a length there, a CRC over the whole application
space (gaps and the unused rest filled with a stated byte) stored after it. Each field is
placed on its own:

- ``version_at`` + ``version_format``: ``u32`` = ``X<<24 | Y<<16 | Z`` (4 bytes LE),
  ``u16x4`` = X, Y, Z, W as four little-endian u16 (8 bytes), ``semver`` = u8 X, u8 Y,
  u16 Z little-endian (4 bytes, ``struct { uint8_t major, minor; uint16_t patch; }``);
- ``length_at``: the length of the CRC range (or of the image span without one), u32 LE;
- ``crc_at`` + ``crc_over`` + ``crc``: the CRC of ``crc_over`` after the version and length
  are in place and the range filled with ``fill``, little-endian: ``zlib`` (CRC-32, as
  ``srec_cat -crc32-l-e``), ``stm32`` (the STM32 CRC unit's reset configuration over LE words,
  as ``srec_cat -stm32-l-e``), ``crc16-ccitt`` (CRC-16/CCITT-FALSE, ``srec_cat -crc16-l-e
  -broken``). The CRC field lies outside its range, as srec_cat places it.

Every field must land on blank bytes (absent, all 0xFF or all 0x00) within the image's span
plus a small margin, so a mistyped address cannot overwrite code. The whole CRC range is
written as one block, so the flash holds exactly the bytes the CRC was computed over.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from stmflash.errors import UsageError
from stmflash.image.crc import crc16_ccitt, stm32_crc, zlib_crc
from stmflash.image.model import Image
from stmflash.image.stamp import check_header_place

CRC_FLAVOURS = ("zlib", "stm32", "crc16-ccitt")
VERSION_FORMATS = ("u32", "u16x4", "semver")


@dataclass(frozen=True)
class Fields:
    crc_at: int | None = None
    crc_over: tuple[int, int] | None = None  # (start, length)
    crc: str = "zlib"
    fill: int = 0xFF
    version_at: int | None = None
    version: str = "0"
    version_format: str = "u32"
    length_at: int | None = None

    @property
    def any(self) -> bool:
        return self.crc_at is not None or self.version_at is not None or self.length_at is not None


def encode_version(text: str, fmt: str) -> bytes:
    m = re.fullmatch(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:\.(\d+))?\s*", text)
    if not m:
        raise UsageError(f"--version {text!r}: expected X.Y.Z (or X.Y.Z.W for u16x4)")
    parts = [int(g) if g else 0 for g in m.groups()]
    if fmt == "u16x4":
        if any(p > 0xFFFF for p in parts):
            raise UsageError(f"--version {text!r}: u16x4 fields must be < 65536")
        return struct.pack("<4H", *parts)
    if parts[3]:
        raise UsageError(f"--version {text!r}: {fmt} has no fourth field (use u16x4)")
    x, y, z = parts[:3]
    if x > 0xFF or y > 0xFF or z > 0xFFFF:
        raise UsageError(f"--version {text!r}: X and Y must be < 256 and Z < 65536 for {fmt}")
    if fmt == "u32":
        return struct.pack("<I", x << 24 | y << 16 | z)
    if fmt == "semver":
        return struct.pack("<BBH", x, y, z)
    raise UsageError(f"unknown --version-format {fmt!r} (choose {', '.join(VERSION_FORMATS)})")


def crc_value(data: bytes, flavour: str) -> bytes:
    if flavour == "zlib":
        return struct.pack("<I", zlib_crc(data))
    if flavour == "stm32":
        return struct.pack("<I", stm32_crc(data))
    if flavour == "crc16-ccitt":
        return struct.pack("<H", crc16_ccitt(data))
    raise UsageError(f"unknown CRC {flavour!r} (choose {', '.join(CRC_FLAVOURS)})")


def stamp_fields(image: Image, f: Fields) -> tuple[Image, dict[str, object]]:
    """A copy of ``image`` with the fields written; returns it and what was written."""
    src = image.source or "image"
    if not image.segments:
        raise UsageError(f"{src}: nothing to stamp: the image is empty")
    if (f.crc_at is None) != (f.crc_over is None):
        raise UsageError("--crc-at and --crc-over go together (where the CRC goes, what it covers)")
    if not 0 <= f.fill <= 0xFF:
        raise UsageError(f"--fill 0x{f.fill:X} is not a byte value")
    placed: list[tuple[str, int, bytes]] = []
    if f.version_at is not None:
        placed.append(("version", f.version_at, encode_version(f.version, f.version_format)))
    if f.length_at is not None:
        length = f.crc_over[1] if f.crc_over else image.end - image.start
        placed.append(("length", f.length_at, struct.pack("<I", length)))
    width = 2 if f.crc == "crc16-ccitt" else 4
    if f.crc_at is not None:
        placed.append(("crc", f.crc_at, bytes(width)))
    span = (image.start, image.end)
    if f.crc_over is not None:
        if f.crc_over[1] > 64 << 20:
            raise UsageError(f"--crc-over: {f.crc_over[1]} bytes is more than any STM32 flash")
        span = (min(span[0], f.crc_over[0]), max(span[1], f.crc_over[0] + f.crc_over[1]))
    for i, (name, at, data) in enumerate(placed):
        check_header_place(image, at, len(data), span=span)
        for other, at2, data2 in placed[:i]:
            if at < at2 + len(data2) and at2 < at + len(data):
                raise UsageError(f"--{name}-at 0x{at:08X} overlaps --{other}-at 0x{at2:08X}")
    out = Image(source=image.source, format=image.format, alt_names=dict(image.alt_names),
                dfu_ids=image.dfu_ids, entry=image.entry)
    work = Image(source=image.source)
    for s in image.segments:
        work.add(s.address, s.data)
    for name, at, data in placed:
        if name != "crc":
            _put(work, at, data)
    report: dict[str, object] = {name: {"address": at, "bytes": data.hex()} for name, at, data in placed
                                 if name != "crc"}
    if f.crc_over is not None and f.crc_at is not None:
        start, length = f.crc_over
        if start <= f.crc_at < start + length or start < f.crc_at + width <= start + length:
            raise UsageError(f"--crc-at 0x{f.crc_at:08X} lies inside --crc-over: put the CRC after the range, "
                             "as srec_cat does")
        blob = work.read(start, length, f.fill)
        value = crc_value(blob, f.crc)
        _cut(work, start, length)
        work.add(start, blob)
        _put(work, f.crc_at, value)
        report["crc"] = {"address": f.crc_at, "bytes": value.hex(), "kind": f.crc,
                         "over": {"start": start, "length": length}, "fill": f.fill}
    for s in work.segments:
        out.add(s.address, s.data)
    return out, report


def _cut(img: Image, start: int, length: int) -> None:
    """Remove ``[start, start+length)`` from ``img`` (the parts on either side stay)."""
    end = start + length
    keep = []
    for s in img.segments:
        if s.end <= start or s.address >= end:
            keep.append((s.address, s.data))
            continue
        if s.address < start:
            keep.append((s.address, s.data[: start - s.address]))
        if s.end > end:
            keep.append((end, s.data[end - s.address :]))
    img.segments.clear()
    img.alts.clear()
    for a, d in keep:
        img.add(a, d)


def _put(img: Image, at: int, data: bytes) -> None:
    _cut(img, at, len(data))
    img.add(at, data)


__all__ = ["CRC_FLAVOURS", "VERSION_FORMATS", "Fields", "crc_value", "encode_version", "stamp_fields"]
