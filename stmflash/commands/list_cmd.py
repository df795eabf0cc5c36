"""``stmflash list``: the serial ports and DFU devices a board could be on.

Besides ROMs in DFU mode it lists applications in runtime mode, from one enumeration of the
bus (:func:`stmflash.trigger.runtime.scan`): a DFU 1.1 runtime interface (FE/01/01, JSON
``dfu_runtime``: boards that ``stmflash dfu --enter detach`` can bring into their ROM) and
USB CDC applications (``runtime_apps``: every application with the entry to use).

Both lists show the USB port path (``location``), because on a production line with
identical adapters and ROMs that report the same serial, the physical port is the only
stable way to name a board.
"""

from __future__ import annotations

import json
from typing import Any

import click


def _serial_ports() -> list[dict[str, Any]]:
    from serial.tools import list_ports

    out = []
    for p in sorted(list_ports.comports(), key=lambda p: p.device):
        out.append(
            {
                "device": p.device,
                "description": p.description if p.description and p.description != "n/a" else "",
                "usb": f"{p.vid:04x}:{p.pid:04x}" if p.vid is not None and p.pid is not None else None,
                "serial": p.serial_number,
                "location": p.location,
                "manufacturer": p.manufacturer,
            }
        )
    return out


def _dfu_devices() -> tuple[list[dict[str, Any]], str | None]:
    from stmflash.dfu.usb import find_devices
    from stmflash.errors import StmflashError

    try:
        found = find_devices(vid_pid=None)
    except StmflashError as exc:
        if exc.exit_code == 2:  # a bad STMFLASH_USB_SIM is the user's mistake, not "no USB"
            raise
        return [], str(exc)
    return [d.to_dict() for d in found], None


def _runtime() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(dfu_runtime, runtime_apps)`` from one enumeration of the bus (stmflash.trigger.runtime)."""
    from stmflash.errors import StmflashError

    try:
        import usb.core

        from stmflash.trigger.runtime import scan

        apps = scan()
    except (StmflashError, ImportError, OSError, ValueError):
        return [], []  # the DFU list above already says why the bus cannot be read
    except (usb.core.USBError, usb.core.NoBackendError):
        return [], []
    runtime = [d for d in (a.runtime_dict() for a in apps) if d is not None]
    return runtime, [a.app_dict() for a in apps]


@click.command("list", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "json_", is_flag=True, help="One JSON object on stdout.")
def list_(json_: bool) -> None:
    """List serial ports, USB DFU devices and applications in runtime mode (with USB port paths)."""
    ports = _serial_ports()
    dfu, problem = _dfu_devices()
    runtime, apps = _runtime() if not problem else ([], [])
    if json_:
        obj: dict[str, Any] = {"serial_ports": ports, "dfu_devices": dfu, "dfu_runtime": runtime,
                               "runtime_apps": apps}
        if problem:
            obj["dfu_error"] = problem
        click.echo(json.dumps(obj))
        return
    click.echo("Serial ports:")
    if not ports:
        click.echo("  (none)")
    for p in ports:
        extra = ", ".join(
            x
            for x in (
                f"USB {p['usb']}" if p["usb"] else "",
                f"serial {p['serial']}" if p["serial"] else "",
                f"at {p['location']}" if p["location"] else "",
            )
            if x
        )
        click.echo(f"  {p['device']:<16} {p['description']}" + (f" ({extra})" if extra else ""))
    click.echo("DFU devices:")
    if problem:
        click.echo(f"  (cannot list USB devices: {problem})")
    elif not dfu:
        click.echo("  (none; is the chip in its bootloader? on Linux see udev/50-stmflash.rules)")
    for d in dfu:
        alts = ", ".join(f"{a['alt']}:{a['name']}" for a in d["alts"])
        click.echo(
            f"  {d['path']:<10} {d['vid'][2:].lower()}:{d['pid'][2:].lower()} serial {d['serial'] or '?'} "
            f"bcdDevice {d['bcd_device']}" + (" [virtual]" if d["virtual"] else "")
        )
        click.echo(f"             alts: {alts}")
    if apps:
        click.echo("Applications in runtime mode:")
        for a in apps:
            click.echo(f"  {a['path'] or '?':<10} {a['usb']} {a['kind']:<11} (into DFU mode: stmflash dfu {a['enter']})")


__all__ = ["list_"]
