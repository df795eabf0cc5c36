"""Option-byte layouts from the device table: the pure helpers, the virtual chip that stores
them, ``stmflash uart`` protection options and RDP level 2.

Expected bytes are written out from the reference manuals (F0 RM0091, F1 PM0075, F3
RM0365, F4 RM0090, L0 RM0367), not computed with the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stmflash import devices
from stmflash import option_bytes as obl
from stmflash.errors import UsageError
from stmflash.sim import registry
from stmflash.sim.chip import VirtualChip, load_image_file
from tests.clirun import exit_code as run_cli

F1_MD, F1_HD, F0, F3, F4, F429, G0, L4, L0, F7, F76, U0 = (
    devices.find(n)
    for n in ("F103", "F1-HD", "F051", "F303xC", "F407", "F429", "G071", "L476", "L053", "F746", "F767", "U073")
)
KNOWN = [F1_MD, F1_HD, F0, F3, F4, G0, L4, L0]


@pytest.fixture(autouse=True)
def _clean_registry():
    yield
    registry.clear()


# ---- the table -----------------------------------------------------------------------------
def test_every_layout_fits_its_option_byte_area() -> None:
    for dev in devices.all_devices():
        if not obl.supported(dev):
            continue
        lay, size = dev.ob_layout, dev.option_bytes.size
        offsets = [lay["rdp"]]
        wrp = lay.get("wrp", {})
        offsets += list(wrp.get("bytes", [])) + [o + 7 for o in wrp.get("offsets", [])]
        assert max(offsets) < size, dev.name
        ob = obl.default_ob(dev)
        assert len(ob) == size and obl.rdp_level(dev, ob) == 0 and obl.wrp_units(dev, ob) == set()


@pytest.mark.parametrize("name", ["H7A3", "H7R3", "U385", "H563", "WBA55"])
def test_unknown_layouts_refuse_instead_of_guessing(name: str) -> None:
    dev = devices.find(name)
    assert not obl.supported(dev)
    msg = f"option-byte layout of {dev.short_name} is not in the table"
    for call in (lambda: obl.default_ob(dev), lambda: obl.wrp_codes(dev, [0]),
                 lambda: obl.set_rdp(dev, bytes(16), 2), lambda: obl.rdp_level(dev, bytes(16))):
        with pytest.raises(UsageError, match=msg):
            call()


# ---- factory state and RDP -------------------------------------------------------------------
@pytest.mark.parametrize(
    "dev, head",
    [
        (F1_MD, "a55aff00ff00ff00ff00ff00ff00ff00"),  # PM0075: RDP 0xA5 = unprotected
        (F0, "aa55ff00ff00ff00ff00ff00ff00ff00"),  # RM0091: ST production value 0x00FF55AA
        (F3, "aa55ff00ff00ff00ff00ff00ff00ff00"),
        (F4, "ecaaffffffffffffff0fffffffffffff"),  # USER, RDP; nWRP bits 0-11 set
        (G0, "aae1ffdf551e0020"),  # OPTR 0xDFFFE1AA (RM0444 3.4.1 ST production value), then its complement
        (L0, "aa0055ff"),  # RDP, then nRDP in the upper half-word (RM0367 xx55xxAA)
        # RM0385 FLASH_OPTCR reset 0xC0FFAAFD: USER 0xFC, RDP 0xAA at 0x1FFF0000; nWRP 0xFF,
        # IWDG_STDBY/IWDG_STOP set at 0x1FFF0008; OPTCR1 0x00400080: BOOT_ADD0 0x0080, BOOT_ADD1 0x0040
        (F7, "fcaaffffffffffffffc0ffffffffffff8000ffffffffffff4000ffffffffffff"),
        (F76, "fcaaffffffffffffffffffffffffffff"),  # RM0410 OPTCR reset 0xFFFFAAFD: nWRP 0xFFF, nDBOOT, nDBANK
    ],
)
def test_factory_default(dev: devices.Device, head: str) -> None:
    ob = obl.default_ob(dev)
    assert ob.hex().startswith(head)
    assert obl.rdp_level(dev, ob) == 0 and obl.wrp_units(dev, ob) == set()


@pytest.mark.parametrize(
    "dev, offset, values",
    [
        (F0, 0, {0: (0xAA, 0x55), 1: (0xBB, 0x44), 2: (0xCC, 0x33)}),
        (F3, 0, {0: (0xAA, 0x55), 1: (0xBB, 0x44), 2: (0xCC, 0x33)}),
        (F4, 1, {0: (0xAA, None), 1: (0x55, None), 2: (0xCC, None)}),
        (G0, 0, {0: (0xAA, 0x55), 1: (0xBB, 0x44), 2: (0xCC, 0x33)}),
        (L4, 0, {0: (0xAA, 0x55), 1: (0xBB, 0x44), 2: (0xCC, 0x33)}),
        (L0, 0, {0: (0xAA, 0x55), 1: (0xBB, 0x44), 2: (0xCC, 0x33)}),
        (F1_MD, 0, {0: (0xA5, 0x5A), 1: (0x00, 0xFF)}),
        (F7, 1, {0: (0xAA, None), 1: (0x55, None), 2: (0xCC, None)}),  # RM0385: RDP = FLASH_OPTCR[15:8]
        (U0, 0, {0: (0xAA, None), 1: (0xBB, None), 2: (0xCC, None)}),  # FLASH_OPTR register view: no complement
    ],
)
def test_rdp_round_trip_and_complement(dev: devices.Device, offset: int, values: dict) -> None:
    comp_at = {2: offset + 1, 4: offset + 2, 8: offset + 4}.get(dev.ob_layout.get("complement", [0])[0])
    ob = obl.default_ob(dev)
    for level, (value, comp) in values.items():
        ob = obl.set_rdp(dev, ob, level)
        assert obl.rdp_level(dev, ob) == level
        assert ob[offset] == value
        if comp is not None:
            assert ob[comp_at] == comp
    # any other value is level 1
    raw = bytearray(ob)
    raw[offset] = 0x12
    assert obl.rdp_level(dev, bytes(raw)) == 1


def test_f1_has_no_level_2() -> None:
    with pytest.raises(UsageError, match="no RDP level 2"):
        obl.set_rdp(F1_MD, obl.default_ob(F1_MD), 2)


def test_wrong_area_size_is_refused() -> None:
    with pytest.raises(UsageError, match="the area is 16 bytes"):
        obl.rdp_level(F0, bytes(12))


# ---- write protection ------------------------------------------------------------------------
def test_f1_medium_density_four_pages_per_bit() -> None:
    ob = obl.set_wrp(F1_MD, obl.default_ob(F1_MD), [5, 127])
    assert obl.wrp_codes(F1_MD, [5, 127]) == [1, 31]
    assert ob[8:16].hex() == "fd02ff00ff007f80"  # WRP0 bit 1, WRP3 bit 7 cleared; complements
    assert obl.wrp_units(F1_MD, ob) == set(range(4, 8)) | set(range(124, 128))


def test_f1_high_density_last_bit_protects_the_rest() -> None:
    ob = obl.set_wrp(F1_HD, obl.default_ob(F1_HD), [200])
    assert obl.wrp_codes(F1_HD, [200]) == [31]
    assert obl.wrp_units(F1_HD, ob) == set(range(62, 256))  # PM0075: bit 31 = pages 62..255
    assert obl.wrp_codes(F1_HD, [0, 1, 2]) == [0, 1]  # 2 pages of 2 KiB per bit


def test_f0_and_f3_granularity() -> None:
    assert obl.wrp_codes(F0, [0, 3, 4]) == [0, 1]  # F05x: 1 KiB pages, 4 per bit
    assert obl.wrp_codes(F3, [61, 62, 127]) == [30, 31]  # RM0365: WRP3 bit 7 = pages 62..127
    ob = obl.set_wrp(F3, obl.default_ob(F3), [62])
    assert ob[14:16] == b"\x7f\x80"


def test_f4_sectors_active_low() -> None:
    ob = obl.set_wrp(F4, obl.default_ob(F4), [0, 1, 11])
    assert ob[8:10] == bytes([0xFC, 0x07])  # nWRP: 0 = protected, bits 12-15 untouched
    assert obl.wrp_units(F4, ob) == {0, 1, 11}
    assert obl.wrp_units(F4, obl.set_wrp(F4, ob, [])) == set()
    with pytest.raises(UsageError, match="unit 12 has no write-protection bit"):
        obl.wrp_codes(F429, [12])  # no AN3155 Write Protect code in the first block for bank 2
    # ... its nWRP bits are in the second block (0x1FFEC008, RM0090 3.7.1)
    assert obl.split_wrp(F429, [0, 12, 23]) == ([0], [12, 23])
    obl.check_wrp_units(F429, [0, 12, 23])
    with pytest.raises(UsageError, match="unit 24 does not exist"):
        obl.check_wrp_units(F429, [24])


def test_l0_sectors_active_high() -> None:
    ob = obl.set_wrp(L0, obl.default_ob(L0), [0, 33])  # 128-byte pages, 4 KiB per bit
    assert ob[8:12] == bytes([0x03, 0x00, 0xFC, 0xFF])  # 1 = protected, then complements
    assert obl.wrp_units(L0, ob) == set(range(64))


def test_g0_areas() -> None:
    ob = obl.set_wrp(G0, obl.default_ob(G0), [3, 4, 5, 40])
    # WRP1AR start 3 end 5 in 6-bit fields (G07x: CMSIS FLASH_WRP1AR_WRP1A_STRT_Msk 0x3F), the
    # factory's other bits kept, + complement
    assert ob[0x18:0x20] == bytes.fromhex("c3000500" "3cfffaff")
    assert ob[0x20:0x24] == bytes.fromhex("e8002800")
    assert obl.wrp_units(G0, ob) == {3, 4, 5, 40}
    with pytest.raises(UsageError, match="2 contiguous areas"):
        obl.set_wrp(G0, ob, [1, 3, 5])
    with pytest.raises(UsageError, match="bank 1 only"):
        obl.wrp_codes(L4, [300])
    with pytest.raises(UsageError, match="does not exist"):
        obl.wrp_codes(G0, [64])


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([F1_MD, F1_HD, F0, F3, F4, L0]), st.data())
def test_bit_layouts_protect_whole_groups(dev: devices.Device, data: st.DataObject) -> None:
    n = len(dev.erase_units)
    units = data.draw(st.lists(st.integers(0, min(n, 200) - 1), max_size=6))
    ob = obl.set_wrp(dev, obl.default_ob(dev), units)
    got = obl.wrp_units(dev, ob)
    assert set(units) <= got
    assert got == obl.units_for_codes(dev, obl.wrp_codes(dev, units))
    assert obl.rdp_level(dev, ob) == 0
    assert obl.normalize(dev, ob) == ob  # complements consistent


# ---- the virtual chip ------------------------------------------------------------------------
def test_chip_write_of_the_area_changes_protection_and_erases_on_level_0() -> None:
    chip = VirtualChip(F0)
    chip.preload(F0.flash_start, b"\x00" * 8)
    chip.write_option_bytes(obl.set_wrp(F0, obl.set_rdp(F0, chip.option_bytes(), 1), [0]))
    assert chip.rdp_level == 1 and chip.wrp == {0, 1, 2, 3} and chip.reset_count == 1
    assert chip.read(F0.option_bytes.start, 16) == chip.option_bytes()  # what Read Memory shows
    chip.write_option_bytes(obl.set_rdp(F0, chip.option_bytes(), 0))
    assert chip.rdp_level == 0 and chip.flash[:8] == b"\xff" * 8  # level 1 -> 0 mass-erases


def test_old_image_files_are_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.img"
    old_ob = bytes([0x55, 0xAA]) + bytes([0xFF, 0x00] * 3) + bytes([0xFE, 0x01, 0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00])
    regions = [{"name": "flash", "address": F4.flash_start, "size": F4.flash_size},
               {"name": "option_bytes", "address": 0x1FFFC000, "size": 16}]
    header = {"format": "stmflash-sim", "version": 1, "pid": F4.pid, "uid": "00" * 12, "regions": regions}
    path.write_bytes(json.dumps(header).encode() + b"\n" + b"\x11" * F4.flash_size + old_ob)
    chip = VirtualChip(F4, image_path=path)
    assert chip.rdp_level == 1 and chip.wrp == {0} and chip.flash[:2] == b"\x11\x11"
    assert chip.option_bytes()[1] == 0x55 and chip.option_bytes()[8] == 0xFE
    chip.save()
    assert load_image_file(path)[0]["version"] == 2
    header["version"] = 2
    path.write_bytes(json.dumps(header).encode() + b"\n" + b"\x11" * F4.flash_size + bytes(12))
    regions[1]["size"] = 12
    path.write_bytes(json.dumps(header).encode() + b"\n" + b"\x11" * F4.flash_size + bytes(12))
    with pytest.raises(UsageError, match="option-byte region is 12 bytes"):
        VirtualChip(F4, image_path=path)


# ---- stmflash uart ---------------------------------------------------------------------------
def test_uart_write_protect_shows_the_family_encoding(capsys: pytest.CaptureFixture[str]) -> None:
    chip = registry.register("wp4", VirtualChip(F4))
    assert run_cli("uart", "sim://F407?chip=wp4", "--write-protect", "0-1", "-q") == 0
    capsys.readouterr()
    assert run_cli("uart", "sim://F407?chip=wp4", "--read-option-bytes", "--json") == 0
    result = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"result"' in x][0]
    assert result["option_bytes"][16:20] == "fc0f"  # bytes 8-9: nWRP with sectors 0, 1 cleared
    assert result["rdp_level"] == 0 and result["wrp_units"] == [0, 1]
    assert chip.wrp == {0, 1}
    assert run_cli("uart", "sim://F407?chip=wp4", "--write-unprotect", "-q") == 0
    assert chip.option_bytes()[8:10] == b"\xff\x0f"


def test_uart_write_protect_on_the_f7_and_u0_layouts(capsys: pytest.CaptureFixture[str]) -> None:
    """F7: nWRP bit per sector at 0x1FFF0008 (RM0385 3.4.1); U0: WRP1AR start/end pages at
    0x4002202C, the FLASH option register view ST's OpenBootloader presents."""
    chip = registry.register("wp7", VirtualChip(F7))
    assert run_cli("uart", "sim://F746?chip=wp7", "--write-protect", "1-2", "-q") == 0
    assert chip.option_bytes()[8:10] == b"\xf9\xc0" and chip.wrp == {1, 2}
    assert chip.option_bytes()[:2] == b"\xfc\xaa"  # USER and RDP untouched
    chip = registry.register("wp0", VirtualChip(U0))
    assert run_cli("uart", "sim://U073?chip=wp0", "--write-protect", "2-5", "-q") == 0
    ob = chip.read(0x4002202C, 8)
    assert ob[:4] == bytes([2, 0, 5, 0]) and chip.wrp == {2, 3, 4, 5}
    assert ob[4:] == bytes([0x7F, 0, 0, 0])  # area B stays empty (start > end)
    assert run_cli("uart", "sim://U073?chip=wp0", "--protect", "-q") == 0
    assert chip.read(0x40022020, 1) == b"\xbb" and chip.rdp_level == 1


def test_uart_protect_sets_level_1_in_the_family_encoding() -> None:
    chip = registry.register("rp0", VirtualChip(G0))
    assert run_cli("uart", "sim://G071?chip=rp0", "--protect", "-q") == 0
    ob = chip.read(G0.option_bytes.start, 8)
    assert ob[0] not in (0xAA, 0xCC) and ob[4] == ob[0] ^ 0xFF and chip.rdp_level == 1


def test_rdp2_without_confirmation_never_touches_the_chip(capsys: pytest.CaptureFixture[str]) -> None:
    chip = registry.register("r2a", VirtualChip(G0))
    assert run_cli("uart", "sim://G071?chip=r2a", "--protect-level", "2") == 2
    assert "--i-understand-rdp2-is-permanent" in capsys.readouterr().err
    assert chip.reset_count == 0 and chip.rdp_level == 0 and chip.option_bytes() == obl.default_ob(G0)


@pytest.mark.parametrize("name, rdp_at", [("F407", 1), ("WLE5", 0)])  # WL: a 2 KiB area, 8 Write Memory blocks
def test_rdp2_with_confirmation_silences_the_chip(name: str, rdp_at: int, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    dev = devices.find(name)
    chip = registry.register("r2b", VirtualChip(dev))
    fw = tmp_path / "fw.bin"
    fw.write_bytes(bytes(range(256)) * 8)
    code = run_cli("uart", f"sim://{name}?chip=r2b", str(fw), "--no-image-check", "--protect-level", "2",
                   "--i-understand-rdp2-is-permanent", "--after", "reset", "-q")
    assert code == 0, capsys.readouterr().err
    assert chip.rdp_level == 2 and chip.option_bytes()[rdp_at] == 0xCC
    assert obl.normalize(dev, chip.option_bytes()) == chip.option_bytes()  # complements too
    assert obl.set_rdp(dev, chip.option_bytes(), 0) == obl.default_ob(dev)  # nothing else changed
    assert bytes(chip.flash[:2048]) == fw.read_bytes()  # flashed and verified before
    assert run_cli("uart", f"sim://{name}?chip=r2b", "--timeout", "0.05", "--retries", "1") == 3


def test_rdp2_refused_before_flashing_when_the_layout_is_unknown(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    chip = registry.register("r2h", VirtualChip(devices.find("H7A3")))
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\x42" * 1024)
    assert run_cli("uart", "sim://H7A3?chip=r2h", str(fw), "--no-image-check", "--protect-level", "2",
                   "--i-understand-rdp2-is-permanent", "-q") == 2
    assert "option-byte layout of H7A3 is not in the table" in capsys.readouterr().err
    assert chip.flash[:16] == b"\xff" * 16 and chip.rdp_level == 0


def test_option_bytes_setting_level_2_need_the_confirmation(capsys: pytest.CaptureFixture[str]) -> None:
    chip = registry.register("r2o", VirtualChip(F0))
    data = obl.set_rdp(F0, obl.default_ob(F0), 2).hex()
    assert run_cli("uart", "sim://F051?chip=r2o", "--write-option-bytes", data, "-q") == 2
    assert chip.rdp_level == 0 and chip.reset_count == 0
    assert run_cli("uart", "sim://F051?chip=r2o", "--write-option-bytes", data,
                   "--i-understand-rdp2-is-permanent", "-q") == 0
    assert chip.rdp_level == 2
