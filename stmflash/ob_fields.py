"""Option bytes by field name, driven by ``stmflash/data/option_bytes.toml``.

A production line sets option bytes as ST's tools do, by name (``RDP=0xAA nBOOT_SEL=0
BOR_LEV=3``), and reads them back decoded. The names, bit positions in the area the ROM
bootloader presents (AN3155 Read/Write Memory at the option-byte address, the DfuSe
option-bytes alt), widths, documented values, factory defaults and the "dangerous" marks
are data, one table per family (schema in the data file's header); this module only
interprets them. It never talks to a chip: the UART and DFU commands, ``stmflash batch``
and the virtual STM32 all go through the same functions, so they agree bit for bit.

Refusals are :class:`~stmflash.errors.UsageError` (exit 2) and happen before anything is
written: an unknown field, a value that does not fit or is not documented, a field or a
family the table marks unknown (with the table's reason). A written field that reads back
otherwise is an :class:`OptionByteMismatch` naming the field.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import tomllib

from stmflash.devices import Device
from stmflash.errors import UsageError, VerifyError

__all__ = [
    "Field",
    "OptionByteMismatch",
    "Table",
    "all_tables",
    "apply",
    "boot_source",
    "check_written",
    "decode",
    "factory_area",
    "factory_block2",
    "factory_view",
    "parse_assignments",
    "precheck",
    "reset_default_values",
    "resolve",
    "table_of",
    "view_size",
]


class OptionByteMismatch(VerifyError):
    """A field read back after the reload differs from what was written (exit 5)."""

    def __init__(self, message: str, field_name: str) -> None:
        super().__init__(message)
        self.field = field_name


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    bit: int
    width: int = 1
    default: int = 0
    values: tuple[tuple[int, str, str], ...] = ()
    meaning: str = ""
    other: str = ""
    danger: str = ""
    permanent: tuple[int, ...] = ()
    aliases: tuple[str, ...] = ()
    unknown: str = ""
    readonly: str = ""

    @property
    def mask(self) -> int:
        return (1 << self.width) - 1

    def get(self, area: bytes) -> int:
        word = int.from_bytes(area[self.offset : self.offset + 4], "little")
        return word >> self.bit & self.mask

    def put(self, area: bytearray, value: int) -> None:
        word = int.from_bytes(area[self.offset : self.offset + 4], "little")
        word = word & ~(self.mask << self.bit) | (value & self.mask) << self.bit
        area[self.offset : self.offset + 4] = word.to_bytes(4, "little")

    def meaning_of(self, value: int) -> str:
        for v, name, text in self.values:
            if v == value:
                return f"{name}: {text}"
        if self.other:
            return self.other
        return self.meaning

    def name_of(self, value: int) -> str:
        return next((n for v, n, _ in self.values if v == value), "")

    def writable_reason(self) -> str:
        return self.unknown or self.readonly


@dataclass(frozen=True)
class Table:
    name: str
    source: str
    fields: tuple[Field, ...]
    factory: tuple[tuple[int, int], ...] = ()
    unknown: str = ""
    factory_partial: str = ""
    boot: tuple[dict[str, Any], ...] = ()
    boot_address: Mapping[str, Any] = field(default_factory=dict)
    boot_hint: str = ""
    by_name: Mapping[str, Field] = field(default_factory=dict)

    def find(self, name: str) -> Field | None:
        return self.by_name.get(name.lower())

    def claims_default(self, f: Field) -> bool:
        """Whether ``f.default`` is an established production value: the table holds
        factory words, and (``factory_partial`` tables) one of them is ``f``'s word."""
        if not self.factory:
            return False
        return not self.factory_partial or any(off == f.offset for off, _ in self.factory)


# ---- loading ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _raw() -> dict[str, Any]:
    text = resources.files("stmflash").joinpath("data/option_bytes.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def _field(raw: Mapping[str, Any]) -> Field:
    offset, bit = (int(x) for x in raw["at"])
    f = Field(
        name=str(raw["name"]),
        offset=offset,
        bit=bit,
        width=int(raw.get("width", 1)),
        default=int(raw["default"]),
        values=tuple((int(v), str(n), str(t)) for v, n, t in raw.get("values", [])),
        meaning=str(raw.get("meaning", "")),
        other=str(raw.get("other", "")),
        danger=str(raw.get("danger", "")),
        permanent=tuple(int(v) for v in raw.get("permanent", [])),
        aliases=tuple(str(a) for a in raw.get("aliases", [])),
        unknown=str(raw.get("unknown", "")),
        readonly=str(raw.get("readonly", "")),
    )
    if offset % 4 or not 0 <= bit or bit + f.width > 32:
        raise ValueError(f"option_bytes.toml: field {f.name}: bad position {raw['at']} width {f.width}")
    return f


def _merged(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    data = _raw()
    if name not in data:
        raise ValueError(f"option_bytes.toml has no table {name!r}")
    if name in seen:
        raise ValueError(f"option_bytes.toml: table {name} includes itself")
    raw = data[name]
    out: dict[str, Any] = {
        "fields": {}, "factory": [], "boot": [], "boot_address": {}, "boot_hint": "", "source": "", "unknown": "",
        "factory_partial": "",
    }
    if "base" in raw:
        out = _merged(str(raw["base"]), (*seen, name))
        out["fields"] = dict(out["fields"])
        out["unknown"] = ""  # a variant states its own unknown
    for d in raw.get("drop", []):
        out["fields"].pop(str(d).lower(), None)
    for f in raw.get("fields", []):
        out["fields"][str(f["name"]).lower()] = f
    for key in ("factory", "boot", "boot_address", "boot_hint"):
        if key in raw:
            out[key] = raw[key]
    out["source"] = str(raw.get("source", out["source"]))
    out["unknown"] = str(raw.get("unknown", out["unknown"]))
    # partial factory words go with the words they qualify: a variant listing its own states its own
    out["factory_partial"] = str(raw.get("factory_partial", "" if "factory" in raw else out["factory_partial"]))
    return out


@functools.cache
def _table(name: str) -> Table:
    m = _merged(name)
    fields = tuple(_field(f) for f in m["fields"].values())
    if m["unknown"]:
        fields = tuple(replace(f, unknown=f.unknown or m["unknown"]) for f in fields)
    if m["factory_partial"]:  # a field whose word has no production value is not written
        words = {int(a) for a, _ in m["factory"]}
        fields = tuple(f if f.offset in words else replace(f, unknown=f.unknown or m["factory_partial"]) for f in fields)
    by_name: dict[str, Field] = {}
    for f in fields:
        for key in (f.name, *f.aliases):
            by_name[key.lower()] = f
    return Table(
        name=name,
        source=m["source"],
        fields=tuple(sorted(fields, key=lambda f: (f.offset, f.bit))),
        factory=tuple((int(a), int(w)) for a, w in m["factory"]),
        unknown=m["unknown"],
        factory_partial=m["factory_partial"],
        boot=tuple(dict(r) for r in m["boot"]),
        boot_address=dict(m["boot_address"]),
        boot_hint=str(m["boot_hint"]),
        by_name=by_name,
    )


def all_tables() -> list[Table]:
    """Every table of the data file (tests check each one)."""
    return [_table(name) for name in _raw()]


def table_of(device: Device) -> Table | None:
    """The device's field table (``ob_fields`` in the device table), or None."""
    name = getattr(device, "ob_fields", "") or ""
    return _table(name) if name else None


def _need_table(device: Device) -> Table:
    t = table_of(device)
    if t is not None and device.option_bytes is None and t.unknown:
        raise UsageError(f"{device.short_name}: option fields not supported: {t.unknown}")
    if t is None or device.option_bytes is None:
        raise UsageError(f"{device.short_name}: no option-byte field table (option bytes by name are not supported)")
    return t


# ---- factory area ------------------------------------------------------------------------------
def factory_area(device: Device) -> bytes | None:
    """The option bytes as ST ships the part (production values from the reference manual,
    complements computed), or None when the table holds no factory words."""
    t = table_of(device)
    if t is None or device.option_bytes is None or not t.factory:
        return None
    from stmflash import option_bytes as obl

    area = bytearray(b"\xff" * device.option_bytes.size)
    for off, word in t.factory:
        if off + 4 <= len(area):
            area[off : off + 4] = word.to_bytes(4, "little")
    return obl.encode_layout(device, bytes(area))


def view_size(device: Device) -> int:
    """Bytes of the field view: the option-byte area, followed by the second block where the
    part has one (``option_bytes2``, F42x bank 2 at 0x1FFEC000); field offsets past the
    first block lie in the second."""
    first = device.option_bytes.size if device.option_bytes is not None else 0
    second = device.option_bytes2.size if device.option_bytes2 is not None else 0
    return first + second


def factory_block2(device: Device) -> bytes | None:
    """The second option-byte block as ST ships the part (the table's factory words past the
    first block; bytes not listed 0xFF), or None without a second block or factory words."""
    t = table_of(device)
    ob, ob2 = device.option_bytes, device.option_bytes2
    if t is None or ob is None or ob2 is None or not t.factory:
        return None
    block = bytearray(b"\xff" * ob2.size)
    for off, word in t.factory:
        rel = off - ob.size
        if 0 <= rel and rel + 4 <= len(block):
            block[rel : rel + 4] = word.to_bytes(4, "little")
    from stmflash import option_bytes as obl

    return obl.normalize2(device, bytes(block))


def factory_view(device: Device) -> bytes | None:
    """:func:`factory_area` followed by :func:`factory_block2` where the part has a second
    block: the whole field view as ST ships the part."""
    area = factory_area(device)
    if area is None:
        return None
    return area + (factory_block2(device) or b"")


# ---- decoding ---------------------------------------------------------------------------------
def decode(device: Device, area: bytes) -> list[dict[str, Any]]:
    """One row per field: name, value, its documented name and meaning, the default (None
    where the table holds no production values), and whether it may be written
    (``writable``; else ``why`` says why not)."""
    t = _need_table(device)
    # a table without production-value words (decoded-only families), or a field whose word
    # a partial table does not list: no factory default is claimed, whatever the field holds
    rows = []
    for f in t.fields:
        if f.offset + 4 > len(area):
            continue
        v = f.get(area)
        known = t.claims_default(f)
        rows.append(
            {
                "field": f.name,
                "value": v,
                "name": f.name_of(v),
                "meaning": f.meaning_of(v),
                "default": f.default if known else None,
                "is_default": v == f.default if known else None,
                "writable": not f.writable_reason(),
                **({"why": f.writable_reason()} if f.writable_reason() else {}),
                **({"danger": f.danger} if f.danger else {}),
            }
        )
    return rows


# ---- requests ---------------------------------------------------------------------------------
def parse_assignments(items: Iterable[str] | Mapping[str, Any], where: str = "--ob") -> dict[str, str | int]:
    """``["RDP=0xAA", "nBOOT_SEL=0"]`` or a job file's ``{nBOOT_SEL = 0}`` -> {name: value},
    names as given (resolved later against the family's table)."""
    out: dict[str, str | int] = {}
    pairs: list[tuple[str, Any]] = []
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        for item in items:
            name, sep, value = str(item).partition("=")
            if not sep or not name.strip() or not value.strip():
                raise UsageError(f"{where} {item!r}: expected NAME=VALUE (e.g. RDP=level0, BOR_LEV=3)")
            pairs.append((name.strip(), value.strip()))
    for name, value in pairs:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UsageError(f"{where} {name}: value {value!r} is not a number or a documented name")
        if name.lower() in {k.lower() for k in out}:
            raise UsageError(f"{where}: {name} given twice")
        out[str(name)] = value
    return out


def _value(f: Field, raw: str | int, where: str) -> int:
    if isinstance(raw, int):
        v = raw
    else:
        text = raw.strip()
        named = [val for val, n, _ in f.values if n.lower() == text.lower()]
        if named:
            v = named[0]
        else:
            try:
                v = int(text, 0)
            except ValueError:
                names = ", ".join(n for _, n, _ in f.values)
                raise UsageError(
                    f"{where} {f.name}={raw}: not a number" + (f" nor one of {names}" if names else "")
                ) from None
    if not 0 <= v <= f.mask:
        raise UsageError(f"{where} {f.name}={raw}: out of range for a {f.width}-bit field (0..{f.mask})")
    if f.values and not f.other and v not in {val for val, _, _ in f.values}:
        allowed = ", ".join(f"{val} ({n})" for val, n, _ in f.values)
        raise UsageError(f"{where} {f.name}={raw}: not a documented value ({allowed})")
    return v


def resolve(device: Device, requests: Mapping[str, str | int], where: str = "--ob") -> dict[Field, int]:
    """Check every request against the device's table: {Field: value}. Raises UsageError
    (exit 2) naming the first bad one: nothing has been written yet."""
    t = _need_table(device)
    out: dict[Field, int] = {}
    for name, raw in requests.items():
        f = t.find(name)
        if f is None and t.unknown:
            raise UsageError(f"{where} {name}: not written: {t.unknown}")
        if f is None:
            known = ", ".join(x.name for x in t.fields)
            raise UsageError(f"{where} {name}: {device.short_name} has no option field of that name (fields: {known or 'none'})")
        if f.unknown:
            raise UsageError(f"{where} {f.name}: not written: {f.unknown}")
        if f.readonly:
            raise UsageError(f"{where} {f.name}: not written: {f.readonly}")
        if f in out:
            raise UsageError(f"{where}: {f.name} given twice")
        out[f] = _value(f, raw, where)
    return out


def precheck(
    requests: Mapping[str, str | int], device: Device | None, where: str = "--ob", *, rdp2_confirmed: bool = False
) -> None:
    """Check a request before any port is opened. With a device (``--device``, ``sim://NAME``):
    fully. Without: the names must exist in some family's table, the values must parse there,
    and a value that is permanent in any family (RDP level 2, BOOT_LOCK ...) needs the
    confirmation (the full check follows once the chip has said what it is, before writing)."""
    from stmflash.safety import RDP2_FLAG

    if device is not None:
        resolve(device, requests, where)
        return
    tables = all_tables()
    for name, raw in requests.items():
        cands = [f for t in tables if (f := t.find(name)) is not None]
        if not cands:
            raise UsageError(f"{where} {name}: no STM32 family has an option field of that name")
        errors, ok = [], []
        for f in cands:
            try:
                ok.append((f, _value(f, raw, where)))
            except UsageError as exc:
                errors.append(str(exc))
        if not ok:
            raise UsageError(errors[0])
        if not rdp2_confirmed:
            for f, v in ok:
                if v in f.permanent:
                    raise UsageError(
                        f"{where} {f.name}={raw}: permanent on {f.name}'s families ({f.danger}); "
                        f"pass {RDP2_FLAG} to really do it"
                    )


def apply(device: Device, area: bytes, values: Mapping[Field, int]) -> bytes:
    """The whole area with these fields set, every other bit preserved, complements (and
    H7-style _PRG mirrors) computed: what to write in one read-modify-write."""
    from stmflash import option_bytes as obl

    new = bytearray(area)
    for f, v in values.items():
        if f.offset + 4 > len(new):
            second = device.option_bytes2
            where = f" at 0x{second.start:08X}" if second is not None else ""
            raise UsageError(
                f"{f.name}: {device.short_name}'s second option-byte block{where} is not among the "
                f"option bytes this link presents ({len(new)} bytes; its DFU option-bytes alt names "
                "the first block only): write it over uart"
            )
        f.put(new, v)
    size = device.option_bytes.size if device.option_bytes is not None else len(new)
    if len(new) <= size:
        return obl.encode_layout(device, bytes(new))
    return obl.encode_layout(device, bytes(new[:size])) + obl.normalize2(device, bytes(new[size:]))


def reset_default_values(device: Device, *, include_rdp: bool = False) -> dict[Field, int]:
    """Every writable field at its factory value (RDP only with ``include_rdp``)."""
    t = _need_table(device)
    if t.unknown:
        raise UsageError(f"--ob-reset-defaults: {t.unknown}")
    return {
        f: f.default
        for f in t.fields
        if not f.writable_reason() and (include_rdp or f.name != "RDP")
    }


def check_written(device: Device, back: bytes, values: Mapping[Field, int], where: str) -> None:
    """Every written field reads back as written, else :class:`OptionByteMismatch`."""
    for f, v in values.items():
        got = f.get(back)
        if got != v:
            raise OptionByteMismatch(
                f"{where}: option field {f.name} reads back as 0x{got:X} after writing 0x{v:X} "
                "(the chip did not take it)",
                f.name,
            )


# ---- behaviour the option bytes choose ------------------------------------------------------
def boot_source(
    device: Device, area: bytes, *, boot0_pin: bool, flash_empty: bool, banks_valid: Sequence[bool] = ()
) -> str | None:
    """What a reset boots per the reference manual's boot table ("flash", "system", "sram",
    "flash-bank2", or "none": an address where nothing the part can run lies), or None when
    the table has no boot table for this family.

    A row either names what it boots (``boots``) or the field holding the boot address
    (``boots_at``, F7 BOOT_ADDx: the address is the field shifted by the table's
    ``boot_address.shift``, and ``boot_address.map`` says what lies there).
    ``boots = "dual_bank"`` is the dual-bank boot of BFB2 (AN2606 "dual bank boot"): the
    system memory runs first and jumps to bank 2 when its first word is a stack pointer in
    RAM (``banks_valid[1]``), else to bank 1 when that holds one, else stays in the
    bootloader."""
    t = table_of(device)
    if t is None or not t.boot:
        return None
    for row in t.boot:
        ok = True
        for name, want in dict(row["when"]).items():
            if name == "BOOT0":
                have = int(boot0_pin)
            else:
                f = t.find(name)
                have = f.get(area) if f is not None else -1
            if have != int(want):
                ok = False
                break
        if ok:
            if "boots_at" in row:
                return _boots_at(device, t, area, str(row["boots_at"]))
            boots = str(row["boots"])
            if boots == "dual_bank":
                if len(banks_valid) > 1 and banks_valid[1]:
                    return "flash-bank2"
                return "flash" if banks_valid and banks_valid[0] else "system"
            if boots == "flash" and row.get("empty_check") and flash_empty and device.empty_check:
                return "system"
            return boots
    return "flash"


def _boots_at(device: Device, t: Table, area: bytes, name: str) -> str:
    """What a boot-address option field makes a reset run.

    The address is the field shifted by the table's ``boot_address.shift`` (F7 BOOT_ADDx:
    address bits 29:14, RM0385 3.4.1), or by the field's own bit position when the table gives
    none (U5 NSBOOTADDx: bits 31:7 of the address in bits 31:7 of the register, RM0456).
    With ``boot_address.map`` the table says what lies at that address ("none" outside every
    range); without it the ROM runs only when the address is the start of system memory (its
    vector table), SRAM when it points there, and anything else runs from flash."""
    f = t.find(name)
    if f is None:
        raise ValueError(f"option_bytes.toml: table {t.name}: boot row names no field {name!r}")
    address = f.get(area) << int(t.boot_address.get("shift", f.bit))
    if "map" in t.boot_address:
        for start, end, kind in t.boot_address["map"]:
            if int(start) <= address < int(end):
                return str(kind)
        return "none"
    sysmem = device.system_memory
    if sysmem is not None and address == sysmem.start:
        return "system"
    if any(address in r for r in device.ram):
        return "sram"
    return "flash"
