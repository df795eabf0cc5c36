"""Option bytes by field name (stmflash.ob_fields, ``--ob``/``--ob-show``/``--ob-reset-defaults``)
on every family of the device table, over UART (in-process ``sim://``) and virtual USB DFU.

The factory values checked here are the field defaults written in
``stmflash/data/option_bytes.toml`` from the reference manuals; the virtual chip's factory
area is built from that file's production-value words, never from stmflash's own writer.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from stmflash import devices, ob_fields
from stmflash import option_bytes as obl
from stmflash.sim import registry, usb_backend
from stmflash.sim.chip import VirtualChip
from tests.clirun import result
from tests.clirun import run_cli as cli


def _representatives() -> list[devices.Device]:
    """One device per field table (so every family of the device table is covered)."""
    seen: dict[str, devices.Device] = {}
    for d in devices.all_devices():
        key = d.ob_fields or f"none:{d.family}"
        # the quickest to restart (the client waits the ROM's startup time after each reload)
        if key not in seen or d.startup_ms < seen[key].startup_ms:
            seen[key] = d
    return list(seen.values())


REPS = _representatives()
IDS = [f"{d.ob_fields}-{d.short_name}" for d in REPS]


def uart_url(dev: devices.Device, name: str) -> str:
    registry.register(name, VirtualChip(dev))
    return f"sim://{dev.short_name}?chip={name}"


def field_ok(dev: devices.Device) -> bool:
    t = ob_fields.table_of(dev)
    return t is not None and not t.unknown and dev.option_bytes is not None


# ---- the data itself -------------------------------------------------------------------------
def test_every_family_names_a_field_table() -> None:
    for d in devices.all_devices():
        assert d.ob_fields, f"{d.name}: no ob_fields"
        t = ob_fields.table_of(d)
        assert t is not None and t.source, d.name
        assert t.unknown or t.fields, f"{d.name}: table {t.name} has no fields and no reason"


@pytest.mark.parametrize("table", ob_fields.all_tables(), ids=lambda t: t.name)
def test_tables_are_consistent(table: ob_fields.Table) -> None:
    used: dict[int, set[int]] = {}
    for f in table.fields:
        bits = {f.bit + i for i in range(f.width)}
        assert not bits & used.get(f.offset, set()), f"{table.name}: {f.name} overlaps another field"
        used.setdefault(f.offset, set()).update(bits)
        assert 0 <= f.default <= f.mask, f.name
        names = [n.lower() for _, n, _ in f.values]
        assert len(names) == len(set(names)), f"{f.name}: duplicate value names"
        assert all(0 <= v <= f.mask for v, _, _ in f.values), f.name
        if f.values and not f.other:
            assert f.default in {v for v, _, _ in f.values}, f"{f.name}: default not a documented value"
    if table.fields and not table.unknown:
        assert table.factory, f"{table.name}: fields without factory words"
    if table.factory_partial:  # every listed word qualifies a field; a field elsewhere is refused
        words = {off for off, _ in table.factory}
        assert words <= {f.offset for f in table.fields}, f"{table.name}: a factory word without a field"
        for f in table.fields:
            assert table.claims_default(f) == (f.offset in words)
            if f.offset not in words:
                assert f.unknown, f"{table.name}: {f.name} has no production value but is writable"


@pytest.mark.parametrize("dev", [d for d in REPS if obl.supported(d) and field_ok(d)], ids=lambda d: d.short_name)
def test_rdp_field_is_where_the_layout_says(dev: devices.Device) -> None:
    rdp = ob_fields.table_of(dev).find("RDP")
    assert rdp is not None and rdp.width == 8
    assert rdp.offset + rdp.bit // 8 == int(dev.ob_layout["rdp"])
    assert rdp.default == int(dev.ob_layout["rdp0"])


# ---- --ob-show of the factory area -------------------------------------------------------------
@pytest.mark.parametrize("dev", REPS, ids=IDS)
def test_ob_show_decodes_the_factory_area(dev: devices.Device, capsys: pytest.CaptureFixture[str]) -> None:
    t = ob_fields.table_of(dev)
    url = uart_url(dev, f"show-{dev.short_name}")
    code, out, err = cli(["uart", url, "--ob-show", "--json"], capsys)
    if dev.option_bytes is None:  # the ROM's option-byte area is not established: refused, reason given
        assert code == 2 and t.unknown.split(":")[0] in err
        return
    assert code == 0, err
    rows = result(out)["option_fields"]
    assert [r["field"] for r in rows] == [f.name for f in t.fields]
    if t.unknown:  # decoded for inspection, never written, the reason on every row
        assert all(not r["writable"] and r["why"] == t.unknown for r in rows)
        # production values the table does hold (factory_partial: boot addresses from the
        # manual's boot table) are where the virtual chip starts; the rest claims none
        for r in rows:
            f = t.find(r["field"])
            if t.claims_default(f):
                assert r["default"] == f.default and r["value"] == f.default, f"{dev.short_name} {f.name}"
            else:
                assert r["default"] is None and r["is_default"] is None, f"{dev.short_name} {f.name}"
        return
    for r in rows:
        f = t.find(r["field"])
        assert r["value"] == f.default, f"{dev.short_name} {f.name}: 0x{r['value']:X}, factory 0x{f.default:X}"
        assert r["is_default"] and r["writable"] == (not (f.unknown or f.readonly))
    code, out, _ = cli(["uart", url, "--ob-show"], capsys)
    assert code == 0 and all(f.name in out for f in t.fields)


# ---- round trip of every writable field --------------------------------------------------------
def _other_value(f: ob_fields.Field) -> int | None:
    """A documented, reversible value other than the default (None: nothing safe to try)."""
    if f.name == "RDP":
        return None  # readout protection: its own tests (the ROM refuses the read-back at level 1)
    cands = [v for v, _, _ in f.values] if f.values else [f.default ^ 1, f.default ^ (1 << (f.width - 1))]
    cands = [v for v in cands if v != f.default and v not in f.permanent and 0 <= v <= f.mask]
    return cands[0] if cands else None


def _writable(dev: devices.Device) -> list[tuple[ob_fields.Field, int]]:
    out = []
    for f in ob_fields.table_of(dev).fields:
        if f.unknown or f.readonly:
            continue
        v = _other_value(f)
        if v is not None:
            out.append((f, v))
    return out


def _readback_ok(dev: devices.Device, f: ob_fields.Field, v: int) -> bool:
    """Fields after which the part no longer runs its ROM (it boots SRAM, or F7 BOOT_ADD1
    points away from system memory) are walked in the boot-table tests instead."""
    if f.name == "nBOOT1" and v == 0 and ob_fields.table_of(dev).boot:
        return False
    area = ob_fields.apply(dev, ob_fields.factory_view(dev), {f: v})
    # U5: nSWBOOT0 = 0 alone (nBOOT0 = 1), or a boot address moved off the ROM: the reload
    # runs NSBOOTADD0 / that address whatever the pin, as silicon does; walked apart
    return ob_fields.boot_source(dev, area, boot0_pin=True, flash_empty=True) in (None, "system")


@pytest.mark.parametrize("dev", [d for d in REPS if field_ok(d)], ids=lambda d: d.short_name)
def test_every_writable_field_round_trips_over_uart(dev: devices.Device, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = [(f, v) for f, v in _writable(dev) if _readback_ok(dev, f, v)]
    assert pairs, f"{dev.short_name}: nothing writable"
    # one field per request; parts whose ROM takes seconds to restart (L476 without LSE:
    # the client waits 2.56 s after each reload) get every field in one request instead
    groups = [pairs] if dev.startup_ms > 500 else [[p] for p in pairs]
    for i, group in enumerate(groups):
        name = f"rt-{dev.short_name}-{i}"
        url = uart_url(dev, name)
        args = [a for f, v in group for a in ("--ob", f"{f.name}={v}")]
        code, out, err = cli(["uart", url, *args, "--ob-show", "--json"], capsys)
        assert code == 0, f"{args}: {err}"
        res = result(out)
        assert res["option_fields_verified"] and res["option_fields_written"] == {f.name: v for f, v in group}
        chip = registry.get(name)
        for f, v in group:
            assert next(r for r in res["option_fields"] if r["field"] == f.name)["value"] == v
            assert f.get(chip.loaded_ob_view()) == v  # what the chip loaded at its reset
        written = {f for f, _ in group}
        others = [g for g in ob_fields.table_of(dev).fields if g not in written]
        assert all(g.get(chip.ob_view()) == g.default for g in others), "other fields preserved"


def _dfu_devices() -> list[devices.Device]:
    """One device per field table whose ROM has DfuSe with an option-bytes alt at the area:
    the table's representative when it has DFU, else the first device of the table that has
    (L1: the L1xxxB representative is UART only, L1xxxC/D/E have DFU)."""
    def fits(d: devices.Device) -> bool:
        if "dfu" not in d.interfaces or not field_ok(d) or not obl.supported(d):
            return False
        alts = [a for a in d.dfu_alts() if "option" in a.lower()]
        return bool(alts) and f"0x{d.option_bytes.start:08X}".lower() in alts[0].lower()

    out = [d for d in REPS if fits(d)]
    covered = {d.ob_fields for d in out}
    for d in devices.all_devices():
        if d.ob_fields not in covered and fits(d):
            out.append(d)
            covered.add(d.ob_fields)
    return out


DFU_DEVS = _dfu_devices()


def test_dfu_families_are_covered() -> None:
    assert {"F4", "L47", "G43", "G47", "H7", "F7", "F76x", "U5", "U53", "U59", "L1"} <= {d.ob_fields for d in DFU_DEVS}


@pytest.fixture
def usb_sim(monkeypatch, tmp_path):
    def make(dev: devices.Device, n: int) -> usb_backend.VirtualBus:
        usb_backend.forget()
        monkeypatch.setenv("STMFLASH_USB_SIM", f"{dev.short_name}={tmp_path / f'{n}.img'}")
        return usb_backend.bus_from_env()

    yield make
    usb_backend.forget()


@pytest.mark.parametrize("dev", DFU_DEVS, ids=lambda d: d.short_name)
def _in_dfu_alt(dev: devices.Device, f: ob_fields.Field) -> bool:
    """A field of the second block is reachable over DFU only where the option-bytes alt
    names that block (F42x, L4+); L47x/L49x's alt names bank 1 only, and the refusal is
    tested in tests/test_ob_bank2_l4.py."""
    second = dev.option_bytes2
    if second is None or f.offset < dev.option_bytes.size:
        return True
    alt = next(a for a in dev.dfu_alts() if "option" in a.lower())
    return f"0x{second.start:08X}".lower() in alt.lower()


@pytest.mark.parametrize("dev", DFU_DEVS, ids=lambda d: d.short_name)
def test_every_writable_field_round_trips_over_dfu(dev: devices.Device, usb_sim, capsys) -> None:
    fields = [(f, v) for f, v in _writable(dev) if _readback_ok(dev, f, v) and _in_dfu_alt(dev, f)]
    assert fields
    for i, (f, v) in enumerate(fields):
        bus = usb_sim(dev, i)
        # --device: DfuSe descriptors alone do not tell every part apart (F373 looks like F09x)
        code, out, err = cli(["dfu", "--device", dev.short_name, "--ob", f"{f.name}={v}", "--ob-show", "--json"],
                             capsys)
        assert code == 0, f"{f.name}={v}: {err}"
        res = result(out)
        assert res["option_fields_verified"]
        assert next(r for r in res["option_fields"] if r["field"] == f.name)["value"] == v
        assert f.get(bus.devices[0].chip.loaded_ob_view()) == v


def test_several_fields_in_one_write_and_reset_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    dev = devices.find("L496")
    url = uart_url(dev, "many-l4")
    chip = registry.get("many-l4")
    resets = chip.reset_count
    code, out, err = cli(["uart", url, "--ob", "BOR_LEV=2.8V", "--ob", "nRST_STOP=reset", "--ob", "IWDG_SW=0",
                          "--json"], capsys)
    assert code == 0, err
    assert chip.reset_count == resets + 1  # one read-modify-write, one reload
    t = ob_fields.table_of(dev)
    ob = chip.option_bytes()
    assert (t.find("BOR_LEV").get(ob), t.find("nRST_STOP").get(ob), t.find("IWDG_SW").get(ob)) == (4, 0, 0)
    assert obl.normalize(dev, ob) == ob  # complements computed
    code, out, err = cli(["uart", url, "--ob-reset-defaults", "--json"], capsys)
    assert code == 0, err
    assert chip.option_bytes() == ob_fields.factory_area(dev)
    # RDP is left alone unless asked: at level 1 a reset to defaults keeps level 1
    chip.set_rdp(1)
    chip.reset()
    code, out, err = cli(["uart", url, "--unprotect", "--ob-reset-defaults", "-q"], capsys)
    assert code == 0, err
    assert chip.rdp_level == 0


def test_names_and_numbers_are_the_same_request(capsys: pytest.CaptureFixture[str]) -> None:
    dev = devices.find("F407")
    url = uart_url(dev, "names-f407")
    chip = registry.get("names-f407")
    assert cli(["uart", url, "--ob", "RDP=level0", "--ob", "BOR_LEV=level1", "-q"], capsys)[0] == 0
    assert ob_fields.table_of(dev).find("BOR_LEV").get(chip.option_bytes()) == 2
    assert cli(["uart", url, "--ob", "rdp=0xAA", "--ob", "bor_lev=3", "-q"], capsys)[0] == 0
    assert chip.option_bytes() == ob_fields.factory_area(dev)


def test_h7_writes_the_prg_registers_and_reads_the_cur_ones(usb_sim, capsys) -> None:
    dev = devices.find("H743")
    bus = usb_sim(dev, 0)
    code, _, err = cli(["dfu", "--ob", "BOOT_ADD0=0x0801", "--ob", "FZ_IWDG_STOP=frozen", "-q"], capsys)
    assert code == 0, err
    ob = bus.devices[0].chip.option_bytes()
    assert int.from_bytes(ob[0x24:0x28], "little") == int.from_bytes(ob[0x28:0x2C], "little") == 0x1FF00801
    assert not ob[2] & 0x02 and not ob[6] & 0x02  # OPTSR_CUR and OPTSR_PRG bit 17
    code, _, err = cli(["dfu", "--ob", "SWAP_BANK_OPT=swapped"], capsys)
    assert code == 2 and "bank swap" in err and "not modelled" in err


# ---- readback mismatch is its own error -------------------------------------------------------
def test_a_field_that_does_not_take_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    dev = devices.find("G071")
    url = uart_url(dev, "stuck-g071")
    chip = registry.get("stuck-g071")
    real = chip.write_option_bytes

    def stuck(data: bytes) -> None:  # a part whose IWDG_SW bit does not program
        t = ob_fields.table_of(dev)
        area = bytearray(data)
        t.find("IWDG_SW").put(area, 1)
        real(bytes(area))

    chip.write_option_bytes = stuck  # type: ignore[method-assign]
    code, out, err = cli(["uart", url, "--ob", "IWDG_SW=hw", "--ob", "WWDG_SW=hw", "--json"], capsys)
    assert code == 5
    assert "option field IWDG_SW reads back as 0x1 after writing 0x0" in (err + out)


# ---- the complement check of the option-byte loader --------------------------------------------
def test_f1_wrong_rdp_complement_means_readout_protection(capsys: pytest.CaptureFixture[str]) -> None:
    dev = devices.find("F103")
    url = uart_url(dev, "comp-f103")
    chip = registry.get("comp-f103")
    ob = bytearray(chip.option_bytes())
    assert ob[0] == 0xA5 and ob[1] == 0x5A
    ob[1] = 0x00  # the complement no longer matches: RDP loads as 0xFF (RM0008: OPTERR)
    chip.store_raw_option_bytes(bytes(ob))
    chip.reset()
    assert chip.rdp_level == 1
    code, _, err = cli(["uart", url, "--ob-show"], capsys)
    assert code == 4 and "read-protected" in err


# ---- G0: RM0444 / RM0454 3.4.1 production value -------------------------------------------------
@pytest.mark.parametrize("name", ["G071", "G031", "G0B1"])
def test_g0_starts_with_the_rm0444_production_optr(name: str) -> None:
    """FLASH_OPTR 'Reset value: 0xDFFF E1AA (ST production value)' (RM0444/RM0454 3.4.1),
    written out here: BOR on at both level-0 thresholds, IRHEN 0, everything else 1; a
    factory part boots main flash by the nBOOT_SEL/nBOOT0 option bits (the BOOT0 pin ignored)."""
    dev = devices.find(name)
    chip = VirtualChip(dev)
    area = chip.option_bytes()
    assert int.from_bytes(area[:4], "little") == 0xDFFFE1AA
    assert int.from_bytes(area[4:8], "little") == 0x20001E55  # its complement
    rows = {r["field"]: r["value"] for r in ob_fields.decode(dev, area)}
    assert (rows["BOR_EN"], rows["BORR_LEV"], rows["BORF_LEV"], rows["IRHEN"]) == (1, 0, 0, 0)
    assert (rows["nBOOT_SEL"], rows["nBOOT0"], rows["nBOOT1"], rows["NRST_MODE"]) == (1, 1, 1, 3)
    assert all(r["is_default"] for r in ob_fields.decode(dev, area))


# ---- L4 / G4: the PCROP1ER factory word -------------------------------------------------------------
# RM0394 3.4.1 as quoted for an L422 (PCROP end 0xFFFF 0000: PCROP_RDP 1, end 0), RM0440 3.4.1 /
# 4.4.1 / 5.4.1 (0x00FF 0000: PCROP_RDP 0); L4+ keeps 0 (RM0432's value not found)
@pytest.mark.parametrize("name, word, pcrop_rdp", [("L476", 0xFFFF0000, 1), ("L412", 0xFFFF0000, 1), ("L496", 0xFFFF0000, 1),
                                                   ("G431", 0x00FF0000, 0), ("G474", 0x00FF0000, 0), ("L4R5", 0, 0)])
def test_l4_g4_pcrop1er_factory_word(name: str, word: int, pcrop_rdp: int) -> None:
    dev = devices.find(name)
    area = VirtualChip(dev).option_bytes()
    assert int.from_bytes(area[0x10:0x14], "little") == word
    rows = {r["field"]: r for r in ob_fields.decode(dev, area)}
    assert rows["PCROP_RDP"]["value"] == pcrop_rdp and rows["PCROP_RDP"]["is_default"]
    assert rows["PCROP1_END"]["value"] == 0


# ---- G0 / C0: what a reset boots ----------------------------------------------------------------
# RM0444 section 2.5 Table 8, RM0490 section 3.1 Table 9 and RM0503 section 2.5 Table 6
# (identical): written out here from the manuals, independently of the data file's boot table.
#   BOOT_LOCK nBOOT1 BOOT0pin nBOOT_SEL nBOOT0 -> boots (flash rows: system while EMPTY)
BOOT_TABLE = [
    (0, None, 0, 0, None, "flash"),
    (0, 1, 1, 0, None, "system"),
    (0, 0, 1, 0, None, "sram"),
    (0, None, None, 1, 1, "flash"),
    (0, 1, None, 1, 0, "system"),
    (0, 0, None, 1, 0, "sram"),
    (1, None, None, None, None, "locked"),
]


def _expected(lock: int, n1: int, pin: int, sel: int, n0: int, empty: bool) -> str:
    for row in BOOT_TABLE:
        want = (lock, n1, pin, sel, n0)
        if all(w is None or w == h for w, h in zip(row[:5], want, strict=True)):
            if row[5] == "locked":
                return "flash"  # BOOT_LOCK: main flash, no empty check
            return "system" if row[5] == "flash" and empty else row[5]
    raise AssertionError("boot table incomplete")


@pytest.mark.parametrize("name", ["G071", "C031", "U083"])
def test_boot_table_walk(name: str) -> None:
    dev = devices.find(name)
    t = ob_fields.table_of(dev)
    combos = [(lock, n1, pin, sel, n0, empty) for lock in (0, 1) for n1 in (0, 1) for pin in (0, 1)
              for sel in (0, 1) for n0 in (0, 1) for empty in (True, False)]
    for lock, n1, pin, sel, n0, empty in combos:
        chip = VirtualChip(dev)
        if not empty:
            chip.preload(dev.flash_start, APP)
        values = {t.find("BOOT_LOCK"): lock, t.find("nBOOT1"): n1, t.find("nBOOT_SEL"): sel, t.find("nBOOT0"): n0}
        chip.write_option_bytes(ob_fields.apply(dev, chip.option_bytes(), values))  # ROM write: reload
        chip.reset("bootloader" if pin else "app")
        want = _expected(lock, n1, pin, sel, n0, empty)
        assert chip.boots == want, f"{name} {(lock, n1, pin, sel, n0, empty)}: {chip.boots}, RM says {want}"
        assert chip.mode == {"system": "bootloader", "flash": "app", "sram": "sram"}[want]


APP = b"\x00\x10\x00\x20\x01\x01\x00\x08"  # a vector table: stack in RAM, reset handler in flash


def _chip_and_firmware(name: str, chip_name: str, tmp_path: Path) -> tuple[devices.Device, str, VirtualChip, Path]:
    dev = devices.find(name)
    url = uart_url(dev, chip_name)
    fw = tmp_path / "fw.bin"
    fw.write_bytes(APP * 128)
    return dev, url, registry.get(chip_name), fw


def test_empty_check_is_latched_at_power_on_and_option_load(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    dev, url, chip, fw = _chip_and_firmware("G071", "empty-g071", tmp_path)
    # factory options (nBOOT_SEL = 1, nBOOT0 = 1): a blank part boots its ROM through the empty check
    assert chip.boots == "system"
    assert cli(["uart", url, str(fw), "--after", "reset", "-q"], capsys)[0] == 0
    assert chip.boots == "system"  # EMPTY still set: a system reset does not sample it again
    chip.power_cycle()
    assert chip.boots == "flash" and chip.mode == "app"  # the application runs, the ROM is gone
    chip.reset("bootloader")  # BOOT0 pin high is ignored while nBOOT_SEL = 1
    assert chip.boots == "flash"


def test_ob_nboot_sel_hands_boot_to_the_pin(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    dev, url, chip, fw = _chip_and_firmware("C031", "sel-c031", tmp_path)
    assert cli(["uart", url, str(fw), "--ob", "nBOOT_SEL=0", "-q"], capsys)[0] == 0
    assert chip.boots == "system"  # the option load re-sampled EMPTY; BOOT0 pin (strapped high) wins
    chip.reset("app")
    assert chip.boots == "flash"  # BOOT0 low: main flash
    chip.reset("bootloader")
    assert chip.boots == "system"


# ---- dual-bank boot (BFB2) ---------------------------------------------------------------------
# AN2606 "dual bank boot" (F1 XL-density, F42x/F43x, L07x/L08x, L47x/L49x) with the reference
# manuals' BFB2 descriptions, written out here: with the dual-bank boot on and BOOT0 low the
# system memory runs first and jumps to bank 2 when its first word is a stack pointer in SRAM,
# else to bank 1 when that holds one, else stays in the bootloader; BOOT0 high: the ROM.
#   (part, value of BFB2 that turns the dual-bank boot on)
DUAL_BANK = [("F103xG", 0), ("F429", 1), ("L476", 1), ("L072", 1)]


@pytest.mark.parametrize("name, on", DUAL_BANK)
def test_dual_bank_boot_walk(name: str, on: int) -> None:
    dev = devices.find(name)
    t = ob_fields.table_of(dev)
    bfb2 = t.find("BFB2")
    bank2 = dev.bank_units(2)[0].address
    for value in (on, on ^ 1):
        for valid1 in (False, True):
            for valid2 in (False, True):
                for pin in ("app", "bootloader"):
                    chip = VirtualChip(dev)
                    if valid1:
                        chip.preload(dev.flash_start, APP)
                    if valid2:
                        chip.preload(bank2, APP)
                    chip.write_option_bytes(ob_fields.apply(dev, chip.option_bytes(), {bfb2: value}))
                    chip.reset(pin)
                    if pin == "bootloader":
                        want = "system"
                    elif value != on:
                        want = "flash"  # the reset runs bank 1 whatever it holds
                    else:
                        want = "flash-bank2" if valid2 else "flash" if valid1 else "system"
                    case = f"{name} BFB2={value} bank1={valid1} bank2={valid2} {pin}"
                    assert chip.boots == want, f"{case}: {chip.boots}, AN2606 says {want}"
                    assert chip.mode == ("bootloader" if want == "system" else "app"), case


# ---- L4 / G4 / WB / WL: BOOT0 from the pin or from nBOOT0 -------------------------------------------
# RM0394 / RM0440 / RM0434 / RM0453 boot configuration, written out here: boot0 is the BOOT0 pin, or
# with nSWBOOT0 = 0 the inverse of nBOOT0; boot0 = 0 boots the main flash (a blank flash boots
# the system memory on parts with AN2606's empty check: L41x-L46x, WB, WL (RM0461 3.3.2 empty check), not
# G4); boot0 = 1 the system memory with nBOOT1 = 1, SRAM with nBOOT1 = 0; BFB2 = 1 with boot0 = 0 is the dual-bank
# boot (the ROM runs first: bank 1 holding a stack pointer is jumped to, a blank part stays).
def _l4_expected(dev: devices.Device, nsw: int, n0: int, n1: int, bfb2: int, pin: int, empty: bool) -> str:
    boot0 = pin if nsw == 1 else 1 - n0
    if boot0 == 1:
        return "system" if n1 else "sram"
    if bfb2:
        return "system" if empty else "flash"
    return "system" if empty and dev.empty_check else "flash"


@pytest.mark.parametrize("name", ["L432", "G474", "WB55", "L496", "WLE5"])
def test_l4_family_boot_walk(name: str) -> None:
    dev = devices.find(name)
    t = ob_fields.table_of(dev)
    has_bfb2 = t.find("BFB2") is not None
    for nsw in (0, 1):
        for n0 in (0, 1):
            for n1 in (0, 1):
                for bfb2 in ((0, 1) if has_bfb2 else (0,)):
                    for pin in (0, 1):
                        for empty in (True, False):
                            chip = VirtualChip(dev)
                            if not empty:
                                chip.preload(dev.flash_start, APP)
                            values = {t.find("nSWBOOT0"): nsw, t.find("nBOOT0"): n0, t.find("nBOOT1"): n1}
                            if has_bfb2:
                                values[t.find("BFB2")] = bfb2
                            chip.write_option_bytes(ob_fields.apply(dev, chip.option_bytes(), values))
                            chip.reset("bootloader" if pin else "app")
                            want = _l4_expected(dev, nsw, n0, n1, bfb2, pin, empty)
                            case = f"{name} nSWBOOT0={nsw} nBOOT0={n0} nBOOT1={n1} BFB2={bfb2} pin={pin} empty={empty}"
                            assert chip.boots == want, f"{case}: {chip.boots}, RM says {want}"


# ---- F7: the boot address is an option field -----------------------------------------------------
# RM0385 / RM0410 FLASH_OPTCR1 description (examples of BOOT_ADDx) and section 2.5 Table 3
# (BOOT0 low boots at BOOT_ADD0 << 14, high at BOOT_ADD1 << 14), written out here from the
# manuals, independently of the data file's boot table and address map.
F7_BOOT_ADDRESSES = [
    (0x0000, "sram"),    # ITCM RAM 0x00000000
    (0x0040, "system"),  # system memory 0x00100000: the ROM bootloader
    (0x0080, "flash"),   # flash on ITCM 0x00200000
    (0x2000, "flash"),   # flash on AXIM 0x08000000
    (0x8000, "sram"),    # DTCM RAM 0x20000000
    (0x8004, "sram"),    # SRAM1 0x20010000
    (0x0041, "none"),    # 0x00104000: inside the ROM, not its vector table
    (0x4000, "none"),    # 0x10000000: nothing mapped on F7
]


@pytest.mark.parametrize("name", ["F746", "F767"])
def test_f7_boot_address_walk(name: str) -> None:
    dev = devices.find(name)
    t = ob_fields.table_of(dev)
    chip = VirtualChip(dev)
    assert chip.boots == "system"  # factory BOOT_ADD1 = 0x0040 with BOOT0 high
    for field, pin in (("BOOT_ADD0", "app"), ("BOOT_ADD1", "bootloader")):
        for value, want in F7_BOOT_ADDRESSES:
            chip = VirtualChip(dev)
            chip.write_option_bytes(ob_fields.apply(dev, chip.option_bytes(), {t.find(field): value}))
            chip.reset(pin)
            assert chip.boots == want, f"{name} {field}=0x{value:04X}: {chip.boots}, RM says {want}"
            other = "bootloader" if pin == "app" else "app"
            chip.reset(other)  # the other pin level reads the other, factory, address
            assert chip.boots == ("system" if other == "bootloader" else "flash")


def test_f7_boot_add1_away_from_the_rom_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    dev = devices.find("F746")
    url = uart_url(dev, "boot-f746")
    chip = registry.get("boot-f746")
    code, _, err = cli(["uart", url, "--ob", "BOOT_ADD1=0x2000", "--timeout", "0.05", "--retries", "1"], capsys)
    assert code == 3  # BOOT0 high now boots the flash: the ROM never answers again
    assert "boots flash after the reload" in err and "BOOT_ADD1=0x0040" in err
    assert chip.boots == "flash" and chip.mode == "app"
    assert ob_fields.table_of(dev).find("BOOT_ADD1").get(chip.option_bytes()) == 0x2000


def test_f7_write_protection_and_rdp_go_through_the_layout(capsys: pytest.CaptureFixture[str]) -> None:
    """nWRP bit n protects sector n (RM0385 3.4.1, 0 = protected): --write-protect, the field
    and the virtual chip agree; RDP level 1 is byte 1 of the area."""
    for name, sectors in (("F746", 8), ("F767", 12)):
        dev = devices.find(name)
        t = ob_fields.table_of(dev)
        assert obl.wrp_code_count(dev) == sectors == t.find("nWRP").width
        url = uart_url(dev, f"wrp-{name}")
        chip = registry.get(f"wrp-{name}")
        code, _, err = cli(["uart", url, "--ob", f"nWRP=0x{(1 << sectors) - 1 - 0b101:X}", "-q"], capsys)
        assert code == 0, err
        assert chip.wrp == {0, 2}
        area = chip.option_bytes()
        assert obl.wrp_units(dev, area) == {0, 2} and t.find("IWDG_STOP").get(area) == 1  # neighbours kept
        chip.readout_protect()
        assert chip.option_bytes()[1] == 0x55 and chip.rdp_level == 1


# ---- refused before the port is opened --------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--ob", "NO_SUCH=1"], "no option field of that name"),
        (["--ob", "BORR_LEV=4"], "out of range"),
        (["--ob", "NRST_MODE=0"], "not a documented value"),
        (["--ob", "IWDG_SW=maybe"], "not a number nor one of hw, sw"),
        (["--ob", "PCROP1A_STRT=3"], "decoded only"),
        (["--ob", "RDP=level2"], "--i-understand-rdp2-is-permanent"),
        (["--ob", "RDP=0xCC"], "--i-understand-rdp2-is-permanent"),
        (["--ob", "BOOT_LOCK=1"], "--i-understand-rdp2-is-permanent"),
        (["--ob", "nBOOT_SEL"], "expected NAME=VALUE"),
        (["--ob", "nBOOT0=0", "--ob", "nboot0=1"], "given twice"),
    ],
)
def test_bad_requests_exit_2_before_the_port_is_opened(args, message, capsys) -> None:
    code, _, err = cli(["uart", "sim://G071?chip=never-opened", *args], capsys)
    assert code == 2 and message in err, err
    assert registry.get("never-opened") is None  # the sim:// port was never opened
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--device", "G071", *args], capsys)
    assert code == 2 and message in err, err  # a missing port would be exit 3: it was never opened


def test_unknown_fields_and_families_refused_with_their_reason(capsys) -> None:
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--device", "U031", "--ob", "BORF_LEV=0"], capsys)
    assert code == 2 and "BORF_LEV: not written: RM0503 Rev 4 3.7.7: bits 12:11 are reserved" in err
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--device", "L4P5", "--ob", "nBOOT0=0"], capsys)
    assert code == 2 and "L4P5/L4Q5: the factory values" in err
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--device", "F767", "--ob", "nDBANK=dual"], capsys)
    assert code == 2 and "nDBANK: not written: nDBANK = 0" in err
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--device", "F746", "--ob", "BOOT_ADD1=0x10000"], capsys)
    assert code == 2 and "out of range for a 16-bit field" in err
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--device", "F746", "--ob", "RDP=level2"], capsys)
    assert code == 2 and "--i-understand-rdp2-is-permanent" in err
    code, _, err = cli(["dfu", "--device", "F767", "--ob", "nWRP=0x1000"], capsys)
    assert code == 2 and "out of range for a 12-bit field" in err  # no USB device: never opened
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--device", "U073", "--ob", "HDP1EN=0"], capsys)
    assert code == 2 and "HDP1EN: not written: hide protection (HDP) is not modelled" in err
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--device", "L552", "--ob-reset-defaults"], capsys)
    assert code == 2 and "L5: the factory option values (RM0438 production values" in err
    # no part named: names unknown to every family, and permanent values anywhere, still refused
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--ob", "FOO=1"], capsys)
    assert code == 2 and "no STM32 family has an option field of that name" in err
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--ob", "RDP=level2"], capsys)
    assert code == 2 and "--i-understand-rdp2-is-permanent" in err
    code, _, err = cli(["dfu", "--device", "G071", "--ob", "BORR_LEV=9"], capsys)
    assert code == 2 and "out of range" in err  # no USB device at all: it was never opened


# ---- WL / L1: factory values from ST's SVD, cross-checked (option_bytes.toml [WL], [L1]) ----------
# The words are written out from the sources, not from the table: WL OPTR 0x3FFFF0AA (ST's
# STM32WL5x SVD reset value; Black Magic Probe's WL default 0x3FEFF0AA differs only in the
# reserved bit 20), WRP1AR/WRP1BR 0xFF80FFFF; L1 USER 0xF8 at 0x1FF80004 (ST's STM32L1 SVD
# FLASH_OBR reset 0x00F80000, NuttX's L162VE defaults 0xFF0700F8), RDP 0xFF5500AA.
@pytest.mark.parametrize("name, words", [
    ("WLE5", {0x00: 0x3FFFF0AA, 0x04: 0xC0000F55, 0x08: 0xFFFFFFFF, 0x10: 0xFFFFFF00, 0x18: 0xFF80FFFF,
              0x1C: 0x007F0000, 0x20: 0xFF80FFFF, 0x28: 0xFFFFFFFF, 0x30: 0xFFFFFF00}),
    ("L151xB", {0x00: 0xFF5500AA, 0x04: 0xFF0700F8, 0x08: 0xFFFF0000, 0x0C: 0xFFFF0000}),
    ("L151xE", {0x00: 0xFF5500AA, 0x04: 0xFF0700F8, 0x08: 0xFFFF0000, 0x0C: 0xFFFF0000}),
])
def test_wl_l1_virtual_chip_presents_the_documented_factory_words(name: str, words: dict[int, int]) -> None:
    dev = devices.find(name)
    area = VirtualChip(dev).option_bytes()
    for off, want in words.items():
        assert int.from_bytes(area[off:off + 4], "little") == want, f"{name} +0x{off:02X}"
    t = ob_fields.table_of(dev)
    assert not t.unknown
    rows = {r["field"]: r["value"] for r in ob_fields.decode(dev, area)}
    if dev.family == "WL":  # RM0453 / CMSIS stm32wl55xx.h positions
        assert rows["RDP"] == 0xAA and rows["ESE"] == 0 and rows["BOR_LEV"] == 0 and rows["nSWBOOT0"] == 1
        assert rows["WRP1A_STRT"] == 0x7F and rows["WRP1A_END"] == 0 and rows["PCROP_RDP"] == 1
        assert obl.wrp_units(dev, area) == set()
    else:  # RM0038 / CMSIS stm32l1xx.h FLASH_OBR: BOR level 1, software IWDG, boot bank 1
        assert rows["BOR_LEV"] == 8 and rows["WDG_SW"] == 1 and rows["BFB2"] == 1 and rows["WRP1"] == 0


@pytest.mark.parametrize("name, args, message", [
    ("WLE5", ["--ob", "ESE=1"], "ESE: not written: system security"),
    ("WLE5", ["--ob", "BOOT_LOCK=locked"], "BOOT_LOCK: not written"),
    ("WLE5", ["--ob", "BOR_LEV=5"], "not a documented value"),
    ("WLE5", ["--ob", "WRP1A_STRT=0x80"], "out of range for a 7-bit field"),
    ("WLE5", ["--ob", "DUALBANK=0"], "no option field of that name"),
    ("L151xE", ["--ob", "BFB2=bank2"], "BFB2: not written: dual-bank boot"),
    ("L151xE", ["--ob", "BOR_LEV=16"], "out of range for a 4-bit field"),
    ("L151xE", ["--ob", "RDP=level2"], "--i-understand-rdp2-is-permanent"),
])
def test_wl_l1_wrong_requests_exit_2_before_the_port_is_opened(name, args, message, capsys) -> None:
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--device", name, *args], capsys)
    assert code == 2 and message in err, err


def test_wl_l1_reset_defaults_restore_the_documented_user_fields(capsys) -> None:
    for name, ask, field_name, want in (("WLE5", "BOR_LEV=2.5V", "BOR_LEV", 0), ("L151xB", "BOR_LEV=0xC", "BOR_LEV", 8)):
        dev = devices.find(name)
        url = uart_url(dev, f"rd-{name}")
        code, _, err = cli(["uart", url, "--ob", ask, "-q"], capsys)
        assert code == 0, err
        f = ob_fields.table_of(dev).find(field_name)
        chip = registry.get(f"rd-{name}")
        assert f.get(chip.option_bytes()) != want
        code, _, err = cli(["uart", url, "--ob-reset-defaults", "-q"], capsys)
        assert code == 0, err
        assert f.get(chip.loaded_option_bytes()) == want
        assert chip.option_bytes() == VirtualChip(dev).option_bytes()  # the whole factory area back


# ---- WB55: RM0434's production values (option_bytes.toml [WB]) ---------------------------------
# Written out from RM0434 Rev 16 section 3.4.1, not from the table: user and read protection
# 0b001x 1101 1xxx 1111 x111 0001 1010 1010 with the reserved 'x' bits 0 as Black Magic Probe's
# stm32wb_default_options_values has them (0x2D8F71AA), PCROP1ASR 0x1FF, PCROP1AER 0x80000000,
# WRP1AR/WRP1BR 0xXX00XXFF (0x000000FF), PCROP1BSR 0x1FF, PCROP1BER 0, IPCCBR 0; each double
# word's upper half is the complement of its lower half (RM0434 Table 9 note 1).
WB55_WORDS = {0x00: 0x2D8F71AA, 0x08: 0x000001FF, 0x10: 0x80000000, 0x18: 0x000000FF, 0x20: 0x000000FF,
              0x28: 0x000001FF, 0x30: 0x00000000, 0x68: 0x00000000}


def test_wb55_virtual_chip_presents_rm0434_production_values() -> None:
    dev = devices.find("WB55")
    area = VirtualChip(dev).option_bytes()
    for off, want in WB55_WORDS.items():
        assert int.from_bytes(area[off:off + 4], "little") == want, f"+0x{off:02X}"
        assert int.from_bytes(area[off + 4:off + 8], "little") == want ^ 0xFFFFFFFF, f"+0x{off + 4:02X}"
    assert not ob_fields.table_of(dev).unknown
    rows = {r["field"]: r["value"] for r in ob_fields.decode(dev, area)}
    # RM0434 3.4.1 bit by bit: AGC_TRIM 0b001, ESE 1 (flash secure for the FUS), BOR level 0,
    # SRAM2_RST 0 (SRAM2 erased on reset), boot from the BOOT0 pin, RDP level 0, no WRP / PCROP
    assert rows["AGC_TRIM"] == 1 and rows["ESE"] == 1 and rows["BOR_LEV"] == 0 and rows["RDP"] == 0xAA
    assert rows["SRAM2_RST"] == 0 and rows["SRAM2_PE"] == 1 and rows["nSWBOOT0"] == 1 and rows["nBOOT0"] == 1
    assert rows["nBOOT1"] == 1 and rows["WRP1A_STRT"] == 0xFF and rows["WRP1A_END"] == 0 and rows["PCROP_RDP"] == 1
    assert rows["PCROP1A_STRT"] == 0x1FF and rows["PCROP1B_END"] == 0 and rows["IPCCDBA"] == 0
    assert obl.wrp_units(dev, area) == set()


@pytest.mark.parametrize("args, message", [
    (["--ob", "ESE=0"], "ESE: not written"),
    (["--ob", "AGC_TRIM=2"], "AGC_TRIM: not written"),
    (["--ob", "PCROP1A_STRT=0"], "decoded only"),
    (["--ob", "BOR_LEV=5"], "not a documented value"),
    (["--ob", "IPCCDBA=0x4000"], "out of range for a 14-bit field"),
    (["--ob", "RDP=level2"], "--i-understand-rdp2-is-permanent"),
])
def test_wb55_wrong_requests_exit_2_before_the_port_is_opened(args, message, capsys) -> None:
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--device", "WB55", *args], capsys)
    assert code == 2 and message in err, err


def test_wb15_stays_decoded_only_without_rm0473_values(capsys) -> None:
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--device", "WB15", "--ob", "BOR_LEV=1"], capsys)
    assert code == 2 and "WB10/WB15: the factory option values (RM0473" in err, err


def test_wb55_reset_defaults_restore_the_production_area(capsys) -> None:
    dev = devices.find("WB55")
    url = uart_url(dev, "rd-WB55")
    code, _, err = cli(["uart", url, "--ob", "BOR_LEV=2.8V", "--ob", "SRAM2_RST=kept", "--ob", "IPCCDBA=0x40", "-q"], capsys)
    assert code == 0, err
    chip = registry.get("rd-WB55")
    t = ob_fields.table_of(dev)
    assert t.find("BOR_LEV").get(chip.option_bytes()) == 4 and t.find("IPCCDBA").get(chip.option_bytes()) == 0x40
    code, _, err = cli(["uart", url, "--ob-reset-defaults", "-q"], capsys)
    assert code == 0, err
    assert chip.option_bytes() == VirtualChip(dev).option_bytes()  # the whole production area back
    assert int.from_bytes(chip.loaded_option_bytes()[:4], "little") == 0x2D8F71AA


# ---- U0: RM0503's factory values (option_bytes.toml [U0]) ------------------------------------------
# Written out from RM0503 Rev 4 section 3.4.1 Table 13 'Factory value' rows, not from the table:
# FLASH_OPTR 0xFFFFFFAA (the reserved 'X' bits 31:30, 20, 12:11 taken as 1, as G0's production
# value shows them), WRP1AR/WRP1BR 0x0000007F, FLASH_SECR 0xB4000000 (HDP1EN 0xB4: no HDP area;
# reserved bits 0 as its register reset value 0bXXXX XXXX 0000 000X 0000 0000 0XXX XXXX says).
@pytest.mark.parametrize("name", ["U031", "U083"])
def test_u0_virtual_chip_presents_rm0503_factory_values(name: str) -> None:
    dev = devices.find(name)
    area = VirtualChip(dev).option_bytes()
    for off, want in {0x00: 0xFFFFFFAA, 0x0C: 0x0000007F, 0x10: 0x0000007F, 0x60: 0xB4000000}.items():
        assert int.from_bytes(area[off:off + 4], "little") == want, f"{name} +0x{off:02X}"
    assert not ob_fields.table_of(dev).unknown
    rows = {r["field"]: r["value"] for r in ob_fields.decode(dev, area)}
    # RM0503 3.7.7: BOR enabled at level 3 (about 2.8 V), BOOT0 from the nBOOT0 option bit
    # (nBOOT_SEL = 1, nBOOT0 = 1: main flash, the empty check sending a blank part to the ROM)
    assert rows["BOR_EN"] == 1 and rows["BORR_LEV"] == 3 and rows["RDP"] == 0xAA and rows["NRST_MODE"] == 3
    assert rows["nBOOT_SEL"] == 1 and rows["nBOOT0"] == 1 and rows["nBOOT1"] == 1 and rows["BOOT_LOCK"] == 0
    assert rows["HDP1EN"] == 0xB4 and rows["BDRST"] == 1 and rows["BKPSRAM_HW_ERASE"] == 1
    assert obl.wrp_units(dev, area) == set()


def test_u0_fields_by_rm0503_names_and_reset_defaults(capsys) -> None:
    dev = devices.find("U083")
    url = uart_url(dev, "rd-U083")
    # BOR_LEV (RM0503's name) is BORR_LEV; BKPSRAM_HW_ERASE_DISABLE (RM0503) is CMSIS's BKPSRAM_HW_ERASE
    code, out, err = cli(["uart", url, "--ob", "BOR_LEV=2.0V", "--ob", "BKPSRAM_HW_ERASE_DISABLE=erased", "--ob-show", "--json"], capsys)
    assert code == 0, err
    assert result(out)["option_fields_written"] == {"BORR_LEV": 0, "BKPSRAM_HW_ERASE": 0}
    chip = registry.get("rd-U083")
    assert int.from_bytes(chip.option_bytes()[:4], "little") == 0xFF7FF9AA
    code, _, err = cli(["uart", url, "--ob-reset-defaults", "-q"], capsys)
    assert code == 0, err
    assert chip.option_bytes() == VirtualChip(dev).option_bytes()
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--device", "U083", "--ob", "BOOT_LOCK=1"], capsys)
    assert code == 2 and "--i-understand-rdp2-is-permanent" in err


def test_rdp2_with_the_flag_goes_through(capsys) -> None:
    dev = devices.find("G071")
    url = uart_url(dev, "rdp2-g071")
    chip = registry.get("rdp2-g071")
    code, _, err = cli(["uart", url, "--ob", "RDP=level2", "--i-understand-rdp2-is-permanent", "-q"], capsys)
    assert code == 0, err
    assert chip.rdp_level == 2


def test_virtual_chip_refuses_what_the_client_cannot_encode(usb_sim, capsys) -> None:
    """No simulator fallback: an unknown layout is refused over virtual DFU as over UART."""
    dev = devices.find("H7A3")
    bus = usb_sim(dev, 0)
    code, _, err = cli(["dfu", "--protect"], capsys)
    assert code == 2 and "not in the table" in err
    chip = bus.devices[0].chip
    assert chip.rdp_level == 0 and chip.reset_count == 0
    with pytest.raises(Exception, match="not in the table"):
        chip.write_option_bytes(b"\x00" * 4)
    with pytest.raises(Exception, match="not in the table"):
        chip.write_protect([0])


# ---- batch jobs ---------------------------------------------------------------------------------
def test_batch_job_sets_fields(tmp_path: Path, capsys) -> None:
    dev = devices.find("G071")
    registry.register("job-g071", VirtualChip(dev))
    fw = tmp_path / "fw.bin"
    fw.write_bytes(APP * 256)
    job = tmp_path / "line.toml"
    job.write_text(
        f'image = "{fw}"\ndevice = "G071"\ntargets = ["sim://G071?chip=job-g071"]\n'
        '[program]\nafter = "stay"\n'
        '[option_bytes]\nfields = { nBOOT_SEL = 0, BORR_LEV = 2, IWDG_SW = "hw" }\n'
    )
    code, out, err = cli(["batch", "--job", str(job), "--report-dir", str(tmp_path / "r")], capsys)
    assert code == 0, err
    t = ob_fields.table_of(dev)
    ob = registry.get("job-g071").option_bytes()
    assert [t.find(n).get(ob) for n in ("nBOOT_SEL", "BORR_LEV", "IWDG_SW")] == [0, 2, 0]
    bad = tmp_path / "bad.toml"
    bad.write_text(job.read_text().replace("BORR_LEV = 2", "BOR_LEVEL = 2").replace("job-g071", "job-bad"))
    code, out, err = cli(["batch", "--job", str(bad), "--report-dir", str(tmp_path / "r2")], capsys)
    assert code == 2 and "BOR_LEVEL" in err
    assert registry.get("job-bad") is None


def test_a_g0_that_boots_its_flash_after_the_reload_is_explained(capsys, tmp_path: Path) -> None:
    dev, url, chip, fw = _chip_and_firmware("G071", "gone-g071", tmp_path)
    assert cli(["uart", url, str(fw), "-q", "--after", "stay"], capsys)[0] == 0
    code, _, err = cli(["uart", url, "--ob", "BORR_LEV=1", "--timeout", "0.05", "--retries", "1"], capsys)
    assert code == 3  # factory nBOOT_SEL = 1, nBOOT0 = 1 and programmed flash: the ROM is gone
    assert "boots flash after the reload" in err and "nBOOT_SEL=0" in err
    assert chip.boots == "flash" and chip.mode == "app"


def test_the_sim_app_mode_follows_the_boot_table() -> None:
    """A G0 with an application and pin-selected boot (nBOOT_SEL = 0) runs it with BOOT0
    low; with factory options (nBOOT_SEL = 1) BOOT0 is ignored and nBOOT0 = 0 keeps the ROM."""
    from stmflash.sim.app import VirtualApp, has_valid_app

    dev = devices.find("G071")
    t = ob_fields.table_of(dev)
    for fields, boots in (({"nBOOT_SEL": 0}, "flash"), ({"nBOOT0": 0}, "system"), ({}, "flash")):
        chip = VirtualChip(dev)
        chip.preload(dev.flash_start, APP * 16)
        assert has_valid_app(chip)
        values = {t.find(k): v for k, v in fields.items()}
        chip.store_raw_option_bytes(ob_fields.apply(dev, chip.option_bytes(), values))
        VirtualApp(chip)  # attached = powered on with BOOT0 low
        assert chip.boots == boots, fields
        assert chip.mode == ("app" if boots == "flash" else "bootloader")


def test_device_names_the_part_the_request_was_checked_against(capsys) -> None:
    dev = devices.find("G071")
    registry.register("other-part", VirtualChip(dev))
    chip = registry.get("other-part")
    before = chip.option_bytes()
    code, _, err = cli(["uart", "sim://G071?chip=other-part", "--device", "F407", "--ob", "BOR_LEV=3"], capsys)
    assert code == 2 and "not STM32F405" in err  # checked against F407, the chip is a G071
    assert chip.option_bytes() == before and chip.reset_count == 0


# ---- U5: the FLASH option registers as ST's OpenBootloader presents them ------------------------
def test_u5_area_is_the_flash_option_registers() -> None:
    dev = devices.find("U575")
    assert (dev.option_bytes.start, dev.option_bytes.size) == (0x40022040, 64)
    assert any("/0x40022040/01*64" in a for a in dev.dfu_alts() if "Option" in a)
    ob = ob_fields.factory_area(dev)
    assert int.from_bytes(ob[0:4], "little") == 0x1FEFF8AA  # RM0456 FLASH_OPTR production value
    t = ob_fields.table_of(dev)
    assert t.find("NSBOOTADD1").get(ob) << 7 == 0x0BF90000  # boot0 = 1: system memory
    assert obl.rdp_level(dev, ob) == 0 and obl.wrp_units(dev, ob) == set()


# Written out from RM0456 Rev 6 'ST production value' lines, not from the table: 7.9.13 FLASH_OPTR
# 0x1FEF F8AA, 7.9.14 FLASH_NSBOOTADD0R 0x0800 007F, 7.9.15 FLASH_NSBOOTADD1R 0x0BF9 007F, and
# 7.9.18 / 7.9.22 FLASH_SECWM1R2 / FLASH_SECWM2R2 per part (area offsets 0x14 / 0x24).
@pytest.mark.parametrize(("name", "secwm_r2"), [("U575", 0x7F807F80), ("U535", 0x7FE07FE0), ("U599", 0x7F007F00), ("U5G9", 0x7F007F00)])
def test_u5_virtual_chip_presents_rm0456_production_values(name: str, secwm_r2: int) -> None:
    dev = devices.find(name)
    area = VirtualChip(dev).option_bytes()
    want = {0x00: 0x1FEFF8AA, 0x04: 0x0800007F, 0x08: 0x0BF9007F, 0x14: secwm_r2, 0x24: secwm_r2}
    for off, word in want.items():
        assert int.from_bytes(area[off:off + 4], "little") == word, f"{name} +0x{off:02X}"
    rows = {r["field"]: r["value"] for r in ob_fields.decode(dev, area)}
    # RM0456 7.9.13: RDP level 0, BOR level 0, TrustZone off, BOOT0 from the pin, dual bank
    assert rows["RDP"] == 0xAA and rows["BOR_LEV"] == 0 and rows["TZEN"] == 0
    assert rows["nSWBOOT0"] == 1 and rows["nBOOT0"] == 1 and rows["DUALBANK"] == 1 and rows["SWAP_BANK"] == 0


def test_u5_reset_defaults_keeps_the_secure_watermarks(capsys: pytest.CaptureFixture[str]) -> None:
    """--ob-reset-defaults writes the factory words; the ROM programs OPTR, NSBOOTADDx and WRPxy
    only, so the secure watermarks (RM0456 production values in the virtual chip) stay as read."""
    dev = devices.find("U575")
    url = uart_url(dev, "rd-u575")
    code, _, err = cli(["uart", url, "--ob", "IWDG_SW=hw"], capsys)
    assert code == 0, err
    chip = registry.get("rd-u575")
    assert ob_fields.table_of(dev).find("IWDG_SW").get(chip.option_bytes()) == 0
    code, _, err = cli(["uart", url, "--ob-reset-defaults"], capsys)
    assert code == 0, err
    assert chip.option_bytes() == ob_fields.factory_area(dev)
    assert int.from_bytes(chip.option_bytes()[0x14:0x18], "little") == 0x7F807F80


def test_u5_rom_ignores_the_registers_it_does_not_program() -> None:
    """OPENBL_OB_Write (U5) stores OPTR, NSBOOTADDx and WRPxy only: SECBOOTADD0R and the
    secure watermarks keep their value whatever the host sends."""
    dev = devices.find("U575")
    chip = VirtualChip(dev)
    before = chip.option_bytes()
    data = bytearray(b"\x00" * 64)
    data[0:4] = (0x1FEFF8AA & ~(1 << 16)).to_bytes(4, "little")  # IWDG_SW = 0
    data[4:12] = before[4:12]
    data[0x18:0x30] = before[0x18:0x30]
    chip.write_option_bytes(bytes(data))
    after = chip.option_bytes()
    assert ob_fields.table_of(dev).find("IWDG_SW").get(after) == 0
    assert after[0x0C:0x18] == before[0x0C:0x18] and after[0x20:0x28] == before[0x20:0x28]
    assert after[0x30:] == before[0x30:]


def test_u5_wrp_area_set_by_field_protects_the_pages(capsys: pytest.CaptureFixture[str]) -> None:
    dev = devices.find("U575")
    url = uart_url(dev, "wrp-u575")
    chip = registry.get("wrp-u575")
    code, out, err = cli(["uart", url, "--ob", "WRP1A_PSTRT=2", "--ob", "WRP1A_PEND=3", "--json"], capsys)
    assert code == 0, err
    assert result(out)["option_fields_verified"]
    assert chip.wrp == frozenset({2, 3})
    page, free = dev.erase_units[2], dev.erase_units[4]
    chip.program(page.address, b"\x00" * 16)  # the flash interface leaves a protected page alone
    chip.program(free.address, b"\x00" * 16)
    assert chip.read(page.address, 16) == b"\xff" * 16 and chip.read(free.address, 16) == b"\x00" * 16
    # the page ranges are those of bank 1 only: WRP2A protects bank 2 and is decoded apart
    code, out, err = cli(["uart", url, "--ob", "WRP1A_PSTRT=0x7F", "--ob", "WRP1A_PEND=0", "-q"], capsys)
    assert code == 0, err
    assert chip.wrp == frozenset()


@pytest.mark.parametrize("request_", [["--ob", "TZEN=1"], ["--ob", "RDP=level2"], ["--ob", "WRP1A_UNLOCK=0"],
                                      ["--ob", "WRP1A_PEND=0x80"], ["--ob", "SECWM1_PSTRT=0"]])
def test_u5_wrong_requests_exit_2_before_the_port_is_opened(request_, capsys) -> None:
    code, _, err = cli(["uart", "sim://U575?chip=u5-never", *request_], capsys)
    assert code == 2, err
    assert registry.get("u5-never") is None
    code, _, err = cli(["dfu", "--device", "U575", *request_], capsys)
    assert code == 2, err  # no USB device at all: it was never opened


def test_u5_tzen_with_the_flag_is_written(capsys) -> None:
    dev = devices.find("U575")
    url = uart_url(dev, "tz-u575")
    chip = registry.get("tz-u575")
    code, _, err = cli(["uart", url, "--ob", "TZEN=on", "--i-understand-rdp2-is-permanent", "-q"], capsys)
    assert code == 0, err
    assert ob_fields.table_of(dev).find("TZEN").get(chip.option_bytes()) == 1


@pytest.mark.parametrize("name", ["H563", "WBA55", "H7R3", "H7A3", "U385", "WBA65"])
def test_decoded_only_areas_claim_no_factory_default(name: str, capsys) -> None:
    """H5 / WBA: the ROM's area is established (ST's OpenBootloader) but not the production
    values: --ob-show decodes the fields, claims no default, and nothing is written."""
    dev = devices.find(name)
    t = ob_fields.table_of(dev)
    url = uart_url(dev, f"dec-{name}")
    code, out, err = cli(["uart", url, "--ob-show", "--json"], capsys)
    assert code == 0, err
    rows = result(out)["option_fields"]
    assert rows and all(not r["writable"] and r["why"] == t.unknown for r in rows)
    # no default claimed, but for the words a factory_partial table holds (U3's boot addresses)
    assert all((r["default"] is None) != t.claims_default(t.find(r["field"])) for r in rows)
    assert any(r["default"] is None for r in rows)
    code, out, err = cli(["uart", url, "--ob-show"], capsys)
    assert code == 0 and "?" in out
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--device", name, "--ob", "IWDG_SW=0"], capsys)
    assert code == 2 and "not written" in err


@pytest.mark.parametrize(("name", "fields", "addresses"), [
    ("U385", ("BOOT0_ADD", "BOOT1_ADD"), (0x08000000, 0x0BF8F000)),  # RM0487 Table 19
    ("WBA65", ("NSBOOTADD0", "NSBOOTADD1"), (0x08000000, 0x0BF90000)),  # RM0515 Table 22
])
def test_partial_production_values_are_the_boot_tables_addresses(name, fields, addresses, capsys) -> None:
    """Where only the reference manual's boot-mode table gives ST's programmed defaults, the
    virtual chip starts with those boot addresses and --ob-show claims them (and nothing else)."""
    dev = devices.find(name)
    t = ob_fields.table_of(dev)
    assert t.factory_partial
    code, out, err = cli(["uart", uart_url(dev, f"part-{name}"), "--ob-show", "--json"], capsys)
    assert code == 0, err
    rows = {r["field"]: r for r in result(out)["option_fields"]}
    for fname, address in zip(fields, addresses, strict=True):
        f = t.find(fname)
        assert rows[fname]["value"] << f.bit == address and rows[fname]["is_default"], fname
    assert {n for n, r in rows.items() if r["default"] is not None} == set(fields)
    # the other words are not production values: refused with the reason, before any port
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--device", name, "--ob", f"{fields[1]}=0x100000"], capsys)
    assert code == 2 and "not written" in err


def test_u5_readout_protection_through_the_registers(capsys) -> None:
    dev = devices.find("U575")
    url = uart_url(dev, "rdp-u575")
    chip = registry.get("rdp-u575")
    chip.program(dev.flash_start, b"\x11" * 16)
    code, _, err = cli(["uart", url, "--protect", "-q"], capsys)
    assert code == 0, err
    assert chip.rdp_level == 1 and chip.option_bytes()[0] == 0xBB
    code, _, err = cli(["uart", url, "--unprotect", "-q"], capsys)
    assert code == 0, err
    assert chip.rdp_level == 0 and chip.option_bytes()[0] == 0xAA
    assert chip.read(dev.flash_start, 16) == b"\xff" * 16  # the regression mass-erased the flash


def test_g0b1_over_dfu_is_refused_with_what_its_alt_covers(usb_sim, capsys) -> None:
    """G0B1's DFU option-bytes alt (0x40022040, 48 bytes) is the FLASH register block from the
    bank-2 PCROP/WRP registers on (CMSIS stm32g0b1xx.h), not OPTR's area at 0x1FFF7800."""
    dev = devices.find("G0B1")
    bus = usb_sim(dev, 0)
    for args in (["--ob-show"], ["--ob", "nBOOT_SEL=0"]):
        code, _, err = cli(["dfu", "--device", "G0B1", *args], capsys)
        assert code == 2, err
        assert "covers 0x40022040-0x4002206F, not the option-byte area" in err and "0x1FFF7800" in err
    assert bus.devices[0].chip.reset_count == 0


# RM0456 Table "Boot modes when TrustZone is disabled (TZEN = 0)", independently of the data
# file: nSWBOOT0 = 1: the BOOT0 pin picks NSBOOTADD0 (0) / NSBOOTADD1 (1); nSWBOOT0 = 0: nBOOT0
# picks NSBOOTADD0 (1) / NSBOOTADD1 (0). Factory NSBOOTADD0 = flash, NSBOOTADD1 = the ROM.
@pytest.mark.parametrize("sw, n0, pin, want", [
    (1, 1, 0, "flash"), (1, 1, 1, "system"), (1, 0, 0, "flash"), (1, 0, 1, "system"),
    (0, 1, 0, "flash"), (0, 1, 1, "flash"), (0, 0, 0, "system"), (0, 0, 1, "system"),
])
def test_u5_boot_table_walk(sw: int, n0: int, pin: int, want: str) -> None:
    dev = devices.find("U575")
    t = ob_fields.table_of(dev)
    chip = VirtualChip(dev)
    area = ob_fields.apply(dev, chip.option_bytes(), {t.find("nSWBOOT0"): sw, t.find("nBOOT0"): n0})
    chip.store_raw_option_bytes(area)
    chip.reset("bootloader" if pin else "app")
    assert chip.boots == want
    # a boot address moved off the start of system memory does not reach the ROM
    moved = ob_fields.apply(dev, area, {t.find("NSBOOTADD1"): 0x17F201})
    chip.store_raw_option_bytes(moved)
    chip.reset("bootloader" if pin else "app")
    assert chip.boots == ("flash" if want == "system" else want)


def test_u5_write_that_leaves_the_rom_is_explained(capsys) -> None:
    dev = devices.find("U575")
    url = uart_url(dev, "leave-u575")
    chip = registry.get("leave-u575")
    code, _, err = cli(["uart", url, "--ob", "nSWBOOT0=option"], capsys)
    assert code != 0
    assert "boots flash after the reload" in err and "nSWBOOT0=pin" in err
    assert chip.boots == "flash" and chip.mode == "app"
    # both fields at once keep the ROM: boot0 = 1 from the option bit -> NSBOOTADD1
    url = uart_url(dev, "stay-u575")
    code, _, err = cli(["uart", url, "--ob", "nSWBOOT0=option", "--ob", "nBOOT0=boot0_high", "-q"], capsys)
    assert code == 0, err
    assert registry.get("stay-u575").boots == "system"


def test_u5_raw_write_of_a_register_the_rom_ignores_is_not_passed(capsys) -> None:
    """Trust first: a raw --write-option-bytes that changes SECBOOTADD0R (which the U5 ROM
    does not program) reads back otherwise and exits 5 (verify), not 0."""
    dev = devices.find("U575")
    url = uart_url(dev, "raw-u575")
    chip = registry.get("raw-u575")
    area = bytearray(chip.option_bytes())
    area[0x0C:0x10] = (0x0C00007C).to_bytes(4, "little")
    code, _, err = cli(["uart", url, "--device", "U575", "--write-option-bytes", area.hex()], capsys)
    assert code == 5, err
    assert chip.option_bytes()[0x0C:0x10] == b"\xff" * 4
    # the same area with only OPTR changed is written and verified
    area = bytearray(chip.option_bytes())
    area[2] &= ~1  # IWDG_SW = 0 (OPTR bit 16)
    code, _, err = cli(["uart", url, "--device", "U575", "--write-option-bytes", area.hex()], capsys)
    assert code == 0, err
    assert chip.option_bytes() == bytes(area)
