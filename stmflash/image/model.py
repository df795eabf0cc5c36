"""The one model of a firmware image that every loader produces and every link flashes.

An :class:`Image` is an ordered list of non-overlapping :class:`Segment` s. Gaps stay gaps:
nothing is padded unless a writer is explicitly asked to fill them, so that a sparse image
erases and writes only what it covers.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from stmflash.errors import ImageError


@dataclass(frozen=True)
class Segment:
    """Contiguous bytes at an absolute address."""

    address: int
    data: bytes

    @property
    def end(self) -> int:
        return self.address + len(self.data)

    def __len__(self) -> int:
        return len(self.data)


@dataclass
class Image:
    """Ordered, non-overlapping segments plus where they came from.

    ``alt`` is the DfuSe alternate setting a segment belongs to when the image came from a
    multi-target ``.dfu`` file (``None`` otherwise: the device's flash alt).
    """

    segments: list[Segment] = field(default_factory=list)
    source: str = ""
    format: str = ""
    alts: dict[int, int] = field(default_factory=dict)  # segment address -> DfuSe alt setting
    alt_names: dict[int, str] = field(default_factory=dict)  # alt setting -> target name
    dfu_ids: tuple[int, int, int] | None = None  # (vid, pid, bcdDevice) of a .dfu suffix
    entry: int | None = None  # start/entry address a HEX (03/05), S-record (S7-S9) or ELF file names

    # ---- construction -----------------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes, address: int, source: str = "", fmt: str = "bin") -> Image:
        img = cls(source=source, format=fmt)
        if data:
            img.add(address, data)
        return img

    @classmethod
    def from_segments(cls, segments: Iterable[tuple[int, bytes]], source: str = "", fmt: str = "") -> Image:
        img = cls(source=source, format=fmt)
        for address, data in segments:
            img.add(address, bytes(data))
        return img

    def add(self, address: int, data: bytes, *, alt: int | None = None) -> None:
        """Insert data; adjacent segments are joined, overlaps are an :class:`ImageError`."""
        if not data:
            return
        if address < 0 or address + len(data) > 1 << 32:
            raise ImageError(f"{self.source or 'image'}: data at 0x{address:X} is outside the 32-bit address space")
        seg = Segment(address, bytes(data))
        starts = [s.address for s in self.segments]
        i = bisect.bisect_left(starts, address)
        prev = self.segments[i - 1] if i > 0 else None
        nxt = self.segments[i] if i < len(self.segments) else None
        if prev is not None and prev.end > address:
            raise ImageError(f"{self.source or 'image'}: overlapping data at 0x{address:08X}")
        if nxt is not None and seg.end > nxt.address:
            raise ImageError(f"{self.source or 'image'}: overlapping data at 0x{nxt.address:08X}")
        if alt is not None:
            self.alts[address] = alt
        # join with neighbours when contiguous and in the same alt
        if prev is not None and prev.end == address and self.alts.get(prev.address) == self.alts.get(address):
            self.alts.pop(address, None)
            seg = Segment(prev.address, prev.data + seg.data)
            self.segments[i - 1] = seg
            i -= 1
        else:
            self.segments.insert(i, seg)
        if nxt is not None and seg.end == nxt.address and self.alts.get(seg.address) == self.alts.get(nxt.address):
            self.alts.pop(nxt.address, None)
            self.segments[i] = Segment(seg.address, seg.data + nxt.data)
            del self.segments[i + 1]

    # ---- queries ----------------------------------------------------------------------
    def __bool__(self) -> bool:
        return bool(self.segments)

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    @property
    def start(self) -> int:
        if not self.segments:
            raise ImageError(f"{self.source or 'image'}: image is empty")
        return self.segments[0].address

    @property
    def end(self) -> int:
        if not self.segments:
            raise ImageError(f"{self.source or 'image'}: image is empty")
        return self.segments[-1].end

    @property
    def size(self) -> int:
        """Bytes of data (gaps not counted)."""
        return sum(len(s) for s in self.segments)

    def read(self, address: int, length: int, fill: int = 0xFF) -> bytes:
        """Bytes of ``[address, address+length)``; gaps read as ``fill``."""
        out = bytearray([fill]) * length
        end = address + length
        for s in self.segments:
            if s.end <= address or s.address >= end:
                continue
            lo, hi = max(s.address, address), min(s.end, end)
            out[lo - address : hi - address] = s.data[lo - s.address : hi - s.address]
        return bytes(out)

    def to_bin(self, fill: int = 0xFF, start: int | None = None) -> bytes:
        """One contiguous blob from ``start`` (default: first address) with gaps filled."""
        if not self.segments:
            return b""
        base = self.start if start is None else start
        return self.read(base, self.end - base, fill)

    def crc32(self) -> int:
        """zlib CRC-32 of the segment data in address order (gaps not included)."""
        crc = 0
        for s in self.segments:
            crc = zlib.crc32(s.data, crc)
        return crc & 0xFFFFFFFF

    def chunks(self, size: int) -> Iterator[tuple[int, bytes]]:
        """Split into ``(address, bytes)`` blocks of at most ``size`` bytes, never crossing a
        gap; block starts are aligned to ``size`` boundaries so that flash pages line up."""
        for s in self.segments:
            addr = s.address
            while addr < s.end:
                boundary = (addr // size + 1) * size
                stop = min(boundary, s.end)
                yield addr, s.data[addr - s.address : stop - s.address]
                addr = stop

    def aligned(self, align: int, fill: int = 0xFF) -> Image:
        """A copy whose segments start and end on ``align`` boundaries (padded with ``fill``).

        Used for the flash write alignment (4/8/16 bytes); neighbours merge when padding
        makes them touch.
        """
        if align <= 1:
            return self.copy()
        out = Image(source=self.source, format=self.format, alt_names=dict(self.alt_names), dfu_ids=self.dfu_ids)
        pending: list[tuple[int, bytearray, int | None]] = []
        for s in self.segments:
            a = s.address - s.address % align
            e = -(-s.end // align) * align
            buf = bytearray([fill]) * (e - a)
            buf[s.address - a : s.end - a] = s.data
            alt = self.alts.get(s.address)
            if pending and pending[-1][0] + len(pending[-1][1]) > a and pending[-1][2] == alt:
                pa, pbuf, palt = pending[-1]
                overlap = pa + len(pbuf) - a
                # overlapping bytes are padding on one side: keep the real data
                merged = bytearray(pbuf)
                tail = buf[:overlap]
                for k in range(overlap):
                    if merged[len(pbuf) - overlap + k] == fill:
                        merged[len(pbuf) - overlap + k] = tail[k]
                merged += buf[overlap:]
                pending[-1] = (pa, merged, palt)
            else:
                pending.append((a, buf, alt))
        for a, buf, alt in pending:
            out.add(a, bytes(buf), alt=alt)
        return out

    def copy(self) -> Image:
        return Image(
            list(self.segments), self.source, self.format, dict(self.alts), dict(self.alt_names), self.dfu_ids, self.entry
        )

    def merge(self, other: Image) -> Image:
        """Union of two images; overlapping data is an error naming both sources."""
        out = self.copy()
        for s in other.segments:
            for mine in self.segments:
                if mine.address < s.end and s.address < mine.end:
                    addr = max(mine.address, s.address)
                    raise ImageError(
                        f"{self.source or 'image'} and {other.source or 'image'} overlap at 0x{addr:08X}"
                    )
            out.add(s.address, s.data, alt=other.alts.get(s.address))
        out.source = f"{self.source}+{other.source}"
        return out

    def ranges(self) -> list[tuple[int, int]]:
        """``[(start, end), ...]`` of the data (end exclusive)."""
        return [(s.address, s.end) for s in self.segments]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Image):
            return NotImplemented
        return [(s.address, s.data) for s in self.segments] == [(s.address, s.data) for s in other.segments]
