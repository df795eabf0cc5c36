"""L4R/L4S (DEV_ID 0x470) option bytes at 0x1FF00000, not L4's 0x1FFF7800.

RM0432 section 3.4.1 moves the L4+ option bytes (bank 1 at 0x1FF00000, bank 2 at 0x1FF01000;
AN5017 Table 9); STM32CubeProgrammer's device database (STM32_Prog_DB_0x470.xml, Bootloader
bank) reads bank 1 there, and a real L4R9 ROM lists its option-bytes alt as
"@Option Bytes  /0x1FF00000/01*040 e/0x1FF01000/01*040 e" (Zephyr's SensorTile.box board
documentation). The virtual L4R5 presents its area there, over UART and DFU.
"""

from __future__ import annotations

import pytest

from stmflash import devices, ob_fields
from stmflash.sim import registry, usb_backend
from stmflash.sim.chip import VirtualChip
from tests.clirun import result, run_cli

L4R5 = devices.find("L4R5")


def test_the_table_puts_bank_1_at_0x1ff00000() -> None:
    assert (L4R5.option_bytes.start, L4R5.option_bytes.size) == (0x1FF00000, 40)
    alt = next(a for a in L4R5.dfu_alts() if "Option" in a)
    assert alt == "@Option Bytes  /0x1FF00000/01*040 e/0x1FF01000/01*040 e"
    t = ob_fields.table_of(L4R5)
    # OPTR + complement, PCROP1SR +8, PCROP1ER +0x10, WRP1AR +0x18, WRP1BR +0x20 (database)
    assert {f.name: f.offset for f in t.fields if f.name in ("RDP", "PCROP1_STRT", "PCROP1_END",
                                                             "WRP1A_STRT", "WRP1B_STRT")} == {
        "RDP": 0, "PCROP1_STRT": 8, "PCROP1_END": 0x10, "WRP1A_STRT": 0x18, "WRP1B_STRT": 0x20}
    assert t.find("PCROP1_STRT").width == 17


def test_virtual_l4r5_answers_at_the_rm0432_address(capsys) -> None:
    chip = registry.register("l4p-read", VirtualChip(L4R5))
    # the production OPTR value as an L4R5AI reads it at 0x1FF00000 (NuttX PR #4468), complemented
    assert chip.read(0x1FF00000, 8) == bytes.fromhex("aaf8efff55071000")
    assert chip.region_kind(0x1FFF7800) is None  # nothing at the L47x address
    code, out, err = run_cli(["uart", "sim://L4R5?chip=l4p-read", "--ob-show", "--json"], capsys)
    assert code == 0, err
    rows = {r["field"]: r["value"] for r in result(out)["option_fields"]}
    assert rows["RDP"] == 0xAA and rows["DBANK"] == 1 and rows["nSWBOOT0"] == 1


def test_raw_write_at_the_new_address_over_uart(capsys) -> None:
    chip = registry.register("l4p-raw", VirtualChip(L4R5))
    area = bytearray(chip.option_bytes())
    ob_fields.table_of(L4R5).find("BOR_LEV").put(area, 3)
    code, _, err = run_cli(["uart", "sim://L4R5?chip=l4p-raw", "--write-option-bytes", area.hex(), "-q"], capsys)
    assert code == 0, err
    assert ob_fields.table_of(L4R5).find("BOR_LEV").get(chip.read(0x1FF00000, 40)) == 3


@pytest.fixture
def usb(tmp_path, monkeypatch):
    monkeypatch.setenv("STMFLASH_USB_SIM", f"L4R5={tmp_path / 'l4r5.img'}")
    usb_backend.forget()
    yield usb_backend.bus_from_env().snapshot()[0]
    usb_backend.forget()


def test_dfu_sets_a_field_through_the_alt(usb, capsys) -> None:
    code, out, err = run_cli(["dfu", "--device", "L4R5", "--ob", "BOR_LEV=4", "--ob-show", "--json"], capsys)
    assert code == 0, err
    assert result(out)["option_fields_verified"]
    assert ob_fields.table_of(L4R5).find("BOR_LEV").get(usb.chip.option_bytes()) == 4


# ---- L4P5/L4Q5 (DEV_ID 0x471): the same area, RDP and write protection through the layout ----
L4P5 = devices.find("L4P5")


def word(area: bytes, off: int) -> int:
    return int.from_bytes(area[off : off + 4], "little")


def test_l4p5_area_is_the_l4plus_one_with_7_bit_page_fields() -> None:
    assert (L4P5.option_bytes.start, L4P5.option_bytes.size) == (0x1FF00000, 40)
    t = ob_fields.table_of(L4P5)
    assert {f.name: (f.offset, f.width) for f in t.fields if f.name.startswith(("WRP1", "PCROP1"))} == {
        "PCROP1_STRT": (8, 16), "PCROP1_END": (0x10, 16), "WRP1A_STRT": (0x18, 7), "WRP1A_END": (0x18, 7),
        "WRP1B_STRT": (0x20, 7), "WRP1B_END": (0x20, 7)}
    assert not t.factory and t.unknown  # no production value claimed


def test_l4p5_readout_protection_and_write_protection_over_uart(capsys) -> None:
    chip = registry.register("l4p5-prot", VirtualChip(L4P5))
    start = chip.option_bytes()
    assert chip.read(0x1FF00000, 8) == bytes.fromhex("aaf8efff55071000")  # level 0, complemented
    code, _, err = run_cli(["uart", "sim://L4P5?chip=l4p5-prot", "--write-protect", "5-9", "-q"], capsys)
    assert code == 0, err
    area = chip.option_bytes()
    assert word(area, 0x18) & 0x007F007F == 0x00090005 and word(area, 0x1C) == ~word(area, 0x18) & 0xFFFFFFFF
    assert chip.wrp == frozenset(range(5, 10))
    assert area[:0x18] == start[:0x18] and area[0x20:] == start[0x20:]  # nothing else touched
    code, out, err = run_cli(["uart", "sim://L4P5?chip=l4p5-prot", "--ob-show", "--json"], capsys)
    assert code == 0, err
    rows = {r["field"]: r for r in result(out)["option_fields"]}
    assert (rows["WRP1A_STRT"]["value"], rows["WRP1A_END"]["value"]) == (5, 9)
    code, _, err = run_cli(["uart", "sim://L4P5?chip=l4p5-prot", "--write-unprotect", "--protect", "-q"], capsys)
    assert code == 0, err
    assert chip.rdp_level == 1 and chip.wrp == frozenset() and chip.option_bytes()[0] == 0xBB
    code, _, err = run_cli(["uart", "sim://L4P5?chip=l4p5-prot", "--unprotect", "-q"], capsys)
    assert code == 0, err
    assert chip.rdp_level == 0 and chip.option_bytes()[0] == 0xAA


def test_l4p5_user_fields_are_refused_before_the_port_is_opened(capsys) -> None:
    for args in (["--ob", "BOR_LEV=3"], ["--ob-reset-defaults"]):
        code, _, err = run_cli(["uart", "sim://L4P5?chip=l4p5-refused", "--device", "L4P5", *args], capsys)
        assert code == 2 and "factory values" in err, err
        assert registry.get("l4p5-refused") is None


def test_l4p5_write_protection_over_dfu(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("STMFLASH_USB_SIM", f"L4P5={tmp_path / 'l4p5.img'}")
    usb_backend.forget()
    try:
        dev = usb_backend.bus_from_env().snapshot()[0]
        code, _, err = run_cli(["dfu", "--device", "L4P5", "--write-protect", "3-4", "-q"], capsys)
        assert code == 0, err
        assert dev.chip.wrp == frozenset({3, 4})
        assert word(dev.chip.option_bytes(), 0x18) & 0x007F007F == 0x00040003
    finally:
        usb_backend.forget()
