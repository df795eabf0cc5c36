"""The device table: every entry is self-consistent, and the facts other modules rely on
(erase numbering, BL-ID locations, variants by bootloader ID, DFU descriptors) hold."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from stmflash import devices
from stmflash.devices import Device, Region, UnknownDeviceWarning, find, lookup

TABLE = devices.all_devices()
FAMILIES = [
    "F0", "F1", "F2", "F3", "F4", "F7", "G0", "G4", "H5", "H7", "L0", "L1", "L4", "L4+",
    "L5", "U0", "U3", "U5", "C0", "C5", "WB", "WBA", "WL",
]


def _id(d: Device) -> str:
    return f"{d.pid:03X}-{d.short_name}-{'.'.join(f'{b:02X}' for b in d.bl_ids)}"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stmflash", *args], capture_output=True, text=True, timeout=60
    )


# ---- the table as a whole ------------------------------------------------------------------


def test_covers_an2606_product_ids():
    pids = {d.pid for d in TABLE}
    assert len(pids) >= 85, len(pids)


def test_every_family_present():
    present = set(devices.families())
    missing = [f for f in FAMILIES if f not in present]
    assert not missing, missing


def test_aliases_name_one_product_id_each():
    owner: dict[str, int] = {}
    for d in TABLE:
        for a in d.aliases:
            key = a.upper()
            assert owner.setdefault(key, d.pid) == d.pid, f"alias {a} names 0x{owner[key]:03X} and 0x{d.pid:03X}"


def test_pid_bl_id_pairs_unique():
    seen = set()
    for d in TABLE:
        for b in d.bl_ids:
            assert (d.pid, b) not in seen, f"0x{d.pid:03X}/0x{b:02X} twice"
            seen.add((d.pid, b))


# ---- per entry -------------------------------------------------------------------------


@pytest.mark.parametrize("dev", TABLE, ids=_id)
def test_entry_sanity(dev: Device):
    assert dev.aliases, "every device needs an alias"
    assert dev.name.startswith("STM32")
    regions: list[Region] = [*dev.ram]
    regions += [r for r in (dev.ram_usable, dev.system_memory, dev.option_bytes, dev.otp, dev.eeprom) if r]
    for r in regions:
        assert 0 <= r.start < r.end <= 1 << 32, r
    assert dev.ram, "RAM regions"
    assert dev.system_memory is not None
    # non-flash regions do not overlap flash
    for r in (dev.system_memory, dev.option_bytes, dev.otp, dev.eeprom, *dev.ram):
        if r is not None:
            assert r.end <= dev.flash.start or r.start >= dev.flash.end, f"{r} overlaps flash"
    if dev.ram_usable is not None:
        assert any(r.start <= dev.ram_usable.start and dev.ram_usable.end <= r.end for r in dev.ram)
    if dev.bl_id_address is not None:
        assert dev.bl_id_address in dev.system_memory
    assert dev.write_align in (4, 8, 16, 32)
    assert dev.write_misaligned in ("nack", "drop")
    assert dev.startup_ms > 0
    assert dev.flash_size_reg is None or dev.flash_size_reg not in dev.flash
    assert dev.erase_command == (0x44 if dev.usart_protocol >= 0x30 else 0x43)
    assert dev.erase_command in dev.commands
    assert set(dev.interfaces) <= {"usart", "dfu", "i2c", "spi", "can", "fdcan", "i3c"}


@pytest.mark.parametrize("dev", TABLE, ids=_id)
def test_flash_layout_sums_to_flash_size(dev: Device):
    units = dev.erase_units
    assert units
    assert [u.index for u in units] == list(range(len(units)))
    assert units[0].address == dev.flash_start
    for a, b in zip(units, units[1:], strict=False):
        assert a.end <= b.address, "units overlap or are out of order"
        assert b.bank >= a.bank
    assert sum(u.size for u in units) == dev.flash_size
    banks = sorted({u.bank for u in units})
    assert banks == list(range(1, dev.banks + 1))
    for b in banks:
        bu = dev.bank_units(b)
        assert bu[-1].end - bu[0].address == sum(u.size for u in bu), f"bank {b} has a hole"
    if dev.banks > 1 and dev.bank_size is None:
        assert len({sum(u.size for u in dev.bank_units(b)) for b in banks}) == 1


@pytest.mark.parametrize("dev", TABLE, ids=_id)
def test_timings_are_typ_max_pairs(dev: Device):
    pairs = [dev.unit_erase_ms(u) for u in {u.size: u for u in dev.erase_units}.values()]
    pairs += [dev.mass_erase_time_ms(), dev.program_ms_per_256, dev.program_time_ms(256)]
    for typ, mx in pairs:
        assert 0 < typ <= mx


@pytest.mark.parametrize("dev", [d for d in TABLE if "dfu" in d.interfaces], ids=_id)
def test_dfu_descriptors(dev: Device):
    assert dev.dfu["transfer_size"] in (1024, 2048)
    assert isinstance(dev.dfu["bcd_device"], int)
    alts = dev.dfu_alts()
    assert alts and alts[0].startswith("@Internal Flash")
    assert "{" not in "".join(alts)
    assert f"/0x{dev.flash_start:08X}/" in alts[0]


@pytest.mark.parametrize("dev", TABLE, ids=_id)
def test_find_resolves_every_alias(dev: Device):
    for a in dev.aliases:
        assert devices.find(a).pid == dev.pid
        assert devices.find("stm32" + a.lower()).pid == dev.pid


def test_to_dict_is_json():
    for d in TABLE:
        data = json.loads(json.dumps(d.to_dict()))
        assert data["pid"] == d.pid
        assert data["flash"]["size"] == d.flash_size


# ---- facts other modules depend on -----------------------------------------------------------


def test_lookup_picks_variant_by_bootloader_id():
    assert devices.lookup(0x413, 0x31).ram_usable.start == 0x20002000
    assert devices.lookup(0x413, 0x91).ram_usable.start == 0x20003000
    assert devices.lookup(0x413, 0x91).startup_ms != devices.lookup(0x413, 0x31).startup_ms
    # an unknown BL ID falls back to the PID
    assert devices.lookup(0x413, 0x77).pid == 0x413
    assert devices.lookup(0x460, 0xB3).pid == devices.lookup(0x460, 0xB4).pid == 0x460
    assert devices.lookup(0x467, 0xD0).name != devices.lookup(0x467, 0x92).name


def test_unknown_pid_gets_generic_profile_with_warning():
    with pytest.warns(UnknownDeviceWarning, match="0x7AB"):
        d = devices.lookup(0x7AB, 0x10)
    assert d.generic and d.pid == 0x7AB
    assert d.mass_erase and d.write_align == 16
    assert d.erase_units and d.ram_usable in d.ram or d.ram_usable is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert devices.lookup(0x7AB, warn=False).generic


@pytest.mark.parametrize(
    "alias, address",
    [("F407", 0x1FFF76DE), ("F746", 0x1FF0EDBE), ("G474", 0x1FFF6FFE), ("L476", 0x1FFF6FFE),
     ("WB55", 0x1FFF6FFE), ("F051", 0x1FFFF7A6), ("C011", 0x1FFF17FE), ("F103", None)],
)
def test_bl_id_addresses(alias, address):
    assert devices.find(alias).bl_id_address == address


def test_protocol_versions_and_erase_commands():
    assert devices.find("F103").usart_protocol == 0x22
    assert devices.find("F103").erase_command == 0x43
    assert devices.find("F407").erase_command == 0x44
    assert devices.find("F1-XL").erase_command == 0x44
    h5 = devices.find("H563")
    assert h5.usart_protocol == 0x40
    assert 0x50 in h5.commands and 0x82 not in h5.commands and 0x44 in h5.commands
    assert not devices.find("L053").mass_erase and not devices.find("L152xE").mass_erase
    assert devices.find("G071").empty_check and not devices.find("F407").empty_check


def test_dual_bank_numbering_matches_rom():
    f429 = devices.find("F429")
    u = f429.erase_units
    assert len(u) == 24 and u[12].address == 0x08100000 and u[12].bank == 2 and u[11].bank == 1
    single = f429.with_flash_size(0x100000)
    assert len(single.erase_units) == 12 and single.bank_count == 1 and single.banks == 1
    h743 = devices.find("H743").erase_units
    assert len(h743) == 16 and h743[8].address == 0x08100000 and h743[8].bank == 2
    l476 = devices.find("L476").erase_units
    assert len(l476) == 512 and l476[256].address == 0x08080000 and l476[256].bank == 2
    g474 = devices.find("G474").erase_units
    assert len(g474) == 256 and g474[128].address == 0x08040000 and g474[128].bank == 2
    h7a3 = devices.find("H7A3").erase_units
    assert len(h7a3) == 256 and h7a3[128].address == 0x08100000 and h7a3[128].bank == 2 and h7a3[0].size == 8192


def test_reduced_flash_size_keeps_sector_layout():
    f = devices.find("F407").with_flash_size(0x80000)
    assert [u.size // 1024 for u in f.erase_units] == [16, 16, 16, 16, 64, 128, 128, 128]


def test_dfu_layout_strings():
    assert devices.find("F407").dfu_alts()[0] == "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg"
    assert devices.find("F105").dfu_alts()[0].endswith("/128*002Kg")
    assert devices.find("F105").dfu["bcd_device"] == 0x2000
    h7 = devices.find("H743")
    assert h7.dfu_alts()[0].endswith("/16*128Kg") and h7.dfu["transfer_size"] == 1024
    assert devices.find("G474").dfu["transfer_size"] == 1024
    assert devices.find("F411").dfu["bcd_device"] == 0x2200
    for name in ("F105", "F2", "F407", "F411", "F746", "L432", "G474", "G431", "G0B1", "H743",
                 "H723", "H7A3", "L073", "L152xC", "F042", "F072", "F303xC", "L552", "U575", "WB55"):
        assert "dfu" in devices.find(name).interfaces, name


def test_find_by_pid_and_errors():
    assert devices.find("0x413").pid == 0x413
    assert devices.find("450").pid == 0x450
    with pytest.raises(KeyError, match="unknown device"):
        devices.find("Z999")
    with pytest.raises(KeyError, match="ambiguous"):
        devices.find("F4")


# ---- the command ---------------------------------------------------------------------------


def test_devices_json_lists_the_table():
    p = run_cli("devices", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert len({d["pid"] for d in data}) >= 85
    f407 = next(d for d in data if "F407" in d["aliases"])
    # the JSON convention (README "JSON output"): addresses and IDs in hex, sizes as numbers
    assert f407["pid"] == "0x413"
    assert f407["flash"]["start"] == "0x08000000" and f407["flash"]["size"] == 0x100000
    assert {"start": "0x20000000", "end": "0x20020000", "size": 0x20000} in f407["ram"]
    assert f407["system_memory"]["start"] == "0x1FFF0000"
    by_pid = {d["pid"]: d for d in data}
    # "layout" spells out one bank, consistent with "summary"
    assert by_pid["0x450"]["flash"]["layout"] == "8x128K" and "8x128K" in by_pid["0x450"]["flash"]["summary"]
    assert by_pid["0x415"]["flash"]["layout"] == "256x2K" and "256x2K" in by_pid["0x415"]["flash"]["summary"]
    for d in data:
        assert {"pid", "name", "flash", "ram", "system_memory"} <= d.keys()


def test_devices_one_json():
    p = run_cli("devices", "0x450", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert isinstance(data, list) and len(data) == 1 and data[0]["pid"] == "0x450"


def test_devices_table_and_detail():
    p = run_cli("devices")
    assert p.returncode == 0
    assert "0x413" in p.stdout and "0x497" in p.stdout and "4x16K,1x64K,7x128K" in p.stdout
    p = run_cli("devices", "F407")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for text in ("0x413", "0x1FFF76DE", "4x16K,1x64K,7x128K", "0x20002000", "usart, dfu",
                 "erase command 0x44", "04*016Kg,01*064Kg,07*128Kg", "units 0..11"):
        assert text in out, text


def test_devices_unknown_name_exits_2():
    p = run_cli("devices", "NOSUCHCHIP")
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "NOSUCHCHIP" in lines[0] and lines[0].startswith("stmflash: error:")


def test_bl_id_byte_fits_when_located():
    # a BL ID read from bl_id_address is one byte: 3-digit IDs (0x121) must not claim one
    for d in TABLE:
        if d.bl_id_address is not None:
            assert all(b <= 0xFF for b in d.bl_ids), d.name


def test_bootloader_variant_by_name():
    """``NAME@BLID`` selects one bootloader variant of a PID (AN2606 Table 226 RAM differs)."""
    v31, v91 = find("F407"), find("F407@0x91")
    assert (v31.bl_ids, v91.bl_ids) == ((0x31,), (0x91,))
    assert (v31.ram_usable.start, v91.ram_usable.start) == (0x20002000, 0x20003000)
    assert find("0x413@91") == v91 and find("L072@0xB2").ram_usable.start == 0x20001400
    assert lookup(0x447, 0x41).ram_usable.start == 0x20001000
    with pytest.raises(KeyError, match="no bootloader ID 0x55"):
        find("F407@0x55")
    with pytest.raises(KeyError, match="bad bootloader ID"):
        find("F407@x")


def test_resolved_device_facts():
    """Facts where stm32flash's table disagrees, resolved as the TOML notes say."""
    g0b1 = find("G0B1")
    assert g0b1.ram[0].end == 0x20024000 and g0b1.ram_usable.end == 0x20020000
    assert find("L412").ram_usable.start == 0x20002100
    l4r5 = find("L4R5")
    assert (l4r5.flash_size, l4r5.banks, l4r5.erase_units[0].size) == (0x200000, 2, 4096)
    f429 = find("F429")
    assert f429.unit_at(0x08100000).index == 12
    h7r3 = find("H7R3")
    assert h7r3.uid_reg == 0x08FFF800 and h7r3.flash_size_reg is None
    for d in (f429, find("F469"), find("L476"), find("L496"), l4r5, find("L151xD"), find("L412")):
        assert "stm32flash" in d.note, d.name  # the disagreement and the source followed are recorded
