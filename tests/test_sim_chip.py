"""The virtual chip's memory model, persistence, faults, and the sim:// port plumbing."""

from __future__ import annotations

import pytest

from stmflash import devices
from stmflash.errors import UsageError
from stmflash.sim import open_serial, registry
from stmflash.sim.an3155 import ACK, An3155Rom
from stmflash.sim.chip import (
    AccessError,
    PowerLoss,
    ProgramError,
    VirtualChip,
    flash_bytes,
    load_image_file,
)
from stmflash.sim.faults import FaultPlan
from stmflash.sim.protocol_sim import PinWiring, parse_url
from stmflash.sim.timing import TimingModel

F1, F4, G0, L0 = (devices.find(p) for p in ("0x410", "0x413", "0x460", "0x417"))


@pytest.fixture(autouse=True)
def _clean_registry():
    yield
    registry.clear()


def test_fresh_chip_is_erased_level0_unprotected() -> None:
    chip = VirtualChip(F4)
    assert chip.flash == b"\xff" * F4.flash_size
    assert chip.rdp_level == 0 and chip.wrp == set() and chip.mode == "bootloader"
    assert chip.read(F4.bl_id_address, 1)[0] == F4.bl_ids[0]
    assert int.from_bytes(chip.read(F4.flash_size_reg, 2), "little") == 1024


def test_program_rules() -> None:
    chip = VirtualChip(L0)
    chip.program(0x08000000, bytes(range(8)))
    with pytest.raises(ProgramError):
        chip.program(0x08000000, b"\x00" * 8)
    assert chip.flash[:8] == bytes(range(8))
    with pytest.raises(ProgramError):
        chip.program(0x08000004, b"\x00" * 8)
    with pytest.raises(AccessError):
        chip.program(L0.ram[0].start, b"1234")  # reserved by the bootloader
    chip.program(L0.ram_usable.start, b"1234")
    with pytest.raises(AccessError):
        chip.read(0x60000000, 4)


def test_program_checks_all_units_before_writing() -> None:
    chip = VirtualChip(F1)
    chip.preload(0x08000004, b"\x00" * 4)
    with pytest.raises(ProgramError):
        chip.program(0x08000000, b"\x01" * 8)
    assert chip.flash[:4] == b"\xff" * 4


def test_erase_units_banks_and_mass_with_wrp() -> None:
    chip = VirtualChip(F4)
    chip.preload(0x08000000, b"\x00" * 0x20000)
    chip.erase_units([1])
    assert chip.read(0x08004000, 4) == b"\xff" * 4 and chip.read(0x08000000, 4) == b"\0" * 4
    chip.write_protect([0], reset=False)
    chip.mass_erase()  # refused as a whole
    assert chip.read(0x08010000, 4) == b"\0" * 4
    chip.erase_units([0, 4])
    assert chip.read(0x08000000, 4) == b"\0" * 4 and chip.read(0x08010000, 4) == b"\xff" * 4
    with pytest.raises(AccessError):
        chip.erase_units([12])
    with pytest.raises(AccessError):
        chip.erase_bank(2)


def test_option_bytes_encode_rdp_and_wrp() -> None:
    chip = VirtualChip(F1)
    ob = bytearray(chip.option_bytes())
    assert ob[:2] == b"\xa5\x5a"  # F1: RDP 0xA5 = level 0, then its complement (PM0075)
    ob[0] = 0x00
    chip.write_option_bytes(bytes(ob))
    assert chip.rdp_level == 1 and chip.reset_count == 1
    assert chip.option_bytes()[1] == 0xFF  # the complement is written by the chip
    chip.write_protect([5])
    assert chip.wrp == set(range(4, 8))  # one WRP bit per 4 KiB: pages 4-7
    assert chip.option_bytes()[8:10] == b"\xfd\x02"  # WRP0 bit 1 cleared, nWRP0
    chip.write_unprotect()
    assert chip.wrp == set()


def test_image_file_roundtrip_keeps_flash_ob_and_uid(tmp_path) -> None:
    path = tmp_path / "g0.img"
    chip = VirtualChip(G0, image_path=path, seed=3)
    chip.program(0x08000100, b"\x12\x34\x56\x78")
    chip.write_protect([2], reset=False)
    chip.set_rdp(1)
    chip.save()
    header, regions = load_image_file(path)
    assert header["pid"] == G0.pid and header["uid"] == chip.uid.hex()
    assert flash_bytes(path)[0x100:0x104] == b"\x12\x34\x56\x78"
    again = VirtualChip(G0, image_path=path, seed=99)
    assert again.uid == chip.uid and again.rdp_level == 1 and 2 in again.wrp
    assert again.flash == chip.flash
    with pytest.raises(UsageError):
        VirtualChip(F4, image_path=path)


def test_uids_differ_between_seeds_and_images(tmp_path) -> None:
    assert VirtualChip(G0, seed=1).uid != VirtualChip(G0, seed=2).uid
    assert VirtualChip(G0, image_path=tmp_path / "a").uid != VirtualChip(G0, image_path=tmp_path / "b").uid


def test_power_loss_leaves_partial_write_and_dead_chip(tmp_path) -> None:
    path = tmp_path / "f1.img"
    chip = VirtualChip(F1, image_path=path, faults="power_loss=after:10")
    rom = An3155Rom(chip)
    rom.feed(b"\x7f")
    assert rom.take_output() == bytes([ACK])
    with pytest.raises(PowerLoss):
        chip.program(0x08000000, bytes(range(1, 17)))
    assert not chip.powered
    assert chip.flash[:8] == bytes(range(1, 9))  # two words made it
    assert chip.flash[8:16] != bytes(range(9, 17))  # the rest did not
    assert flash_bytes(path)[:8] == bytes(range(1, 9))  # saved at the loss
    rom.feed(b"\x7f")
    assert rom.take_output() == b""
    chip.power_on()
    rom.feed(b"\x7f")
    assert rom.take_output() == bytes([ACK])


def test_fault_spec_parsing() -> None:
    plan = FaultPlan.parse("drop=0.01,corrupt=0.005,nack=0.01,silent,autobaud_fail=1,stray_zero,power_loss=after:12000")
    assert (plan.drop, plan.corrupt, plan.nack, plan.silent) == (0.01, 0.005, 0.01, True)
    assert plan.autobaud_fail == 1 and plan.stray_zero and plan.power_loss_after == 12000
    for bad in ("drop=2", "bogus", "power_loss=before:3", "autobaud_fail=x"):
        with pytest.raises(UsageError):
            FaultPlan.parse(bad)


def test_faults_autobaud_stray_zero_silent() -> None:
    chip = VirtualChip(G0, faults="autobaud_fail=2,stray_zero")
    rom = An3155Rom(chip)
    for _ in range(2):
        rom.feed(b"\x7f")
        assert rom.take_output() == b""
    rom.feed(b"\x7f")
    assert rom.take_output() == b"\x00" + bytes([ACK])
    silent = An3155Rom(VirtualChip(G0, faults="silent"))
    silent.feed(b"\x7f\x00\xff")
    assert silent.take_output() == b""


def test_faults_are_seeded_and_reproducible() -> None:
    def run(seed: int) -> bytes:
        rom = An3155Rom(VirtualChip(G0, faults="corrupt=0.3,drop=0.1", seed=seed))
        out = b""
        for _ in range(20):
            rom.feed(b"\x7f\x00\xff")
            out += rom.take_output()
        return out

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_spurious_nack_rate() -> None:
    rom = An3155Rom(VirtualChip(G0, faults="nack=1"))
    rom.feed(b"\x7f")
    rom.take_output()
    rom.feed(b"\x02\xfd")
    assert rom.take_output() == b"\x1f"


def test_timing_model_instant_and_realistic() -> None:
    inst = TimingModel(F4)
    assert inst.byte_time() == 0 and inst.erase_time(F4.erase_units) == 0 and inst.startup_delay() == 0
    real = TimingModel(F4, "realistic", baud=115200, latency_ms=2)
    assert real.byte_time() == pytest.approx(11 / 115200)
    assert real.latency() == pytest.approx(0.002)
    assert real.erase_time(F4.erase_units[:1]) == pytest.approx(0.4)
    assert real.program_time(256) == pytest.approx(0.0041)
    assert real.startup_delay() == pytest.approx(F4.startup_ms / 1000)
    with pytest.raises(ValueError):
        TimingModel(F4, "fast")


def test_realistic_rom_schedules_answers_on_the_model() -> None:
    chip = VirtualChip(F1, timing="realistic", baud=11000, latency_ms=1)
    rom = An3155Rom(chip, now=0.0)
    rom.feed(b"\x7f", now=1.0)  # after the start-up delay
    t = rom.next_output_time()
    assert t == pytest.approx(1.0 + 0.001 + 0.001 + 0.001)  # rx byte + turnaround + tx byte
    assert rom.take_output(now=t - 1e-6) == b""
    assert rom.take_output(now=t) == bytes([ACK])


def test_url_options_and_registry() -> None:
    name, opts = parse_url("sim://F407?chip=a&timing=instant&fault=drop%3D0.1,stray_zero&seed=3")
    assert name == "F407" and opts["fault"] == "drop=0.1,stray_zero" and opts["seed"] == "3"
    port = open_serial("sim://F407?chip=a&seed=3")
    chip = registry.get("a")
    assert chip is not None and chip.device.pid == 0x413 and chip.seed == 3
    port.write(b"\x7f")
    assert port.read(1) == bytes([ACK])
    again = open_serial("sim://F407?chip=a")
    assert registry.get("a") is chip and again.chip is chip
    import serial

    with pytest.raises(serial.SerialException):
        open_serial("sim://F407?colour=red")
    with pytest.raises(serial.SerialException):
        open_serial("sim://NOPE123")


def test_modem_lines_are_recorded_and_pin_wiring_resets() -> None:
    chip = registry.register("p", VirtualChip(F1))
    wiring = PinWiring(reset="dtr", boot0="rts")
    chip.on_line_change = wiring
    port = open_serial("sim://F103?chip=p")
    chip.go(0x08000000)
    port.rts = True  # BOOT0 high
    port.dtr = True  # NRST low
    port.dtr = False  # release: ROM bootloader
    assert wiring.boots[-1] == "bootloader" and chip.mode == "bootloader"
    assert ("dtr", True) in chip.line_events and ("rts", True) in port.lines
    port.write(b"\x7f")
    assert port.read(1) == bytes([ACK])
    port.rts = False
    port.dtr = True
    port.dtr = False
    assert chip.mode == "app"
    port.write(b"\x7f")
    assert port.read(1) == b""


def test_rom_bytes_are_not_invented() -> None:
    """System memory holds the BL-ID byte and zeros: a peer reading the H74x UID and
    flash-size addresses on an H7R/S (ROM there) gets no plausible values; the UID is at
    the part's own register (ST CMSIS UID_BASE 0x08FFF800)."""
    from stmflash.devices import find as find_device

    dev = find_device("H7R3")
    chip = VirtualChip(dev)
    assert chip.read(0x1FF1E800, 12) == bytes(12)
    assert chip.read(0x1FF1E880, 2) == bytes(2)
    assert chip.read(dev.bl_id_address, 1) == bytes([dev.bl_ids[0]])
    assert chip.read(0x08FFF800, 12) == chip.uid


@pytest.mark.parametrize("name", ["H7A3", "U375", "WBA52", "WBA65"])
def test_a_decode_only_virtual_chip_shows_the_level_it_runs_at(name: str) -> None:
    """Layouts not in the table: the virtual chip runs at RDP level 0, and its stored area
    shows the field table's level-0 RDP value (an erased 0xFF would decode as level 1)."""
    from stmflash import ob_fields

    dev = devices.find(name)
    chip = VirtualChip(dev)
    rdp = next(r for r in ob_fields.decode(dev, chip.ob_view()) if r["field"] == "RDP")
    assert chip.rdp_level == 0 and rdp["name"] == "level0", rdp
    assert rdp["default"] is None  # still no production value claimed for the word
