"""The gate every option-byte write passes: RDP level 2 only when confirmed.

Readout protection level 2 disables the ROM bootloader and the debug port for good
(RM0090 3.7.3, RM0444 3.4.1 "Read protection"; AN2606: no bootloader at level 2). The bytes
that select it are family-specific (``ob_layout`` in the device table), so bytes that decode
as level 2 need ``--i-understand-rdp2-is-permanent``, and where the family's layout is not
in the table nobody can tell what the bytes mean, so any write needs that flag.

(A minimal version; the safety issue's module keeps this signature.)
"""

from __future__ import annotations

from stmflash import option_bytes as obl
from stmflash.devices import Device
from stmflash.errors import UsageError

RDP2_FLAG = "--i-understand-rdp2-is-permanent"

__all__ = ["RDP2_FLAG", "check_option_bytes_write"]


def check_option_bytes_write(device: Device, new_area: bytes, *, rdp2_confirmed: bool, where: str) -> None:
    """Refuse (UsageError, exit 2) writing ``new_area`` to ``device``'s option bytes unless
    it is known not to set RDP level 2, or level 2 was confirmed."""
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
