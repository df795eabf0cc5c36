"""The benchmark harness's statistics and lower-bound formulas (benchmarks/_harness.py).

The bounds are checked against the virtual ROM driven in *virtual* time by an ideal host
(one that sends its next bytes the instant the awaited answer has arrived): such a host
meets the bound exactly, and no real host can beat it. No wall clock is involved.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from stmflash import devices
from stmflash.sim.an3155 import An3155Rom
from stmflash.sim.chip import VirtualChip
from stmflash.sim.timing import TimingModel
from stmflash.sim.usb_backend import control_cost
from stmflash.uart.protocol import xor

_spec = importlib.util.spec_from_file_location(
    "bench_harness", Path(__file__).resolve().parent.parent / "benchmarks" / "_harness.py"
)
assert _spec and _spec.loader
H = importlib.util.module_from_spec(_spec)
sys.modules["bench_harness"] = H  # dataclasses look their module up
_spec.loader.exec_module(H)

F4, G0 = devices.find("0x413"), devices.find("0x460")


# ---- statistics ------------------------------------------------------------------------------------


def test_summary_and_paired_ratios() -> None:
    s = H.summary([3.0, 1.0, 2.0, 10.0])
    assert (s.n, s.min, s.median, s.max) == (4, 1.0, 2.5, 10.0)
    assert H.summary([5.0]).median == 5.0
    with pytest.raises(ValueError):
        H.summary([])
    assert H.paired_ratios([2.0, 4.0], [3.0, 2.0]) == [1.5, 0.5]
    with pytest.raises(ValueError, match="unpaired"):
        H.paired_ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        H.paired_ratios([0.0], [1.0])


def test_interleave_runs_a_b_a_b_with_fresh_rounds() -> None:
    seen: list[tuple[str, int]] = []

    def runner(name: str):
        def run(r: int):
            seen.append((name, r))
            return H.Run(wall_s=1.0 + r, sim_cpu_s=0.5)
        return run

    out = H.interleave({"a": runner("a"), "b": runner("b")}, pairs=3)
    assert seen == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert [r.wall_s for r in out["b"]] == [1.0, 2.0, 3.0]
    assert out["a"][0].sim_share == 0.5
    assert H.order_of(["a", "b"], 2) == ["a", "b", "a", "b"]
    with pytest.raises(ValueError):
        H.interleave({"a": runner("a")}, pairs=0)


def test_sim_stats_lines_are_summed() -> None:
    text = ("noise\nsim-stats cpu_s=0.5 late_s=0.01 answers=10 late_answers=1 process_cpu_s=1.0\n"
            "sim-stats cpu_s=0.25 late_s=0.0 answers=5 late_answers=0 process_cpu_s=0.5 wall_s=3\n")
    got = H.sim_stats_from_text(text)
    assert got["cpu_s"] == pytest.approx(0.75) and got["answers"] == 15
    assert got["process_cpu_s"] == pytest.approx(1.5)


# ---- UART bound vs the virtual ROM in virtual time ---------------------------------------------------


class IdealHost:
    """Sends each chunk the instant the awaited bytes of the previous one have arrived."""

    def __init__(self, dev: devices.Device, baud: int, latency_ms: float) -> None:
        self.tm = TimingModel(dev, "realistic", baud=baud, latency_ms=latency_ms)
        self.chip = VirtualChip(dev, timing=self.tm)
        self.rom = An3155Rom(self.chip, now=0.0)
        self.t = 10.0
        self.x(b"\x7f", 1)
        self.t0 = self.t

    def x(self, data: bytes, awaited: int) -> bytes:
        self.rom.feed(data, self.t)
        got = b""
        while len(got) < awaited:
            nxt = self.rom.next_output_time()
            assert nxt is not None, f"chip fell silent after {got.hex()}"
            got += self.rom.take_output(nxt)
            self.t = nxt
        return got

    def write(self, address: int, data: bytes, pipelined: bool) -> None:
        head = b"\x31\xce" + address.to_bytes(4, "big") + bytes([xor(address.to_bytes(4, "big"))])
        if pipelined:
            assert self.x(head, 2) == b"\x79\x79"
        else:
            assert self.x(head[:2], 1) == b"\x79"
            assert self.x(head[2:], 1) == b"\x79"
        frame = bytes([len(data) - 1]) + data
        assert self.x(frame + bytes([xor(frame)]), 1) == b"\x79"

    def read(self, address: int, n: int, pipelined: bool) -> bytes:
        a = address.to_bytes(4, "big")
        frame = b"\x11\xee" + a + bytes([xor(a), n - 1, (n - 1) ^ 0xFF])
        if pipelined:
            got = self.x(frame, 3 + n)
        else:
            got = self.x(frame[:2], 1) + self.x(frame[2:7], 1) + self.x(frame[7:], 1 + n)
        assert got[:3] == b"\x79\x79\x79"
        return got[3:]


@pytest.mark.parametrize("latency_ms", [0.0, 1.0, 16.0])
@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize("baud", [115200, 921600])
def test_uart_bound_is_met_exactly_by_an_ideal_host(latency_ms: float, pipelined: bool, baud: int) -> None:
    host = IdealHost(F4, baud, latency_ms)
    data = bytes(range(256)) * 4
    sizes = [256, 256, 256, 128, 128]
    off = 0
    for n in sizes:
        host.write(F4.flash_start + off, data[off : off + n], pipelined)
        off += n
    back = b"".join(host.read(F4.flash_start + o, n, pipelined) for o, n in zip([0, 256, 512, 768, 896], sizes, strict=True))
    assert back == data
    use = H.UartUse(pipelined_read=pipelined, pipelined_write=pipelined, write_blocks=sizes,
                    read_blocks=sizes, startup_waits=0)
    b = H.uart_bound(use, baud=baud, latency_s=latency_ms / 1000, program_s=host.tm.program_time)
    assert host.t - host.t0 == pytest.approx(b["total"], rel=1e-9)
    assert b["total"] == pytest.approx(b["wire"] + b["turnarounds"] + b["program"])


def test_uart_bound_erase_matches_the_rom() -> None:
    host = IdealHost(G0, 115200, 16.0)
    pages = [0, 1, 2, 3]
    assert host.x(b"\x44\xbb", 1) == b"\x79"
    body = (len(pages) - 1).to_bytes(2, "big") + b"".join(p.to_bytes(2, "big") for p in pages)
    assert host.x(body + bytes([xor(body)]), 1) == b"\x79"
    erase_s = host.tm.erase_time(G0.erase_units[p] for p in pages)
    use = H.UartUse(erase_frames=1, erase_request_bytes=len(body) + 1, erase_s=erase_s, startup_waits=0)
    b = H.uart_bound(use, baud=115200, latency_s=0.016, program_s=host.tm.program_time)
    assert host.t - host.t0 == pytest.approx(b["total"], rel=1e-9)


def test_pipelining_bound_is_below_the_waiting_one_by_the_turnarounds() -> None:
    kw = dict(baud=115200, latency_s=0.016, program_s=lambda n: 0.001)
    plain = H.uart_bound(H.UartUse(write_blocks=[256] * 10, read_blocks=[256] * 10), **kw)
    piped = H.uart_bound(H.UartUse(True, True, [256] * 10, [256] * 10), **kw)
    # writes save one wait (and one overlapped ACK), reads two (and two ACKs)
    saved = 10 * (0.016 + 11 / 115200) + 10 * 2 * (0.016 + 11 / 115200)
    assert plain["total"] - piped["total"] == pytest.approx(saved)
    assert H.blocks(600) == [256, 256, 88]


def test_dfu_bound_formula() -> None:
    b = H.dfu_bound(erase_s=1.0, program_s=2.0, erase_units=2, write_blocks=[2048, 1024], read_blocks=[2048, 1024],
                    set_address=2, control_cost=control_cost)
    usb = 4 * (control_cost(5) + 2 * control_cost(6)) + control_cost(2048) + control_cost(1024) \
        + 4 * control_cost(6) + control_cost(2048) + control_cost(1024)
    assert b["usb"] == pytest.approx(usb)
    assert b["total"] == pytest.approx(3.0 + usb)
