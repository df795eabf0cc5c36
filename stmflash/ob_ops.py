"""Set and show option fields on a connected chip, the same way over every link.

The request (``--ob NAME=VALUE``, ``--ob-reset-defaults``, a job's ``[option_bytes] fields``)
is checked against the family's field table (:mod:`stmflash.ob_fields`) before the port is
opened where the part is known, and again once the chip has said what it is, before any
byte is written. Then one read-modify-write of the whole area: read it, set the fields
(every other bit preserved, complements computed), pass the result through the RDP-2 gate
(:func:`stmflash.safety.check_option_bytes_write`) and the table's "permanent" values,
write it (the chip reloads its option bytes and resets; the link resyncs or waits for
re-enumeration), read it back and check every field written: a field that did not take is
an :class:`~stmflash.ob_fields.OptionByteMismatch` naming it (exit 5).

A link offers ``ob_area_read() -> bytes`` and ``ob_area_write(new, current, *, silent)``;
nothing here knows UART from DFU. On parts with a second option-byte block (F42x/F43x/F469
bank 2 at 0x1FFEC000, ``option_bytes2``) the area is both blocks back to back
(:func:`stmflash.ob_fields.view_size`); the link reads and writes each at its own address.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stmflash import ob_fields
from stmflash import option_bytes as obl
from stmflash.devices import Device
from stmflash.errors import LinkError, StmflashError
from stmflash.safety import check_option_bytes_write, check_permanent_values

__all__ = ["ObRequest", "apply_request", "show", "values_for"]


@dataclass
class ObRequest:
    """What the user asked for (raw names and values, as typed or as in the job file)."""

    assignments: dict[str, str | int] = field(default_factory=dict)
    reset_defaults: bool = False
    show: bool = False
    where: str = "--ob"

    @property
    def writes(self) -> bool:
        return bool(self.assignments) or self.reset_defaults

    def precheck(self, device: Device | None, *, rdp2_confirmed: bool = False) -> None:
        """Before the port is opened (exit 2, nothing touched)."""
        if self.assignments:
            ob_fields.precheck(self.assignments, device, self.where, rdp2_confirmed=rdp2_confirmed)
        if device is not None and self.writes:
            values_for(device, self, rdp2_confirmed=rdp2_confirmed)


def values_for(device: Device, req: ObRequest, *, rdp2_confirmed: bool = True) -> dict[ob_fields.Field, int]:
    """{Field: value} to write: the factory values (RDP only when named) overlaid with the
    named fields. UsageError for anything the table refuses."""
    values: dict[ob_fields.Field, int] = {}
    if req.reset_defaults:
        values.update(ob_fields.reset_default_values(device))
    values.update(ob_fields.resolve(device, req.assignments, req.where))
    check_permanent_values(values, rdp2_confirmed=rdp2_confirmed, where=req.where)  # the raw path's rule too
    return values


def apply_request(link: Any, req: ObRequest, *, rdp2_confirmed: bool, reporter: Any = None) -> dict[str, Any]:
    """Write the requested fields on ``link``'s chip and check them after the reload.

    Returns a summary for the result line: fields written, whether the area changed, and
    whether the read-back could be checked (at RDP level 1 the ROM refuses it)."""
    device = link.device
    values = values_for(device, req, rdp2_confirmed=rdp2_confirmed)
    current = link.ob_area_read()
    new = ob_fields.apply(device, current, values)
    check_option_bytes_write(device, new, rdp2_confirmed=rdp2_confirmed, where=req.where, current=current)
    written = {f.name: v for f, v in values.items()}
    if new == current:
        return {"option_fields_written": written, "option_bytes_changed": False, "option_fields_verified": True}
    first = device.option_bytes.size if device.option_bytes is not None else len(new)
    level = obl.rdp_level(device, new[:first]) if obl.supported(device) else 0
    if reporter is not None:
        reporter.phase("options")
    try:
        link.ob_area_write(new, current, silent=level == 2)
    except LinkError as exc:
        raise LinkError(f"{exc}{_boot_hint(device, new)}") from None
    if level == 2:  # the chip never answers its bootloader again
        return {"option_fields_written": written, "option_bytes_changed": True, "option_fields_verified": False}
    try:
        back = link.ob_area_read()
    except StmflashError:
        if level == 1:  # the ROM refuses reads at level 1: only the RDP level is observable
            return {"option_fields_written": written, "option_bytes_changed": True, "option_fields_verified": False}
        raise
    ob_fields.check_written(device, back, values, f"{req.where} on {device.short_name}")
    return {"option_fields_written": written, "option_bytes_changed": True, "option_fields_verified": True}


def _boot_hint(device: Device, new: bytes) -> str:
    """Why a chip may not come back to its ROM after the reload (G0/C0 boot table, F7
    BOOT_ADD1); the remedy is the table's ``boot_hint``."""
    pin_high = ob_fields.boot_source(device, new, boot0_pin=True, flash_empty=False)
    if pin_high is None or pin_high == "system":
        return ""
    t = ob_fields.table_of(device)
    remedy = (t.boot_hint if t is not None and t.boot_hint else
              "add --ob nBOOT_SEL=0 (BOOT0 pin decides) or --ob nBOOT0=0 to keep the bootloader")
    empty_check = t is not None and any(r.get("empty_check") for r in t.boot)
    return (
        f"; with these option bytes a {device.short_name}{' whose flash is programmed' if empty_check else ''} boots "
        f"{pin_high} after the reload even with BOOT0 high (reference manual boot table): {remedy}"
    )


def show(link: Any) -> tuple[bytes, list[dict[str, Any]]]:
    """(the area, its decoded rows) as the chip shows them now."""
    area = link.ob_area_read()
    return area, ob_fields.decode(link.device, area)


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The --ob-show table: field, value, meaning, default."""
    lines = [f"{'field':<18} {'value':>8}  {'default':>8}  meaning"]
    for r in rows:
        mark = "" if r["is_default"] in (True, None) else " *"
        note = "" if r["writable"] else f"  [not written: {r['why']}]"
        value = f"0x{r['value']:X}"
        default = "?" if r["default"] is None else f"0x{r['default']:X}"
        lines.append(f"{r['field']:<18} {value:>8}  {default:>8}  {r['meaning']}{mark}{note}")
    return "\n".join(lines)
