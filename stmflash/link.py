"""The Link protocol: what the one programming pipeline needs from a bootloader transport.

UART (AN3155) and USB (DfuSe) differ in framing, block sizes and how they erase, but the
pipeline only needs these few operations, so erase planning, write ordering and
verification are written once (``stmflash.pipeline``) and every transport inherits them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from stmflash.devices import Device, EraseUnit


@runtime_checkable
class Link(Protocol):
    """A connected, identified bootloader session: what every transport offers the one
    programming pipeline (``stmflash.pipeline``). A link only reads, writes, erases,
    checksums and starts; erase planning, verification and reporting live in the pipeline."""

    device: Device  # after identification (flash size from the flash-size register applied)
    max_read: int  # bytes per read operation (256 UART, transfer size DFU)
    max_write: int

    def read(self, address: int, length: int) -> bytes:
        """Any length: the link splits into operations of ``max_read`` bytes."""
        ...

    def write(self, address: int, data: bytes) -> None:
        """``len(data) <= max_write`` and aligned to ``device.write_align``."""
        ...

    def erase(self, units: Sequence[EraseUnit]) -> None:
        """Erase these pages/sectors; the link splits lists as its ROM requires."""
        ...

    def mass_erase(self) -> None: ...

    def checksum(self, address: int, length: int) -> int | None:
        """On-chip CRC (``stm32_crc`` convention) of the range, or None when unavailable."""
        ...

    def start(self, address: int) -> None:
        """Run the application (Go on UART, leave on DFU)."""
        ...

    def reset(self) -> None: ...


# Optional capabilities the pipeline uses when a link has them (the RAM stub does):
#   checksums(ranges) -> list[int]   many on-chip CRCs in one pipelined batch: fast
#                                    re-flash (units already holding the image are skipped)
#                                    and verification without a turnaround per range;
#   flush() -> None                  wait until writes kept in flight are done (raises
#                                    their error), called at the end of the write phase.
