"""How long things take on a virtual STM32, from the device table's typical figures.

Two modes: ``instant`` (every duration is zero: unit tests stay fast and deterministic)
and ``realistic`` (the wire, the USB adapter's turnaround, flash programming and erase
times are modelled so benchmarks can compare a client's wall-clock time with what the
hardware would need). The model is deliberately simple and documented so a benchmark can
recompute it independently:

* a byte costs 11 bit times on the wire (8E1), in both directions;
* every answer of the chip (a burst of bytes after the host's request) pays one adapter
  turnaround latency (``latency_ms``, default 1 ms);
* Write Memory into flash pays ``device.program_time_ms(n)`` (typical);
* each erased unit pays ``device.unit_erase_ms(unit)`` (typical), a mass erase
  ``device.mass_erase_time_ms()`` (typical);
* after a reset the ROM needs ``device.startup_ms`` before it answers the first 0x7F.

Sleeping is done against absolute ``time.perf_counter`` deadlines so that errors do not
accumulate over thousands of exchanges.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from stmflash.devices import Device, EraseUnit

MODES = ("instant", "realistic")
BITS_PER_BYTE = 11  # start + 8 data + parity + stop


@dataclass
class TimingModel:
    """Durations in seconds for one device; all zero in ``instant`` mode."""

    device: Device
    mode: str = "instant"
    baud: int = 115200
    latency_ms: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"timing must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.baud <= 0:
            raise ValueError(f"baud must be positive, not {self.baud}")

    @property
    def realistic(self) -> bool:
        return self.mode == "realistic"

    # ---- line --------------------------------------------------------------------------
    def byte_time(self) -> float:
        """Seconds one byte occupies the wire (8E1)."""
        return BITS_PER_BYTE / self.baud if self.realistic else 0.0

    def wire_time(self, nbytes: int) -> float:
        return nbytes * self.byte_time()

    def latency(self) -> float:
        """Adapter turnaround paid by every answer of the chip."""
        return self.latency_ms / 1000.0 if self.realistic else 0.0

    # ---- flash -------------------------------------------------------------------------
    def program_time(self, nbytes: int) -> float:
        if not self.realistic or nbytes <= 0:
            return 0.0
        return self.device.program_time_ms(nbytes)[0] / 1000.0

    def erase_time(self, units: Iterable[EraseUnit]) -> float:
        if not self.realistic:
            return 0.0
        return sum(self.device.unit_erase_ms(u)[0] for u in units) / 1000.0

    def mass_erase_time(self) -> float:
        if not self.realistic:
            return 0.0
        return self.device.mass_erase_time_ms()[0] / 1000.0

    def startup_delay(self) -> float:
        return self.device.startup_ms / 1000.0 if self.realistic else 0.0


def sleep_until(deadline: float) -> None:
    """Sleep until ``time.perf_counter() >= deadline`` (coarse sleep, then a short spin).

    ``time.sleep`` overshoots by up to a scheduler tick; sleeping to just before the
    deadline and spinning the rest keeps each wait accurate to a few microseconds.
    """
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return
        if remaining > 0.002:
            time.sleep(remaining - 0.001)
        elif remaining > 0.0002:
            time.sleep(0)
