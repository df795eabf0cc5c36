"""The one gate every option-byte write passes: RDP level 2, and every other value the
field tables mark permanent, only when confirmed.

Readout protection level 2 disables the ROM bootloader and the debug port for good; it can
never be undone (RM0090 3.7.3 and RM0444 3.4.1 "Read protection", AN2606 "bootloader not
available at level 2"). The bytes that select it are family-specific (``ob_layout`` in the
device table, :mod:`stmflash.option_bytes`), so:

* bytes that decode as level 2 need ``--i-understand-rdp2-is-permanent``;
* where the family's layout is not in the table nobody can tell what the bytes mean, so
  *any* write to the option bytes needs that flag;
* before the part is known (a serial port not yet opened) the same holds: the bytes
  cannot be decoded, so the flag or a named part (``--device``, ``device =`` in a job) is
  needed;
* bytes that decode, through the family's field table (:mod:`stmflash.ob_fields`), to a
  value the table marks ``permanent`` (U5/L5 TZEN=1, G0/G4 BOOT_LOCK=1, H7 SECURITY=1:
  what the reference manuals say cannot be undone, or only by a mass erase) need the same
  flag - the rule ``--ob NAME=VALUE`` applies (:func:`check_permanent_values`, shared), so a
  raw ``--write-option-bytes`` blob or an image's option-byte segment cannot do what the
  named field is refused.  The issue asks for "RDP 2 and anything else irreversible".

Every path that can write option bytes calls this module before the port is opened or,
for parts known only after identification, before the first byte is written: ``uart``
and ``dfu --write-option-bytes``, option-byte data inside an image or a ``.dfu`` target,
job files, ``stmflash batch``, and the option bytes by field name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from stmflash import option_bytes as obl
from stmflash.devices import Device
from stmflash.errors import UsageError

if TYPE_CHECKING:
    from stmflash.ob_fields import Field

RDP2_FLAG = "--i-understand-rdp2-is-permanent"

__all__ = [
    "RDP2_FLAG",
    "check_option_bytes_data",
    "check_option_bytes_early",
    "check_option_bytes_write",
    "check_permanent_values",
    "permanent_values",
    "sets_rdp2",
]


def sets_rdp2(device: Device, address: int, data: bytes) -> bool | None:
    """Whether ``data`` at ``address`` sets RDP level 2 (the chip never answers again);
    None when nobody can tell (layout unknown, or data outside the known area)."""
    region = device.option_bytes
    if not obl.supported(device) or region is None:
        return None
    if not (region.start <= address and address + len(data) <= region.end):
        return None
    offset, rdp = address - region.start, int(device.ob_layout["rdp"])
    if not offset <= rdp < offset + len(data):
        return False
    area = (b"\xff" * offset + bytes(data))[: region.size].ljust(region.size, b"\xff")
    return obl.rdp_level(device, area) == 2


def check_permanent_values(
    values: Mapping[Field, int] | Iterable[tuple[Field, int]], *, rdp2_confirmed: bool, where: str, on: str = ""
) -> None:
    """Refuse (UsageError, exit 2) any field value its table marks ``permanent`` unless
    confirmed: the one rule for ``--ob NAME=VALUE`` and for raw option bytes."""
    if rdp2_confirmed:
        return
    pairs = values.items() if isinstance(values, Mapping) else values
    for f, v in pairs:
        if v in f.permanent:
            raise UsageError(
                f"{where} {f.name}=0x{v:X}{f' on {on}' if on else ''}: {f.danger or 'cannot be undone'} - "
                f"irreversible; pass {RDP2_FLAG} to really do it"
            )


def _source_offset(device: Device, offset: int) -> int:
    """Where the bytes a field decodes from come from in a write: H7-style register views
    show the _CUR register, a write programs the _PRG one (``ob_layout`` mirror)."""
    for cur, prg in device.ob_layout.get("mirror", []) if device.ob_layout else []:
        if int(cur) == offset:
            return int(prg)
    return offset


def permanent_values(
    device: Device, new_area: bytes, *, start: int = 0, current: bytes | None = None
) -> list[tuple[Field, int]]:
    """[(field, value)] of ``new_area`` (bytes of the option-byte area from offset
    ``start``) that its family's field table marks permanent, as the chip would load them.

    Only fields the data reaches count (a shorter write leaves the rest of the area as it
    is); bits of a field outside the data are taken from ``current``, else from the factory
    area.  Registers the ROM does not program (``ob_layout`` writes) are skipped.  With
    ``current`` only fields whose value changes count."""
    from stmflash import ob_fields

    t = ob_fields.table_of(device)
    region = device.option_bytes
    if t is None or region is None or not obl.supported(device):
        return []
    size = region.size
    base = bytes(current[:size]) if current is not None and len(current) >= size else ob_fields.factory_area(device)
    area = bytearray((base or b"\xff" * size)[:size].ljust(size, b"\xff"))
    end = min(size, start + len(new_area))
    if end <= start:
        return []
    area[start:end] = new_area[: end - start]
    loaded = obl.reload_registers(device, bytes(area))  # _CUR shows the _PRG written
    spans = device.ob_layout.get("writes")
    before = obl.reload_registers(device, bytes(current[:size])) if current is not None and len(current) >= size else None
    out: list[tuple[Field, int]] = []
    for f in t.fields:
        if not f.permanent or f.offset + 4 > size:
            continue
        src = _source_offset(device, f.offset)
        lo, hi = src + f.bit // 8, src + (f.bit + f.width - 1) // 8 + 1
        if hi <= start or lo >= end:
            continue  # not reached by this write
        if spans and not any(int(o) <= lo and hi <= int(o) + int(n) for o, n in spans):
            continue  # the ROM does not program that register
        v = f.get(loaded)
        if v in f.permanent and (before is None or f.get(before) != v):
            out.append((f, v))
    return out


def check_option_bytes_write(
    device: Device, new_area: bytes, *, rdp2_confirmed: bool, where: str, current: bytes | None = None,
    start: int = 0,
) -> None:
    """Refuse (UsageError, exit 2) writing ``new_area`` to ``device``'s option bytes unless
    it is known not to set RDP level 2 or any other value the field table marks permanent
    (:func:`permanent_values`), or that was confirmed.

    ``new_area`` starts at the option-byte area's start; shorter data leaves the rest of the
    area as it is (so an RDP byte it does not reach is not changed), bytes beyond the area
    the table describes are ignored here (callers check sizes).  ``current``: the area as
    the chip shows it now, where known (then only permanent values it changes count).
    ``start``: bytes before this offset are not written (padding in front of a segment that
    starts inside the area: only the RDP check reads them, as 0xFF, never level 2).
    """
    if rdp2_confirmed:
        return
    name = device.short_name
    if not obl.supported(device):
        raise UsageError(
            f"{where}: the option-byte layout of {name} is not in the device table, so nobody can "
            "tell whether these bytes set RDP level 2 (permanent: no bootloader, no debug, ever); "
            f"pass {RDP2_FLAG} to write them anyway"
        )
    size = device.option_bytes.size if device.option_bytes is not None else len(new_area)
    area = bytes(new_area[:size]).ljust(size, b"\xff")  # 0xFF never reads as level 2
    rdp_offset = int(device.ob_layout["rdp"])
    if len(new_area) > rdp_offset and obl.rdp_level(device, area) == 2:
        raise UsageError(
            f"{where}: these option bytes set RDP level 2 on {name} (byte {rdp_offset} = "
            f"0x{area[rdp_offset]:02X}), which disables the bootloader and the debug port for good; "
            f"pass {RDP2_FLAG} to really do it"
        )
    check_permanent_values(
        permanent_values(device, new_area[start:], start=start, current=current), rdp2_confirmed=False,
        where=f"{where}: these option bytes set", on=name,
    )


def check_option_bytes_data(
    device: Device, address: int, data: bytes, *, rdp2_confirmed: bool, where: str
) -> None:
    """:func:`check_option_bytes_write` for ``data`` written at ``address`` (an image's
    option-byte segment, a DFU alt): data outside the area the table describes has no known
    meaning and is treated like an unknown layout."""
    if rdp2_confirmed:
        return
    if not obl.supported(device):
        check_option_bytes_write(device, data, rdp2_confirmed=False, where=where)  # raises
    region = device.option_bytes
    assert region is not None  # supported() implies it
    if not (region.start <= address and address + len(data) <= region.end):
        raise UsageError(
            f"{where}: {len(data)} bytes at 0x{address:08X} reach outside the option-byte area "
            f"whose layout stmflash knows for {device.short_name} (0x{region.start:08X}, "
            f"{region.size} bytes): nobody can tell whether they set RDP level 2; pass "
            f"{RDP2_FLAG} to write them anyway"
        )
    offset = address - region.start
    # an RDP byte before the data is not changed by this write: the 0xFF in front never
    # reads as level 2; the field check sees only the data (start=offset)
    check_option_bytes_write(device, b"\xff" * offset + bytes(data), rdp2_confirmed=False, where=where, start=offset)


def check_option_bytes_early(
    device: Device | None, data: bytes, *, rdp2_confirmed: bool, where: str, address: int | None = None
) -> None:
    """The gate before the part is known: without a named ``device`` the bytes cannot be
    decoded, so only the confirmation lets them through."""
    if rdp2_confirmed:
        return
    if device is None:
        raise UsageError(
            f"{where}: stmflash cannot tell what these option bytes mean before it knows the part "
            f"(they might set RDP level 2, which is permanent): name the part with --device (the "
            f"chip is then checked against it) or pass {RDP2_FLAG}"
        )
    start = address if address is not None else (device.option_bytes.start if device.option_bytes else 0)
    check_option_bytes_data(device, start, data, rdp2_confirmed=False, where=where)
