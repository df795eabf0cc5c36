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


def test_g4_factory_words_are_rm0440s_production_values() -> None:
    """RM0440 3.4.1 prints the ST production value under each option byte of G47x/G48x."""
    chip = VirtualChip(G474)
    words = {off: int.from_bytes(chip.ob_view()[off : off + 4], "little") for off in range(0, 96, 8)}
    assert words == {0x00: 0xFFEFF8AA, 0x08: 0xFFFFFFFF, 0x10: 0x00FF0000, 0x18: 0xFF00FFFF, 0x20: 0xFF00FFFF,
                     0x28: 0xFF00FF00, 0x30: 0xFFFFFFFF, 0x38: 0xFFFFFFFF, 0x40: 0x00FF0000, 0x48: 0xFF00FFFF,
                     0x50: 0xFF00FFFF, 0x58: 0xFF00FF00}
    rows = {r["field"]: r for r in ob_fields.decode(G474, chip.loaded_ob_view())}
    assert all(r["is_default"] for r in rows.values())
    assert (rows["WRP1A_STRT"]["value"], rows["PCROP1_STRT"]["value"], rows["BOOT_LOCK"]["value"]) == (0x7F, 0x7FFF, 0)


def _bad_complement(block: bytes, off: int) -> bytes:
    out = bytearray(block)
    out[off + 4] ^= 0x01  # one bit of the complement word no longer matches
    return bytes(out)


def test_g4_word_mismatch_loads_the_values_rm0440_forces() -> None:
    """RM0440 3.4.2 "Option byte loading": a word that fails its complement sets OPTVERR and
    loads the forced value - USR OPT all ones but BOR_LEV 000, RDP level 1; WRP no
    protection; PCROP all memory protected."""
    chip = VirtualChip(G474)
    t = ob_fields.table_of(G474)
    first = bank2(G474)[0]
    # a protected area whose complement is then damaged: it loads as no protection
    ob = obl.set_wrp(G474, chip.option_bytes(), [2, 3])
    chip.store_raw_option_bytes(_bad_complement(ob, 0x18))
    chip.reset()
    assert not chip.wrp
    view = chip.loaded_ob_view()
    assert (t.find("WRP1A_STRT").get(view), t.find("WRP1A_END").get(view)) == (0x7F, 0)
    # the same rule in bank 2's block
    chip.write_option_bytes2(obl.set_wrp2(G474, chip.option_bytes2(), [first + 1]))
    assert chip.wrp == {first + 1}
    chip._store_option_bytes2(_bad_complement(chip.option_bytes2(), 0x18), reload=True)
    assert not chip.wrp
    # the OPTR word: BOR_LEV 000, RDP level 1, every other option bit 1
    ob = bytearray(chip.option_bytes())
    ob[1] = (ob[1] & ~0x07) | 0x04  # BOR_LEV 4 written ...
    ob = obl.normalize(G474, bytes(ob))
    chip.store_raw_option_bytes(_bad_complement(ob, 0x00))  # ... then its complement damaged
    chip.reset()
    view = chip.loaded_ob_view()
    assert chip.rdp_level == 1
    assert (t.find("BOR_LEV").get(view), t.find("nBOOT1").get(view), t.find("nSWBOOT0").get(view)) == (0, 1, 1)
    # PCROP: all memory (start 0, end all ones)
    ob = obl.normalize(G474, bytes(chip.option_bytes()))
    chip.store_raw_option_bytes(_bad_complement(ob, 0x08))
    chip.reset()
    view = chip.loaded_ob_view()
    assert (t.find("PCROP1_STRT").get(view), t.find("PCROP1_END").get(view)) == (0, 0x7FFF)


def test_families_without_the_word_rule_keep_the_byte_rule() -> None:
    """L4 (its manual's text not checked here) keeps the byte-wise rule: the failing byte
    loads as 0xFF, its neighbours as written."""
    chip = VirtualChip(L476)
    ob = obl.set_wrp(L476, chip.option_bytes(), [2, 3])
    chip.store_raw_option_bytes(_bad_complement(ob, 0x18))
    chip.reset()
    view = chip.loaded_option_bytes()
    assert view[0x18] == 0xFF and view[0x1A] == 3


C031 = devices.find("C031")


def test_c0_factory_words_are_rm0490s_table18() -> None:
    """RM0490 Rev 5 4.4.1 Table 18 'Factory value' rows (reserved 'x' bits: OPTR bit 20 as
    1, the others as 0)."""
    chip = VirtualChip(C031)
    view = chip.ob_view()
    words = {off: int.from_bytes(view[off : off + 4], "little") for off in (0x00, 0x08, 0x10, 0x18, 0x20, 0x28,
                                                                            0x30, 0x70)}
    assert words == {0x00: 0x3FFFFEAA, 0x08: 0x1FF, 0x10: 0, 0x18: 0xFF, 0x20: 0xFF, 0x28: 0x1FF, 0x30: 0,
                     0x70: 0}
    rows = {r["field"]: r for r in ob_fields.decode(C031, chip.loaded_ob_view())}
    assert all(r["is_default"] for r in rows.values())
    assert (rows["SECURE_MUXING_EN"]["value"], rows["BOR_EN"]["value"], rows["nBOOT_SEL"]["value"]) == (1, 0, 1)
    assert rows["SECURE_MUXING_EN"]["writable"] and not rows["FDCAN_BL_CK"]["writable"]


def test_c0_word_mismatch_forces_rm0490s_values_and_boot_lock() -> None:
    """RM0490 Rev 5 4.4.2: USR OPT all ones but BOR_EN 0, RDP level 1, WRP no protection,
    PCROP all memory, BOOT_LOCK 'boot forced from main flash memory' - so a part whose SECR
    programming was interrupted no longer reaches its ROM, whatever BOOT0 says."""
    chip = VirtualChip(C031)
    t = ob_fields.table_of(C031)
    chip.reset("bootloader")
    assert chip.boots == "system"
    ob = obl.normalize(C031, bytes(chip.option_bytes()))
    chip.store_raw_option_bytes(_bad_complement(ob, 0x70))
    chip.reset("bootloader")
    view = chip.loaded_ob_view()
    assert (t.find("BOOT_LOCK").get(view), t.find("SEC_SIZE").get(view)) == (1, 0)
    assert chip.boots == "flash"
    # the OPTR word: BOR_EN 0 and level 1, the boot fields all ones
    bad = bytearray(ob)
    bad[1] |= 0x01  # BOR_EN = 1 written ...
    chip.store_raw_option_bytes(_bad_complement(obl.normalize(C031, bytes(bad)), 0x00))  # ... complement damaged
    chip.reset("bootloader")
    view = chip.loaded_ob_view()
    assert chip.rdp_level == 1 and t.find("BOR_EN").get(view) == 0
    assert (t.find("nBOOT_SEL").get(view), t.find("IRHEN").get(view)) == (1, 1)
    # PCROP area B: both words forced together
    chip.store_raw_option_bytes(_bad_complement(ob, 0x30))
    chip.reset()
    view = chip.loaded_ob_view()
    assert (t.find("PCROP1B_STRT").get(view), t.find("PCROP1B_END").get(view)) == (0, 0x1FF)


def test_g49x_follows_rm0440_chapter_4() -> None:
    """Category 4 (G491/G4A1): OPTR bit 22 is PB4_PUPEN, no DBANK/BFB2, SEC_SIZE1 9 bits,
    SEC1R production value 0xFF00FE00 (RM0440 4.4.1)."""
    dev = devices.find("G491")
    t = ob_fields.table_of(dev)
    names = {f.name for f in t.fields}
    assert "PB4_PUPEN" in names and not {"DBANK", "BFB2"} & names
    assert t.find("SEC_SIZE1").width == 9 and t.find("PCROP1_STRT").width == 16
    chip = VirtualChip(dev)
    assert int.from_bytes(chip.option_bytes()[0x28:0x2C], "little") == 0xFF00FE00
    assert all(r["is_default"] for r in ob_fields.decode(dev, chip.loaded_ob_view()))
    assert ob_fields.table_of(G474).find("PCROP1_STRT").width == 15  # category 3


# RM0440 2.6.1 Table 5: (BOOT_LOCK, nBOOT1, nBOOT0, BOOT0 pin, nSWBOOT0) -> boot area; None = X
G4_BOOT_TABLE = [
    (1, None, None, None, None, "flash"),
    (0, None, None, 0, 1, "flash"),
    (0, None, 1, None, 0, "flash"),
    (0, 0, None, 1, 1, "sram"),
    (0, 0, 0, None, 0, "sram"),
    (0, 1, None, 1, 1, "system"),
    (0, 1, 0, None, 0, "system"),
]


@pytest.mark.parametrize("name", ["G474", "G491"])
def test_g4_boot_table_walk(name: str) -> None:
    """Every combination of the RM0440 Table 5 inputs boots what the table says (BFB2 = 0,
    flash programmed: the empty check is not in RM0440's table)."""
    dev = devices.find(name)
    t = ob_fields.table_of(dev)
    app = (0x20001000).to_bytes(4, "little") + (0x08000101).to_bytes(4, "little")
    for lock in (0, 1):
        for n1 in (0, 1):
            for n0 in (0, 1):
                for pin in (0, 1):
                    for sw in (0, 1):
                        chip = VirtualChip(dev)
                        chip.preload(dev.flash_start, app)
                        values = {t.find("BOOT_LOCK"): lock, t.find("nBOOT1"): n1, t.find("nBOOT0"): n0,
                                  t.find("nSWBOOT0"): sw}
                        chip.write_option_bytes(ob_fields.apply(dev, chip.option_bytes(), values))
                        chip.reset("bootloader" if pin else "app")
                        got = (lock, n1, n0, pin, sw)
                        want = next(row[5] for row in G4_BOOT_TABLE
                                    if all(w is None or w == h for w, h in zip(row[:5], got, strict=True)))
                        assert chip.boots == want, f"{name} {got}: {chip.boots}, RM0440 says {want}"


def _dfu_batch_job(tmp_path: Path, extra: str) -> Path:
    fw = tmp_path / "fw.bin"
    fw.write_bytes((0x20001000).to_bytes(4, "little") + (0x08000041).to_bytes(4, "little") + b"\x5a" * 248)
    job = tmp_path / "line.toml"
    job.write_text(f'image = "{fw}"\naddress = 0x08000000\ndevice = "L476"\ntargets = ["dfu:*"]\n{extra}')
    return job


@pytest.mark.parametrize("extra", ['[option_bytes]\nfields = { WRP2A_STRT = 0, WRP2A_END = 1 }\n',
                                   'protect = ["wrp:256"]\n'])
def test_a_dfu_batch_reaching_l476_bank2_is_refused_before_flashing(extra: str, tmp_path: Path, usb_sim,
                                                                     capsys) -> None:
    """L47x's DFU alt (as modelled) names bank 1 only: a line job that would set bank-2
    option bytes over DFU fails on each board before its flash is touched, not after."""
    bus = usb_sim(L476)
    job = _dfu_batch_job(tmp_path, extra)
    code, out, err = cli(["batch", "--job", str(job), "--report-dir", str(tmp_path / "r")], capsys)
    assert code != 0
    assert "DFU option-bytes alt" in err + out, err + out
    chip = bus.devices[0].chip
    assert chip.read(0x08000000, 8) == b"\xff" * 8  # nothing flashed
    assert not chip.wrp and chip.option_bytes2() == ob_fields.factory_block2(L476)


def test_dfu_without_device_refuses_bank2_fields_of_the_identified_l476_before_flashing(tmp_path: Path, usb_sim,
                                                                                     capsys) -> None:
    """No --device: the part is known only once identified; its alt is checked then, before
    the image goes to the flash."""
    bus = usb_sim(L476)
    fw = _dfu_batch_job(tmp_path, "").parent / "fw.bin"
    code, _, err = cli(["dfu", str(fw), "--ob", "WRP2A_STRT=0"], capsys)
    assert code == 2 and "DFU option-bytes alt" in err, err
    assert bus.devices[0].chip.read(0x08000000, 8) == b"\xff" * 8


@pytest.mark.parametrize("args", [["--ob", "nBOOT_SEL=0"], ["--ob-show"]])
def test_g0b1_dfu_option_fields_are_refused_before_flashing(args: list[str], tmp_path: Path, usb_sim,
                                                            capsys) -> None:
    """G0B1's option-bytes alt holds FLASH registers, not the area: refused before the image
    is written, so exit 2 never follows a flash that happened."""
    bus = usb_sim(devices.find("G0B1"))
    fw = _dfu_batch_job(tmp_path, "").parent / "fw.bin"
    code, _, err = cli(["dfu", str(fw), *args], capsys)
    assert code == 2 and "not supported" in err, err
    assert bus.devices[0].chip.read(0x08000000, 8) == b"\xff" * 8


def test_l476_dfu_reset_defaults_names_the_bank2_fields_it_cannot_reach(monkeypatch, capsys) -> None:
    """--ob-reset-defaults includes bank 2's WRP fields; L47x's DFU alt (as modelled) does not
    reach them, so the request is refused whole (bank 2 might still protect pages) and says
    which fields and what to use instead - before any device is looked for with --device."""
    usb_backend.forget()
    monkeypatch.delenv("STMFLASH_USB_SIM", raising=False)
    code, _, err = cli(["dfu", "--device", "L476", "--ob-reset-defaults"], capsys)
    assert code == 2 and "--ob-reset-defaults" in err and "WRP2A_STRT" in err and "uart" in err, err
