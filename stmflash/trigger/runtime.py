"""Applications in runtime mode: boards that can be asked into their ROM bootloader.

dfu-util lists DFU *runtime* interfaces next to DFU-mode devices, and a user with a
running board expects ``stmflash list`` to show it and ``stmflash dfu`` to say how to get
it into DFU mode. Two kinds are found on USB: a DFU 1.1 runtime interface (class FE/01/01,
DFU 1.1 section 4.1: ``--enter detach``) and a CDC-ACM interface (class 02/02, USB CDC 1.2:
``--enter 1200``, or ``--enter command`` on its serial port when the firmware carries the
stmflash companion). ST's VCP application ID 0483:5740 is a CDC one.

:func:`scan` reads the bus once and finds both kinds per device; ``stmflash list`` derives
its ``dfu_runtime`` and ``runtime_apps`` keys from that one enumeration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RuntimeApp:
    """One application on the bus: its DFU runtime interface and/or its CDC interface."""

    vid: int
    pid: int
    path: str | None
    dfu_interface: int | None = None
    dfu_attributes: int = 0
    detach_timeout_ms: int = 0
    cdc_interface: int | None = None

    @property
    def usb(self) -> str:
        return f"{self.vid:04x}:{self.pid:04x}"

    @property
    def kind(self) -> str:
        # one board with both interfaces: detach is the better entry
        return "dfu-runtime" if self.dfu_interface is not None else "cdc"

    @property
    def enter(self) -> str:
        return "--enter detach" if self.dfu_interface is not None else "--enter 1200"

    @property
    def will_detach(self) -> bool:
        from stmflash.trigger.host import ATTR_WILL_DETACH

        return bool(self.dfu_attributes & ATTR_WILL_DETACH)

    def app_dict(self) -> dict[str, Any]:
        """An entry of ``stmflash list --json``'s ``runtime_apps``."""
        return {"usb": self.usb, "path": self.path, "kind": self.kind, "enter": self.enter}

    def runtime_dict(self) -> dict[str, Any] | None:
        """An entry of ``dfu_runtime`` (None: the application has no DFU runtime interface)."""
        if self.dfu_interface is None:
            return None
        return {"vid": f"{self.vid:04x}", "pid": f"{self.pid:04x}", "path": self.path,
                "interface": self.dfu_interface, "will_detach": self.will_detach,
                "detach_timeout_ms": self.detach_timeout_ms}


def scan(backend: Any = None) -> list[RuntimeApp]:
    """Every runtime-mode application, from one enumeration of the bus (the virtual one under
    STMFLASH_USB_SIM); those with a DFU runtime interface first, as ``stmflash list`` shows them."""
    import usb.core

    from stmflash.trigger.host import (
        DETACH_TIMEOUT_MS,
        RUNTIME_DFU,
        _interfaces,
        _seen,
        parse_functional,
        usb_backend,
    )
    from stmflash.trigger.wait import is_rom_dfu

    found: list[RuntimeApp] = []
    for dev in usb.core.find(find_all=True, backend=backend if backend is not None else usb_backend()) or ():
        seen = _seen(dev)
        dfu: tuple[int, int, int] | None = None
        cdc: int | None = None
        for intf in _interfaces(dev):
            triple = (intf.bInterfaceClass, intf.bInterfaceSubClass, intf.bInterfaceProtocol)
            if triple == RUNTIME_DFU and dfu is None and not is_rom_dfu(seen):
                func = parse_functional(getattr(intf, "extra_descriptors", b"") or b"")
                attrs, timeout = func if func else (0, DETACH_TIMEOUT_MS)
                dfu = (intf.bInterfaceNumber, attrs, timeout)
            elif triple[:2] == (0x02, 0x02) and cdc is None:
                cdc = intf.bInterfaceNumber
        if dfu is None and cdc is None:
            continue
        found.append(RuntimeApp(seen.vid, seen.pid, seen.path, cdc_interface=cdc,
                                dfu_interface=dfu[0] if dfu else None,
                                dfu_attributes=dfu[1] if dfu else 0,
                                detach_timeout_ms=dfu[2] if dfu else 0))
    return sorted(found, key=lambda a: a.dfu_interface is None)


def runtime_apps() -> list[dict[str, Any]]:
    """Every runtime-mode application on the USB bus, as ``stmflash list --json`` shows it."""
    return [a.app_dict() for a in scan()]


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


__all__ = ["RuntimeApp", "hint", "runtime_apps", "scan"]
