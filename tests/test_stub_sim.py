"""The RAM flasher stub end to end on the in-process virtual STM32 (``sim://``).

The stub binary shipped in the package really runs on the emulated core (unicorn) against
the register-level USART and flash-controller models; every result is checked in the
simulator's image file and through the ROM's own Read Memory (``--stub off --read``),
never only through the stub's CRC. One device per family group: F407 (F2/F4 sectors),
G071 and L476 (G0/L4 double words, L476 dual bank), F103 (F0/F1/F3 half-words).
"""

from __future__ import annotations

import contextlib
import json
import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stmflash import devices
from stmflash.cli import main
from stmflash.errors import LinkError
from stmflash.image.model import Image
from stmflash.sim import registry
from stmflash.sim.chip import VirtualChip, flash_bytes

pytest.importorskip("unicorn", reason="unicorn (test and sim extras) runs the stub in the simulator")

GROUP_DEVICES = ["F407", "G071", "L476", "F103", "L072", "L152xC"]  # L0: USART v2, L1: v1


@contextlib.contextmanager
def rom_session(name: str) -> Iterator[tuple[VirtualChip, Any]]:
    """A registered virtual chip and an identified ROM session on it (closed after)."""
    from stmflash.sim import register_url_handler
    from stmflash.uart.link import connect

    register_url_handler()
    chip = VirtualChip(devices.find(name))
    registry.register("stubtest", chip)
    link = connect("sim://x?chip=stubtest")
    try:
        yield chip, link
    finally:
        link.close()
        registry.clear()


def run_cli(capsys, *args: str) -> tuple[int, list[dict], str]:
    """The CLI in-process; the test images are patterns, not firmware: no vector-table check."""
    argv = list(args)
    if argv[:1] == ["uart"]:
        argv.insert(2, "--no-image-check")
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    events = [json.loads(line) for line in out.out.splitlines() if line.startswith("{")]
    return code, events, out.err


def result(events: list[dict]) -> dict:
    return next(e for e in events if e["event"] == "result")


def firmware(tmp_path: Path, dev: devices.Device, size: int, seed: int = 1, name: str = "fw.bin") -> Path:
    data = random.Random(seed).randbytes(size)
    # a hole of erased flash inside the image, as linker output has
    data = data[:5000] + b"\xff" * 3000 + data[8000:]
    path = tmp_path / name
    path.write_bytes(data)
    return path


def boot_rom_after_reset(capsys, url: str, dev: devices.Device) -> None:
    """A factory G0/C0 boots its programmed flash and ignores BOOT0 (RM0444 boot table):
    nBOOT_SEL=0 first, as a line that re-enters the ROM does, so later runs find the ROM."""
    if dev.family in ("G0", "C0"):
        code, _, err = run_cli(capsys, "uart", url, "--ob", "nBOOT_SEL=0", "-q")
        assert code == 0, err


def rom_read(capsys, url: str, dev: devices.Device, n: int, tmp_path: Path) -> bytes:
    out = tmp_path / "rom-read.bin"
    code, _, err = run_cli(capsys, "uart", url, "--stub", "off", "--read", str(out),
                           "--range", f"0x{dev.flash_start:08X}:{n}", "-q")
    assert code == 0, err
    return out.read_bytes()


@pytest.mark.parametrize("name", GROUP_DEVICES)
def test_stub_flash_reads_back_through_the_rom_and_in_the_image_file(tmp_path, capsys, name):
    dev = devices.find(name)
    img = tmp_path / "chip.img"
    url = f"sim://{name}?image={img}"
    fw = firmware(tmp_path, dev, 40 * 1024)
    boot_rom_after_reset(capsys, url, dev)
    code, events, err = run_cli(capsys, "uart", url, str(fw), "--stub", "on", "--json")
    assert code == 0, err
    res = result(events)
    assert res["path"] == "stub" and res["verified"] and res["verify_method"] == "checksum"
    assert res["stub_baud"] > 115200
    data = fw.read_bytes()
    flash = flash_bytes(img)
    assert flash[: len(data)] == data
    assert flash[len(data):] == dev.erased_bytes * (len(flash) - len(data))  # nothing else touched
    assert rom_read(capsys, url, dev, len(data), tmp_path) == data


@pytest.mark.parametrize("name", ["G071", "L072"])
def test_unchanged_reflash_erases_and_writes_nothing_and_a_changed_unit_only_that(tmp_path, capsys, name):
    dev = devices.find(name)
    img = tmp_path / "chip.img"
    url = f"sim://{name}?image={img}"
    fw = firmware(tmp_path, dev, 48 * 1024)
    boot_rom_after_reset(capsys, url, dev)
    assert run_cli(capsys, "uart", url, str(fw), "--stub", "on", "-q")[0] == 0
    code, events, err = run_cli(capsys, "uart", url, str(fw), "--stub", "on", "--json")
    assert code == 0, err
    res = result(events)
    assert res["bytes_written"] == 0 and res["erase"]["units"] == 0
    page = dev.erase_units[0].size
    assert res["erase"]["unchanged_units"] == 48 * 1024 // page  # G0: 2 KiB pages, L0: 128 B
    # one byte changed in page 5: only page 5 is erased and written
    data = bytearray(fw.read_bytes())
    data[5 * page + page // 2] ^= 0xFF
    fw.write_bytes(bytes(data))
    code, events, err = run_cli(capsys, "uart", url, str(fw), "--stub", "on", "--json")
    assert code == 0, err
    res = result(events)
    assert res["erase"]["units"] == 1 and res["erase"]["unchanged_units"] == 48 * 1024 // page - 1
    assert res["bytes_written"] == page
    assert flash_bytes(img)[: len(data)] == bytes(data)


@pytest.mark.parametrize("name", ["F407", "L072"])
def test_reflash_with_flash_outside_the_image_already_programmed(tmp_path, capsys, name):
    """A unit is 'unchanged' only when its gaps are erased too (0xFF, or 0x00 on L0): stale
    bytes in a gap of the image force that unit to be erased and rewritten."""
    dev = devices.find(name)
    chip = VirtualChip(dev)
    registry.register("gap", chip)
    try:
        fw = tmp_path / "fw.bin"
        fw.write_bytes(random.Random(3).randbytes(20000))
        chip.preload(dev.flash_start, fw.read_bytes())
        end = dev.flash_start + 20000
        last = dev.unit_at(end - 1)
        stale = end + (last.end - end) // 2  # in the image's last unit, outside the image
        chip.preload(stale, b"stale")
        touched = len(dev.units_covering(dev.flash_start, end))
        code, events, err = run_cli(capsys, "uart", f"sim://{name}?chip=gap", str(fw), "--stub", "on", "--json")
        assert code == 0, err
        res = result(events)
        assert res["erase"].get("unchanged_units") == touched - 1 and res["erase"]["units"] == 1  # last redone
        assert chip.read(stale, 5) == dev.erased_bytes * 5
        assert chip.read(dev.flash_start, 20000) == fw.read_bytes()
    finally:
        registry.clear()


def test_verify_rom_and_after_stay_leave_a_syncable_rom(tmp_path, capsys):
    dev = devices.find("F407")
    img = tmp_path / "chip.img"
    url = f"sim://F407?image={img}"
    fw = firmware(tmp_path, dev, 24 * 1024)
    code, events, err = run_cli(capsys, "uart", url, str(fw), "--stub", "on", "--verify-rom",
                                "--after", "stay", "--json")
    assert code == 0, err
    res = result(events)
    assert res["verified_rom"] is True and res["path"] == "stub"
    assert run_cli(capsys, "uart", url, "-q")[0] == 0  # the ROM answers again


def test_auto_uses_the_rom_for_small_images_and_says_why(tmp_path, capsys):
    fw = tmp_path / "small.bin"
    fw.write_bytes(bytes(range(256)) * 8)
    code, events, err = run_cli(capsys, "uart", f"sim://F407?image={tmp_path / 'c.img'}", str(fw), "--json")
    assert code == 0, err
    assert result(events)["path"] == "rom"
    infos = [e["message"] for e in events if e["event"] == "info"]
    assert any("programming through the ROM" in m and "small" in m for m in infos)


def test_stub_on_for_a_family_without_stub_is_a_usage_error(tmp_path, capsys):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\x00" * 32768)
    code, _, err = run_cli(capsys, "uart", "sim://H743", str(fw), "--stub", "on", "-q")
    assert code == 2 and "--stub on" in err and "H7" in err


def test_readout_protected_chip_is_refused_before_any_upload(tmp_path, capsys):
    dev = devices.find("F407")
    chip = VirtualChip(dev)
    chip.set_rdp(1)
    registry.register("rdp", chip)
    try:
        fw = tmp_path / "fw.bin"
        fw.write_bytes(b"\x00" * 32768)
        code, _, err = run_cli(capsys, "uart", "sim://F407?chip=rdp", str(fw), "--stub", "on", "-q")
        assert code == 4  # protection in the way (the ROM path says so before the stub)
        assert chip.mode == "bootloader"
    finally:
        registry.clear()


@pytest.mark.parametrize("name,seed", [("L476", 1), ("L476", 2), ("L476", 3), ("L072", 1), ("L152xC", 2)])
def test_noisy_line_never_ends_in_success_with_wrong_content(tmp_path, capsys, name, seed):
    dev = devices.find(name)
    img = tmp_path / "chip.img"
    fw = firmware(tmp_path, dev, 32 * 1024, seed=seed)
    url = f"sim://{name}?image={img}&fault=drop=0.0003,corrupt=0.0003&seed={seed}"
    code, events, err = run_cli(capsys, "uart", url, str(fw), "--stub", "on", "--json")
    data = fw.read_bytes()
    if code == 0:
        assert flash_bytes(img)[: len(data)] == data
        assert result(events)["path"] == "stub"
    else:
        assert code in (1, 3, 5) and "error" in err
    # the next run on a clean line completes, whatever state the last one left
    code, _, err = run_cli(capsys, "uart", f"sim://{name}?image={img}", str(fw), "--stub", "on", "-q")
    assert code == 0, err
    assert flash_bytes(img)[: len(data)] == data


@pytest.mark.parametrize("name", ["F407", "L072", "L152xC"])
def test_chip_reset_mid_stub_is_a_clear_error_and_the_next_run_completes(tmp_path, capsys, name):
    from stmflash.stub.link import start

    with rom_session(name) as (chip, link):
        dev = chip.device
        stub = start(link)
        unit = dev.erase_units[1]
        stub.erase([unit])
        stub.write(unit.address, b"\x12" * 1024)
        stub.flush()
        chip.reset()  # NRST, a brown-out: the stub is gone, the ROM waits for 0x7F
        stub.session.retries = 2
        with pytest.raises(LinkError, match="stopped answering"):
            stub.write(unit.address + 1024, b"\x34" * 1024)
            stub.flush()
        link.close()
        fw = firmware(tmp_path, dev, 20 * 1024)
        code, _, err = run_cli(capsys, "uart", f"sim://{name}?chip=stubtest", str(fw), "--stub", "on", "-q")
        assert code == 0, err
        assert chip.read(dev.flash_start, 20 * 1024) == fw.read_bytes()


@pytest.mark.parametrize("name", ["G071", "L072"])
def test_power_loss_while_the_stub_programs_then_the_next_run_completes(tmp_path, capsys, name):
    dev = devices.find(name)
    img = tmp_path / "chip.img"
    fw = firmware(tmp_path, dev, 32 * 1024)
    code, _, err = run_cli(capsys, "uart", f"sim://{name}?image={img}&fault=power_loss=after:9000",
                           str(fw), "--stub", "on", "-q")
    assert code == 3 and "stub stopped answering" in err
    data = fw.read_bytes()
    assert flash_bytes(img)[: len(data)] != data
    code, _, err = run_cli(capsys, "uart", f"sim://{name}?image={img}", str(fw), "--stub", "on", "-q")
    assert code == 0, err
    assert flash_bytes(img)[: len(data)] == data


def test_write_protected_sector_is_reported_by_the_controller(tmp_path, capsys):
    dev = devices.find("F407")
    chip = VirtualChip(dev)
    chip.write_protect([1], reset=False)
    registry.register("wrp", chip)
    try:
        fw = firmware(tmp_path, dev, 40 * 1024)
        code, _, err = run_cli(capsys, "uart", "sim://F407?chip=wrp", str(fw), "--stub", "on", "-q")
        assert code == 4 and "WRPERR" in err
    finally:
        registry.clear()


def test_stub_protocol_frames_roundtrip_and_reject_damage():
    from stmflash.stub import protocol as sp

    body = bytes([7, sp.WRITE | 0x80, 0]) + bytes([0xC0, 0xDB, 1, 2])
    wire = sp.frame(body)
    assert wire.count(0xC0) == 2  # the payload's 0xC0 is escaped
    dec = sp.Decoder()
    (ans,) = dec.feed(wire)
    assert (ans.seq, ans.kind, ans.status, ans.payload) == (7, sp.WRITE, 0, bytes([0xC0, 0xDB, 1, 2]))
    damaged = bytearray(wire)
    damaged[4] ^= 0x01
    assert dec.feed(bytes(damaged)) == [] and dec.garbled == 1
    # the CRC is the STM32 CRC unit's on word-reversed bytes: same as stm32_crc for words
    from stmflash.image.crc import stm32_crc

    words = random.Random(5).randbytes(64)
    swapped = b"".join(words[i : i + 4][::-1] for i in range(0, 64, 4))
    assert sp.crc_mpeg2(swapped) == stm32_crc(words)
    assert sp.crc_mpeg2(b"abc" + struct.pack(">I", sp.crc_mpeg2(b"abc"))) == 0


def test_parameter_block_is_filled_from_the_device_table():
    from stmflash.stub import MAGIC, patched, support

    dev = devices.find("L476")
    ok, group = support(dev)
    assert ok and group == "g0l4"
    img = patched(dev, 115200)
    sp_, entry, magic, flash_regs = struct.unpack("<4I", img.data[:16])
    assert sp_ == dev.ram_usable.end & ~7 and magic == MAGIC and flash_regs == dev.stub["flash_regs"]
    assert img.load >= dev.ram_usable.start and entry & 1 and img.load < entry < img.end
    bank_units = struct.unpack("<I", img.data[44:48])[0]
    assert bank_units == len(dev.bank_units(1)) == 256
    assert not support(devices.find("G030"))[0]  # 4 KiB of usable RAM: ROM path
    assert not support(devices.find("H743"))[0]


def test_devices_command_states_stub_support(capsys):
    for name, want in (("F407", "RAM stub:         yes (group f4"), ("H743", "RAM stub:         no (no stub"),
                       ("L072", "RAM stub:         yes (group l0l1: L0, L1"),
                       ("L152xC", "RAM stub:         yes (group l0l1"),
                       ("L053", "RAM stub:         no (not enough usable RAM"),
                       ("L011", "RAM stub:         no (usable RAM unknown"),
                       ("L072", "erased flash:     0x00"), ("F407", "erased flash:     0xFF")):
        try:
            main(["devices", name])
        except SystemExit:
            pass
        assert want in capsys.readouterr().out


def test_image_model_unit_content_with_gaps():
    from stmflash.pipeline import unit_image

    dev = devices.find("G071")
    img = Image()
    img.add(dev.flash_start + 10, b"\x01\x02")
    unit = dev.erase_units[0]
    content = unit_image(img, unit)
    assert len(content) == unit.size and content[10:12] == b"\x01\x02"
    assert content[:10] == b"\xff" * 10 and content[12:] == b"\xff" * (unit.size - 12)
    zeros = unit_image(img, unit, erased=0x00)  # L0/L1: gaps read as their erased 0x00
    assert zeros[:10] == bytes(10) and zeros[10:12] == b"\x01\x02" and zeros[12:] == bytes(unit.size - 12)


def test_a_rate_the_chip_clock_cannot_divide_keeps_the_rom_rate(tmp_path, capsys):
    fw = firmware(tmp_path, devices.find("F407"), 20 * 1024)
    code, events, err = run_cli(capsys, "uart", f"sim://F407?image={tmp_path / 'c.img'}", str(fw),
                                "--stub", "on", "--stub-baud", "2000000", "--json")
    assert code == 0, err
    assert result(events)["stub_baud"] == 115200  # 16 MHz / 2 Mbaud is 8 cycles per bit


def test_adapter_that_does_not_take_the_new_rate_falls_back(tmp_path, capsys, monkeypatch):
    """The port claims the new rate but stays at 115200: the stub sees framing errors and
    reverts, the host's HELLO at the new rate goes unanswered, both end up at the old rate."""
    import stmflash.stub.link as sl

    real = sl.set_baud
    monkeypatch.setattr(sl, "set_baud", lambda ser, baud: real(ser, 115200))
    img = tmp_path / "c.img"
    fw = firmware(tmp_path, devices.find("G071"), 20 * 1024)
    code, events, err = run_cli(capsys, "uart", f"sim://G071?image={img}", str(fw), "--stub", "on",
                                "--stub-baud", "500000", "--json")
    assert code == 0, err
    assert result(events)["stub_baud"] == 115200
    assert flash_bytes(img)[: 20 * 1024] == fw.read_bytes()


@pytest.mark.parametrize("name", ["F205", "F429", "F746", "F072", "F303xC", "G0B1", "G474", "L476", "L4R5", "WB55", "WLE5",
                                  "L072", "L151xB", "L152xE", "F103xG"])
def test_every_family_programs_its_first_and_last_unit(name):
    """Per family: the stub's controller code (bank 2 included) against the model."""
    from stmflash.image.crc import stm32_crc
    from stmflash.stub.link import start

    with rom_session(name) as (chip, link):
        dev = chip.device
        stub = start(link)
        units = [dev.erase_units[1], dev.erase_units[-1]]
        chip.preload(units[1].address, b"\x5a" * 16)  # not erased: the stub must erase it
        data = random.Random(name).randbytes(min(1024, units[1].size))  # L0: 128 B pages
        stub.erase(units)
        for u in units:
            stub.write(u.address, data)
        stub.flush()
        n = len(data)
        assert [chip.read(u.address, n) for u in units] == [data, data]
        assert stub.checksums([(u.address, n) for u in units]) == [stm32_crc(data)] * 2
        stub.reset()
        assert chip.mode == "bootloader"  # BOOT0 high: the reset brings the ROM back


def test_a_garbled_upload_is_caught_by_the_stubs_own_crc_and_never_used():
    """A block the ROM accepted (its XOR check can miss two flipped bits) but that differs
    from what was meant: the stub's CRC of its RAM image disagrees, the chip is reset."""
    from stmflash.stub.link import start

    with rom_session("G071") as (chip, link):
        real = link.bl.write_memory
        state = {"blocks": 0}

        def garbling(address, data, **kw):
            state["blocks"] += 1
            if state["blocks"] == 3:  # a byte of the stub's code, changed on the way
                data = data[:-1] + bytes([data[-1] ^ 0x10])
            return real(address, data, **kw)

        link.bl.write_memory = garbling
        with pytest.raises(LinkError, match="differs from what was uploaded"):
            start(link)
        assert chip.mode == "bootloader" and chip.reset_count >= 1  # reset, never used


def test_l0l1_flash_controller_model_follows_the_reference_manual():
    """The L0/L1 model at register level (RM0377/RM0367/RM0038 3.3-3.7): PRGKEYR works only
    after PEKEYR, a locked controller answers WRPERR, a wrong key locks until reset, words
    only (SIZERR), ERASE + PROG and a word write erase a page to 0x00, NOTZEROERR (L0) for a
    word that does not read 0."""
    from stmflash.sim.periph import FlashL0L1

    dev = devices.find("L072")
    chip = VirtualChip(dev)
    ctl = FlashL0L1(chip, int(dev.stub["flash_regs"]), dev.stub)
    page = dev.erase_units[3]
    ctl.flash_write(page.address, 4, 0x11223344, 0.0)
    assert ctl.read(ctl.SR, 0.0) & ctl.WRPERR and chip.read(page.address, 4) == bytes(4)
    ctl.write(ctl.SR, ctl.ERRORS, 0.0)
    ctl.write(ctl.PRGKEYR, ctl.PRGKEY1, 0.0)  # before PEKEYR: ignored
    ctl.write(ctl.PRGKEYR, ctl.PRGKEY2, 0.0)
    assert ctl.read(ctl.PECR, 0.0) & (ctl.PELOCK | ctl.PRGLOCK) == ctl.PELOCK | ctl.PRGLOCK
    for reg, key in ((ctl.PEKEYR, ctl.PEKEY1), (ctl.PEKEYR, ctl.PEKEY2), (ctl.PRGKEYR, ctl.PRGKEY1),
                     (ctl.PRGKEYR, ctl.PRGKEY2)):
        ctl.write(reg, key, 0.0)
    assert ctl.read(ctl.PECR, 0.0) & (ctl.PELOCK | ctl.PRGLOCK) == 0
    ctl.flash_write(page.address, 2, 0x3344, 0.0)
    assert ctl.read(ctl.SR, 0.0) & ctl.SIZERR and chip.read(page.address, 4) == bytes(4)
    ctl.write(ctl.SR, ctl.ERRORS | ctl.EOP, 0.0)
    ctl.flash_write(page.address, 4, 0x11223344, 0.0)
    assert chip.read(page.address, 4) == bytes.fromhex("44332211") and ctl.read(ctl.SR, 0.0) & ctl.EOP
    ctl.flash_write(page.address, 4, 0x55667788, 0.0)  # over a programmed word
    assert ctl.read(ctl.SR, 0.0) & ctl.NOTZEROERR and chip.read(page.address, 4) == bytes.fromhex("44332211")
    ctl.write(ctl.SR, ctl.ERRORS | ctl.EOP, 0.0)
    ctl.write(ctl.PECR, ctl.ERASE | ctl.PROG, 0.0)
    ctl.flash_write(page.address + 8, 4, 0, 0.0)  # any word of the page
    assert chip.read(page.address, page.size) == bytes(page.size) and not ctl.read(ctl.SR, 0.0) & ctl.ERRORS
    ctl.write(ctl.PECR, ctl.PELOCK, 0.0)
    assert ctl.read(ctl.PECR, 0.0) & ctl.PRGLOCK  # PELOCK locks the program memory too
    ctl.write(ctl.PEKEYR, 0x12345678, 0.0)  # a wrong key: locked until reset
    ctl.write(ctl.PEKEYR, ctl.PEKEY1, 0.0)
    ctl.write(ctl.PEKEYR, ctl.PEKEY2, 0.0)
    assert ctl.read(ctl.PECR, 0.0) & ctl.PELOCK
    ctl.reset()
    ctl.write(ctl.PEKEYR, ctl.PEKEY1, 0.0)
    ctl.write(ctl.PEKEYR, ctl.PEKEY2, 0.0)
    assert not ctl.read(ctl.PECR, 0.0) & ctl.PELOCK


@pytest.mark.parametrize("name", ["L072", "L152xC"])
def test_l0l1_stub_programs_half_pages_and_words_where_a_frame_ends_inside_one(name):
    """Whole half-pages (64 B on L0, 128 B on L1) go as one FPRG operation each, the rest word
    by word: the model counts both, and the flash holds the data either way."""
    from stmflash.stub.link import start

    with rom_session(name) as (chip, link):
        dev = chip.device
        hp = int(dev.stub["half_page"])
        stub = start(link)
        unit, nxt = dev.erase_units[4], dev.erase_units[5]
        stub.erase([unit, nxt])
        data = random.Random(7).randbytes(2 * hp + 12)  # two half-pages and three words
        stub.write(unit.address, data)
        stub.write(nxt.end - 8, b"\x11" * 8)  # two words, not a half-page
        stub.flush()
        ops = chip.cpu.flash_ctl[0].operations
        assert ops == {"half-page": 2, "word": 5}
        assert chip.read(unit.address, len(data)) == data
        assert chip.read(nxt.end - 8, 8) == b"\x11" * 8
        stub.reset()


def test_l0l1_half_page_rules_in_the_model():
    """RM0377 3.3.4: the first word starts the half-page, the others follow in order; a flash
    read in between aborts it (FWWERR on L0); nothing is programmed until the last word."""
    from stmflash.sim.periph import FlashL0L1

    dev = devices.find("L072")
    chip = VirtualChip(dev)
    ctl = FlashL0L1(chip, int(dev.stub["flash_regs"]), dev.stub)
    for reg, key in ((ctl.PEKEYR, ctl.PEKEY1), (ctl.PEKEYR, ctl.PEKEY2), (ctl.PRGKEYR, ctl.PRGKEY1),
                     (ctl.PRGKEYR, ctl.PRGKEY2)):
        ctl.write(reg, key, 0.0)
    base = dev.erase_units[2].address
    ctl.write(ctl.PECR, ctl.FPRG | ctl.PROG, 0.0)
    ctl.flash_write(base + 4, 4, 1, 0.0)  # not the half-page's first word
    assert ctl.read(ctl.SR, 0.0) & ctl.PGAERR
    ctl.write(ctl.SR, ctl.ERRORS, 0.0)
    for i in range(8):
        ctl.flash_write(base + 4 * i, 4, 0x01010101, 0.0)
    assert chip.read(base, 32) == bytes(32)  # not programmed yet
    ctl.on_flash_read()  # the CPU reads the flash in the middle
    assert ctl.read(ctl.SR, 0.0) & ctl.FWWERR
    ctl.write(ctl.SR, ctl.ERRORS, 0.0)
    for i in range(16):
        ctl.flash_write(base + 4 * i, 4, 0x01010101, 0.0)
    assert chip.read(base, 64) == b"\x01" * 64 and not ctl.read(ctl.SR, 0.0) & ctl.ERRORS


def test_l0_word_over_programmed_flash_is_reported_as_notzeroerr():
    """Programming over a word that does not read 0 (L0 erases to 0x00): the controller
    refuses it with NOTZEROERR, the stub reports it, the host raises -- never a silent OK."""
    from stmflash.stub.link import StubError, start

    with rom_session("L072") as (chip, link):
        unit = chip.device.erase_units[6]
        chip.preload(unit.address, b"\x5a" * 8)  # programmed, not erased
        stub = start(link)
        stub.write(unit.address, b"\x01" * 8)
        with pytest.raises(StubError, match="NOTZEROERR"):
            stub.flush()
        assert chip.read(unit.address, 8) == b"\x5a" * 8


def test_f1_xl_image_across_the_bank_boundary_goes_through_both_register_sets(tmp_path, capsys):
    """F1 XL density (RM0008 3.3.3): bank 2 from 0x08080000 has its own KEYR2/SR2/CR2/AR2 at
    +0x40; an image across the boundary is flashed through the stub and reads back through
    the ROM."""
    dev = devices.find("F103xG")
    img = tmp_path / "chip.img"
    url = f"sim://F103xG?image={img}"
    data = random.Random(11).randbytes(24 * 1024)
    fw = tmp_path / "fw.bin"
    fw.write_bytes(data)
    start = 0x08080000 - 8 * 1024
    code, events, err = run_cli(capsys, "uart", url, str(fw), "--address", f"0x{start:08X}", "--stub", "on",
                                "--json")
    assert code == 0, err
    assert result(events)["path"] == "stub"
    off = start - dev.flash_start
    assert flash_bytes(img)[off : off + len(data)] == data
    out = tmp_path / "back.bin"
    code, _, err = run_cli(capsys, "uart", url, "--stub", "off", "--read", str(out), "--range",
                           f"0x{start:08X}:{len(data)}", "-q")
    assert code == 0, err
    assert out.read_bytes() == data


def test_f1_xl_model_bank_2_needs_its_own_unlock_and_pg():
    from stmflash.sim.periph import KEY1, KEY2, BusFault, FlashF1XL

    dev = devices.find("F103xG")
    chip = VirtualChip(dev)
    ctl = FlashF1XL(chip, int(dev.stub["flash_regs"]), dev.stub)
    ctl.write(0x04, KEY1, 0.0)
    ctl.write(0x04, KEY2, 0.0)
    ctl.write(0x10, 1, 0.0)  # bank 1: PG
    ctl.flash_write(0x08000000, 2, 0x1234, 0.0)
    assert chip.read(0x08000000, 2) == b"\x34\x12"
    with pytest.raises(BusFault):  # bank 2 is still locked, its PG clear
        ctl.flash_write(0x08080000, 2, 0x1234, 0.0)
    ctl.write(0x44, KEY1, 0.0)
    ctl.write(0x44, KEY2, 0.0)
    ctl.write(0x50, 1, 0.0)  # bank 2: PG in CR2
    ctl.flash_write(0x08080000, 2, 0x5678, 0.0)
    assert chip.read(0x08080000, 2) == b"\x78\x56"
