"""Applications in runtime mode: boards that can be asked into their ROM bootloader.

dfu-util lists DFU *runtime* interfaces next to DFU-mode devices, and a user with a
running board expects ``stmflash list`` to show it and ``stmflash dfu`` to say how to get
it into DFU mode. Two kinds are found on USB: a DFU 1.1 runtime interface (class FE/01/01,
DFU 1.1 section 4.1: ``--enter detach``) and a CDC-ACM interface (class 02/02, USB CDC 1.2:
``--enter 1200``, or ``--enter command`` on its serial port when the firmware carries the
stmflash companion). ST's VCP application ID 0483:5740 is a CDC one.
"""

from __future__ import annotations

from typing import Any


def runtime_apps() -> list[dict[str, Any]]:
    """Every runtime-mode application on the USB bus (the virtual one under STMFLASH_USB_SIM)."""
    from stmflash.trigger.host import _seen, find_cdc_devices, find_runtime_dfu, usb_backend

    backend = usb_backend()
    apps: list[dict[str, Any]] = []
    for rt in find_runtime_dfu(backend):
        seen = _seen(rt.device)
        apps.append({"usb": seen.id, "path": seen.path, "kind": "dfu-runtime", "enter": "--enter detach"})
    for dev, _intf in find_cdc_devices(backend):
        seen = _seen(dev)
        if any(a["path"] == seen.path and a["usb"] == seen.id for a in apps):
            continue  # one board with both interfaces: detach is the better entry
        apps.append({"usb": seen.id, "path": seen.path, "kind": "cdc", "enter": "--enter 1200"})
    return apps


def hint() -> str:
    """A sentence for "no DFU device found" when an application could be asked in."""
    try:
        apps = runtime_apps()
    except Exception:  # no USB backend or no permission: the caller's message stands alone
        return ""
    if not apps:
        return ""
    what = "; ".join(f"{a['usb']} at USB {a['path'] or '?'} ({a['kind']}: try {a['enter']})" for a in apps[:4])
    return f"; an application in runtime mode is on the bus: {what}"


__all__ = ["hint", "runtime_apps"]
