"""The second option-byte block of F42x/F43x/F469 (bank 2 at 0x1FFEC000, RM0090 3.7.1 Table 16):
nWRP of sectors 12-23, read and written by the same --ob pipeline as the first block, stored
and honoured by the virtual chip, and reached by --write-protect over UART and DFU."""

from __future__ import annotations

from pathlib import Path

import pytest
from intelhex import IntelHex

from stmflash import devices, ob_fields
from stmflash import option_bytes as obl
from stmflash.sim import registry, usb_backend
from stmflash.sim.chip import VirtualChip
from tests.clirun import result
from tests.clirun import run_cli as cli

F429 = devices.find("F429")
BANK2 = 0x08100000  # sector 12 (RM0090 flash organisation, dual bank)


def uart_chip(name: str, dev: devices.Device = F429) -> tuple[str, VirtualChip]:
    chip = VirtualChip(dev)
    registry.register(name, chip)
    return f"sim://{dev.short_name}?chip={name}", chip


@pytest.fixture
def usb_sim(monkeypatch, tmp_path):
    def make(dev: devices.Device) -> usb_backend.VirtualBus:
        usb_backend.forget()
        monkeypatch.setenv("STMFLASH_USB_SIM", f"{dev.short_name}={tmp_path / 'dfu.img'}")
        return usb_backend.bus_from_env()

    yield make
    usb_backend.forget()


def test_the_table_places_the_second_block_after_the_first() -> None:
    for name in ("F429", "F469"):
        dev = devices.find(name)
        assert dev.option_bytes2 is not None and dev.option_bytes2.start == 0x1FFEC000
        assert ob_fields.view_size(dev) == dev.option_bytes.size + dev.option_bytes2.size == 32
        f = ob_fields.table_of(dev).find("nWRP2")
        # 0x1FFEC008 bits 11:0: the word at byte 8 of the second block
        assert (f.offset, f.bit, f.width, f.default) == (16 + 8, 0, 12, 0xFFF)
    assert devices.find("F407").option_bytes2 is None  # single-bank F4: one block


def test_factory_block_decodes_nothing_protected() -> None:
    chip = VirtualChip(F429)
    assert chip.option_bytes2() == ob_fields.factory_block2(F429)
    assert ob_fields.table_of(F429).find("nWRP2").get(chip.ob_view()) == 0xFFF
    assert not chip.wrp
    assert chip.read(0x1FFEC008, 4) == (0xFFFF0FFF).to_bytes(4, "little")


def test_ob_show_shows_both_blocks(capsys) -> None:
    url, _ = uart_chip("b2-show")
    code, out, err = cli(["uart", url, "--ob-show", "--json"], capsys)
    assert code == 0, err
    res = result(out)
    assert len(bytes.fromhex(res["option_bytes_area"])) == 32
    rows = {r["field"]: r for r in res["option_fields"]}
    assert rows["nWRP"]["value"] == 0xFFF and rows["nWRP2"]["value"] == 0xFFF
    assert rows["nWRP2"]["writable"] and rows["nWRP2"]["is_default"]


def test_nwrp2_over_uart_protects_bank2_sectors_and_keeps_the_first_block(capsys, tmp_path: Path) -> None:
    url, chip = uart_chip("b2-uart")
    before = chip.option_bytes()
    code, out, err = cli(["uart", url, "--ob", "nWRP2=0xFFE", "--ob", "BOR_LEV=level2", "--ob-show", "--json"], capsys)
    assert code == 0, err
    res = result(out)
    assert res["option_fields_verified"] and res["wrp_units"] == [12]
    assert chip.read(0x1FFEC008, 2) == bytes([0xFE, 0x0F])
    assert ob_fields.table_of(F429).find("BOR_LEV").get(chip.option_bytes()) == 1
    assert chip.option_bytes()[8:] == before[8:]  # nWRP of bank 1 untouched
    assert chip.wrp == {12}
    chip.preload(BANK2, b"\x5a" * 16)
    chip.erase_units([12, 13])  # write protection of sector 12 honoured, 13 erased
    assert chip.read(BANK2, 16) == b"\x5a" * 16
    sector13 = F429.erase_units[13].address
    chip.preload(sector13, b"\x5a" * 4)
    chip.erase_units([13])
    assert chip.read(sector13, 4) == b"\xff" * 4
    # flashing an image into sector 12 fails: the protected sector is left unchanged
    ih = IntelHex()
    ih.frombytes(b"\xa5" * 64, offset=BANK2)
    fw = tmp_path / "b2.hex"
    ih.write_hex_file(str(fw))
    code, _, err = cli(["uart", url, str(fw), "--no-image-check", "-q"], capsys)
    assert code == 4 and "unit 12" in err and "write-protected" in err, err
    assert chip.read(BANK2, 16) == b"\x5a" * 16
    # AN3155 Write Unprotect: every sector, bank 2 as well
    code, _, err = cli(["uart", url, "--write-unprotect", "-q"], capsys)
    assert code == 0, err
    assert not chip.wrp and chip.option_bytes2() == ob_fields.factory_block2(F429)


def test_nwrp2_over_dfu_through_the_second_region_of_the_alt(usb_sim, capsys) -> None:
    bus = usb_sim(F429)
    alt = next(a for a in F429.dfu_alts() if a.startswith("@Option"))
    assert "/0x1FFEC000/01*016 e" in alt  # the F42x ROM's descriptor names both blocks
    code, out, err = cli(["dfu", "--device", "F429", "--ob", "nWRP2=0x7FF", "--ob-show", "--json"], capsys)
    assert code == 0, err
    res = result(out)
    assert res["option_fields_verified"] and res["wrp_units"] == [23]
    chip = bus.devices[0].chip
    assert chip.wrp == {23} and chip.option_bytes()[8:10] == bytes([0xFF, 0x0F])


@pytest.mark.parametrize("link", ["uart", "dfu"])
def test_write_protect_by_sector_number_reaches_bank2(link: str, usb_sim, capsys) -> None:
    if link == "uart":
        url, chip = uart_chip("b2-wp")
        code, _, err = cli(["uart", url, "--write-protect", "3,12,23", "-q"], capsys)
    else:
        bus = usb_sim(F429)
        code, _, err = cli(["dfu", "--device", "F429", "--write-protect", "3,12,23", "-q"], capsys)
        chip = bus.devices[0].chip
    assert code == 0, err
    assert chip.wrp == {3, 12, 23}
    assert sorted(obl.wrp2_units(F429, chip.option_bytes2())) == [12, 23]
    assert obl.wrp_units(F429, chip.loaded_option_bytes()) == {3}


def test_f469_dfu_alt_without_the_second_block_refuses_it(usb_sim, capsys) -> None:
    dev = devices.find("F469")
    bus = usb_sim(dev)
    code, _, err = cli(["dfu", "--device", "F469", "--write-protect", "13"], capsys)
    assert code == 2 and "bank-2 option bytes" in err
    code, _, err = cli(["dfu", "--device", "F469", "--ob", "nWRP2=0"], capsys)
    assert code == 2 and "second option-byte block" in err and "DFU option-bytes alt" in err
    assert not bus.devices[0].chip.wrp
    # over UART the F469 ROM's Read/Write Memory reaches it
    url, chip = uart_chip("b2-f469", dev)
    code, _, err = cli(["uart", url, "--ob", "nWRP2=0xFFD", "-q"], capsys)
    assert code == 0, err
    assert chip.wrp == {13}


def test_the_second_block_survives_the_image_file(tmp_path: Path) -> None:
    img = tmp_path / "f429.img"
    chip = VirtualChip(F429, image_path=img)
    chip.write_option_bytes2(obl.set_wrp2(F429, chip.option_bytes2(), [14]))
    chip.save()
    assert VirtualChip(F429, image_path=img).wrp == {14}


def test_read_option_bytes_shows_the_second_block(capsys) -> None:
    url, chip = uart_chip("b2-read")
    chip.write_option_bytes2(obl.set_wrp2(F429, chip.option_bytes2(), [20]))
    code, out, err = cli(["uart", url, "--read-option-bytes", "--json"], capsys)
    assert code == 0, err
    res = result(out)
    assert bytes.fromhex(res["option_bytes2"]) == chip.option_bytes2()
    assert res["wrp_units"] == [20]
    code, out, err = cli(["uart", url, "--read-option-bytes"], capsys)
    assert code == 0 and "@0x1FFEC000" in out and "write-protected units: 20" in out


def test_h7_bank2_registers_stay_outside_the_rom_view(capsys) -> None:
    """RM0433 4.9 / CMSIS stm32h743xx.h: PRAR_CUR2 at FLASH + 0x128, past the 128 bytes from
    0x5200201C (FLASH + 0x1C .. 0x9B) the ROM presents over DFU; the UART range the H74x
    ROM allows is not established, so bank-2 write protection stays refused."""
    h7 = devices.find("H743")
    assert h7.option_bytes.end <= 0x52002128 and h7.option_bytes2 is None
    t = ob_fields.table_of(h7)
    assert all(f.offset + 4 <= h7.option_bytes.size for f in t.fields)
    assert "0x52002128" in t.source
    code, _, err = cli(["uart", "sim://H743?chip=h7-never", "--write-protect", "8"], capsys)
    assert code == 2 and "unit 8" in err
    assert registry.get("h7-never") is None  # refused before the port was opened: no chip made


def test_f469_dfu_bank2_field_refused_before_any_device_is_looked_for(monkeypatch, capsys) -> None:
    usb_backend.forget()
    monkeypatch.delenv("STMFLASH_USB_SIM", raising=False)  # no DFU device anywhere: exit 3 if opened
    code, _, err = cli(["dfu", "--device", "F469", "--ob", "nWRP2=0"], capsys)
    assert code == 2 and "not in its DFU option-bytes alt" in err
