"""The STM32 device table: facts as data, read by the client and the virtual STM32 alike.

The facts live in ``stmflash/data/devices.toml`` (sources and disagreements noted there).
Code never branches on a family name to decide protocol or geometry: it asks a
:class:`Device` for its erase units, alignment, timings and regions.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Region:
    """A half-open address range ``[start, end)``."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start

    def __contains__(self, address: object) -> bool:
        return isinstance(address, int) and self.start <= address < self.end

    def contains_range(self, start: int, length: int) -> bool:
        return self.start <= start and start + length <= self.end

    def to_dict(self) -> dict[str, int]:
        return {"start": self.start, "end": self.end, "size": self.size}


@dataclass(frozen=True)
class EraseUnit:
    """One page or sector, numbered as the ROM's erase commands number it."""

    index: int
    address: int
    size: int
    bank: int = 1

    @property
    def end(self) -> int:
        return self.address + self.size


_SIZE_RE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*([KkMm]?)\s*$")


def parse_layout(text: str) -> list[tuple[int, int]]:
    """Parse ``"4x16K,1x64K,7x128K"`` into ``[(count, size), ...]``."""
    groups = []
    for part in text.split(","):
        m = _SIZE_RE.match(part)
        if not m:
            raise ValueError(f"bad flash layout group {part!r} in {text!r}")
        count, size, unit = int(m.group(1)), int(m.group(2)), m.group(3).upper()
        size *= {"": 1, "K": 1024, "M": 1024 * 1024}[unit]
        groups.append((count, size))
    return groups


def _bank_units(layout: list[tuple[int, int]], start: int, size: int) -> list[tuple[int, int]]:
    """Expand a layout over ``size`` bytes; the last group repeats (sector parts)."""
    units: list[tuple[int, int]] = []
    addr, end = start, start + size
    for count, usize in layout:
        for _ in range(count):
            if addr >= end:
                return units
            units.append((addr, usize))
            addr += usize
    last = layout[-1][1]
    while addr < end:
        units.append((addr, last))
        addr += last
    return units


@dataclass(frozen=True)
class Device:
    """Everything stmflash knows about one STM32 product (and bootloader variant)."""

    pid: int
    name: str
    family: str
    bl_ids: tuple[int, ...] = ()
    aliases: tuple[str, ...] = ()
    flash_start: int = 0x08000000
    flash_size: int = 0
    flash_layout: str = "1x2K"
    banks: int = 1
    bank_size: int | None = None
    ram: tuple[Region, ...] = ()
    ram_usable: Region | None = None
    system_memory: Region | None = None
    bl_id_address: int | None = None
    option_bytes: Region | None = None
    # a second option-byte block the ROM presents at its own address (F42x/F43x/F469 bank 2,
    # RM0090 3.7.1 Table 16: 0x1FFEC000, nWRP of sectors 12-23); the field view
    # (stmflash.ob_fields) is option_bytes followed by this block
    option_bytes2: Region | None = None
    # write protection in option_bytes2: { bytes = [offsets, low byte first], first_unit,
    # max_bits, protected = 0|1 } (bit n protects erase unit first_unit + n), or
    # { kind = "areas", offsets, width } (L4/G4 WRP2x areas, pages of bank 2)
    ob_wrp2: dict[str, Any] = field(default_factory=dict)
    otp: Region | None = None
    eeprom: Region | None = None
    flash_size_reg: int | None = None
    uid_reg: int | None = None
    write_align: int = 4  # programming unit (bytes): the ROM fills a short last unit with 0xFF
    write_misaligned: str = "nack"  # a write starting inside a unit: "nack" or "drop" (ACK, unchanged)
    empty_check: bool = False
    # what erased program flash reads as (0xFF on most families; 0x00 on L0/L1, RM0377/RM0367
    # 3.3 "NOTZEROERR: write to a not-zero area", RM0038 3.3 page erase)
    erased: int = 0xFF
    mass_erase: bool = True
    usart_protocol: int = 0x31
    usart_commands: tuple[int, ...] | None = None
    interfaces: tuple[str, ...] = ("usart",)
    startup_ms: float = 1.0
    page_erase_ms: tuple[float, float] | None = None
    sector_erase_ms: dict[int, tuple[float, float]] = field(default_factory=dict)
    mass_erase_ms: tuple[float, float] | None = None
    program_ms_per_256: tuple[float, float] = (3.0, 10.0)
    dfu: dict[str, Any] = field(default_factory=dict)
    # option-byte layout as the ROM presents it (stmflash.option_bytes); {} = not known
    ob_layout: dict[str, Any] = field(default_factory=dict)
    # option fields by name: a table of stmflash/data/option_bytes.toml (stmflash.ob_fields)
    ob_fields: str = ""
    # RAM flasher stub facts (stmflash.stub); {} = the family has no stub
    stub: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    generic: bool = False

    # ---- geometry -------------------------------------------------------------------
    @property
    def erased_bytes(self) -> bytes:
        """One erased byte (``erased`` as ``bytes``: multiply for a blank span)."""
        return bytes([self.erased])

    @property
    def flash(self) -> Region:
        return Region(self.flash_start, self.flash_start + self.flash_size)

    @functools.cached_property
    def erase_units(self) -> tuple[EraseUnit, ...]:
        """Units in address order, numbered 0.. across banks as the ROM's Extended Erase
        numbers them (bank 2 continues where bank 1 ends: F42x sectors 12..23).

        ``bank_size`` fixes where bank 2 starts (F42x: 1 MiB, whatever the part's size, so a
        1 MiB F42x is single-bank); without it the flash splits evenly (L4/G4 halves).
        """
        layout = parse_layout(self.flash_layout)
        nbanks = max(self.banks, 1)
        bank_size = self.bank_size or self.flash_size // nbanks
        units: list[EraseUnit] = []
        remaining = self.flash_size
        for bank in range(nbanks):
            size = min(bank_size, remaining)
            if size <= 0:
                break
            start = self.flash_start + bank * bank_size
            for addr, usize in _bank_units(layout, start, size):
                units.append(EraseUnit(len(units), addr, usize, bank + 1))
            remaining -= size
        return tuple(units)

    @property
    def bank_count(self) -> int:
        """Banks actually present (a reduced-size F42x has one)."""
        return len({u.bank for u in self.erase_units})

    @property
    def layout_summary(self) -> str:
        """Short human form: ``64x1K`` or ``2 banks x (4x16K,1x64K,7x128K)``."""
        groups = unit_groups
        banks = sorted({u.bank for u in self.erase_units})
        if len(banks) <= 1:
            return groups(list(self.erase_units))
        per_bank = [groups(self.bank_units(b)) for b in banks]
        if len(set(per_bank)) == 1:
            return f"{len(banks)} banks x ({per_bank[0]})"
        return " | ".join(per_bank)

    def dfu_flash_layout(self) -> str:
        """The erase units as a DfuSe memory-layout string (``04*016Kg,01*064Kg,07*128Kg``)."""
        from stmflash.dfu.layout import render_units

        return render_units((u.address, u.size) for u in self.erase_units)

    def dfu_alts(self) -> list[str]:
        """The ROM's DfuSe alternate-setting strings, ``{flash}`` filled in."""
        layout = self.dfu_flash_layout()
        return [a.replace("{flash}", layout) for a in self.dfu.get("alts", [])]

    @property
    def uniform_pages(self) -> bool:
        """True when every erase unit has the same size (page parts)."""
        return len({u.size for u in self.erase_units}) <= 1

    def unit_at(self, address: int) -> EraseUnit | None:
        units = self.erase_units
        lo, hi = 0, len(units)
        while lo < hi:
            mid = (lo + hi) // 2
            u = units[mid]
            if address < u.address:
                hi = mid
            elif address >= u.end:
                lo = mid + 1
            else:
                return u
        return None

    def units_covering(self, start: int, end: int) -> list[EraseUnit]:
        """Erase units that intersect ``[start, end)``."""
        return [u for u in self.erase_units if u.address < end and start < u.end]

    def bank_units(self, bank: int) -> list[EraseUnit]:
        return [u for u in self.erase_units if u.bank == bank]

    # ---- timings --------------------------------------------------------------------
    def unit_erase_ms(self, unit: EraseUnit) -> tuple[float, float]:
        if unit.size in self.sector_erase_ms:
            return self.sector_erase_ms[unit.size]
        if self.page_erase_ms is not None:
            return self.page_erase_ms
        return (50.0, 5000.0)

    def mass_erase_time_ms(self) -> tuple[float, float]:
        if self.mass_erase_ms is not None:
            return self.mass_erase_ms
        typ = sum(self.unit_erase_ms(u)[0] for u in self.erase_units)
        mx = sum(self.unit_erase_ms(u)[1] for u in self.erase_units)
        return (typ, mx)

    def program_time_ms(self, nbytes: int) -> tuple[float, float]:
        typ, mx = self.program_ms_per_256
        return (typ * nbytes / 256.0, mx * nbytes / 256.0)

    # ---- AN3155 -----------------------------------------------------------------------
    @property
    def erase_command(self) -> int:
        """0x44 (Extended Erase) from protocol v3.0 on, 0x43 before: never both."""
        return 0x44 if self.usart_protocol >= 0x30 else 0x43

    @property
    def commands(self) -> tuple[int, ...]:
        """The command codes Get lists for this bootloader version."""
        if self.usart_commands is not None:
            return self.usart_commands
        cmds = [0x00, 0x01, 0x02, 0x11, 0x21, 0x31, self.erase_command, 0x63, 0x73, 0x82, 0x92]
        if self.usart_protocol >= 0x33:
            cmds.append(0xA1)
        return tuple(cmds)

    # ---- misc -------------------------------------------------------------------------
    def with_flash_size(self, size: int) -> Device:
        """A copy for a part whose flash-size register reports less than the maximum."""
        if size <= 0 or size == self.flash_size:
            return self
        smaller = dataclasses.replace(self, flash_size=size)
        if smaller.bank_count < smaller.banks:
            # a 1 MiB F42x is single-bank: keep ``banks`` truthful for bank-erase logic
            smaller = dataclasses.replace(smaller, banks=smaller.bank_count)
        return smaller

    def ram_region_of(self, address: int) -> Region | None:
        for r in self.ram:
            if address in r:
                return r
        return None

    @property
    def short_name(self) -> str:
        return self.aliases[0] if self.aliases else self.name

    def to_dict(self) -> dict[str, Any]:
        def reg(r: Region | None) -> dict[str, int] | None:
            return r.to_dict() if r else None

        return {
            "pid": self.pid,
            "pid_hex": f"0x{self.pid:03X}",
            "bl_ids": list(self.bl_ids),
            "name": self.name,
            "family": self.family,
            "aliases": list(self.aliases),
            "flash": {
                "start": self.flash_start,
                "size": self.flash_size,
                "layout": self.flash_layout,
                "banks": self.bank_count,
                "bank_size": self.bank_size,
                "units": len(self.erase_units),
                "summary": self.layout_summary,
            },
            "ram": [r.to_dict() for r in self.ram],
            "ram_usable": reg(self.ram_usable),
            "system_memory": reg(self.system_memory),
            "bl_id_address": self.bl_id_address,
            "option_bytes": reg(self.option_bytes),
            **({"option_bytes2": reg(self.option_bytes2)} if self.option_bytes2 is not None else {}),
            "otp": reg(self.otp),
            "eeprom": reg(self.eeprom),
            "flash_size_reg": self.flash_size_reg,
            "uid_reg": self.uid_reg,
            "write_align": self.write_align,
            "write_misaligned": self.write_misaligned,
            "empty_check": self.empty_check,
            "erased": f"0x{self.erased:02X}",
            "mass_erase": self.mass_erase,
            "erase_command": self.erase_command,
            "usart_protocol": self.usart_protocol,
            "usart_commands": list(self.commands),
            "interfaces": list(self.interfaces),
            "startup_ms": self.startup_ms,
            "page_erase_ms": list(self.page_erase_ms) if self.page_erase_ms else None,
            "sector_erase_ms": {str(k): list(v) for k, v in self.sector_erase_ms.items()},
            "mass_erase_ms": list(self.mass_erase_time_ms()),
            "program_ms_per_256": list(self.program_ms_per_256),
            "dfu": ({**self.dfu, "alts": self.dfu_alts()} if "dfu" in self.interfaces and self.dfu else None),
            "ob_layout": self.ob_layout or None,
            "ob_fields": self.ob_fields or None,
            "stub": self.stub or None,
            "generic": self.generic,
            "note": self.note,
        }


def unit_groups(units: Iterable[EraseUnit]) -> str:
    """Erase units spelled out in runs of equal size: ``4x16K,1x64K,7x128K``."""
    out: list[list[int]] = []
    for u in units:
        if out and out[-1][1] == u.size:
            out[-1][0] += 1
        else:
            out.append([1, u.size])
    return ",".join(f"{n}x{_fmt_size(sz)}" for n, sz in out)


def _fmt_size(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    if n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


class UnknownDeviceWarning(UserWarning):
    pass


def _region(value: Any) -> Region | None:
    if value is None:
        return None
    if len(value) != 2:
        raise ValueError(f"bad region {value!r}")
    a, b = value
    return Region(int(a), int(b))


def _sized_region(value: Any) -> Region | None:
    """``[start, size]`` (option bytes, OTP) into a Region."""
    if value is None:
        return None
    a, n = value
    return Region(int(a), int(a) + int(n))


def _pair(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    return (float(value[0]), float(value[1]))


WRITE_MISALIGNED = ("nack", "drop")

_NULLABLE = frozenset(
    {"ram_usable", "system_memory", "bl_id_address", "option_bytes", "option_bytes2", "otp", "eeprom",
     "flash_size_reg", "uid_reg", "bank_size", "usart_commands", "page_erase_ms", "mass_erase_ms"}
)


def _build(entry: dict[str, Any]) -> Device:
    kw: dict[str, Any] = {}
    for key, value in entry.items():
        if value is False and key in _NULLABLE:
            # ``key = false`` in a device entry removes a family default (no such register)
            kw[key] = None
        elif key in ("ram",):
            kw[key] = tuple(Region(int(a), int(b)) for a, b in value)
        elif key in ("ram_usable", "system_memory"):
            kw[key] = _region(value)
        elif key in ("option_bytes", "option_bytes2", "otp", "eeprom"):
            kw[key] = _sized_region(value)
        elif key in ("page_erase_ms", "mass_erase_ms", "program_ms_per_256"):
            kw[key] = _pair(value)
        elif key == "sector_erase_ms":
            kw[key] = {int(k): _pair(v) for k, v in value.items()}
        elif key in ("bl_ids", "aliases", "interfaces", "usart_commands"):
            kw[key] = tuple(value)
        elif key == "ob_layout" and isinstance(value, str):
            if value != "unknown":
                raise ValueError(f"ob_layout must be a table or \"unknown\", not {value!r}")
            kw[key] = {}
        else:
            kw[key] = value
    if kw.get("write_misaligned", "nack") not in WRITE_MISALIGNED:
        raise ValueError(f"write_misaligned must be one of {', '.join(WRITE_MISALIGNED)}, not {kw['write_misaligned']!r}")
    return Device(**kw)


@functools.lru_cache(maxsize=1)
def _table() -> tuple[Device, ...]:
    text = resources.files("stmflash").joinpath("data/devices.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    families: dict[str, dict[str, Any]] = data.get("family", {})
    devices = []
    for raw in data.get("device", []):
        family = families.get(raw.get("family", ""), {})
        merged = dict(family)
        merged.update(raw)
        # a device's ob_layout table refines its family's (usually only `wrp`: the page-field
        # width of its size); "unknown" on either side replaces
        if isinstance(raw.get("ob_layout"), dict) and isinstance(family.get("ob_layout"), dict):
            merged["ob_layout"] = {**family["ob_layout"], **raw["ob_layout"]}
        devices.append(_build(merged))
    return tuple(devices)


def all_devices() -> tuple[Device, ...]:
    """Every entry of the table, in table order."""
    return _table()


def lookup(pid: int, bl_id: int | None = None, *, warn: bool = True) -> Device:
    """The device for a product ID (and bootloader ID when known).

    Exact (pid, bl_id) first, then the first entry with that pid (bootloader IDs change
    between AN2606 revisions), then a generic profile with a warning.
    """
    candidates = [d for d in _table() if d.pid == pid]
    if bl_id is not None:
        for d in candidates:
            if bl_id in d.bl_ids:
                return d
    if candidates:
        return candidates[0]
    if warn:
        warnings.warn(
            f"product ID 0x{pid:03X} is not in stmflash's device table; using a generic "
            "profile (mass erase only, 16-byte write alignment)",
            UnknownDeviceWarning,
            stacklevel=2,
        )
    return generic(pid)


def generic(pid: int) -> Device:
    """A conservative profile for a product ID the table does not know."""
    return Device(
        pid=pid,
        name=f"unknown STM32 (PID 0x{pid:03X})",
        family="generic",
        flash_start=0x08000000,
        flash_size=0x200000,
        flash_layout="1x2K",
        ram=(Region(0x20000000, 0x20004000),),
        ram_usable=Region(0x20002000, 0x20004000),
        write_align=16,
        mass_erase=True,
        generic=True,
    )


def _norm(text: str) -> str:
    t = text.strip().upper().replace(" ", "")
    if t.startswith("STM32"):
        t = t[5:]
    return t


_PART_TAIL = re.compile(r"[A-Z0-9]{1,6}")


def _part_number_match(q: str, table: Iterable[Device]) -> Device | None:
    """A full part number (``F407VG``, ``G071RBT6``, ``F401CCU6``): the longest alias it extends.

    ST part numbers are line (``F407``) + pin-count letter + flash-size letter + package and
    temperature range (ST's "ordering information" scheme in every datasheet); aliases like
    ``F401xC`` put an ``x`` where the pin-count letter goes.
    """
    best: tuple[int, Device] | None = None
    for d in table:
        for a in d.aliases:
            na = _norm(a)
            wild = "X" in na[1:]
            if wild:
                i = na.index("X", 1)
                pattern = re.escape(na[:i]) + "[A-Z]" + re.escape(na[i + 1 :])
            else:
                pattern = re.escape(na)
            m = re.match(pattern, q)
            tail = q[m.end() :] if m is not None else ""
            if m is None or not (_PART_TAIL.fullmatch(tail) or (wild and not tail)):
                continue
            if best is None or len(na) > best[0]:
                best = (len(na), d)
    return best[1] if best is not None else None


def find(query: str) -> Device:
    """Resolve a user's device name: PID (``0x413``/``413``), alias (``F407``), name, or a
    full part number (``STM32F407VGT6``, ``STM32G071RB``); ``NAME@BLID`` (``F407@0x91``)
    picks the bootloader variant with that ID.

    Raises :class:`KeyError` with the close matches when nothing or several things match.
    """
    base, sep, bl_text = query.partition("@")
    if sep:
        # NAME@BLID: one bootloader variant of a product ID (F407@0x91)
        try:
            bl_id = int(bl_text.strip(), 16)
        except ValueError:
            raise KeyError(f"bad bootloader ID {bl_text!r} in {query!r} (e.g. F407@0x91)") from None
        pid = find(base).pid
        hit = next((d for d in _table() if d.pid == pid and bl_id in d.bl_ids), None)
        if hit is None:
            known = ", ".join(f"0x{b:02X}" for d in _table() if d.pid == pid for b in d.bl_ids)
            raise KeyError(f"{base.strip()} has no bootloader ID 0x{bl_id:02X} in the table (known: {known})")
        return hit
    q = _norm(query)
    if not q:
        raise KeyError("no device name given (e.g. F407, STM32G071RB, 0x413; see 'stmflash devices')")
    table = _table()
    pid: int | None = None
    if re.fullmatch(r"(0X)?[0-9A-F]{3}", q):
        pid = int(q, 16)
        hits = [d for d in table if d.pid == pid]
        if hits:
            return hits[0]
    for d in table:
        if any(_norm(a) == q for a in d.aliases) or _norm(d.name) == q:
            return d
    part = _part_number_match(q, table)
    if part is not None:
        return part
    # a prefix of an alias or of the name ("F40", "STM32G0"), never a substring elsewhere
    partial = [d for d in table if any(_norm(a).startswith(q) for a in d.aliases) or _norm(d.name).startswith(q)]
    unique = {d.pid: d for d in partial}
    if len(unique) == 1:
        return next(iter(unique.values()))
    if unique:
        names = ", ".join(sorted(d.short_name for d in unique.values()))
        raise KeyError(f"device {query!r} is ambiguous: {names}")
    raise KeyError(f"unknown device {query!r} (see 'stmflash devices')")


def families(devices: Iterable[Device] | None = None) -> list[str]:
    return sorted({d.family for d in (devices or _table())})
