"""How long things take on a virtual STM32, from the device table's typical figures.

Two modes: ``instant`` (every duration is zero: unit tests stay fast and deterministic)
and ``realistic`` (the wire, the USB adapter's turnaround, flash programming and erase
times are modelled so benchmarks can compare a client's wall-clock time with what the
hardware would need). The model is deliberately simple and documented so a benchmark can
recompute it independently:

* a byte costs 11 bit times on the wire (8E1), in both directions;
* every answer of the chip (a burst of bytes after the host's request) pays one adapter
  turnaround latency (``latency_ms``), named by an adapter profile (:data:`ADAPTERS`):
  ``ch340``/``cp210x`` ~1 ms (the default), ``ftdi`` 16 ms (the FT232R/FT231X default
  latency timer: a short answer waits in the adapter until the timer expires, FTDI
  AN232B-04 "Data Throughput, Latency and Handshaking"), ``ideal`` 0;
* Write Memory into flash pays ``device.program_time_ms(n)`` (typical);
* each erased unit pays ``device.unit_erase_ms(unit)`` (typical), a mass erase
  ``device.mass_erase_time_ms()`` (typical);
* after a reset the ROM needs ``device.startup_ms`` before it answers the first 0x7F.

Scheduling is deadline based: each answer is due at the modelled time computed from when
the request arrived (``t0 + modelled duration``), and the front-ends sleep against those
absolute ``time.perf_counter`` deadlines, so neither sleeping errors nor the simulator's
own CPU time (spent before the deadline) accumulate into modelled time. What the simulator
could not hide is counted in :class:`SimStats` (its CPU seconds, and how late answers left
after their deadline) so benchmarks can print the simulator's share and exclude it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from stmflash.devices import Device, EraseUnit

MODES = ("instant", "realistic")
BITS_PER_BYTE = 11  # start + 8 data + parity + stop

# USB-serial adapter turnaround per answer, ms. FTDI: default latency timer 16 ms (FTDI
# AN232B-04); CH340 and CP210x forward short packets within about a USB frame.
ADAPTERS: dict[str, float] = {"ideal": 0.0, "ch340": 1.0, "cp210x": 1.0, "ftdi": 16.0}
DEFAULT_ADAPTER = "ch340"


def adapter_latency_ms(name: str) -> float:
    """Turnaround of a named adapter profile; ValueError naming the profiles otherwise."""
    try:
        return ADAPTERS[name.lower()]
    except KeyError:
        raise ValueError(f"adapter must be one of {', '.join(ADAPTERS)}, not {name!r}") from None


def resolve_latency_ms(adapter: str | None, latency_ms: float | None) -> float:
    """An explicit ``latency_ms`` wins; else the adapter profile; else the default adapter."""
    if latency_ms is not None:
        if latency_ms < 0:
            raise ValueError(f"latency must not be negative, not {latency_ms}")
        return float(latency_ms)
    return adapter_latency_ms(adapter or DEFAULT_ADAPTER)


class SimStats:
    """What the simulator itself cost, shared by every front-end of one chip.

    ``cpu_s``: CPU seconds spent in simulator code (``time.thread_time`` of the thread that
    ran it, pacing sleeps excluded); ``late_s``: wall time during which some answer was
    overdue, i.e. the measure of the union of the intervals [deadline, handed over] (answers
    overdue at the same time count once), the part of the simulator's cost that did reach
    the host; ``answers``: answers scheduled.
    """

    def __init__(self) -> None:
        self.cpu_s = 0.0
        self.late_s = 0.0
        self.answers = 0
        self.late_answers = 0
        self._late_until = float("-inf")  # end of the overdue time already counted

    def work(self) -> _CpuSpan:
        """``with stats.work(): ...`` adds the block's thread CPU time to ``cpu_s``."""
        return _CpuSpan(self)

    def deliver(self, deadline: float, now: float | None = None) -> float:
        """An answer due at ``deadline`` leaves ``now``: count it and how late it was."""
        now = time.perf_counter() if now is None else now
        self.answers += 1
        late = now - deadline
        if late > 0:
            self.late_s += max(0.0, now - max(deadline, self._late_until))
            self._late_until = max(self._late_until, now)
            self.late_answers += 1
            return late
        return 0.0

    def to_dict(self) -> dict[str, float]:
        return {"cpu_s": self.cpu_s, "late_s": self.late_s, "answers": self.answers,
                "late_answers": self.late_answers}

    def summary(self) -> str:
        """One line, parsed back by benchmarks (``key=value`` pairs)."""
        return "sim-stats " + " ".join(f"{k}={v:.6f}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in self.to_dict().items())


class Pacer:
    """Deadline pacing of one chip's answers on one transport (pty server, ``sim://``).

    The host reacts to an answer when it *receives* it. When the transport handed an
    answer over late (the simulator was woken late on a loaded machine), the host's next
    request is late by as much, through no fault of the host's: in the modelled time line
    that request arrived that much earlier. :meth:`arrival` gives the modelled arrival of
    bytes read after the last answer left, never before that answer's deadline, so one late
    wake-up does not push every later deadline back (the host's own reaction time is kept
    whole). Bytes read before the last answer left are taken at their wall time.
    """

    def __init__(self, stats: SimStats) -> None:
        self.stats = stats
        self._due = float("-inf")  # deadline of the last answer handed over
        self._sent_at = float("-inf")  # when it was handed over
        self._late = 0.0

    def arrival(self, now: float) -> float:
        if self._late > 0 and now > self._sent_at:
            return max(self._due, now - self._late)
        return now

    def sent(self, due: float, now: float) -> None:
        """An answer due at ``due`` was handed to the host at ``now``."""
        self._late = self.stats.deliver(due, now)
        self._due, self._sent_at = due, now


class _CpuSpan:
    __slots__ = ("stats", "t0")

    def __init__(self, stats: SimStats) -> None:
        self.stats = stats
        self.t0 = 0.0

    def __enter__(self) -> None:
        self.t0 = time.thread_time()

    def __exit__(self, *exc: object) -> None:
        self.stats.cpu_s += time.thread_time() - self.t0


@dataclass
class TimingModel:
    """Durations in seconds for one device; all zero in ``instant`` mode."""

    device: Device
    mode: str = "instant"
    baud: int = 115200
    latency_ms: float = ADAPTERS[DEFAULT_ADAPTER]

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


SPIN_S = 0.0003  # the last stretch of a wait is spun (yielding): sleep() overshoots


def sleep_until(deadline: float) -> None:
    """Sleep until ``time.perf_counter() >= deadline`` (coarse sleep, then a short spin).

    ``time.sleep`` overshoots by tens of microseconds (more on a loaded machine); sleeping
    to just before the deadline and spinning the last :data:`SPIN_S` (yielding the CPU)
    keeps each wait accurate without burning CPU other simulators and the host need.
    """
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return
        if remaining > SPIN_S:
            time.sleep(remaining - SPIN_S)
        else:
            time.sleep(0)
