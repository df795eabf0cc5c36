"""The option-byte loader's complement check where the reference manual gives word-wise
forced values (RM0440 3.4.2, RM0490 Rev 5 4.4.2; G0 as C0, RM0444 3.4.2's caution), the G4 and C0 production values those
manuals print, RM0440's category-4 table and its boot table (Table 5, BOOT_LOCK)."""

from __future__ import annotations

import pytest

from stmflash import devices, ob_fields
from stmflash import option_bytes as obl
from stmflash.sim.chip import VirtualChip

L476 = devices.find("L476")
G474 = devices.find("G474")


def bank2(dev: devices.Device) -> list[int]:
    return [u.index for u in dev.bank_units(2)]


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


@pytest.mark.parametrize("name", ["C031", "G071", "G0B1"])
def test_c0_word_mismatch_forces_rm0490s_values_and_boot_lock(name: str) -> None:
    """RM0490 Rev 5 4.4.2: USR OPT all ones but BOR_EN 0, RDP level 1, WRP no protection,
    PCROP all memory, BOOT_LOCK 'boot forced from main flash memory' - so a part whose SECR
    programming was interrupted no longer reaches its ROM, whatever BOOT0 says. G0: the same
    flash interface; RM0444 3.4.2 warns that the mismatch values 'force a secure configuration
    that might permanently lock the device'."""
    dev = devices.find(name)
    chip = VirtualChip(dev)
    t = ob_fields.table_of(dev)
    chip.reset("bootloader")
    assert chip.boots == "system"
    ob = obl.normalize(dev, bytes(chip.option_bytes()))
    chip.store_raw_option_bytes(_bad_complement(ob, 0x70))
    chip.reset("bootloader")
    view = chip.loaded_ob_view()
    assert (t.find("BOOT_LOCK").get(view), t.find("SEC_SIZE").get(view)) == (1, 0)
    assert chip.boots == "flash"
    # the OPTR word: BOR_EN 0 and level 1, the boot fields all ones
    bad = bytearray(ob)
    bad[1] |= 0x01  # BOR_EN = 1 written ...
    chip.store_raw_option_bytes(_bad_complement(obl.normalize(dev, bytes(bad)), 0x00))  # ... complement damaged
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


def test_g43x_follows_rm0440_chapter_5(capsys) -> None:
    """Category 2 (G431/G441, 64 pages of 2 KiB): OPTR bits 22:20 reserved (no DBANK, BFB2 or
    PB4_PUPEN), PCROP1 14 bits, WRP page fields 6 bits, SEC_SIZE1 7 bits (RM0440 5.4.1); the
    WRP fields reach the last page and no further, over the field and --write-protect."""
    from tests.clirun import result
    from tests.clirun import run_cli as cli

    dev = devices.find("G431")
    t = ob_fields.table_of(dev)
    names = {f.name for f in t.fields}
    assert not {"DBANK", "BFB2", "PB4_PUPEN"} & names
    widths = {n: t.find(n).width for n in ("PCROP1_STRT", "PCROP1_END", "WRP1A_STRT", "WRP1B_END", "SEC_SIZE1")}
    assert widths == {"PCROP1_STRT": 14, "PCROP1_END": 14, "WRP1A_STRT": 6, "WRP1B_END": 6, "SEC_SIZE1": 7}
    chip = VirtualChip(dev)
    assert all(r["is_default"] for r in ob_fields.decode(dev, chip.loaded_ob_view()))
    assert int.from_bytes(chip.option_bytes()[0x18:0x1C], "little") == 0xFF00FFFF
    # the last page (63) is the largest a 6-bit field names; 64 is refused before the port opens
    code, _, err = cli(["uart", "/dev/nonexistent-g431", "--device", "G431", "--ob", "WRP1A_STRT=64"], capsys)
    assert code == 2 and "WRP1A_STRT" in err
    from stmflash.sim import registry

    registry.register("g431-wrp", chip)
    code, _, err = cli(["uart", "sim://G431?chip=g431-wrp", "--write-protect", "63", "-q"], capsys)
    assert code == 0, err
    code, out, err = cli(["uart", "sim://G431?chip=g431-wrp", "--ob-show", "--json"], capsys)
    assert code == 0 and result(out)["wrp_units"] == [63] and chip.wrp == {63}, err
    view = chip.loaded_ob_view()
    assert (t.find("WRP1A_STRT").get(view), t.find("WRP1A_END").get(view)) == (63, 63)


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


@pytest.mark.parametrize("name", ["G431", "G474", "G491"])
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


@pytest.mark.parametrize("name", ["G474", "F103", "L476"])
def test_ob_show_warns_where_value_and_complement_disagree(name: str, capsys) -> None:
    """--ob-show decodes what is stored; where a complement does not match the chip runs
    with another value, and the report names those addresses (word-wise on G4, byte-wise
    on F1 and L4, both blocks)."""
    from stmflash.sim import registry
    from tests.clirun import result
    from tests.clirun import run_cli as cli

    dev = devices.find(name)
    chip = VirtualChip(dev)
    registry.register(f"mm-{name}", chip)
    url = f"sim://{name}?chip=mm-{name}"
    code, out, _ = cli(["uart", url, "--ob-show", "--json"], capsys)
    assert code == 0 and "option_bytes_complement_mismatch" not in result(out)
    period, comp, _ = (int(x) for x in dev.ob_layout["complement"])
    at = 3 * period  # the fourth slot: F1 WRP0, L4/G4 WRP1AR (a one-word option)
    ob = bytearray(chip.option_bytes())
    ob[at], ob[at + comp] = 0x12, 0x00  # a value whose complement byte is not 0xED
    chip.store_raw_option_bytes(bytes(ob))
    chip.reset()
    code, out, err = cli(["uart", url, "--ob-show", "--json"], capsys)
    assert code == 0, err
    bad = result(out)["option_bytes_complement_mismatch"]
    assert bad == [f"0x{dev.option_bytes.start + at:08X}"], bad
    code, out, err = cli(["uart", url, "--ob-show"], capsys)
    assert code == 0 and "value and complement do not match" in err, err


def test_ob_show_names_a_bank2_mismatch_at_its_own_address(capsys) -> None:
    from stmflash.sim import registry
    from tests.clirun import result
    from tests.clirun import run_cli as cli

    chip = VirtualChip(G474)
    registry.register("mm-g474-b2", chip)
    block = bytearray(chip.option_bytes2())
    block[0x18 + 4] ^= 0x01  # WRP2AR's complement
    chip._store_option_bytes2(bytes(block), reload=True)
    code, out, err = cli(["uart", "sim://G474?chip=mm-g474-b2", "--ob-show", "--json"], capsys)
    assert code == 0, err
    assert result(out)["option_bytes_complement_mismatch"] == ["0x1FFFF818"]


def test_ob_show_reports_the_protection_the_loader_takes(capsys) -> None:
    """--ob-show and --read-option-bytes decode what the option-byte loader takes, not the
    stored bytes: a G4 WRP area whose complement is damaged loads as no protection (RM0440
    3.4.2), and an F1 RDP byte with a damaged complement is level 1 (RM0008 OPTERR: 0xFF)."""
    from stmflash.sim import registry
    from tests.clirun import result
    from tests.clirun import run_cli as cli

    chip = VirtualChip(G474)
    ob = obl.set_wrp(G474, chip.option_bytes(), [2, 3])
    bad = _bad_complement(ob, 0x18)
    chip.store_raw_option_bytes(bad)
    chip.reset()
    registry.register("g4-wrp-mm", chip)
    assert obl.wrp_units(G474, bad) == {2, 3}  # what the stored bytes say
    for args in (["--ob-show", "--json"], ["--read-option-bytes", "--json"]):
        code, out, err = cli(["uart", "sim://G474?chip=g4-wrp-mm", *args], capsys)
        assert code == 0, err
        assert result(out)["wrp_units"] == [] and not chip.wrp, args
    f103 = devices.find("F103")
    area = bytearray(VirtualChip(f103).option_bytes())
    area[1] ^= 0x01  # nRDP no longer the complement of RDP 0xA5
    assert obl.rdp_level(f103, bytes(area)) == 0 and obl.loaded_protection(f103, bytes(area))[0] == 1
