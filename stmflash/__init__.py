"""stmflash: program STM32 microcontrollers through the bootloaders already in their ROM.

Kept import-light on purpose: ``stmflash --help`` must answer fast, so nothing heavy is
imported here. Use the submodules (``stmflash.image``, ``stmflash.devices``, ...) directly.
"""

__version__ = "0.1.0"
