"""Option-byte layouts as the ROM bootloader presents them, driven by the device table.

Read Memory / Write Memory at ``device.option_bytes.start`` show a family-specific image
(RDP byte, complement bytes, write-protection bits or areas). The layout is data
(``ob_layout`` in ``stmflash/data/devices.toml``, schema in its header) so that the UART
client, the DFU client, ``stmflash batch`` and the virtual STM32 all read and write the same
encoding, and a new family is a table entry rather than a code branch.

Functions take and return the whole option-byte area as ``bytes``; they never talk to a
chip. Every option field by name (``--ob``) is :mod:`stmflash.ob_fields`, on top of this
layout (it uses :func:`encode_layout` for complements and H7-style _PRG mirrors). Devices whose layout is not in the table raise :class:`UsageError` instead of
guessing: a wrong guess here can lock a part for good.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from stmflash.devices import Device
from stmflash.errors import ProtectionError, UsageError

__all__ = [
    "check_wrp_units",
    "clear_wrp2",
    "complement_mismatches",
    "default_ob",
    "default_ob2",
    "as_stored",
    "encode_layout",
    "loaded_protection",
    "loaded_view",
    "loaded_view2",
    "pcrop_mode_error",
    "pcrop_mode_note",
    "rdp_regressed",
    "normalize2",
    "reload_registers",
    "rom_written",
    "set_codes",
    "with_complements",
    "layout_of",
    "normalize",
    "rdp_level",
    "set_rdp",
    "set_wrp",
    "set_wrp2",
    "split_wrp",
    "supported",
    "units_for_codes",
    "wrp_code_count",
    "wrp_codes",
    "wrp_units",
    "wrp2_units",
]

Layout = Mapping[str, Any]

def supported(device: Device) -> bool:
    """True when the table holds this device's option-byte layout (and its address)."""
    return bool(device.ob_layout) and device.option_bytes is not None


def layout_of(device: Device) -> Layout:
    """The device's layout; unknown -> UsageError (client and virtual chip alike)."""
    if supported(device):
        return device.ob_layout
    raise UsageError(
        f"option-byte layout of {device.short_name} is not in the table; protection over the "
        "bootloader is not supported for it"
    )


def _size(device: Device) -> int:
    return device.option_bytes.size if device.option_bytes is not None else 16


def _check(device: Device, ob: bytes) -> bytearray:
    size = _size(device)
    if len(ob) != size:
        raise UsageError(
            f"option bytes of {device.short_name}: {len(ob)} bytes given, the area is {size} bytes"
        )
    return bytearray(ob)


# ---- complements -------------------------------------------------------------------------
def _complement_pairs(layout: Layout, size: int) -> list[tuple[int, int]]:
    """(value byte, complement byte) offsets of the family's complement rule."""
    comp = layout.get("complement")
    if not comp:
        return []
    period, offset, width = (int(x) for x in comp)
    return [
        (base + i, base + offset + i)
        for base in range(0, size - period + 1, period)
        for i in range(width)
    ]


def _put_complements(layout: Layout, ob: bytearray) -> bytearray:
    """Every complement byte recomputed from its value byte (what the flash interface writes)."""
    for value, comp in _complement_pairs(layout, len(ob)):
        ob[comp] = ob[value] ^ 0xFF
    return ob


def _normalize(layout: Layout, ob: bytearray) -> bytearray:
    _put_complements(layout, ob)
    # H7-style register views: what is wanted goes to the _PRG register of each _CUR one
    for cur, prg in layout.get("mirror", []):
        if int(prg) + 4 <= len(ob):
            ob[int(prg) : int(prg) + 4] = ob[int(cur) : int(cur) + 4]
    return ob


def normalize(device: Device, ob: bytes) -> bytes:
    """The area with every complement byte recomputed from its value byte (and H7-style
    _PRG registers set from their _CUR ones): what the host writes for the wanted state.

    The flash interface writes complements itself, so what a host puts there is ignored.
    """
    return bytes(_normalize(layout_of(device), _check(device, ob)))


def encode_layout(device: Device, ob: bytes) -> bytes:
    """:func:`normalize` where the layout is known; the bytes unchanged elsewhere."""
    return normalize(device, ob) if supported(device) else bytes(ob)


def loaded_view(device: Device, stored: bytes) -> bytes:
    """The option bytes as the option-byte loader takes them from ``stored``: a value byte
    whose complement does not match loads as 0xFF (both bytes erased, 0xFF/0xFF, is not an
    error) - RM0008 / RM0091 section 4 (OPTERR); families whose manual gives word-wise
    forced values (``mismatch`` in the layout, G4: RM0440 3.4.2) load those instead. On F1
    a bad RDP complement therefore means readout protection, on G4 RDP level 1."""
    return _complement_checked(device, stored)


def _complement_checked(device: Device, stored: bytes, *, first_block: bool = True) -> bytes:
    """The complement check of the option-byte loader. By default byte by byte: a value
    byte whose complement does not match loads as 0xFF (RM0008 / RM0091 OPTERR). With the
    layout's ``mismatch = { words = true, forced = [[offset, word], ...], together = [[a, b]] }``
    the loader compares each 32-bit word with its complement and a failing word (and the
    other words of its ``together`` group: one option held in two words) loads as the
    value the reference manual forces for it (RM0440 3.4.2 "Option byte loading": OPTR all ones but
    BOR_LEV 000 and RDP level 1, WRP no protection, PCROP all memory protected), else all
    ones; offsets are within the block (the second block uses the same slots)."""
    if not supported(device):
        return bytes(stored)
    layout = device.ob_layout
    out = bytearray(stored)
    rule = layout.get("mismatch") or {}
    if rule.get("words"):
        forced = {int(a): int(w) for a, w in rule.get("forced", [])}
        for base in sorted(_failing_words(layout, stored)):
            out[base : base + 4] = forced.get(base, 0xFFFFFFFF).to_bytes(4, "little")
        return bytes(out)
    failed = _failing_bytes(layout, stored)
    for value in failed:
        out[value] = 0xFF
    wrp = layout.get("wrp") or {}
    if first_block and (wrp.get("pcrop_mode") or {}).get("mismatch"):
        _pcrop_mode_mismatch(wrp, out, failed)  # the first block's rule (RM0367 3.8.2)
    return bytes(out)


def _failing_bytes(layout: Layout, block: bytes) -> list[int]:
    """Offsets of the value bytes whose complement byte does not match (both erased,
    0xFF/0xFF, is not a failure)."""
    return [
        value
        for value, comp in _complement_pairs(layout, len(block))
        if block[value] ^ block[comp] != 0xFF and not (block[value] == block[comp] == 0xFF)
    ]


def _pcrop_mode(wrp: Layout, ob: bytes) -> bool:
    """Whether the protection-mode bit (``pcrop_mode = { at = [byte, bit], field, source }``)
    selects proprietary-code protection, which turns the WRP bits' polarity round: L0's
    WPRMOD (RM0367 3.4.4: a WRPROT bit at 0 then read-protects its sector; protection can be
    added, not removed, except by the mass erase of an RDP level 1 to 0 regression) and
    F42x's SPRMOD (RM0090 3.7.5: an nWRP bit at 1 then makes its sector PCROP; SPRMOD is
    cleared only together with an RDP level 1 to 0 regression)."""
    mode = wrp.get("pcrop_mode")
    if not mode or len(ob) <= int(mode["at"][0]):
        return False
    byte, bit = (int(x) for x in mode["at"])
    return bool(ob[byte] >> bit & 1)


def pcrop_mode_note(device: Device, ob: bytes) -> str:
    """What the protection-mode bit means when these option bytes set it ("" when they do
    not, or the layout has none): the sector bits are proprietary-code protection."""
    if not supported(device):
        return ""
    wrp = device.ob_layout.get("wrp") or {}
    if not _pcrop_mode(wrp, ob):
        return ""
    mode = wrp["pcrop_mode"]
    return (
        f"the option bytes select proprietary-code protection ({mode['field']} = 1): the sector bits "
        f"then mean read protection, which only an RDP level 1 to 0 regression removes ({mode['source']})"
    )


def pcrop_mode_error(device: Device, ob: bytes) -> str:
    """Why write protection cannot be changed with these option bytes ("" when it can)."""
    note = pcrop_mode_note(device, ob)
    return f"{device.short_name}: {note}; stmflash does not change them" if note else ""


def _pcrop_mode_mismatch(wrp: Layout, out: bytearray, failed: list[int]) -> None:
    """RM0367 3.8.2 "Mismatch when loading protection flags": a mismatch on WPRMOD loads its
    default (1, read protection; the byte rule gives that) and loads WRPROT with zeros, so
    every sector is read-protected; a mismatch on WRPROT alone protects the sectors of the
    failing byte in the mode that loaded (3.4.4: "a mismatch concerns all write-protected
    sectors" with PcROP off, "all read- and write-protected sectors" with it on)."""
    mode_byte = int(wrp["pcrop_mode"]["at"][0])
    wrp_bytes = [int(b) for b in wrp["bytes"]]
    if mode_byte in failed:
        for off in wrp_bytes:
            out[off] = 0x00
        return
    protecting = 0xFF if int(wrp.get("protected", 0)) ^ _pcrop_mode(wrp, out) else 0x00
    for off in wrp_bytes:
        if off in failed:
            out[off] = protecting


def _failing_words(layout: Layout, block: bytes) -> set[int]:
    """Offsets of the value words the word-wise loader does not take: each fails its
    complement word (both erased is not a failure), and a word of a ``together`` group
    fails with its partner (one option held in two words: PCROP start and end)."""
    rule = layout.get("mismatch") or {}
    period, offset, _ = (int(x) for x in layout["complement"])
    failed: set[int] = set()
    for base in range(0, len(block) - period + 1, period):
        value = int.from_bytes(block[base : base + 4], "little")
        comp = int.from_bytes(block[base + offset : base + offset + 4], "little")
        if value ^ comp != 0xFFFFFFFF and not (value == comp == 0xFFFFFFFF):
            failed.add(base)
    for group in rule.get("together", []):
        if failed & {int(g) for g in group}:
            failed |= {int(g) for g in group if int(g) + 4 <= len(block)}
    return failed


def complement_mismatches(device: Device, view: bytes) -> list[int]:
    """Byte offsets in ``view`` (the field view: the area, then the second block) whose
    value fails its complement, so that the loader does not take what is stored there
    (:func:`loaded_view`): one offset per failing word on word-rule families, per failing
    byte elsewhere. Empty for layouts without complements or not in the table."""
    if not supported(device):
        return []
    first = device.option_bytes.size if device.option_bytes is not None else len(view)
    out: list[int] = []
    for base, block in ((0, view[:first]), (first, view[first:])):
        if not block:
            continue
        if (device.ob_layout.get("mismatch") or {}).get("words"):
            out += [base + off for off in _failing_words(device.ob_layout, bytes(block))]
        else:
            loaded = _complement_checked(device, bytes(block), first_block=base == 0)
            out += [base + i for i in _failing_bytes(device.ob_layout, bytes(block)) if block[i] != loaded[i]]
    return sorted(out)


def with_complements(device: Device, data: bytes) -> bytes:
    """``data`` with its complement bytes as the flash interface programs them."""
    return bytes(_put_complements(layout_of(device), _check(device, data)))


def rom_written(device: Device, data: bytes, current: bytes) -> bytes:
    """``data`` as far as the ROM programs it: where the layout lists the registers its
    option-byte write stores (``writes``: ST's OpenBootloader writes only some FLASH option
    registers, e.g. U5: OPTR, NSBOOTADDx, WRPxy), every other byte keeps ``current``."""
    spans = device.ob_layout.get("writes") if supported(device) else None
    if not spans:
        return bytes(data)
    out = bytearray(current[: len(data)].ljust(len(data), b"\xff"))
    for off, size in spans:
        off, end = int(off), min(int(off) + int(size), len(data))
        out[off:end] = data[off:end]
    return bytes(out)


def as_stored(device: Device, data: bytes) -> bytes:
    """What a whole-area write of ``data`` reads back as after the reload: complement bytes
    rewritten by the flash interface, H7-style _CUR registers showing the _PRG ones written
    (what the host put in a read-only _CUR register is ignored). Registers the ROM does not
    program (layout ``writes``) are expected as sent: if the host changed one, the read-back
    differs and the write is reported as not taken (exit 5), never passed as done."""
    return reload_registers(device, with_complements(device, data))


def reload_registers(device: Device, stored: bytes) -> bytes:
    """After an option-byte load, each H7-style _CUR register shows its _PRG register."""
    if not supported(device):
        return bytes(stored)
    out = bytearray(stored)
    for cur, prg in device.ob_layout.get("mirror", []):
        if int(prg) + 4 <= len(out):
            out[int(cur) : int(cur) + 4] = out[int(prg) : int(prg) + 4]
    return bytes(out)


# ---- RDP ---------------------------------------------------------------------------------
def _rdp_level(layout: Layout, ob: bytes) -> int:
    value = ob[int(layout["rdp"])]
    if value == layout["rdp0"]:
        return 0
    if "rdp2" in layout and value == layout["rdp2"]:
        return 2
    return 1


def _set_rdp(device: Device, layout: Layout, ob: bytearray, level: int) -> bytearray:
    if level not in (0, 1, 2):
        raise UsageError(f"RDP level {level} does not exist (0, 1 or 2)")
    if level == 2 and "rdp2" not in layout:
        raise UsageError(f"{device.short_name} has no RDP level 2")
    ob[int(layout["rdp"])] = int(layout[f"rdp{level}"])
    return _normalize(layout, ob)


def rdp_regressed(device: Device, ob: bytes) -> bytes:
    """The area after an RDP level 1 to 0 regression (AN3155 Readout Unprotect): RDP level 0,
    and where the layout has a protection-mode bit (L0's WPRMOD) that bit cleared - RM0367
    3.4.4: the regression's mass erase "deletes the PcROP field too"; the WRPROT words stay
    ("a mass erase does not delete the third word of the Option bytes")."""
    layout = layout_of(device)
    out = _check(device, ob)
    mode = (layout.get("wrp") or {}).get("pcrop_mode")
    if mode and mode.get("regression_clears"):
        byte, bit = (int(x) for x in mode["at"])
        out[byte] &= ~(1 << bit) & 0xFF
    return bytes(_set_rdp(device, layout, out, 0))


def loaded_protection(device: Device, area: bytes, block2: bytes | None = None) -> tuple[int, set[int]]:
    """(RDP level, write-protected units) the chip runs with: decoded from what the option-
    byte loader takes from ``area`` (and the second block), complement check applied - on F1
    a bad RDP complement is level 1 whatever the byte says, on L0 a bad WPRMOD complement
    read-protects every sector. Decoding the stored bytes would report what is not in force."""
    loaded = loaded_view(device, _check(device, area))
    units = _wrp_units(device, layout_of(device), loaded)
    if block2 is not None:  # wrp2_units applies the second block's complement check itself
        units |= wrp2_units(device, block2, loaded)
    return _rdp_level(layout_of(device), loaded), units


def rdp_level(device: Device, ob: bytes) -> int:
    """0, 1 or 2 as the chip would load these option bytes."""
    return _rdp_level(layout_of(device), _check(device, ob))


def set_rdp(device: Device, ob: bytes, level: int) -> bytes:
    """The area with its RDP byte (and complement) set for ``level``."""
    return bytes(_set_rdp(device, layout_of(device), _check(device, ob), level))


# ---- WRP ---------------------------------------------------------------------------------
def _bit_units(device: Device, wrp: Layout) -> list[list[int]]:
    """For every WRP bit (code), the erase-unit indices it protects."""
    units = device.erase_units
    nbits = int(wrp.get("max_bits", 8 * len(wrp["bytes"])))
    out: list[list[int]] = [[] for _ in range(nbits)]
    for u in units:
        if "bytes_per_bit" in wrp:
            bit = (u.address - device.flash_start) // int(wrp["bytes_per_bit"])
        else:
            bit = u.index // int(wrp.get("units_per_bit", 1))
        if bit >= nbits:
            if not wrp.get("last_bit_rest"):
                continue
            bit = nbits - 1
        out[bit].append(u.index)
    return out


def _bits_value(wrp: Layout, ob: bytes) -> int:
    value = 0
    for i, off in enumerate(wrp["bytes"]):
        value |= ob[int(off)] << (8 * i)
    return value


def _check_units(device: Device, units: Iterable[int]) -> list[int]:
    n = len(device.erase_units)
    out = sorted(set(units))
    for u in out:
        if not 0 <= u < n:
            raise UsageError(f"erase unit {u} does not exist on {device.short_name} (0..{n - 1})")
    return out


def _area_fields(wrp: Layout) -> tuple[int, int]:
    width = int(wrp.get("width", 8))
    return width, (1 << width) - 1


def _area_units(wrp: Layout, ob: bytes, pages: list[int]) -> set[int]:
    """The units the area words protect: page n is ``pages[n]`` (a bank's units in order);
    an area is active when start <= end."""
    _, mask = _area_fields(wrp)
    out: set[int] = set()
    for off in wrp["offsets"]:
        word = int.from_bytes(ob[int(off) : int(off) + 4], "little")
        start, end = word & mask, word >> 16 & mask
        if start <= end:
            out.update(pages[start : end + 1])
    return out


def _area_runs(device: Device, wrp: Layout, pages: Iterable[int], *, bank: int, first: int = 0) -> list[tuple[int, int]]:
    """Contiguous runs of page numbers; more runs than there are areas -> UsageError
    (units named as ``first`` + page)."""
    runs: list[list[int]] = []
    for p in sorted(set(pages)):
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    n = len(wrp["offsets"])
    if len(runs) > n:
        whose = "bank 2's " if bank == 2 else ""
        raise UsageError(
            f"{device.short_name}: {whose}write protection is {n} contiguous areas; units "
            f"{','.join(f'{a + first}-{b + first}' for a, b in runs)} need {len(runs)}"
        )
    return [(a, b) for a, b in runs]


def _write_areas(wrp: Layout, ob: bytearray, runs: list[tuple[int, int]]) -> bytearray:
    """The area words naming ``runs`` (page numbers), the unused areas disabled (start all
    ones, end 0, as the factory leaves them); every other bit kept (complements: the caller)."""
    _, mask = _area_fields(wrp)
    for i, off in enumerate(wrp["offsets"]):
        off = int(off)
        word = int.from_bytes(ob[off : off + 4], "little") & ~(mask | mask << 16)
        start, end = runs[i] if i < len(runs) else (mask, 0)
        ob[off : off + 4] = (word | start | end << 16).to_bytes(4, "little")
    return ob


def _wrp_units(device: Device, layout: Layout, ob: bytes) -> set[int]:
    wrp = layout.get("wrp")
    if not wrp:
        return set()
    if wrp["kind"] == "areas":
        return _area_units(wrp, ob, [u.index for u in device.bank_units(1)])
    value = _bits_value(wrp, ob)
    want = int(wrp.get("protected", 0)) ^ _pcrop_mode(wrp, ob)
    out: set[int] = set()
    for bit, members in enumerate(_bit_units(device, wrp)):
        if (value >> bit & 1) == want:
            out.update(members)
    return out


def _codes(device: Device, layout: Layout, units: Iterable[int]) -> list[int]:
    wrp = layout.get("wrp")
    if not wrp:
        raise UsageError(f"{device.short_name}: write protection is not in the option-byte table")
    wanted = _check_units(device, units)
    if wrp["kind"] == "areas":
        bank1 = {u.index for u in device.bank_units(1)}
        _, mask = _area_fields(wrp)
        outside = [u for u in wanted if u not in bank1 or u > mask]
        if outside:
            raise UsageError(
                f"{device.short_name}: unit {outside[0]} cannot be write-protected through the "
                "option-byte area stmflash models (bank 1 only)"
            )
        return wanted
    owner: dict[int, int] = {}
    for bit, members in enumerate(_bit_units(device, wrp)):
        for u in members:
            owner[u] = bit
    missing = [u for u in wanted if u not in owner]
    if missing:
        raise UsageError(
            f"{device.short_name}: unit {missing[0]} has no write-protection bit in the option-byte "
            "area stmflash models"
        )
    return sorted({owner[u] for u in wanted})


def _set_codes(device: Device, layout: Layout, ob: bytearray, codes: list[int]) -> bytearray:
    wrp = layout.get("wrp")
    if not wrp:
        raise UsageError(f"{device.short_name}: write protection is not in the option-byte table")
    if wrp["kind"] == "areas":
        return _normalize(layout, _write_areas(wrp, ob, _area_runs(device, wrp, codes, bank=1)))
    why = pcrop_mode_error(device, bytes(ob))
    if why:
        raise ProtectionError(why)
    nbits = len(_bit_units(device, wrp))
    bad = [c for c in codes if not 0 <= c < nbits]
    if bad:
        raise UsageError(f"{device.short_name}: write-protect code {bad[0]} does not exist (0..{nbits - 1})")
    value = _bits_value(wrp, ob)
    protected = int(wrp.get("protected", 0))
    for bit in range(nbits):
        value = value | (1 << bit) if (bit in codes) == bool(protected) else value & ~(1 << bit)
    for i, off in enumerate(wrp["bytes"]):
        ob[int(off)] = value >> (8 * i) & 0xFF
    return _normalize(layout, ob)


def wrp_units(device: Device, ob: bytes) -> set[int]:
    """Indices of the erase units these option bytes write-protect."""
    return _wrp_units(device, layout_of(device), _check(device, ob))


def wrp_codes(device: Device, units: Iterable[int]) -> list[int]:
    """The codes AN3155 Write Protect (0x63) takes for ``units``.

    Bit layouts: the WRP bit numbers covering the units (one bit may cover several units,
    so protecting them protects their whole group). Area layouts: the page numbers.
    """
    return _codes(device, layout_of(device), units)


def wrp_code_count(device: Device) -> int:
    """How many Write Protect codes exist (bits, or pages an area can name)."""
    layout = layout_of(device)
    wrp = layout.get("wrp")
    if not wrp:
        return 0
    if wrp["kind"] == "areas":
        return min(len(device.bank_units(1)), _area_fields(wrp)[1] + 1)
    return len(_bit_units(device, wrp))


def units_for_codes(device: Device, codes: Iterable[int]) -> set[int]:
    """The erase units that Write Protect ``codes`` protect (inverse of :func:`wrp_codes`)."""
    layout = layout_of(device)
    ob = _set_codes(device, layout, bytearray(_default(device, layout)), list(codes))
    return _wrp_units(device, layout, ob)


def set_wrp(device: Device, ob: bytes, units: list[int]) -> bytes:
    """The area protecting exactly the groups holding ``units`` (replaces the previous set)."""
    layout = layout_of(device)
    codes = _codes(device, layout, units)
    return bytes(_set_codes(device, layout, _check(device, ob), codes))


# ---- factory state -------------------------------------------------------------------------
def _default(device: Device, layout: Layout) -> bytes:
    from stmflash import ob_fields

    factory = ob_fields.factory_area(device)
    if factory is not None:
        return factory
    ob = bytearray(b"\xff" * _size(device))
    raw = bytes.fromhex(str(layout.get("default", "")))
    ob[: min(len(raw), len(ob))] = raw[: len(ob)]
    ob = _set_rdp(device, layout, ob, 0)
    if layout.get("wrp"):
        ob = _set_codes(device, layout, ob, [])
    return bytes(ob)


def default_ob(device: Device) -> bytes:
    """The option bytes as the part leaves the factory: the field table's production
    values where it has them, else RDP level 0 and nothing protected on the layout."""
    return _default(device, layout_of(device))


def set_codes(device: Device, ob: bytes, codes: list[int]) -> bytes:
    """The area with exactly these Write Protect codes applied (AN3155 0x63 as the ROM does)."""
    return bytes(_set_codes(device, layout_of(device), _check(device, ob), codes))


# ---- the second option-byte block (bank 2: F42x/F43x/F469, L47x/L49x, L4+, G47x) -----------
def _wrp2(device: Device) -> Layout:
    return device.ob_wrp2 if device.option_bytes2 is not None else {}


def _is_areas(wrp: Layout) -> bool:
    return wrp.get("kind") == "areas"


def normalize2(device: Device, block: bytes) -> bytes:
    """The second block with its complement words recomputed from their value words, by the
    family's complement rule (L4: every 64-bit slot is a word and its complement, RM0351
    3.4.1 Table 8; F42x has none, the block unchanged): what the flash interface programs."""
    if not supported(device):
        return bytes(block)
    return bytes(_put_complements(device.ob_layout, bytearray(block)))


def loaded_view2(device: Device, stored: bytes) -> bytes:
    """The second block as the option-byte loader takes it: the complement check of
    :func:`loaded_view` (byte-wise, or the layout's word-wise ``mismatch`` rule, whose
    offsets name the same slots in both blocks)."""
    return _complement_checked(device, stored, first_block=False)


def _wrp2_bits(device: Device, wrp: Layout, block: bytes) -> int:
    value = 0
    for i, off in enumerate(wrp["bytes"]):
        value |= block[int(off)] << (8 * i)
    return value & ((1 << int(wrp["max_bits"])) - 1)


def _bank2_pages(device: Device, wrp: Layout) -> list[int]:
    """Bank 2's erase units an area can name: page n of an area is bank 2's n-th unit
    (RM0351 3.4.1 / RM0432 3.4.1: WRP2x_PSTRT/PEND are page offsets in bank 2)."""
    _, mask = _area_fields(wrp)
    return [u.index for u in device.bank_units(2)[: mask + 1]]


def wrp2_units(device: Device, block: bytes, area: bytes | None = None) -> frozenset[int]:
    """Erase units the second block write-protects (``ob_wrp2``). Bits: bit n protects unit
    ``first_unit + n`` (F42x nWRP of sectors 12-23 at 0x1FFEC008, RM0090 3.7.1). Areas: each
    word's start..end pages of bank 2, active when start <= end (L4 WRP2AR/WRP2BR, RM0351
    3.4.1), read through the loader's complement check."""
    wrp = _wrp2(device)
    if not wrp or len(block) < device.option_bytes2.size:  # type: ignore[union-attr]
        return frozenset()
    if _is_areas(wrp):
        return frozenset(_area_units(wrp, loaded_view2(device, block), _bank2_pages(device, wrp)))
    value = _wrp2_bits(device, wrp, block)
    # the first block's protection-mode bit (F42x SPRMOD) turns bank 2's nWRP round too
    want = int(wrp.get("protected", 0)) ^ (area is not None and _pcrop_mode(device.ob_layout.get("wrp") or {}, area))
    first, n = int(wrp["first_unit"]), len(device.erase_units)
    return frozenset(
        first + b for b in range(int(wrp["max_bits"])) if (value >> b & 1) == want and first + b < n
    )


def clear_wrp2(device: Device, block: bytes) -> bytes:
    """The second block with no unit write-protected (AN3155 Write Unprotect covers it)."""
    wrp = _wrp2(device)
    if not wrp:
        return bytes(block)
    if _is_areas(wrp):
        return normalize2(device, bytes(_write_areas(wrp, bytearray(block), [])))
    out = bytearray(block)
    value = 0 if int(wrp.get("protected", 0)) else (1 << int(wrp["max_bits"])) - 1
    mask = (1 << int(wrp["max_bits"])) - 1
    for i, off in enumerate(wrp["bytes"]):
        keep = ~(mask >> (8 * i)) & 0xFF
        out[int(off)] = out[int(off)] & keep | (value >> (8 * i)) & 0xFF
    return bytes(out)


def default_ob2(device: Device) -> bytes:
    """The second block as the part leaves the factory (the field table's factory words,
    else erased with nothing protected); b"" on parts without one or without a layout."""
    if device.option_bytes2 is None or not supported(device):
        return b""
    from stmflash import ob_fields

    block = ob_fields.factory_block2(device)
    if block is None:
        block = b"\xff" * device.option_bytes2.size
    return clear_wrp2(device, block)


def _bank2_units(device: Device) -> set[int]:
    wrp = _wrp2(device)
    if not wrp:
        return set()
    if _is_areas(wrp):
        return set(_bank2_pages(device, wrp))
    first, n = int(wrp["first_unit"]), len(device.erase_units)
    return {first + b for b in range(int(wrp["max_bits"])) if first + b < n}


def split_wrp(device: Device, units: Iterable[int]) -> tuple[list[int], list[int]]:
    """(units protected through the option-byte area, units protected through the second
    block): F42x sectors 12-23 have their nWRP bits at 0x1FFEC008 only (RM0090 3.7.1), L4
    bank-2 pages their WRP2A/WRP2B areas at 0x1FFFF818 only (RM0351 3.4.1)."""
    wanted = _check_units(device, units)
    second = _bank2_units(device)
    return [u for u in wanted if u not in second], [u for u in wanted if u in second]


def _area_runs2(device: Device, wrp: Layout, units: Iterable[int]) -> list[tuple[int, int]]:
    """Contiguous runs of bank-2 page offsets for ``units`` (:func:`_area_runs`)."""
    pages = _bank2_pages(device, wrp)
    pos = {u: i for i, u in enumerate(pages)}
    return _area_runs(device, wrp, (pos[u] for u in units), bank=2, first=pages[0] if pages else 0)


def check_wrp_units(device: Device, units: Iterable[int]) -> None:
    """Refuse (UsageError) a write-protection request the table cannot encode, both blocks
    counted: what :func:`wrp_codes` refuses for the first; for the second, more runs of
    bank-2 pages than it has areas (bit layouts: nothing)."""
    first, second = split_wrp(device, units)
    if first:
        wrp_codes(device, first)
    wrp = _wrp2(device)
    if second and _is_areas(wrp):
        _area_runs2(device, wrp, second)


def set_wrp2(device: Device, block: bytes, units: Iterable[int]) -> bytes:
    """The second block protecting exactly ``units`` of it (replaces its previous set)."""
    wrp = _wrp2(device)
    if not wrp:
        raise UsageError(f"{device.short_name} has no second option-byte block")
    if _is_areas(wrp):
        runs = _area_runs2(device, wrp, split_wrp(device, units)[1])
        return normalize2(device, bytes(_write_areas(wrp, bytearray(block), runs)))
    first = int(wrp["first_unit"])
    out = bytearray(clear_wrp2(device, block))
    value = _wrp2_bits(device, wrp, bytes(out))
    protected = int(wrp.get("protected", 0))
    for u in split_wrp(device, units)[1]:
        bit = u - first
        value = value | 1 << bit if protected else value & ~(1 << bit)
    mask = (1 << int(wrp["max_bits"])) - 1
    for i, off in enumerate(wrp["bytes"]):
        keep = ~(mask >> (8 * i)) & 0xFF
        out[int(off)] = out[int(off)] & keep | (value >> (8 * i)) & 0xFF
    return bytes(out)
