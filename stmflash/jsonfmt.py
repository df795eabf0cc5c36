"""The one convention of every ``--json`` document stmflash prints (documented in the README).

- **Addresses, IDs, CRCs and register or byte values are hex strings** with ``0x``:
  addresses with 8 digits (``"0x08000000"``), product IDs with 3 (``"0x413"``), USB IDs and
  bcdDevice with 4 (``"0x0483"``), CRCs with 8, bootloader IDs and command codes with 2.
  They are what a user compares with a datasheet, and JSON has no hex numbers.
- **Sizes, lengths, counts and durations are JSON numbers** (bytes, seconds).
- ``uid`` is always the chip's 96-bit unique ID (24 hex digits) or ``null`` when the link
  cannot read it; the USB iSerial a DFU ROM presents (derived from part of the UID, AN2606)
  is ``usb_serial``.
"""

from __future__ import annotations


def addr(value: int | None) -> str | None:
    return None if value is None else f"0x{value:08X}"


def hexid(value: int | None, digits: int) -> str | None:
    return None if value is None else f"0x{value:0{digits}X}"


def region(r: dict[str, int] | None) -> dict[str, object] | None:
    """``{"start", "end", "size"}`` with the addresses as hex strings."""
    if r is None:
        return None
    return {"start": addr(r["start"]), "end": addr(r["end"]), "size": r["size"]}


__all__ = ["addr", "hexid", "region"]
