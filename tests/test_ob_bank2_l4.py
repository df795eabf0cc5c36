"""Bank-2 option bytes of the dual-bank L4-style parts: L47x/L49x at 0x1FFFF800 (RM0351 3.4.1),
L4+ at 0x1FF01000 (RM0432 3.4.1) and G47x/G48x at 0x1FFFF800 (RM0440 3.4.1). The second block
has L4's value + complement slots, its WRP2A/WRP2B areas count pages from bank 2's first page,
and it goes through the same --ob and --write-protect pipeline as the first block: over UART
at its own address, over DFU as the second region of the option-bytes alt where the ROM's
descriptor names it (L4+, G47x)."""

from __future__ import annotations

from pathlib import Path

import pytest
from intelhex import IntelHex

from stmflash import devices, ob_fields
from stmflash import option_bytes as obl
from stmflash.sim import usb_backend
from stmflash.sim.chip import VirtualChip
from tests import test_ob_bank2 as f42x
from tests.clirun import result
from tests.clirun import run_cli as cli

uart_chip = f42x.uart_chip
usb_sim = f42x.usb_sim  # the fixture: one virtual DFU device of the part given

L476 = devices.find("L476")
L4R5 = devices.find("L4R5")
G474 = devices.find("G474")
DUAL = [("L476", 0x1FFFF800, 8), ("L496", 0x1FFFF800, 8), ("L4R5", 0x1FF01000, 8), ("L4P5", 0x1FF01000, 7),
        ("G474", 0x1FFFF800, 7)]


def bank2(dev: devices.Device) -> list[int]:
    return [u.index for u in dev.bank_units(2)]


@pytest.mark.parametrize(("name", "start", "width"), DUAL)
def test_the_table_places_bank2_after_bank1(name: str, start: int, width: int) -> None:
    dev = devices.find(name)
    assert dev.option_bytes2 is not None and dev.option_bytes2.start == start
    size = dev.option_bytes.size  # 40 (L4: to WRP1BR), 48 (G4: to SEC1R)
    assert dev.option_bytes2.size == size and ob_fields.view_size(dev) == 2 * size
    t = ob_fields.table_of(dev)
    a = t.find("WRP2A_STRT")
    # WRP2AR at +0x18 of the second block
    assert (a.offset, a.bit, a.width) == (size + 0x18, 0, width)
    assert (t.find("WRP2B_END").offset, t.find("WRP2B_END").bit) == (size + 0x20, 16)
    assert t.find("PCROP2_STRT").readonly and t.find("PCROP2_END").offset == size + 0x10
    assert len(bank2(dev)) == 1 << width  # an area can name every page of bank 2
    assert devices.find("L432").option_bytes2 is None  # single-bank L4: one block


@pytest.mark.parametrize("name", ["L476", "L4R5", "G474"])
def test_factory_block_has_valid_complements_and_protects_nothing(name: str) -> None:
    dev = devices.find(name)
    chip = VirtualChip(dev)
    block = chip.option_bytes2()
    assert block == ob_fields.factory_block2(dev) and len(block) == dev.option_bytes2.size
    for slot in range(0, len(block), 8):  # every 64-bit slot: a word and its complement
        word = int.from_bytes(block[slot : slot + 4], "little")
        assert int.from_bytes(block[slot + 4 : slot + 8], "little") == word ^ 0xFFFFFFFF
    assert not chip.wrp and not obl.wrp2_units(dev, block)
    t = ob_fields.table_of(dev)
    view = chip.loaded_ob_view()
    top = (1 << t.find("WRP2A_STRT").width) - 1
    assert (t.find("WRP2A_STRT").get(view), t.find("WRP2A_END").get(view)) == (top, 0)
    wrp2ar = dev.option_bytes2.start + 0x18
    assert chip.read(wrp2ar, 4) == block[0x18:0x1C]


def test_write_protect_bank2_pages_over_uart(capsys, tmp_path: Path) -> None:
    url, chip = uart_chip("l4b2-wp", L476)
    first = bank2(L476)[0]  # page 256 at 0x08080000
    assert L476.erase_units[first].address == 0x08080000
    code, _, err = cli(["uart", url, "--write-protect", f"2,3,{first},{first + 1},{first + 9}", "-q"], capsys)
    assert code == 0, err
    code, out, err = cli(["uart", url, "--ob-show", "--json"], capsys)  # a fresh read of both blocks
    assert code == 0, err
    res = result(out)
    assert res["wrp_units"] == [2, 3, first, first + 1, first + 9]
    rows = {r["field"]: r["value"] for r in res["option_fields"]}
    assert (rows["WRP2A_STRT"], rows["WRP2A_END"], rows["WRP2B_STRT"], rows["WRP2B_END"]) == (0, 1, 9, 9)
    assert (rows["WRP1A_STRT"], rows["WRP1A_END"]) == (2, 3)
    assert chip.wrp == {2, 3, first, first + 1, first + 9}
    block = chip.option_bytes2()
    assert block == obl.normalize2(L476, block)  # the complements were written with the values
    # the protected page of bank 2 is not erased or programmed; its neighbour is
    chip.preload(0x08080000, b"\x5a" * 16)
    chip.preload(0x08080000 + 2 * 2048, b"\x5a" * 16)
    chip.erase_units([first, first + 2])
    assert chip.read(0x08080000, 16) == b"\x5a" * 16
    assert chip.read(0x08080000 + 2 * 2048, 16) == b"\xff" * 16
    ih = IntelHex()
    ih.frombytes(b"\xa5" * 64, offset=0x08080000)
    fw = tmp_path / "b2.hex"
    ih.write_hex_file(str(fw))
    code, _, err = cli(["uart", url, str(fw), "--no-image-check", "-q"], capsys)
    assert code == 4 and f"unit {first}" in err and "write-protected" in err, err
    assert chip.read(0x08080000, 16) == b"\x5a" * 16
    # AN3155 Write Unprotect: both banks
    code, _, err = cli(["uart", url, "--write-unprotect", "-q"], capsys)
    assert code == 0, err
    assert not chip.wrp and chip.option_bytes2() == ob_fields.factory_block2(L476)


def test_three_runs_in_bank2_are_refused_before_the_port_opens(capsys) -> None:
    first = bank2(L476)[0]
    url, chip = uart_chip("l4b2-three", L476)
    before = chip.option_bytes2()
    code, _, err = cli(["uart", url, "--write-protect", f"{first},{first + 2},{first + 4}"], capsys)
    assert code == 2 and "2 contiguous areas" in err and "bank 2" in err, err
    assert chip.option_bytes2() == before and not chip.wrp
    # a named part is checked before the port is opened (a missing port would be exit 3)
    code, _, err = cli(["uart", "/dev/stmflash-no-such-port", "--device", "L476", "--write-protect",
                        f"{first},{first + 2},{first + 4}"], capsys)
    assert code == 2 and "2 contiguous areas" in err, err



def test_three_runs_in_bank2_are_refused_over_dfu_before_anything_is_written(monkeypatch, usb_sim,
                                                                           capsys) -> None:
    bus = usb_sim(L4R5)
    first = bank2(L4R5)[0]
    code, _, err = cli(["dfu", "--device", "L4R5", "--write-protect", f"{first},{first + 2},{first + 4}"], capsys)
    assert code == 2 and "2 contiguous areas" in err, err
    chip = bus.devices[0].chip
    assert not chip.wrp and chip.option_bytes2() == ob_fields.factory_block2(L4R5)
    # with --device the same refusal comes before any device is looked for
    usb_backend.forget()
    monkeypatch.delenv("STMFLASH_USB_SIM", raising=False)  # no DFU device anywhere: exit 3 if opened
    code, _, err = cli(["dfu", "--device", "L4R5", "--write-protect", f"{first},{first + 2},{first + 4}"], capsys)
    assert code == 2 and "2 contiguous areas" in err, err


def test_wrp2_fields_over_uart_keep_bank1_and_the_rest_of_bank2(capsys) -> None:
    url, chip = uart_chip("l4b2-ob", L4R5)
    before = chip.option_bytes()
    code, out, err = cli(["uart", url, "--ob", "WRP2B_STRT=4", "--ob", "WRP2B_END=7", "--ob", "BOR_LEV=3",
                          "--json"], capsys)
    assert code == 0, err
    res = result(out)
    assert res["option_fields_verified"]
    first = bank2(L4R5)[0]
    assert chip.wrp == set(range(first + 4, first + 8))
    t = ob_fields.table_of(L4R5)
    assert t.find("BOR_LEV").get(chip.option_bytes()) == 3
    assert chip.option_bytes()[8:] == before[8:]  # bank 1's PCROP and WRP untouched
    view = chip.loaded_ob_view()
    assert (t.find("WRP2A_STRT").get(view), t.find("PCROP2_STRT").get(view)) == (0xFF, 0x1FFFF)


def test_l4plus_bank2_over_dfu_through_the_second_region_of_the_alt(usb_sim, capsys) -> None:
    bus = usb_sim(L4R5)
    alt = next(a for a in L4R5.dfu_alts() if a.startswith("@Option"))
    assert "/0x1FF01000/01*040 e" in alt
    first = bank2(L4R5)[0]
    code, _, err = cli(["dfu", "--device", "L4R5", "--write-protect", f"0,{first + 255}", "-q"], capsys)
    assert code == 0, err
    chip = bus.devices[0].chip
    assert chip.wrp == {0, first + 255}
    assert obl.wrp2_units(L4R5, chip.option_bytes2()) == {first + 255}
    code, out, err = cli(["dfu", "--device", "L4R5", "--ob-show", "--json"], capsys)
    assert code == 0, err
    res = result(out)
    assert res["wrp_units"] == [0, first + 255]
    rows = {r["field"]: r["value"] for r in res["option_fields"]}
    assert (rows["WRP2A_STRT"], rows["WRP2A_END"]) == (255, 255)


def test_l476_dfu_alt_without_bank2_refuses_it_before_any_device_is_looked_for(monkeypatch, usb_sim,
                                                                              capsys) -> None:
    alt = next(a for a in L476.dfu_alts() if a.startswith("@Option"))
    assert "0x1FFFF800" not in alt  # the descriptor as modelled names bank 1 only
    bus = usb_sim(L476)
    code, _, err = cli(["dfu", "--device", "L476", "--write-protect", "300"], capsys)
    assert code == 2 and "bank-2 option bytes" in err, err
    assert not bus.devices[0].chip.wrp
    usb_backend.forget()
    monkeypatch.delenv("STMFLASH_USB_SIM", raising=False)
    code, _, err = cli(["dfu", "--device", "L476", "--ob", "WRP2A_STRT=0"], capsys)
    assert code == 2 and "not in its DFU option-bytes alt" in err, err
    code, _, err = cli(["dfu", "--device", "L476", "--write-protect", "300"], capsys)
    assert code == 2 and "bank-2 option bytes" in err, err  # no device needed to know


def test_bank2_survives_the_image_file(tmp_path: Path) -> None:
    img = tmp_path / "l476.img"
    chip = VirtualChip(L476, image_path=img)
    first = bank2(L476)[0]
    chip.write_option_bytes2(obl.set_wrp2(L476, chip.option_bytes2(), [first + 5, first + 6]))
    chip.save()
    assert VirtualChip(L476, image_path=img).wrp == {first + 5, first + 6}


def test_read_option_bytes_shows_bank2(capsys) -> None:
    url, chip = uart_chip("l4b2-read", devices.find("L496"))
    dev = chip.device
    first = bank2(dev)[0]
    chip.write_option_bytes2(obl.set_wrp2(dev, chip.option_bytes2(), [first + 20]))
    code, out, err = cli(["uart", url, "--read-option-bytes", "--json"], capsys)
    assert code == 0, err
    res = result(out)
    assert bytes.fromhex(res["option_bytes2"]) == chip.option_bytes2()
    assert res["wrp_units"] == [first + 20]
    code, out, err = cli(["uart", url, "--read-option-bytes"], capsys)
    assert code == 0 and "@0x1FFFF800" in out and f"write-protected units: {first + 20}" in out


def test_g47x_bank2_over_dfu_and_uart(usb_sim, capsys) -> None:
    """G474: the ROM's alt names both blocks; WRP2A pages counted from bank 2's first page
    (page 128 at 0x08040000 with DBANK = 1)."""
    alt = next(a for a in G474.dfu_alts() if a.startswith("@Option"))
    assert "/0x1FFFF800/01*048 e" in alt
    first = bank2(G474)[0]
    assert G474.erase_units[first].address == 0x08040000
    bus = usb_sim(G474)
    code, _, err = cli(["dfu", "--device", "G474", "--write-protect", f"{first + 3},{first + 4}", "-q"], capsys)
    assert code == 0, err
    chip = bus.devices[0].chip
    assert chip.wrp == {first + 3, first + 4}
    t = ob_fields.table_of(G474)
    view = chip.loaded_ob_view()
    assert (t.find("WRP2A_STRT").get(view), t.find("WRP2A_END").get(view)) == (3, 4)
    url, uchip = uart_chip("g47-b2", G474)
    code, _, err = cli(["uart", url, "--ob", "WRP2B_STRT=127", "--ob", "WRP2B_END=127", "-q"], capsys)
    assert code == 0, err
    assert uchip.wrp == {first + 127}
    code, _, err = cli(["uart", url, "--ob", "SEC_SIZE2=4"], capsys)
    assert code == 2 and "decoded only" in err, err


@pytest.mark.parametrize("link", ["uart", "dfu"])
def test_ob_show_with_write_protect_decodes_what_the_command_leaves(link: str, usb_sim, capsys) -> None:
    """--write-protect runs after --ob writes and before --ob-show: the decoded table and
    ``wrp_units`` show the protection the same command set (RDP, were it asked, comes last)."""
    first = bank2(L4R5)[0]
    args = ["--ob", "BOR_LEV=2.8V", "--write-protect", f"1,{first + 7}", "--ob-show", "--json"]
    if link == "uart":
        url, _ = uart_chip("l4b2-show-wp", L4R5)
        code, out, err = cli(["uart", url, *args], capsys)
    else:
        usb_sim(L4R5)
        code, out, err = cli(["dfu", "--device", "L4R5", *args], capsys)
    assert code == 0, err
    res = result(out)
    assert res["option_fields_verified"] and res["wrp_units"] == [1, first + 7]
    rows = {r["field"]: r["value"] for r in res["option_fields"]}
    assert (rows["BOR_LEV"], rows["WRP1A_STRT"], rows["WRP1A_END"], rows["WRP2A_STRT"]) == (4, 1, 1, 7)
