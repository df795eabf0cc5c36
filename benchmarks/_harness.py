"""Shared benchmark harness: interleaved paired runs, statistics, true lower bounds, the
simulator's own cost.

Why each piece exists (issue #17: figures that hold up when someone else runs them):

* :func:`interleave` runs the tools A B A B ... (at least 3 pairs, a fresh chip each run):
  drift of the machine (other load, thermal, caches) then hits both tools alike, and the
  *paired* ratio (B_i / A_i of the same round) cancels most of it. Absolute seconds do not
  transfer between machines; paired ratios do.
* :func:`summary` gives min and median (min: the run least disturbed by the machine;
  median: the typical one) and :func:`paired_ratios` the per-round ratios.
* :class:`UartUse` + :func:`uart_bound`: a lower bound for the AN3155 protocol *as a tool
  uses it* — the frames it sends, whether it waits for every ACK or pipelines, the erase it
  asks for, how it verifies — in the simulator's documented timing model
  (:mod:`stmflash.sim.timing`): 11 bit times per byte, one adapter turnaround per host
  wait, the device table's typical programming and erase times. Per host wait the host's
  bytes, the turnaround and the answer it waits for follow each other; ACKs the chip sends
  while the host is still sending a pipelined frame overlap and are not counted. Every
  term is a time the exchange cannot be shorter than, so the sum is a true lower bound.
* :func:`dfu_bound`: the same for DfuSe over the virtual USB bus's documented control
  transfer cost (:mod:`stmflash.sim.usb_backend`).
* :func:`sim_stats_from_text`, :func:`proc_cpu_s`: what the simulator itself spent (CPU,
  answers late on their modelled deadline), to print its share beside every figure.
* :func:`bench_env` (run on import): child processes keep their bytecode cache.
"""

from __future__ import annotations

import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

BITS_PER_BYTE = 11  # 8E1


def bench_env() -> None:
    """Children (clients, pty servers) run with their bytecode cached, as after ``pip
    install``: where ``PYTHONDONTWRITEBYTECODE`` is set every Python process would compile
    its sources again (~0.4 s of CPU for stmflash), a cost C tools never pay. The cache
    goes to a temporary prefix, not into the source tree."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "stmflash-bench-pycache"))


bench_env()

# ---- statistics --------------------------------------------------------------------------------


@dataclass
class Summary:
    n: int
    min: float
    median: float
    max: float

    def fmt(self, unit: str = "s", digits: int = 2) -> str:
        return f"{self.min:.{digits}f}/{self.median:.{digits}f} {unit}".rstrip()


def summary(values: Sequence[float]) -> Summary:
    """min / median / max of at least one value."""
    if not values:
        raise ValueError("no values to summarise")
    return Summary(len(values), min(values), statistics.median(values), max(values))


def paired_ratios(base: Sequence[float], other: Sequence[float]) -> list[float]:
    """``other[i] / base[i]`` for each round (both lists from the same interleaved rounds)."""
    if len(base) != len(other):
        raise ValueError(f"unpaired runs: {len(base)} vs {len(other)}")
    if any(b <= 0 for b in base):
        raise ValueError("base times must be positive")
    return [o / b for b, o in zip(base, other, strict=True)]


# ---- interleaved runs --------------------------------------------------------------------------


@dataclass
class Run:
    """One timed run of one tool on a fresh chip."""

    wall_s: float
    ok: bool = True
    status: str = "ok"
    sim_cpu_s: float = 0.0  # CPU the simulator spent during the run
    sim_late_s: float = 0.0  # how late the simulator's answers were in total
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sim_share(self) -> float:
        return self.sim_cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def interleave(runners: dict[str, Callable[[int], Run]], pairs: int = 3,
               log: Callable[[str], None] | None = None) -> dict[str, list[Run]]:
    """Run every runner once per round, in the same order, ``pairs`` rounds (A B A B ...).

    Each runner gets the round number and must set up a fresh chip itself.
    """
    if pairs < 1:
        raise ValueError("at least one round")
    out: dict[str, list[Run]] = {name: [] for name in runners}
    for r in range(pairs):
        for name, fn in runners.items():
            run = fn(r)
            out[name].append(run)
            if log:
                shown = f"{run.wall_s:7.2f} s" if run.ok else run.status
                log(f"  round {r + 1}/{pairs} {name:<28} {shown}  sim cpu {run.sim_share:5.1%}")
    return out


def order_of(runners: Sequence[str], pairs: int) -> list[str]:
    """The order :func:`interleave` runs things in (tested: A B A B, never A A B B)."""
    return [name for _ in range(pairs) for name in runners]


# ---- UART bound --------------------------------------------------------------------------------


@dataclass
class UartUse:
    """How one tool uses AN3155 for one job (see module docstring)."""

    pipelined_read: bool = False  # Read Memory's 9 request bytes sent in one go
    pipelined_write: bool = False  # Write Memory's command + address sent in one go
    write_blocks: list[int] = field(default_factory=list)  # payload sizes of the Write Memory frames
    read_blocks: list[int] = field(default_factory=list)  # sizes of the Read Memory frames
    erase_frames: int = 0  # Erase / Extended Erase commands sent
    erase_request_bytes: int = 0  # bytes of their page lists (incl. count and checksum)
    erase_s: float = 0.0  # typical erase time of what is erased
    checksum_frames: int = 0  # Get Checksum exchanges (AN3155 rev 20: 5 waits each)
    startup_waits: int = 3  # sync, Get, Get ID: every tool does at least these


def uart_bound(use: UartUse, *, baud: int, latency_s: float,
               program_s: Callable[[int], float]) -> dict[str, float]:
    """Lower bound in seconds, by part (``total`` is their sum)."""
    bt = BITS_PER_BYTE / baud
    parts = {"wire": 0.0, "turnarounds": 0.0, "program": 0.0, "erase": use.erase_s}

    def wait(out_bytes: int, in_bytes: int, n: int = 1) -> None:
        parts["wire"] += n * (out_bytes + in_bytes) * bt
        parts["turnarounds"] += n * latency_s

    # sync (1 -> ACK), Get (2 -> ACK, then its list), Get ID (2 -> ACK, 3 bytes, ACK):
    # counted as short exchanges of their request and one ACK only (lower bound)
    for _ in range(use.startup_waits):
        wait(1, 1)
    for n in use.write_blocks:
        if use.pipelined_write:
            wait(7, 1)  # command + address, waits for the address ACK
        else:
            wait(2, 1)
            wait(5, 1)
        wait(n + 2, 1)  # N, data, checksum -> ACK after programming
        parts["program"] += program_s(n)
    for n in use.read_blocks:
        if use.pipelined_read:
            wait(9, 1 + n)  # the command and address ACKs overlap the request
        else:
            wait(2, 1)
            wait(5, 1)
            wait(2, 1 + n)
    for _ in range(use.erase_frames):
        wait(2, 1)
    if use.erase_frames:
        parts["wire"] += use.erase_request_bytes * bt + use.erase_frames * bt
        parts["turnarounds"] += use.erase_frames * latency_s
    for _ in range(use.checksum_frames):
        wait(2, 1)
        wait(5, 1, 3)  # address, size, polynomial: an ACK each
        wait(5, 1 + 5)  # initial value -> ACK, CRC, XOR
    parts["total"] = sum(parts.values())
    return parts


def blocks(length: int, size: int = 256) -> list[int]:
    """Frame sizes of ``length`` bytes cut into ``size``-byte frames."""
    return [min(size, length - off) for off in range(0, length, size)]


# ---- DFU bound ---------------------------------------------------------------------------------


def dfu_bound(*, erase_s: float, program_s: float, erase_units: int, write_blocks: Sequence[int],
              read_blocks: Sequence[int], set_address: int, control_cost: Callable[[int], float]) -> dict[str, float]:
    """Lower bound of a DfuSe write + read-back verify on the virtual bus's cost model.

    Per erase command and per SET_ADDRESS: DNLOAD (5 bytes) + GETSTATUS (executes, busy)
    + GETSTATUS (idle); per write block: DNLOAD (block) + 2 GETSTATUS; per read block one
    UPLOAD. Busy times are the true durations (a host polling early meets a NAK, not a
    shorter operation), not the rounded-up bwPollTimeout.
    """
    usb = 0.0
    usb += (erase_units + set_address) * (control_cost(5) + 2 * control_cost(6))
    usb += sum(control_cost(n) + 2 * control_cost(6) for n in write_blocks)
    usb += sum(control_cost(n) for n in read_blocks)
    return {"erase": erase_s, "program": program_s, "usb": usb, "total": erase_s + program_s + usb}


# ---- the simulator's own cost -----------------------------------------------------------------

_STATS_RE = re.compile(r"sim-stats ((?:\w+=[\d.]+ ?)+)")


def sim_stats_from_text(text: str) -> dict[str, float]:
    """Sum of every ``sim-stats key=value ...`` line in ``text`` (pty servers print one at exit)."""
    total: dict[str, float] = {}
    for m in _STATS_RE.finditer(text):
        for item in m.group(1).split():
            k, _, v = item.partition("=")
            total[k] = total.get(k, 0.0) + float(v)
    return total


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "n/a"


def machine_line() -> str:
    return (f"{os.cpu_count()} CPUs, load average {loadavg()} (at "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")


def ratio_cell(values: Sequence[float]) -> str:
    s = summary(values)
    return f"{s.median:.3f}x ({s.min:.3f}-{s.max:.3f})"
