"""DfuSe memory-layout strings: what each alternate setting of a ROM bootloader exposes.

The ROM describes its memory in the iInterface string of every alternate setting, e.g.
``@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg``.  ST's ROMs are inconsistent
about padding (``064*0002Kg`` vs ``01*64Kg``), spacing (``01*016 e``) and may list several
regions in one alt (G4 option bytes), so the parser follows dfu-util's lenient rules rather
than a strict grammar: count ``*`` size, then an optional multiplier (B/K/M) and a type
letter ``a``..``g`` whose low three bits mean readable/erasable/writable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

READABLE = 1
ERASABLE = 2
WRITABLE = 4

_SEG_RE = re.compile(r"\s*(\d+)\s*\*\s*(\d+)(.?)([^,/]*)")
_MULT = {"B": 1, "K": 1024, "M": 1024 * 1024}


@dataclass(frozen=True)
class Sector:
    """A run of equally sized pages/sectors as one layout group describes it."""

    address: int
    count: int
    size: int
    kind: int  # READABLE | ERASABLE | WRITABLE bits

    @property
    def end(self) -> int:
        return self.address + self.count * self.size

    @property
    def readable(self) -> bool:
        return bool(self.kind & READABLE)

    @property
    def erasable(self) -> bool:
        return bool(self.kind & ERASABLE)

    @property
    def writable(self) -> bool:
        return bool(self.kind & WRITABLE)


@dataclass(frozen=True)
class AltLayout:
    """The parsed iInterface string of one alternate setting."""

    name: str
    sectors: tuple[Sector, ...] = field(default_factory=tuple)
    text: str = ""

    @property
    def start(self) -> int | None:
        return self.sectors[0].address if self.sectors else None

    @property
    def size(self) -> int:
        return sum(s.count * s.size for s in self.sectors)

    def sector_at(self, address: int) -> Sector | None:
        for s in self.sectors:
            if s.address <= address < s.end:
                return s
        return None

    def contains(self, address: int, length: int = 1) -> bool:
        """True when ``[address, address+length)`` lies in the described regions."""
        end = address + max(length, 1)
        pos = address
        while pos < end:
            s = self.sector_at(pos)
            if s is None:
                return False
            pos = s.end
        return True

    def pages(self) -> Iterator[tuple[int, int, int]]:
        """``(address, size, kind)`` of every page, in address order."""
        for s in self.sectors:
            for i in range(s.count):
                yield s.address + i * s.size, s.size, s.kind

    def regions(self) -> list[tuple[int, int]]:
        """``[(start, end), ...]`` with adjacent groups joined."""
        out: list[tuple[int, int]] = []
        for s in self.sectors:
            if out and out[-1][1] == s.address:
                out[-1] = (out[-1][0], s.end)
            else:
                out.append((s.address, s.end))
        return out

    def describe(self) -> str:
        """Human summary: ``0x08000000 1 MiB: 4x16K,1x64K,7x128K (rew)``."""
        parts = []
        for start, end in self.regions():
            groups = [s for s in self.sectors if start <= s.address < end]
            kinds = {s.kind for s in groups}
            flags = "".join(c for bit, c in ((READABLE, "r"), (ERASABLE, "e"), (WRITABLE, "w")) if any(k & bit for k in kinds))
            layout = ",".join(f"{s.count}x{_size(s.size).replace(' B', '')}" for s in groups)
            parts.append(f"0x{start:08X} {_size(end - start)}: {layout} ({flags or '-'})")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "text": self.text,
            "regions": [
                {"address": s.address, "count": s.count, "size": s.size, "readable": s.readable,
                 "erasable": s.erasable, "writable": s.writable}
                for s in self.sectors
            ],
        }


def _size(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10}K"
    return f"{n} B"


def _segment(text: str, address: int) -> tuple[Sector, int]:
    m = _SEG_RE.match(text)
    if not m:
        raise ValueError(f"bad DfuSe layout segment {text!r}")
    count, size = int(m.group(1)), int(m.group(2))
    mult_char, rest = m.group(3), m.group(4)
    kind_char = ""
    if mult_char.upper() in _MULT:
        size *= _MULT[mult_char.upper()]
    elif mult_char.lower() in "abcdefg" and mult_char:
        kind_char = mult_char  # dfu-util: a type letter in the multiplier slot means bytes
    # otherwise (space, missing): bytes, type letter in the remainder
    if not kind_char:
        letters = [c for c in rest if c.lower() in "abcdefg"]
        kind_char = letters[0] if letters else "a"
    kind = (ord(kind_char.lower()) - ord("a") + 1) & 7
    return Sector(address, count, size, kind), address + count * size


def parse_alt(text: str) -> AltLayout:
    """Parse one alt-setting string; raises :class:`ValueError` when it has no layout."""
    raw = text
    text = text.strip().rstrip("\x00")
    if not text.startswith("@"):
        raise ValueError(f"not a DfuSe layout string: {raw!r}")
    fields = text[1:].split("/")
    name = fields[0].strip()
    sectors: list[Sector] = []
    i = 1
    while i + 1 < len(fields):
        addr_text = fields[i].strip()
        try:
            address = int(addr_text, 16) if addr_text.lower().startswith("0x") else int(addr_text, 0)
        except ValueError as exc:
            raise ValueError(f"bad address {addr_text!r} in DfuSe layout {raw!r}") from exc
        for seg_text in fields[i + 1].split(","):
            if not seg_text.strip():
                continue
            sector, address = _segment(seg_text, address)
            sectors.append(sector)
        i += 2
    return AltLayout(name=name, sectors=tuple(sectors), text=raw)


def try_parse_alt(text: str) -> AltLayout:
    """Like :func:`parse_alt` but an unparsable string yields a layout with no sectors."""
    try:
        return parse_alt(text)
    except ValueError:
        return AltLayout(name=text.strip().lstrip("@").split("/")[0].strip(), text=text)


def render_units(units: Iterable[tuple[int, int]], kind: str = "g") -> str:
    """Layout groups for ``(address, size)`` units as ST's ROMs write them (``04*016Kg``)."""
    groups: list[list[int]] = []  # [count, size]
    for _addr, size in units:
        if groups and groups[-1][1] == size:
            groups[-1][0] += 1
        else:
            groups.append([1, size])
    out = []
    for count, size in groups:
        if size % 1024 == 0:
            out.append(f"{count:02d}*{size // 1024:03d}K{kind}")
        else:
            out.append(f"{count:02d}*{size:03d} {kind}")
    return ",".join(out)


def normalise_name(name: str) -> str:
    """Alt names compared case- and space-insensitively (``Internal  Flash`` = ``internal flash``)."""
    return " ".join(name.lower().split())
