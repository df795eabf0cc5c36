"""stmflash: program STM32 microcontrollers through the bootloaders already in their ROM.

The public library API, all importable from here::

    import stmflash

    with stmflash.connect_uart("/dev/ttyUSB0", baud=115200) as link:   # or "sim://F407"
        result = stmflash.program(link, stmflash.load("app.hex"), verify=True, after="go")

    with stmflash.connect_dfu(path="1-4.2") as link:                   # or serial=..., or none
        stmflash.program(link, stmflash.load("app.hex"), after="go")

- ``connect_uart`` (``stmflash.uart.link.connect``), ``connect_dfu``
  (``stmflash.dfu.link.connect``): open a link, enter the bootloader, identify the chip;
- ``program`` (``stmflash.pipeline.program``): erase, write, verify, start, for any link;
- ``load`` / ``save`` / ``Image``: firmware files and the one image model;
- ``find_device``: the device table (``stmflash.devices.find``);
- the errors of ``stmflash.errors``, each with its process ``exit_code``.

Kept import-light on purpose (``stmflash --help`` must answer fast): everything but the
errors is imported on first use (PEP 562 module ``__getattr__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stmflash.errors import (
    ImageError,
    LinkError,
    NackError,
    ProtectionError,
    StmflashError,
    UsageError,
    VerifyError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from stmflash.devices import find as find_device
    from stmflash.dfu.link import connect as connect_dfu
    from stmflash.image import load, save
    from stmflash.image.model import Image
    from stmflash.pipeline import ProgramResult, program
    from stmflash.uart.link import connect as connect_uart

_LAZY = {
    "connect_uart": ("stmflash.uart.link", "connect"),
    "connect_dfu": ("stmflash.dfu.link", "connect"),
    "program": ("stmflash.pipeline", "program"),
    "ProgramResult": ("stmflash.pipeline", "ProgramResult"),
    "load": ("stmflash.image", "load"),
    "save": ("stmflash.image", "save"),
    "Image": ("stmflash.image.model", "Image"),
    "find_device": ("stmflash.devices", "find"),
}

__all__ = [
    "Image",
    "ImageError",
    "LinkError",
    "NackError",
    "ProgramResult",
    "ProtectionError",
    "StmflashError",
    "UsageError",
    "VerifyError",
    "__version__",
    "connect_dfu",
    "connect_uart",
    "find_device",
    "load",
    "program",
    "save",
]


def __getattr__(name: str) -> Any:
    spec = _LAZY.get(name)
    if spec is None:
        raise AttributeError(f"module 'stmflash' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(spec[0]), spec[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
