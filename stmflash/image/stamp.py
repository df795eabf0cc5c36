"""Stamp an application header (version, length, CRC) so a custom bootloader can validate
the application before jumping to it.

Header layout: 16 bytes at a 4-aligned address inside (or right after) the application,
all fields little-endian u32::

    +0x00  magic    0x464D5453 by default (the bytes "STMF" in memory)
    +0x04  version  X.Y.Z packed as X<<24 | Y<<16 | Z (X, Y < 256, Z < 65536), or any u32
    +0x08  length   bytes covered by the CRC, from the image start; a multiple of 4
    +0x0C  crc      CRC of [start, start+length) with this field read as 0x00000000

The covered range runs from the first address of the image to its end (including the
header), rounded up to a multiple of 4. Gaps are filled with 0xFF *before* the CRC is taken
and the stamped image is written as one contiguous block, so the flash holds exactly the
bytes the CRC was computed over (an erased-but-unwritten gap in another sector could hold
anything). ``crc`` is either zlib's CRC-32 (``zlib``: what ``crc32()`` in zlib/newlib
gives over the bytes) or CRC-32/MPEG-2 over little-endian words (``stm32``: what the STM32
CRC unit gives after a reset of CRC_DR when the bootloader feeds it the words of the range).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from stmflash.errors import ImageError, UsageError
from stmflash.image.crc import stm32_crc, zlib_crc
from stmflash.image.model import Image

MAGIC = 0x464D5453  # b"STMF" little-endian
HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size
CRC_OFFSET = 12
CRC_KINDS = ("zlib", "stm32")
MAX_SPAN = 64 << 20
MARGIN = 4096  # how far outside the image's span a header may sit (a typo'd --at is refused)


@dataclass(frozen=True)
class Header:
    address: int
    magic: int
    version: int
    length: int
    crc: int

    @property
    def version_text(self) -> str:
        v = self.version
        return f"{v >> 24}.{(v >> 16) & 0xFF}.{v & 0xFFFF}"

    def to_dict(self) -> dict[str, int | str]:
        return {
            "address": self.address,
            "magic": self.magic,
            "version": self.version,
            "version_text": self.version_text,
            "length": self.length,
            "crc": self.crc,
        }


def parse_version(text: str | int) -> int:
    """``"1.2.3"`` -> 0x01020003; an integer (``"258"``, ``"0x102"``) is taken as is."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+)\.(\d+)\.(\d+)\s*", text)
        if m:
            x, y, z = (int(g) for g in m.groups())
            if x > 0xFF or y > 0xFF or z > 0xFFFF:
                raise UsageError(f"version {text!r}: X and Y must be < 256 and Z < 65536")
            return x << 24 | y << 16 | z
        try:
            value = int(text, 0)
        except ValueError:
            raise UsageError(f"version {text!r} is neither X.Y.Z nor an integer") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise UsageError(f"version {text!r} does not fit 32 bits")
    return value


def compute_crc(data: bytes, kind: str) -> int:
    if kind == "zlib":
        return zlib_crc(data)
    if kind == "stm32":
        return stm32_crc(data)
    raise UsageError(f"unknown CRC {kind!r} (choose {' or '.join(CRC_KINDS)})")


def stamp(
    image: Image,
    at: int,
    *,
    version: int = 0,
    crc: str = "zlib",
    magic: int = MAGIC,
    fill: int = 0xFF,
) -> tuple[Image, Header]:
    """A copy of ``image`` with the header written at ``at`` and its gaps filled."""
    src = image.source or "image"
    if not image.segments:
        raise ImageError(f"{src}: nothing to stamp: the image is empty")
    if at % 4:
        raise UsageError(f"header address 0x{at:08X} is not a multiple of 4")
    if len({image.alts.get(s.address) for s in image.segments}) > 1:
        raise UsageError(f"{src}: the image spans several DfuSe alt settings; stamp one memory at a time")
    if crc not in CRC_KINDS:
        raise UsageError(f"unknown CRC {crc!r} (choose {' or '.join(CRC_KINDS)})")
    check_header_place(image, at, HEADER_SIZE, magic)
    start = min(image.start, at)
    end = max(image.end, at + HEADER_SIZE)
    length = -(-(end - start) // 4) * 4
    if length > MAX_SPAN:
        raise ImageError(f"{src}: stamping would fill 0x{start:08X}..0x{start + length:08X} ({length} bytes); too large")
    if length > 0xFFFFFFFF:
        raise ImageError(f"{src}: image too long for a 32-bit length field")
    blob = bytearray(image.read(start, length, fill))
    off = at - start
    blob[off : off + HEADER_SIZE] = HEADER.pack(magic, version, length, 0)
    value = compute_crc(bytes(blob), crc)
    blob[off + CRC_OFFSET : off + HEADER_SIZE] = struct.pack("<I", value)
    out = Image(
        source=image.source,
        format=image.format,
        alt_names=dict(image.alt_names),
        dfu_ids=image.dfu_ids,
        entry=image.entry,
    )
    alt = image.alts.get(image.segments[0].address)
    out.add(start, bytes(blob), alt=alt)
    return out, Header(at, magic, version, length, value)


def check_header_place(
    image: Image, at: int, size: int, magic: int | None = None, span: tuple[int, int] | None = None
) -> None:
    """Refuse a field that would overwrite code, or that lies far outside the image.

    The ``size`` bytes at ``at`` must be absent, blank (all 0xFF, or all 0x00 as a linker
    reserves a placeholder) or already a header with ``magic`` (re-stamping); the field must
    lie within the image's span plus :data:`MARGIN` bytes, so a mistyped address is refused
    instead of producing megabytes of fill.
    """
    src = image.source or "image"
    lo, hi = span if span is not None else (image.start, image.end)
    if at + size <= lo - MARGIN or at >= hi + MARGIN:
        raise UsageError(
            f"{src}: 0x{at:08X} is outside the image (0x{lo:08X}..0x{hi:08X}) by more than "
            f"{MARGIN} bytes: a typo? place the field inside the image or right after it"
        )
    present = bytearray()
    for seg in image.segments:
        lo, hi = max(seg.address, at), min(seg.end, at + size)
        if lo < hi:
            present += seg.data[lo - seg.address : hi - seg.address]
    if not present or present.count(0xFF) == len(present) or present.count(0) == len(present):
        return
    if magic is not None and len(present) == size and image.read(at, 4) == struct.pack("<I", magic):
        return
    raise UsageError(
        f"{src}: the {size} bytes at 0x{at:08X} hold data ({bytes(present[:8]).hex()}...), not a blank "
        "placeholder or a header: stamping would overwrite the application"
    )


def read_header(image: Image, at: int) -> Header:
    raw = image.read(at, HEADER_SIZE)
    magic, version, length, value = HEADER.unpack(raw)
    return Header(at, magic, version, length, value)


def check_stamp(image: Image, at: int, *, crc: str = "zlib", magic: int = MAGIC) -> list[str]:
    """What a bootloader would find wrong with the header at ``at`` (empty list: valid).

    The covered range starts at the image's first address, as :func:`stamp` defines it.
    """
    h = read_header(image, at)
    problems = []
    if h.magic != magic:
        return [f"no header at 0x{at:08X}: magic 0x{h.magic:08X}, expected 0x{magic:08X}"]
    start = min(image.start, at)
    blob = bytearray(image.read(start, h.length))
    off = at - start
    if not 0 <= off <= h.length - HEADER_SIZE:
        return [f"header at 0x{at:08X} lies outside its own length 0x{h.length:X}"]
    blob[off + CRC_OFFSET : off + HEADER_SIZE] = bytes(4)
    want = compute_crc(bytes(blob), crc)
    if want != h.crc:
        problems.append(f"CRC mismatch: header says 0x{h.crc:08X}, contents give 0x{want:08X}")
    return problems
