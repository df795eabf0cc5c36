"""The simulator's timing plumbing, checked without timed assertions: adapter profiles,
cached protection state, the order and modelled timestamps of the virtual ROM's bytes,
and the accounting of the simulator's own cost (issues #11, #17)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from serial import SerialException

from stmflash import devices
from stmflash import option_bytes as obl
from stmflash.sim import open_serial, registry
from stmflash.sim.an3155 import ACK, An3155Rom
from stmflash.sim.chip import VirtualChip
from stmflash.sim.timing import (
    ADAPTERS,
    Pacer,
    SimStats,
    TimingModel,
    adapter_latency_ms,
    resolve_latency_ms,
)
from stmflash.uart.protocol import xor

F1, F4, G0 = (devices.find(p) for p in ("0x410", "0x413", "0x460"))


def addr5(a: int) -> bytes:
    raw = a.to_bytes(4, "big")
    return raw + bytes([xor(raw)])


# ---- adapter profiles ----------------------------------------------------------------------------


def test_adapter_profiles_and_precedence() -> None:
    assert adapter_latency_ms("ftdi") == 16.0
    assert adapter_latency_ms("CH340") == ADAPTERS["ch340"] == 1.0
    assert adapter_latency_ms("cp210x") == 1.0 and adapter_latency_ms("ideal") == 0.0
    with pytest.raises(ValueError, match="ftdi"):
        adapter_latency_ms("pl2303")
    assert resolve_latency_ms(None, None) == 1.0  # default: CH340/CP210x class
    assert resolve_latency_ms("ftdi", None) == 16.0
    assert resolve_latency_ms("ftdi", 3.5) == 3.5  # an explicit latency wins
    with pytest.raises(ValueError):
        resolve_latency_ms(None, -1)


def test_chip_and_sim_url_take_the_adapter() -> None:
    chip = VirtualChip(F4, timing="realistic", adapter="ftdi")
    assert chip.timing.latency() == pytest.approx(0.016)
    registry.clear()
    port = open_serial("sim://F407?timing=realistic&adapter=ftdi&chip=ad1")
    try:
        assert registry.get("ad1").timing.latency_ms == 16.0
    finally:
        port.close()
    port = open_serial("sim://F407?timing=realistic&adapter=ftdi&latency_ms=2&chip=ad2")
    try:
        assert registry.get("ad2").timing.latency_ms == 2.0
    finally:
        port.close()
    with pytest.raises(SerialException, match="adapter must be one of"):
        open_serial("sim://F407?adapter=usb2serial")
    registry.clear()


def test_sim_uart_cli_adapter(tmp_path) -> None:
    cmd = [sys.executable, "-m", "stmflash", "sim", "uart", "-d", "F407", "--timing", "realistic",
           "--adapter", "ftdi", "--image", str(tmp_path / "c.img")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith("/dev/")
        banner = proc.stderr.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert "ftdi adapter, 16 ms turnaround" in banner
    assert proc.returncode == 0
    assert "sim-stats " in err and "process_cpu_s=" in err  # the simulator's own cost, for benchmarks
    bad = subprocess.run([*cmd[:-2], "--adapter", "pl2303"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "pl2303" in bad.stderr


# ---- protection cache ----------------------------------------------------------------------------


@pytest.mark.parametrize("dev", [F1, F4, G0], ids=lambda d: d.short_name)
def test_option_byte_writes_change_protection_at_once(dev: devices.Device) -> None:
    chip = VirtualChip(dev)
    assert chip.rdp_level == 0 and chip.wrp == frozenset()  # now cached
    ob = chip.option_bytes()
    chip.write_option_bytes(obl.set_rdp(dev, ob, 1))  # the ROM's path (Write Memory to OB)
    assert chip.rdp_level == 1
    chip.set_rdp(0)  # fixtures
    assert chip.rdp_level == 0
    chip.write_protect([0], reset=False)
    assert 0 in chip.wrp
    before = bytes(chip.flash[:4])
    chip.program(dev.flash_start, b"\x00\x11\x22\x33" * (max(dev.write_align, 4) // 4))
    assert bytes(chip.flash[:4]) == before  # protected unit left unchanged (cache consulted)
    chip.write_unprotect(reset=False)
    assert chip.wrp == frozenset()
    assert dev.option_bytes is not None
    chip.preload(dev.option_bytes.start, obl.set_rdp(dev, chip.option_bytes(), 1))
    assert chip.rdp_level == 1  # even a fixture poke of the OB area invalidates the cache


def test_rdp_change_through_the_virtual_rom_is_seen_on_the_next_byte() -> None:
    """Readout Protect over the wire: the very next command is refused (cache invalidated)."""
    chip = registry.register("rdp", VirtualChip(F4))
    port = open_serial("sim://F407?chip=rdp", timeout=0.01)
    try:
        port.write(b"\x7f")
        assert port.read(1) == bytes([ACK])
        port.write(b"\x82\x7d")  # Readout Protect -> ACK ACK, reset
        assert port.read(2) == bytes([ACK, ACK])
        assert chip.rdp_level == 1
        port.write(b"\x7f")
        assert port.read(1) == bytes([ACK])
        port.write(b"\x11\xee")  # Read Memory under RDP 1: NACK
        assert port.read(1) == b"\x1f"
    finally:
        port.close()
        registry.clear()


# ---- byte order and modelled timestamps of the virtual ROM --------------------------------------


def _synced_rom(dev: devices.Device, latency_ms: float = 1.0, baud: int = 115200) -> tuple[An3155Rom, float]:
    chip = VirtualChip(dev, timing=TimingModel(dev, "realistic", baud=baud, latency_ms=latency_ms))
    rom = An3155Rom(chip, now=0.0)
    t = 1.0  # well after start-up
    rom.feed(b"\x7f", t)
    t = rom.next_output_time()
    assert rom.take_output(t) == bytes([ACK])
    return rom, t


def test_read_memory_ack_leaves_before_the_data() -> None:
    """AN3155 Read Memory: ACK, ACK after the address, ACK after N+checksum, then data."""
    rom, t0 = _synced_rom(F4)
    rom.chip.preload(F4.flash_start, bytes(range(16)))
    bt = rom.timing.byte_time()
    lat = rom.timing.latency()
    rom.feed(b"\x11\xee" + addr5(F4.flash_start) + bytes([15, 15 ^ 0xFF]), t0)  # pipelined
    bursts = list(rom._out)
    assert [d for _, d in bursts] == [bytes([ACK]), bytes([ACK]), bytes([ACK]), bytes(range(16))]
    times = [t for t, _ in bursts]
    assert times == sorted(times)
    # the third ACK: N and its complement in (9 bytes after t0) + turnaround + 1 byte
    assert times[2] == pytest.approx(t0 + 9 * bt + lat + bt, abs=1e-12)
    assert times[3] == pytest.approx(times[2] + 16 * bt, abs=1e-12)
    # a host reading at the ACK's time gets the ACK alone, the data only when it has left
    assert rom.take_output(times[2]) == bytes([ACK]) * 3
    assert rom.take_output(times[3] - bt / 2) == b""
    assert rom.take_output(times[3]) == bytes(range(16))


def test_get_sends_its_ack_first() -> None:
    rom, t0 = _synced_rom(G0)
    rom.feed(b"\x00\xff", t0)
    (t_ack, ack), (t_list, body) = rom._out
    assert ack == bytes([ACK]) and t_ack < t_list
    assert body[0] == len(G0.commands) and body[-1] == ACK


def test_adapter_profile_sets_the_turnaround_of_every_answer() -> None:
    for name, ms in ADAPTERS.items():
        rom, t0 = _synced_rom(G0, latency_ms=ms)
        rom.feed(b"\x02\xfd", t0)  # Get ID
        t_ack = rom._out[0][0]
        assert t_ack == pytest.approx(t0 + 2 * rom.timing.byte_time() + ms / 1000 + rom.timing.byte_time()), name


# ---- the simulator's own cost ----------------------------------------------------------------------


def test_sim_stats_accounting() -> None:
    s = SimStats()
    assert s.deliver(10.0, now=9.5) == 0.0  # on time
    assert s.deliver(10.0, now=10.25) == pytest.approx(0.25)
    assert (s.answers, s.late_answers) == (2, 1) and s.late_s == pytest.approx(0.25)
    # overdue at the same time as the previous one: only the new part of the wait counts
    assert s.deliver(10.1, now=10.5) == pytest.approx(0.4)
    assert s.late_s == pytest.approx(0.5)
    s.deliver(20.0, now=20.1)
    assert s.late_s == pytest.approx(0.6) and s.late_answers == 3
    t = __import__("time")
    with s.work():
        end = t.thread_time() + 0.002
        while t.thread_time() < end:  # CPU work, not sleeping
            pass
    assert s.cpu_s >= 0.002
    line = s.summary()
    assert line.startswith("sim-stats ") and "late_answers=3" in line


def test_realistic_sim_port_counts_its_cpu_and_answers() -> None:
    chip = registry.register("st", VirtualChip(G0, timing="realistic", adapter="ftdi", baud=921600))
    port = open_serial("sim://G0?chip=st", timeout=1.0)
    __import__("time").sleep(G0.startup_ms / 1000 + 0.01)  # the ROM ignores 0x7F while starting
    try:
        port.write(b"\x7f")
        assert port.read(1) == bytes([ACK])
        port.write(b"\x02\xfd")
        assert port.read(5)[0] == ACK
    finally:
        port.close()
        registry.clear()
    assert chip.stats.answers >= 1 and chip.stats.cpu_s > 0  # read() paced at least one answer


def test_pacer_forgives_only_its_own_lateness() -> None:
    s = SimStats()
    p = Pacer(s)
    assert p.arrival(5.0) == 5.0  # nothing sent yet: wall time
    p.sent(due=10.0, now=10.004)  # handed over 4 ms late
    # the host reacted 1 ms after receiving it: in modelled time 1 ms after the deadline
    assert p.arrival(10.005) == pytest.approx(10.001)
    # read just after it left: just after the deadline, never before it
    assert 10.0 < p.arrival(10.0041) < 10.001
    # bytes read before the answer left (sent ahead): their wall time
    assert p.arrival(10.003) == 10.003
    p.sent(due=11.0, now=10.9995)  # on time: nothing to forgive
    assert p.arrival(11.2) == 11.2
    assert s.answers == 2 and s.late_answers == 1 and s.late_s == pytest.approx(0.004)


def test_virtual_usb_counts_its_transfers() -> None:
    from stmflash.dfu.link import DfuLink
    from stmflash.dfu.usb import find_devices
    from stmflash.sim.usb_backend import VirtualBus

    chip = VirtualChip(F4, timing="realistic")
    bus = VirtualBus()
    bus.attach(chip, scale=1000.0)
    (info,) = find_devices(backend=bus.backend)
    link = DfuLink(info).open()
    try:
        assert link.read(F4.flash_start, 64) == b"\xff" * 64
    finally:
        link.close()
    assert chip.stats.answers >= 2  # every DFU class request is scheduled and counted
    assert chip.stats.cpu_s > 0
