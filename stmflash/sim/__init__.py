"""The virtual STM32: one memory model behind the AN3155 (UART) and DfuSe (USB) ROM
front-ends, with a timing model and seeded faults, reachable through a pseudo-terminal
(``stmflash sim uart``), in-process as the pyserial URL ``sim://DEVICE?...``, or to a real
Linux USB stack over USB/IP (``stmflash sim usbip``, :mod:`stmflash.sim.usbip`).

Library use (tests)::

    from stmflash.sim import VirtualChip, registry, open_serial
    chip = registry.register("a", VirtualChip(devices.find("F407")))
    port = open_serial("sim://F407?chip=a")

Submodules are imported lazily so importing :mod:`stmflash.sim` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stmflash.sim.chip import (
        AccessError,
        PowerLoss,
        ProgramError,
        VirtualChip,
        flash_bytes,
        load_image_file,
    )
    from stmflash.sim.faults import FaultPlan
    from stmflash.sim.timing import TimingModel

__all__ = [
    "AccessError",
    "FaultPlan",
    "PowerLoss",
    "ProgramError",
    "TimingModel",
    "VirtualChip",
    "flash_bytes",
    "load_image_file",
    "open_serial",
    "register_url_handler",
    "registry",
]

_LAZY = {
    "AccessError": "stmflash.sim.chip",
    "PowerLoss": "stmflash.sim.chip",
    "ProgramError": "stmflash.sim.chip",
    "VirtualChip": "stmflash.sim.chip",
    "flash_bytes": "stmflash.sim.chip",
    "load_image_file": "stmflash.sim.chip",
    "FaultPlan": "stmflash.sim.faults",
    "TimingModel": "stmflash.sim.timing",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name == "registry":
        return importlib.import_module("stmflash.sim.registry")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stmflash.sim' has no attribute {name!r}")


def register_url_handler() -> None:
    """Let ``serial.serial_for_url`` open ``sim://`` URLs."""
    import serial

    if "stmflash.sim" not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append("stmflash.sim")


def open_serial(url: str, **kwargs: Any):  # -> serial.SerialBase
    """``serial.serial_for_url`` for a ``sim://`` URL (registers the handler first)."""
    import serial

    register_url_handler()
    kwargs.setdefault("baudrate", 115200)
    kwargs.setdefault("timeout", 1.0)
    return serial.serial_for_url(url, **kwargs)
