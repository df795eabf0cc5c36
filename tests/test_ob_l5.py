"""STM32L5 option bytes: the FLASH option registers at 0x40022040 (48 bytes), as
STM32CubeProgrammer's device database (DEV_ID 0x472, its "Option Bytes" bank for the
Bootloader interface) reads them over the ROM bootloader; option_bytes.toml [L5].

The expected words and bit positions are written out here from that database and from CMSIS
stm32l552xx.h (the masks in the comments), not computed from the table under test. The factory
(production) values are not established (ST's SVD holds none, RM0438's were not available),
so L5 is "partial": every field decoded with no default claimed, RDP and write protection
through the family layout over UART, user fields refused with the reason; its DfuSe
descriptors have no option-bytes alt (AN2606), so nothing goes over DFU.
"""

from __future__ import annotations

import pytest

from stmflash import devices, ob_fields
from stmflash import option_bytes as obl
from stmflash.sim import registry, usb_backend
from stmflash.sim.chip import VirtualChip
from tests.clirun import result
from tests.clirun import run_cli as cli

L552 = devices.find("L552")
NOPORT = "/dev/ttyNOSUCHPORT-stmflash"

# The virtual L5's start (devices.toml [family.L5] ob_layout default, not a production value):
# OPTR with RDP 0xAA, BOR level 0, every nRST_/IWDG_/WWDG_ bit 1, DB256 = DBANK = 1,
# SRAM2_PE = SRAM2_RST = 1, nSWBOOT0 = nBOOT0 = 1, PA15_PUPEN = 1, TZEN = 0, reserved bits 0.
START = {
    0x00: 0x1F6F70AA,  # FLASH_OPTR
    0x04: 0x08000000,  # NSBOOTADD0R: 0x08000000
    0x08: 0x0BF90000,  # NSBOOTADD1R: system memory
    0x0C: 0x0C000000,  # SECBOOTADD0R
    0x10: 0x0000007F,  # SECWM1R1: start 0x7F > end 0, no secure area
    0x14: 0x00000000,  # SECWM1R2: HDP1EN = 0
    0x18: 0x0000007F,  # WRP1AR: no area
    0x1C: 0x0000007F,  # WRP1BR
    0x20: 0x0000007F,  # SECWM2R1
    0x24: 0x00000000,  # SECWM2R2
    0x28: 0x0000007F,  # WRP2AR
    0x2C: 0x0000007F,  # WRP2BR
}


def word(area: bytes, off: int) -> int:
    return int.from_bytes(area[off : off + 4], "little")


def uart_url(name: str) -> str:
    registry.register(name, VirtualChip(L552))
    return f"sim://L552?chip={name}"


@pytest.fixture(autouse=True)
def _clean_registry():
    yield
    registry.clear()


def test_area_is_the_register_view_of_cubeprogrammers_bootloader_bank() -> None:
    assert (L552.option_bytes.start, L552.option_bytes.size) == (0x40022040, 0x30)
    assert obl.supported(L552) and L552.ob_layout["rdp"] == 0
    assert not [a for a in L552.dfu_alts() if "option" in a.lower()]  # AN2606: no option-bytes alt
    area = VirtualChip(L552).option_bytes()
    assert {off: word(area, off) for off in START} == START
    assert obl.rdp_level(L552, area) == 0 and obl.wrp_units(L552, area) == set()


@pytest.mark.parametrize(
    "name, offset, mask",
    [  # CMSIS stm32l552xx.h masks; register offsets from 0x40022040 (FLASH_TypeDef)
        ("RDP", 0x00, 0x000000FF), ("BOR_LEV", 0x00, 0x00000700), ("nRST_STOP", 0x00, 0x00001000),
        ("nRST_STDBY", 0x00, 0x00002000), ("nRST_SHDW", 0x00, 0x00004000), ("IWDG_SW", 0x00, 0x00010000),
        ("IWDG_STOP", 0x00, 0x00020000), ("IWDG_STDBY", 0x00, 0x00040000), ("WWDG_SW", 0x00, 0x00080000),
        ("SWAP_BANK", 0x00, 0x00100000), ("DB256K", 0x00, 0x00200000), ("DBANK", 0x00, 0x00400000),
        ("SRAM2_PE", 0x00, 0x01000000), ("SRAM2_RST", 0x00, 0x02000000), ("nSWBOOT0", 0x00, 0x04000000),
        ("nBOOT0", 0x00, 0x08000000), ("PA15_PUPEN", 0x00, 0x10000000), ("TZEN", 0x00, 0x80000000),
        ("NSBOOTADD0", 0x04, 0xFFFFFF80), ("NSBOOTADD1", 0x08, 0xFFFFFF80), ("BOOT_LOCK", 0x0C, 0x00000001),
        ("SECBOOTADD0", 0x0C, 0xFFFFFF80), ("SECWM1_PSTRT", 0x10, 0x0000007F), ("SECWM1_PEND", 0x10, 0x007F0000),
        ("HDP1_PEND", 0x14, 0x007F0000), ("HDP1EN", 0x14, 0x80000000), ("WRP1A_PSTRT", 0x18, 0x0000007F),
        ("WRP1A_PEND", 0x18, 0x007F0000), ("WRP1B_PSTRT", 0x1C, 0x0000007F), ("WRP1B_PEND", 0x1C, 0x007F0000),
        ("SECWM2_PSTRT", 0x20, 0x0000007F), ("SECWM2_PEND", 0x20, 0x007F0000), ("HDP2_PEND", 0x24, 0x007F0000),
        ("HDP2EN", 0x24, 0x80000000), ("WRP2A_PSTRT", 0x28, 0x0000007F), ("WRP2A_PEND", 0x28, 0x007F0000),
        ("WRP2B_PSTRT", 0x2C, 0x0000007F), ("WRP2B_PEND", 0x2C, 0x007F0000),
    ],
)
def test_field_positions_are_cmsis_and_the_database(name: str, offset: int, mask: int) -> None:
    f = ob_fields.table_of(L552).find(name)
    assert f is not None, name
    assert f.offset == offset and f.mask << f.bit == mask, f"{name}: 0x{f.mask << f.bit:08X} at {f.offset:#x}"


def test_ob_show_decodes_the_virtual_area_and_claims_no_default(capsys: pytest.CaptureFixture[str]) -> None:
    t = ob_fields.table_of(L552)
    url = uart_url("l5-show")
    code, out, err = cli(["uart", url, "--ob-show", "--json"], capsys)
    assert code == 0, err
    rows = {r["field"]: r for r in result(out)["option_fields"]}
    assert list(rows) == [f.name for f in t.fields]
    assert all(r["default"] is None and not r["writable"] and r["why"] == t.unknown for r in rows.values())
    want = {"RDP": 0xAA, "BOR_LEV": 0, "DBANK": 1, "DB256": 1, "SWAP_BANK": 0, "nSWBOOT0": 1, "nBOOT0": 1,
            "PA15_PUPEN": 1, "TZEN": 0, "NSBOOTADD0": 0x08000000 >> 7, "NSBOOTADD1": 0x0BF90000 >> 7,
            "WRP1A_PSTRT": 0x7F, "WRP1A_PEND": 0, "WRP2B_PSTRT": 0x7F, "HDP1EN": 0, "SECWM2_PSTRT": 0x7F}
    assert {k: rows[k]["value"] for k in want} == want
    assert rows["RDP"]["name"] == "level0" and rows["DBANK"]["name"] == "dual" and rows["nSWBOOT0"]["name"] == "pin"
    code, out, err = cli(["uart", url, "--ob-show"], capsys)
    assert code == 0 and "NSBOOTADD1" in out and "?" in out


def test_readout_protection_through_the_registers(capsys: pytest.CaptureFixture[str]) -> None:
    url = uart_url("l5-rdp")
    chip = registry.get("l5-rdp")
    chip.program(L552.flash_start, b"\x11" * 16)
    code, _, err = cli(["uart", url, "--protect", "-q"], capsys)
    assert code == 0, err
    area = chip.option_bytes()
    assert chip.rdp_level == 1 and area[0] == 0xDC  # the database's level-1 value
    assert word(area, 0) >> 8 == START[0] >> 8  # the rest of OPTR kept
    code, _, err = cli(["uart", url, "--unprotect", "-q"], capsys)
    assert code == 0, err
    assert chip.rdp_level == 0 and chip.option_bytes()[0] == 0xAA
    assert chip.read(L552.flash_start, 16) == b"\xff" * 16  # the regression mass-erased the flash


def test_write_protection_through_the_wrp1a_register(capsys: pytest.CaptureFixture[str]) -> None:
    url = uart_url("l5-wrp")
    chip = registry.get("l5-wrp")
    code, _, err = cli(["uart", url, "--write-protect", "2-3", "-q"], capsys)
    assert code == 0, err
    area = chip.option_bytes()
    assert word(area, 0x18) & 0x007F007F == 0x00030002  # WRP1A_PEND = 3, WRP1A_PSTRT = 2
    assert chip.wrp == frozenset({2, 3})
    page, free = L552.erase_units[2], L552.erase_units[4]
    chip.program(page.address, b"\x00" * 16)  # the flash interface leaves a protected page alone
    chip.program(free.address, b"\x00" * 16)
    assert chip.read(page.address, 16) == b"\xff" * 16 and chip.read(free.address, 16) == b"\x00" * 16
    code, out, err = cli(["uart", url, "--ob-show", "--json"], capsys)
    rows = {r["field"]: r["value"] for r in result(out)["option_fields"]}
    assert (rows["WRP1A_PSTRT"], rows["WRP1A_PEND"]) == (2, 3)
    assert {off: word(chip.option_bytes(), off) for off in START if off != 0x18} == {
        off: v for off, v in START.items() if off != 0x18}  # every other register kept
    code, _, err = cli(["uart", url, "--write-unprotect", "-q"], capsys)
    assert code == 0, err
    assert chip.wrp == frozenset() and word(chip.option_bytes(), 0x18) == START[0x18]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ob", "IWDG_SW=0"], "not written: L5: the factory option values"),
        (["--ob", "TZEN=1"], "not written: L5"),
        (["--ob", "NSBOOTADD0=0x100000"], "not written: L5"),
        (["--ob", "WRP1A_PEND=0x80"], "not written: L5"),
        (["--ob", "NO_SUCH=1"], "not written: L5"),
        (["--ob-reset-defaults"], "L5: the factory option values"),
        (["--protect-level", "2"], "--i-understand-rdp2-is-permanent"),
        (["--write-option-bytes", "cc" * 48], "--i-understand-rdp2-is-permanent"),
    ],
)
def test_refused_with_exit_2_before_the_port_is_opened(args, message, capsys) -> None:
    code, _, err = cli(["uart", "sim://L552?chip=l5-never", *args], capsys)
    assert code == 2 and message in err, err
    assert registry.get("l5-never") is None  # the sim:// port was never opened
    code, _, err = cli(["uart", NOPORT, "--device", "L552", *args], capsys)
    assert code == 2 and message in err, err  # a missing port would be exit 3


def test_dfu_has_no_option_bytes_alt(monkeypatch, tmp_path, capsys) -> None:
    usb_backend.forget()
    monkeypatch.setenv("STMFLASH_USB_SIM", f"L552={tmp_path / 'l5.img'}")
    try:
        code, _, err = cli(["dfu", "--device", "L552", "--ob-show"], capsys)
    finally:
        usb_backend.forget()
    assert code == 2 and "no option-bytes alternate setting" in err, err
