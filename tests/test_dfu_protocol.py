"""The DfuSe client against the virtual ROM on the pyusb backend: descriptors, the state
machine, errors, leave/disconnect, and the ROM quirks consumed from device data."""

from __future__ import annotations

import dataclasses
import errno

import pytest
import usb.core

from stmflash.devices import find
from stmflash.dfu.link import DfuLink
from stmflash.dfu.protocol import State, Status
from stmflash.dfu.usb import find_devices
from stmflash.errors import ProtectionError, TimeoutError_, UsageError
from stmflash.image.model import Image
from stmflash.pipeline import program
from stmflash.sim.chip import VirtualChip
from stmflash.sim.usb_backend import VirtualBus, parse_spec

VECTORS = (0x20001000).to_bytes(4, "little") + (0x08000101).to_bytes(4, "little")


def firmware(n: int, seed: int = 1) -> bytes:
    import random

    rnd = random.Random(seed)
    return VECTORS + bytes(rnd.randrange(256) for _ in range(n - len(VECTORS)))


def attach(name: str = "F407", *, quirks: list[str] | None = None, timing: str = "instant",
           scale: float = 1.0, rdp: int = 0) -> tuple[VirtualBus, VirtualChip]:
    device = find(name)
    if quirks is not None:
        device = dataclasses.replace(device, dfu={**device.dfu, "quirks": quirks})
    chip = VirtualChip(device, timing=timing)
    if rdp:
        chip.set_rdp(rdp)
    bus = VirtualBus()
    bus.attach(chip, scale=scale)
    return bus, chip


def open_link(bus: VirtualBus, device=None, **kw) -> DfuLink:
    (info,) = find_devices(backend=bus.backend)
    return DfuLink(info, device=device, **kw).open()


def test_descriptors_as_the_rom_presents_them():
    bus, chip = attach("F407")
    (info,) = find_devices(backend=bus.backend)
    assert (info.vid, info.pid, info.bcd_device, info.path) == (0x0483, 0xDF11, 0x2100, "1-1")
    assert [a.name for a in info.alts] == ["Internal Flash", "Option Bytes", "OTP Memory", "Device Feature"]
    assert info.transfer_size == 2048 and info.bcd_dfu == 0x011A and info.attributes == 0x0B
    dev = info.dev
    cfg = dev[0]
    alts = list(cfg)
    assert len(alts) == 4
    # the functional descriptor follows the last alt setting, as on the ROM
    assert list(alts[-1].extra_descriptors)[:2] == [9, 0x21]
    assert not list(alts[0].extra_descriptors)
    assert [(i.bInterfaceClass, i.bInterfaceSubClass, i.bInterfaceProtocol) for i in alts] == [(0xFE, 1, 2)] * 4
    assert len(info.serial) == 12


def test_state_machine_write_executes_on_first_getstatus():
    bus, chip = attach("F407")
    link = open_link(bus)
    p = link.proto
    p.set_address(0x08000000)
    p.dnload(2, b"\x11" * 16)
    assert chip.flash[:16] == b"\xff" * 16  # nothing happens before GETSTATUS
    st = p.get_status()
    assert st.state == State.DNBUSY
    assert chip.flash[:16] == b"\x11" * 16
    assert p.get_status().state == State.DNLOAD_IDLE
    assert p.get_commands() == bytes([0x00, 0x21, 0x41, 0x92])


def test_block_numbers_address_from_the_pointer():
    bus, chip = attach("F407")
    link = open_link(bus)
    data = firmware(3 * 2048)
    link.erase([find("F407").erase_units[0]])
    for off in range(0, len(data), 2048):
        link.write(0x08000000 + off, data[off : off + 2048])
    assert bytes(chip.flash[: len(data)]) == data
    # one SET_ADDRESS, then blocks 2, 3, 4 (no SET_ADDRESS per chunk)
    assert link.read(0x08000000, len(data)) == data
    assert link.read(0x08000800 + 5, 100) == data[2048 + 5 : 2048 + 105]


def test_bad_address_is_err_target():
    bus, _ = attach("F407")
    link = open_link(bus)
    with pytest.raises(UsageError, match="errTARGET"):
        link.proto.erase_page(0x0900_0000, 5.0)
    # the link recovers from dfuERROR
    assert link.read(0x08000000, 4) == b"\xff" * 4


def test_readout_protection_is_reported_as_protection():
    bus, _ = attach("F407", rdp=1)
    link = open_link(bus)
    with pytest.raises(ProtectionError, match="readout protection"):
        link.read(0x08000000, 16)
    with pytest.raises(ProtectionError):
        link.erase([find("F407").erase_units[0]])


def test_read_unprotect_mass_erases_and_reenumerates():
    bus, chip = attach("F407", rdp=1)
    chip.preload(0x08000000, b"secret")
    link = open_link(bus)
    resets = chip.reset_count
    link.read_unprotect()
    assert chip.rdp_level == 0 and chip.reset_count > resets
    assert chip.flash[:6] == b"\xff" * 6
    assert link.read(0x08000000, 6) == b"\xff" * 6  # reconnected after re-enumeration


def test_leave_starts_the_application_and_the_device_goes():
    bus, chip = attach("G474")
    link = open_link(bus)
    img = Image.from_bytes(firmware(5000), 0x08000000)
    program(link, img, after="go")
    assert chip.mode == "app" and chip.go_address == 0x08000000
    assert find_devices(backend=bus.backend) == []
    with pytest.raises(usb.core.USBError) as exc:
        link.info.dev.ctrl_transfer(0xA1, 3, 0, 0, 6)
    assert exc.value.errno == errno.ENODEV


def test_leave_without_application_resets_into_the_bootloader():
    bus, chip = attach("F407")
    link = open_link(bus)
    link.start(0x08000000)  # blank flash: no valid vector table
    assert chip.mode == "bootloader" and len(find_devices(backend=bus.backend)) == 1


def test_option_bytes_through_their_alt_reset_the_device():
    bus, chip = attach("H743")
    link = open_link(bus)
    ((addr, ob),) = link.read_option_bytes()
    assert addr == 0x5200201C and len(ob) == 128 and ob[1] == 0xAA  # OPTSR_CUR: RDP in bits 15:8
    new = bytearray(ob)
    new[6], new[7] = 0x86, 0x01  # OPTSR_PRG (FZ_IWDG_SDBY ...); OPTSR_CUR is read-only
    resets = chip.reset_count
    link.write_option_bytes(bytes(new))  # the H7 layout is in the table: no confirmation needed
    assert chip.reset_count == resets + 1
    assert chip.option_bytes()[2:4] == b"\x86\x01"  # the reload copied _PRG into _CUR
    new[2], new[3] = 0x86, 0x01
    assert link.read_option_bytes()[0][1] == bytes(new)


def test_stall_during_erase_is_tolerated_only_with_the_quirk():
    # L4: page erase announces too short a poll timeout and STALLs GETSTATUS while busy
    bus, chip = attach("L476", quirks=["getstatus_stall_during_erase"], timing="realistic", scale=0.5)
    link = open_link(bus, device=chip.device)
    unit = link.device.erase_units[3]
    chip.preload(unit.address, b"\0" * 16)
    link.erase([unit])
    assert chip.flash[unit.address - 0x08000000 :][:16] == b"\xff" * 16
    assert bus.devices[0].rom.quirk_hits["getstatus_stall_during_erase"] > 0
    # the same ROM, a client that does not know the quirk: the stall is an error
    plain = dataclasses.replace(link.device, dfu={**link.device.dfu, "quirks": []})
    link2 = open_link(bus, device=plain)
    with pytest.raises(Exception, match="stalled"):
        link2.erase([unit])


def test_underreported_mass_erase_poll():
    # F4 mass erase: the ROM announces 100 ms and NAKs polls until done (160 ms here)
    bus, chip = attach("F407", quirks=["mass_erase_poll_underreported"], timing="realistic", scale=100)
    chip.preload(0x08000000, b"\0" * 8)
    link = open_link(bus, device=chip.device, timeout_ms=30)
    link.mass_erase()
    assert chip.flash[:8] == b"\xff" * 8
    plain = dataclasses.replace(link.device, dfu={**link.device.dfu, "quirks": []})
    link2 = open_link(bus, device=plain, timeout_ms=30)
    with pytest.raises(TimeoutError_):
        link2.mass_erase()


def test_stuck_dnbusy_cleared_twice():
    # H7: erasing a bank-2 sector leaves the ROM in dfuDNBUSY until CLRSTATUS, CLRSTATUS
    bus, chip = attach("H743", quirks=["dnbusy_stuck"], timing="realistic", scale=200)
    link = open_link(bus, device=chip.device)
    unit = link.device.bank_units(2)[0]
    link.erase([unit])
    st = link.proto.get_status()
    assert (st.state, st.status) == (State.IDLE, Status.OK)
    plain = dataclasses.replace(link.device, dfu={**link.device.dfu, "quirks": []})
    link2 = open_link(bus, device=plain)
    with pytest.raises(TimeoutError_):
        link2.proto.erase_page(unit.address, 0.3)


def test_usb_faults_surface_as_link_errors():
    entry = parse_spec("F407;fault=stall@dnload:3+timeout@getstatus:9+disconnect@40")[0]
    assert [(f.kind, f.request, f.n) for f in entry.usb_faults] == [
        ("stall", "dnload", 3), ("timeout", "getstatus", 9), ("disconnect", None, 40)]
    bus = VirtualBus()
    chip = VirtualChip(find("F407"))
    bus.attach(chip, usb_faults=[*entry.usb_faults])
    link = open_link(bus)
    img = Image.from_bytes(firmware(40000), 0x08000000)
    program(link, img, after="stay")  # each fault costs a retry
    assert all(f.fired for f in bus.snapshot()[0].usb_faults)
    assert link.retried >= 3
    assert bytes(chip.flash[:40000]) == img.segments[0].data


def test_disconnect_fault_then_rerun_completes():
    bus = VirtualBus()
    chip = VirtualChip(find("F407"))
    (fault,) = parse_spec("F407;fault=disconnect@dnload:12")[0].usb_faults
    bus.attach(chip, usb_faults=[fault])
    img = Image.from_bytes(firmware(60000), 0x08000000)
    resets = chip.reset_count
    program(open_link(bus), img, after="stay")  # waited for on the same port, reopened, retried
    assert fault.fired and chip.reset_count == resets + 1
    assert bytes(chip.flash[:60000]) == img.segments[0].data


def test_spec_errors_are_usage_errors():
    for bad in ("F407;timing=fast", "F407;bogus=1", "F407;fault=stall@x", "F407;port=usb1", ""):
        with pytest.raises(UsageError):
            parse_spec(bad)


def test_functional_descriptor_found_by_get_descriptor_when_not_in_extras(monkeypatch):
    from stmflash.sim import usb_backend

    bus, _ = attach("G474")
    real = usb_backend.VirtualUsbDevice.interface_descriptor

    def no_extra(self, intf, alt):
        d = real(self, intf, alt)
        d.extra_descriptors = []
        return d

    monkeypatch.setattr(usb_backend.VirtualUsbDevice, "interface_descriptor", no_extra)
    (info,) = find_devices(backend=bus.backend)
    assert info.transfer_size == 1024 and info.bcd_dfu == 0x011A


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def sparse_images(draw):
    name = draw(st.sampled_from(["F407", "L476", "G474", "H743"]))
    device = find(name)
    img = Image()
    pos = 0x08000000
    for _ in range(draw(st.integers(1, 4))):
        pos += draw(st.integers(0, 40000))
        n = draw(st.integers(1, 5000))
        img.add(pos, draw(st.binary(min_size=n, max_size=n)))
        pos += n + 1
    assume_inside = img.end <= device.flash.end
    return name, img, assume_inside


@settings(max_examples=15, deadline=None)
@given(sparse_images())
def test_any_sparse_image_lands_exactly(case):
    name, img, inside = case
    if not inside:
        return
    bus, chip = attach(name)
    chip.preload(0x08000000, b"\x00" * 256)  # stale content the erase must clear
    program(open_link(bus), img, after="stay")
    al = img.aligned(chip.device.write_align)
    for seg in al.segments:
        off = seg.address - 0x08000000
        assert bytes(chip.flash[off : off + len(seg.data)]) == seg.data
    # bytes of erased units outside the image read as erased
    for u in chip.device.units_covering(img.start, img.end):
        for a, b in ((u.address, max(u.address, img.start)),):
            assert bytes(chip.flash[a - 0x08000000 : b - 0x08000000]) == b"\xff" * (b - a)
