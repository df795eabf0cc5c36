"""STM32C5 option bytes: the FLASH option registers from 0x40022050, decoded only.

The area is what STM32CubeProgrammer's device database reads over the ROM bootloader (the
Option Bytes peripheral's ``<Bank interface="Bootloader">`` of STM32_Prog_DB_0x44E.xml
STM32C5x, 0x44F C53x/542, 0x45A C59x/5A3): 0x74 bytes from 0x40022050 (0x78 on C53x/542), plus
two blocks of 0x18 bytes at 0x400220E8 and 0x400221E8 that are not contiguous with it and stay
out of the area. The expected register offsets and bit masks are written out here from that
database and from ST's CMSIS headers (stm32c562xx.h, stm32c542xx.h, stm32c5a3xx.h: FLASH_TypeDef
and the FLASH_OPTSR_CUR_* / OPTSR2_CUR_* / BOOTR_CUR_* / OTPBLR_CUR_* / BL_COM_CFG_CUR_* masks),
not computed from the table under test. Where the two disagree (SINGLE_BANK: bit 23 in the
0x44E/0x45A files, bit 30 in 0x44F and in CMSIS) CMSIS is followed. The factory values and what
the ROM programs on a write are not established, so nothing is written and no default is
claimed; option_bytes.toml [C5].
"""

from __future__ import annotations

import pytest

from stmflash import devices, ob_fields
from stmflash import option_bytes as obl
from stmflash.sim import registry
from stmflash.sim.chip import VirtualChip
from tests.clirun import exit_code, result
from tests.clirun import run_cli as cli

NOPORT = "/dev/ttyNOSUCHPORT-stmflash"
BASE = 0x40022050  # FLASH_OPTSR_CUR (CMSIS FLASH_TypeDef offset 0x050 from FLASH base 0x40022000)


@pytest.fixture(autouse=True)
def _clean_registry():
    yield
    registry.clear()


def uart_url(name: str, chip: str) -> str:
    registry.register(chip, VirtualChip(devices.find(name)))
    return f"sim://{name}?chip={chip}"


# (device, PID, area size): the database's Bootloader bank "Bank 1" of each file
AREAS = [("C552", 0x44E, 0x74), ("C542", 0x44F, 0x78), ("C5A3", 0x45A, 0x74)]


@pytest.mark.parametrize("name, pid, size", AREAS)
def test_area_is_the_first_bootloader_bank_of_the_database(name: str, pid: int, size: int) -> None:
    dev = devices.find(name)
    assert dev.pid == pid and dev.ob_fields == "C5"
    assert (dev.option_bytes.start, dev.option_bytes.size) == (BASE, size)
    # 0x400220C4 (end of the 0x74 area) .. 0x400220E7: the WRP1R block is not contiguous
    assert dev.option_bytes.end <= 0x400220E8
    assert not obl.supported(dev)  # ob_layout "unknown": no RDP/WRP through a layout
    t = ob_fields.table_of(dev)
    assert t.unknown and not t.factory
    assert all(f.offset + 4 <= 0x74 for f in t.fields)
    for absent in ("WRPSGn1", "WRPSGn2", "HDP1_STRT", "HDP2_END"):  # the blocks left out
        assert t.find(absent) is None


@pytest.mark.parametrize(
    "field, address, mask",
    [  # register address from the database's Bootloader bank; mask from CMSIS stm32c562xx.h
        ("IWDG_SW", 0x40022050, 0x00000008), ("WWDG_SW", 0x40022050, 0x00000010),
        ("NRST_STOP", 0x40022050, 0x00000040), ("NRST_STDBY", 0x40022050, 0x00000080),
        ("RDP_LEVEL", 0x40022050, 0x0000FF00), ("IWDG_STOP", 0x40022050, 0x00100000),
        ("IWDG_STDBY", 0x40022050, 0x00200000), ("BOOT_SEL", 0x40022050, 0x00400000),
        ("BOOT0", 0x40022050, 0x00800000), ("EDATA_EN", 0x40022050, 0x20000000),
        ("SINGLE_BANK", 0x40022050, 0x40000000), ("SWAP_BANK", 0x40022050, 0x80000000),
        ("SRAM1_RST", 0x40022070, 0x00000001), ("SRAM2_RST", 0x40022070, 0x00000002),
        ("SRAM2_ECC", 0x40022070, 0x00000010), ("BOOT_LOCK", 0x40022080, 0x000000FF),
        ("BOOTADD", 0x40022080, 0xFFFFFF00), ("LOCKBL", 0x40022090, 0x00FFFFFF),
        ("BL_COM_CFG", 0x40022098, 0xFFFFFFFF),
    ],
)
def test_field_positions_are_the_database_and_cmsis(field: str, address: int, mask: int) -> None:
    for name, _, _ in AREAS:
        f = ob_fields.table_of(devices.find(name)).find(field)
        assert f is not None, field
        assert (BASE + f.offset, f.mask << f.bit) == (address, mask), f"{name} {field}"


def test_every_field_is_named_and_none_is_writable() -> None:
    t = ob_fields.table_of(devices.find("C552"))
    assert [f.name for f in t.fields] == [
        "IWDG_SW", "WWDG_SW", "NRST_STOP", "NRST_STDBY", "RDP_LEVEL", "IWDG_STOP", "IWDG_STDBY",
        "BOOT_SEL", "BOOT0", "EDATA_EN", "SINGLE_BANK", "SWAP_BANK", "SRAM1_RST", "SRAM2_RST",
        "SRAM2_ECC", "BOOT_LOCK", "BOOTADD", "LOCKBL", "BL_COM_CFG",
    ]
    assert all(f.writable_reason() == t.unknown for f in t.fields)


def test_documented_values_are_the_databases() -> None:
    t = ob_fields.table_of(devices.find("C552"))
    rdp, lock, sel = t.find("RDP_LEVEL"), t.find("BOOT_LOCK"), t.find("BOOT_SEL")
    # "Product state" RDP_level: 0xED Level 0, 0xD1 Level 2 with Boundary Scan, 0x72 Level 2
    assert {v: m for v, _, m in rdp.values} == {
        0xED: "level 0", 0xD1: "level 2 with boundary scan", 0x72: "level 2",
    }
    assert rdp.danger and rdp.meaning_of(0xBB).startswith("not a code")  # no level-1 code listed
    # BOOT_LOCK: 0xC3 still modifiable, 0xB4 frozen
    assert lock.name_of(0xC3) == "unlocked" and lock.name_of(0xB4) == "locked"
    # BOOT_SEL: 0 = the BOOT0 option bit, 1 = the BOOT0 pin (legacy mode)
    assert sel.name_of(0) == "option" and sel.name_of(1) == "pin" and sel.danger


def test_ob_show_on_the_virtual_c5_claims_no_default(capsys: pytest.CaptureFixture[str]) -> None:
    t = ob_fields.table_of(devices.find("C552"))
    url = uart_url("C552", "c5-show")
    code, out, err = cli(["uart", url, "--ob-show", "--json"], capsys)
    assert code == 0, err
    rows = result(out)["option_fields"]
    assert [r["field"] for r in rows] == [f.name for f in t.fields]
    assert all(r["default"] is None and r["is_default"] is None for r in rows)
    assert all(not r["writable"] and r["why"] == t.unknown for r in rows)
    code, out, err = cli(["uart", url, "--ob-show"], capsys)
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("BOOT_LOCK"))
    assert line.split()[2] == "?"  # the default column


@pytest.mark.parametrize("name", ["C552", "C542", "C5A3"])
def test_ob_show_decodes_a_stored_area(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Register words put in the virtual chip's area read back decoded field by field."""
    dev = devices.find(name)
    chip = VirtualChip(dev)
    area = bytearray(chip.option_bytes())
    # OPTSR_CUR: watchdogs software, no Stop/Standby reset, RDP 0xED, IWDG running in
    # Stop/Standby, BOOT_SEL = 1 (pin), BOOT0 = 0, EDATA_EN = 1, SINGLE_BANK = 1, SWAP_BANK = 0
    area[0x00:0x04] = (0x6070EDD8).to_bytes(4, "little")
    area[0x20:0x24] = (0x00000013).to_bytes(4, "little")  # OPTSR2_CUR: SRAM1/2 kept, ECC off
    area[0x30:0x34] = (0x080000C3).to_bytes(4, "little")  # BOOTR_CUR: 0x08000000, unlocked
    area[0x40:0x44] = (0x00000005).to_bytes(4, "little")  # OTPBLR_CUR
    chip.store_raw_option_bytes(bytes(area))
    registry.register(f"c5-dec-{name}", chip)
    code, out, err = cli(["uart", f"sim://{name}?chip=c5-dec-{name}", "--ob-show", "--json"], capsys)
    assert code == 0, err
    rows = {r["field"]: r for r in result(out)["option_fields"]}
    want = {
        "IWDG_SW": 1, "WWDG_SW": 1, "NRST_STOP": 1, "NRST_STDBY": 1, "RDP_LEVEL": 0xED,
        "IWDG_STOP": 1, "IWDG_STDBY": 1, "BOOT_SEL": 1, "BOOT0": 0, "EDATA_EN": 1,
        "SINGLE_BANK": 1, "SWAP_BANK": 0, "SRAM1_RST": 1, "SRAM2_RST": 1, "SRAM2_ECC": 1,
        "BOOT_LOCK": 0xC3, "BOOTADD": 0x080000, "LOCKBL": 5,
    }
    assert {k: rows[k]["value"] for k in want} == want
    assert rows["RDP_LEVEL"]["name"] == "level0" and rows["BOOT_LOCK"]["name"] == "unlocked"
    assert rows["BOOT_SEL"]["name"] == "pin" and rows["SINGLE_BANK"]["name"] == "single"


@pytest.mark.parametrize(
    "request_",
    [
        ["--ob", "IWDG_SW=0"], ["--ob", "RDP_LEVEL=level2"], ["--ob", "BOOT_SEL=option"],
        ["--ob", "SWAP_BANK=1"], ["--ob", "BOOTADD=0x080001"], ["--ob", "BOOT_LOCK=locked"],
        ["--ob", "WRPSGn1=0"], ["--ob", "NOSUCHFIELD=1"], ["--ob-reset-defaults"],
    ],
)
def test_every_write_request_exits_2_before_the_port_is_opened(request_: list[str], capsys) -> None:
    code, _, err = cli(["uart", "sim://C552?chip=c5-never", *request_], capsys)
    assert code == 2, err
    assert "not established" in err
    assert registry.get("c5-never") is None  # the virtual chip was never created
    assert exit_code("uart", NOPORT, "--device", "C542", *request_) == 2  # no such port: not opened
