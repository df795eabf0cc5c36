"""ROM bootloader interfaces and pins (stmflash/data/rom_interfaces.toml, ST AN2606 Rev 70).

The table says which peripherals a part's system bootloader enables and on which pins, so a
user learns before wiring whether a link can reach the ROM; ``stmflash devices X`` shows it
and ``--enter`` over USB uses it to refuse a part whose ROM has no USB DFU.
"""

from __future__ import annotations

import json

import pytest

from stmflash import devices
from stmflash import rom_interfaces as ri
from tests.clirun import run_cli


def pins_of(name: str, bl_id: int | None = None) -> list[str]:
    return [i.text() for p in ri.parts_for(devices.find(name), bl_id) for i in p.interfaces]


# ---- the data ---------------------------------------------------------------------------------


def test_every_entry_loads_names_a_device_and_cites_an2606() -> None:
    parts = ri.all_parts()
    names = {d.name for d in devices.all_devices()}
    assert len(parts) >= 90
    for p in parts:
        assert p.device in names, p.device
        assert p.source.startswith("AN2606 Rev 70 sec. ") and "Table " in p.source, p.source
        assert p.interfaces
        for b in p.bl_ids:  # a per-version entry names bootloader IDs its device entry has
            assert any(b in d.bl_ids for d in devices.all_devices() if d.name == p.device), (p.device, b)


def test_only_parts_outside_an2606_are_not_recorded() -> None:
    missing = [d for d in devices.all_devices() if not ri.parts_for(d)]
    assert missing, "the table has parts AN2606 does not cover (STM32W, F103 0x641)"
    for d in missing:
        assert "Not in AN2606" in d.note, d.name


def test_every_pin_is_a_port_letter_and_a_pin_number() -> None:
    roles = {"usart": {"tx", "rx"}, "i2c": {"scl", "sda"}, "i3c": {"scl", "sda"}, "can": {"tx", "rx"},
             "spi": {"nss", "sck", "miso", "mosi"}, "dfu": {"dm", "dp"}}
    n = 0
    for p in ri.all_parts():
        for i in p.interfaces:
            assert {r for r, _ in i.pins} == roles[i.kind], i
            for _role, pin in i.pins:
                port, number = ri.parse_pin(pin)
                assert "A" <= port <= "M" and 0 <= number <= 15
                n += 1
    assert n > 500


@pytest.mark.parametrize("bad", ["PA16", "A9", "pa9", "PA", "P9", "PAA9", ""])
def test_parse_pin_refuses_what_is_not_a_gpio(bad: str) -> None:
    with pytest.raises(ValueError):
        ri.parse_pin(bad)


@pytest.mark.parametrize(
    "raw, why",
    [
        ({"device": "X", "source": "AN2606 x", "interfaces": [{"name": "USART1", "tx": "PA9"}]}, "needs pins"),
        ({"device": "X", "source": "AN2606 x", "interfaces": [{"name": "USART1", "tx": "PA9", "rx": "PZ99"}]}, "bad pin"),
        ({"device": "X", "source": "AN2606 x", "interfaces": [{"name": "QSPI1", "tx": "PA9", "rx": "PA10"}]}, "unknown interface"),
        ({"device": "X", "source": "a blog", "interfaces": [{"name": "USART1", "tx": "PA9", "rx": "PA10"}]}, "AN2606"),
        ({"device": "X", "source": "AN2606 x", "interfaces": []}, "no interfaces"),
    ],
)
def test_a_malformed_entry_is_refused_when_loading(raw: dict, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        ri._part(raw)


# ---- spot checks against AN2606 Rev 70 ------------------------------------------------------------


def test_l05x_rom_has_usart1_usart2_spi_and_no_usb() -> None:
    """AN2606 sec. 65.1 Table 146: USART1 PA9/PA10, USART2 PA2/PA3, SPI1, SPI2; no DFU."""
    dev = devices.find("L053")
    assert pins_of("L053")[:2] == ["USART1 TX PA9 / RX PA10", "USART2 TX PA2 / RX PA3"]
    assert "SPI2 NSS PB12 / SCK PB13 / MISO PB14 / MOSI PB15" in pins_of("L053")
    assert ri.usb_dfu(dev) is False
    assert ri.usart_pins(dev) == ["USART1 TX PA9 / RX PA10", "USART2 TX PA2 / RX PA3"]


def test_f40x_bootloader_versions_differ() -> None:
    """AN2606 sec. 34.1.1 Table 73 (V3.x: USART1, USART3 twice, CAN2, DFU) and sec. 34.2.1
    Table 75 (V9.x adds I2C1-3, SPI1-2)."""
    v31 = pins_of("F407@0x31")
    assert v31 == ["USART1 TX PA9 / RX PA10", "USART3 TX PB10 / RX PB11", "USART3 TX PC10 / RX PC11",
                   "CAN2 TX PB13 / RX PB5", "USB DFU DM PA11 / DP PA12"]
    v91 = pins_of("F407@0x91")
    assert "SPI2 NSS PI0 / SCK PI1 / MISO PI2 / MOSI PI3" in v91 and "I2C3 SCL PA8 / SDA PC9" in v91
    assert not any(i.startswith("SPI") for i in v31)


def test_remapped_and_second_pin_sets() -> None:
    # AN2606 sec. 22.1 Table 47: F105/107 USART2 on its remapped pins, CAN2 TX PB6 / RX PB5
    assert "USART2 TX PD5 / RX PD6" in pins_of("F105") and "CAN2 TX PB6 / RX PB5" in pins_of("F105")
    # AN2606 sec. 60.1 Table 135: H74x USART1 also on PB14/PB15
    assert pins_of("H743")[:2] == ["USART1 TX PA9 / RX PA10", "USART1 TX PB14 / RX PB15"]
    # AN2606 sec. 48.1 Table 107: G07x USART3 on PC10/PC11, no USB
    assert "USART3 TX PC10 / RX PC11" in pins_of("G071") and ri.usb_dfu(devices.find("G071")) is False
    # AN2606 sec. 62.1 Table 139: H7R/S USB DFU on port M
    assert "USB DFU DM PM12 / DP PM11" in pins_of("H7S3")


def test_l07x_v11_has_no_usb_and_the_device_table_agrees() -> None:
    """AN2606 sec. 66.1.1 Table 148 (V4.x, BL 0x41: USB DFU) vs sec. 66.2.1 Table 150 (V11.x,
    BL 0xB2: I2C and SPI, no USB): the virtual L07x@0xB2 must not offer DFU either."""
    v4, v11 = devices.find("L072@0x41"), devices.find("L072@0xB2")
    assert ri.usb_dfu(v4) is True and "dfu" in v4.interfaces
    assert ri.usb_dfu(v11) is False and "dfu" not in v11.interfaces


# Parts whose ROM has USB DFU per AN2606 but whose DfuSe descriptors (alt strings, transfer
# size) stmflash does not record: the device table (and the virtual chip) offer USART only,
# stricter than silicon, never more forgiving.  F301 and F318 share an entry (0x40 has DFU).
DFU_NOT_MODELLED = {
    "STM32F301xx/F302x4(6/8)/F318xx", "STM32G0B0xx", "STM32H5E4xx/5E5xx/5F4xx/5F5xx",
    "STM32U375xx/385xx", "STM32U3B5xx/3C5xx", "STM32U073xx/083xx", "STM32C55xxx/562xx",
    "STM32C53xxx/542xx", "STM32C5A3xx/59xxx", "STM32WBA2xxx",
}


def test_the_device_table_offers_dfu_only_where_an2606_lists_it() -> None:
    offered_without_rom = [d.name for d in devices.all_devices()
                           if "dfu" in d.interfaces and ri.usb_dfu(d) is False]
    assert offered_without_rom == []
    not_modelled = {d.name for d in devices.all_devices()
                    if "dfu" not in d.interfaces and ri.usb_dfu(d) is True}
    assert not_modelled == DFU_NOT_MODELLED


def test_no_usb_reason_names_the_usart_pins_and_the_table() -> None:
    reason = ri.no_usb_reason(devices.find("L053"))
    assert reason is not None
    assert "no USB DFU" in reason and "Table 146" in reason and "USART1 TX PA9 / RX PA10" in reason
    assert ri.no_usb_reason(devices.find("F407")) is None  # its ROM has USB DFU
    assert ri.no_usb_reason(devices.find("0x641")) is None  # not recorded: nothing claimed


# ---- CLI --------------------------------------------------------------------------------------------


def test_devices_detail_shows_where_the_rom_listens(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["devices", "L053"], capsys)
    assert code == 0
    lines = out.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("  ROM listens on:"))
    assert "AN2606 Rev 70 sec. 65.1 Table 146" in lines[i]
    assert lines[i + 1:i + 3] == ["    USART1 TX PA9 / RX PA10", "    USART2 TX PA2 / RX PA3"]
    assert not any("USB DFU" in line for line in lines[i:i + 6])


def test_devices_detail_per_bootloader_version_and_not_recorded(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["devices", "F2"], capsys)
    assert code == 0 and "BL 0x20: AN2606 Rev 70 sec. 24.1.1 Table 51" in out and "BL 0x33: " in out
    code, out, _ = run_cli(["devices", "0x641"], capsys)
    assert code == 0 and "ROM listens on:   not recorded" in out


def test_devices_json_rom_interfaces(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["devices", "F2", "--json"], capsys)
    assert code == 0
    (doc,) = json.loads(out)
    v2, v3 = doc["rom_interfaces"]
    assert v2["bl_ids"] == ["0x20"] and v3["bl_ids"] == ["0x33"]
    assert v3["interfaces"][-1] == {"name": "USB DFU", "kind": "dfu", "pins": {"dm": "PA11", "dp": "PA12"}}
    assert v2["interfaces"][0] == {"name": "USART1", "kind": "usart", "pins": {"tx": "PA9", "rx": "PA10"}}
    code, out, _ = run_cli(["devices", "0x641", "--json"], capsys)
    assert json.loads(out)[0]["rom_interfaces"] is None
    code, out, _ = run_cli(["devices", "L053", "--json"], capsys)
    (doc,) = json.loads(out)
    assert doc["rom_interfaces"][0]["bl_ids"] is None and doc["rom_interfaces"][0]["note"] is None
