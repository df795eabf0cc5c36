"""``--ob NAME=VALUE``, ``--ob-show``, ``--ob-reset-defaults``: the same on ``uart`` and ``dfu``.

The request is checked before the port is opened (:meth:`stmflash.ob_ops.ObRequest.precheck`)
against the part named by ``--device`` or by a ``sim://NAME`` port, else against every
family's table; and again against the identified chip before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from stmflash.ob_ops import ObRequest, apply_request, format_rows, show

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["device_hint", "ob_options", "ob_request", "run_ob_actions"]


def ob_options(f: F) -> F:
    f = click.option("--ob-reset-defaults", "ob_reset_defaults", is_flag=True,
                     help="Set every writable option field to its factory value (RDP only when "
                     "given with --ob RDP=...).")(f)
    f = click.option("--ob-show", "ob_show", is_flag=True,
                     help="Print the option fields decoded: field, value, default, meaning (--json too).")(f)
    f = click.option("--ob", "ob_assign", multiple=True, metavar="NAME=VALUE",
                     help="Set an option field by its ST name (repeatable; one read-modify-write, "
                     "e.g. --ob nBOOT_SEL=0 --ob BOR_LEV=3 --ob RDP=level0). RDP level 2 and other "
                     "permanent values need --i-understand-rdp2-is-permanent.")(f)
    return f


def ob_request(kw: dict[str, Any]) -> ObRequest | None:
    """The request the options make, parsed (syntax errors: exit 2), or None."""
    from stmflash.ob_fields import parse_assignments

    assign = parse_assignments(kw.get("ob_assign") or ())
    req = ObRequest(assignments=dict(assign), reset_defaults=bool(kw.get("ob_reset_defaults")),
                    show=bool(kw.get("ob_show")))
    return req if (req.writes or req.show) else None


def device_hint(port: str | None, device_name: str | None) -> Any:
    """The part a request can be checked against before any port is opened: ``--device``,
    or the name in a ``sim://NAME`` URL; None when only the chip can tell."""
    from stmflash.devices import find
    from stmflash.errors import UsageError

    if device_name:
        try:
            return find(device_name)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
    if port and port.startswith("sim://"):
        try:  # sim://NAME; with ?chip= the name may be anything: the chip will tell
            return find(port[len("sim://") :].split("?", 1)[0])
        except KeyError:
            return None
    return None


def run_ob_actions(link: Any, req: ObRequest | None, kw: dict[str, Any], reporter: Any,
                   fields: dict[str, Any], *, part: str = "all") -> tuple[bool, list[dict[str, Any]] | None]:
    """Write then show, as asked. Returns (did something, decoded rows to print or None);
    adds what the result line reports to ``fields``. ``part``: "write" or "show" only, so
    that a command can put its --write-protect between them: --ob-show then decodes the
    option bytes as the command leaves them (readout protection still comes after it)."""
    if req is None:
        return False, None
    rows = None
    did = False
    if req.writes and part in ("all", "write"):
        did = True
        summary = apply_request(link, req, rdp2_confirmed=bool(kw.get("rdp2_ok")), reporter=reporter)
        fields.update(summary)
        names = ", ".join(f"{k}=0x{v:X}" for k, v in summary["option_fields_written"].items())
        if not summary["option_bytes_changed"]:
            reporter.info(f"option fields already set ({names})")
        elif summary["option_fields_verified"]:
            reporter.info(f"option fields written and read back after the reload: {names}")
        else:
            reporter.info(f"option fields written ({names}); the chip refuses reads now, not read back")
    if req.show and part in ("all", "show"):
        did = True
        from stmflash import option_bytes as obl

        area, rows = show(link)
        fields["option_bytes_area"] = area.hex()
        fields["option_fields"] = rows
        dev = link.device
        bad = obl.complement_mismatches(dev, area)
        if bad:  # what is stored is not what the chip runs with: say so next to the table
            where = [_view_address(dev, off) for off in bad]
            fields["option_bytes_complement_mismatch"] = [f"0x{a:08X}" for a in where]
            reporter.warn(
                "option bytes at " + ", ".join(f"0x{a:08X}" for a in where[:6]) + (" ..." if len(where) > 6 else "")
                + ": value and complement do not match, so the chip loads the reference manual's "
                "mismatch value there (RDP level 1 when it is the RDP byte), not the value shown"
            )
        if obl.supported(dev):
            first = dev.option_bytes.size if dev.option_bytes is not None else len(area)
            # what the chip runs with (complement check applied), the second block included
            level, units = obl.loaded_protection(dev, area[:first], area[first:] if len(area) > first else None)
            fields["rdp_level"] = level
            if dev.ob_layout.get("wrp"):
                fields["wrp_units"] = sorted(units)
            note = obl.pcrop_mode_note(dev, obl.loaded_view(dev, area[:first]))
            if note:  # the protected units above are counted that way
                reporter.warn(note)
    return did, rows


def _view_address(device: Any, off: int) -> int:
    """The chip address of byte ``off`` of the field view (area, then the second block)."""
    first = device.option_bytes.size
    if off < first or device.option_bytes2 is None:
        return int(device.option_bytes.start + off)
    return int(device.option_bytes2.start + off - first)


def echo_rows(rows: list[dict[str, Any]] | None) -> None:
    if rows is not None:
        click.echo(format_rows(rows))
