"""The one gate every option-byte write passes: RDP level 2 only when confirmed.

Readout protection level 2 disables the ROM bootloader and the debug port for good; it can
never be undone (RM0090 3.7.3 and RM0444 3.4.1 "Read protection", AN2606 "bootloader not
available at level 2"). The bytes that select it are family-specific (``ob_layout`` in the
device table, :mod:`stmflash.option_bytes`), so:

* bytes that decode as level 2 need ``--i-understand-rdp2-is-permanent``;
* where the family's layout is not in the table nobody can tell what the bytes mean, so
  *any* write to the option bytes needs that flag;
* before the part is known (a serial port not yet opened) the same holds: the bytes
  cannot be decoded, so the flag or a named part (``--device``, ``device =`` in a job) is
  needed.

Every path that can write option bytes calls this module before the port is opened or,
for parts known only after identification, before the first byte is written: ``uart``
and ``dfu --write-option-bytes``, option-byte data inside an image or a ``.dfu`` target,
job files, ``stmflash batch``, and the option bytes by field name.
"""

from __future__ import annotations

from stmflash import option_bytes as obl
from stmflash.devices import Device
from stmflash.errors import UsageError

RDP2_FLAG = "--i-understand-rdp2-is-permanent"

__all__ = [
    "RDP2_FLAG",
    "check_option_bytes_data",
    "check_option_bytes_early",
    "check_option_bytes_write",
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


def check_option_bytes_write(device: Device, new_area: bytes, *, rdp2_confirmed: bool, where: str) -> None:
    """Refuse (UsageError, exit 2) writing ``new_area`` to ``device``'s option bytes unless
    it is known not to set RDP level 2, or level 2 was confirmed.

    ``new_area`` starts at the option-byte area's start; shorter data leaves the rest of the
    area as it is (so an RDP byte it does not reach is not changed), bytes beyond the area
    the table describes are ignored here (callers check sizes).
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
    if offset > int(device.ob_layout["rdp"]):
        return  # the RDP byte lies before the data: this write does not change it
    check_option_bytes_write(device, b"\xff" * offset + bytes(data), rdp2_confirmed=False, where=where)


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
