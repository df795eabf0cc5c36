"""Readout/write protection over DfuSe (the option bytes rewritten through their alt):
``stmflash batch --protect`` on DFU targets and ``stmflash dfu --protect/--write-protect``,
checked on the virtual chips' image files and by what the ROM then refuses or ignores."""

from __future__ import annotations

import json
import os

import pytest

from stmflash.cli import main
from stmflash.devices import find
from stmflash.dfu.link import connect
from stmflash.errors import EXIT_PROTECTED, UsageError
from stmflash.image import load
from stmflash.sim import usb_backend
from stmflash.sim.chip import VirtualChip, flash_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEX = os.path.join(ROOT, "examples", "blinky-f407.hex")
FLASH = 0x08000000
SECTOR1 = 0x08004000


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as ei:
        main(args)
    out = capsys.readouterr()
    return int(ei.value.code or 0), out.out, out.err


@pytest.fixture
def chips(tmp_path, monkeypatch):
    """Three virtual F407s on the USB bus; returns their image files."""
    images = [tmp_path / f"p{i}.img" for i in range(3)]
    monkeypatch.setenv("STMFLASH_USB_SIM", ",".join(f"F407={p};seed={500 + i}" for i, p in enumerate(images)))
    usb_backend.forget()
    yield images
    usb_backend.forget()


def on_file(path) -> VirtualChip:
    """The chip as its image file holds it (after the bus saved it)."""
    usb_backend.forget()
    return VirtualChip(find("F407"), image_path=path)


def batch(tmp_path, capsys, *extra):
    code, out, err = run_cli(["batch", HEX, "dfu:*", "--json", "--report-dir", str(tmp_path / "rep"), *extra],
                             capsys)
    summary = [json.loads(line) for line in out.splitlines() if '"summary"' in line][-1]
    results = json.load(open(summary["report_json"]))["results"]
    return code, err, results


def test_batch_rdp1_protects_every_dfu_board(tmp_path, capsys, chips):
    data = load(HEX).segments[0].data
    code, err, results = batch(tmp_path, capsys, "--protect", "rdp1", "--after", "reset")
    assert code == 0, err
    assert len(results) == 3
    assert all(r["result"] == "passed" and r["protection"] == "rdp1" for r in results)
    for img in chips:
        chip = on_file(img)
        assert chip.rdp_level == 1
        assert chip.wrp == set()
        assert bytes(chip.flash[: len(data)]) == data  # programmed and verified before RDP
    # the ROM now refuses to read the flash: errVENDOR, exit 4
    code, out, err = run_cli(["dfu", "--path", "1-2", "--read", str(tmp_path / "o.bin"), "--no-image-check",
                              "--start", hex(FLASH), "--length", "64"], capsys)
    assert code == EXIT_PROTECTED, err
    assert "errVENDOR" in err and not (tmp_path / "o.bin").exists()


def test_batch_wrp_protects_the_covered_units_only(tmp_path, capsys, chips):
    data = load(HEX).segments[0].data
    code, err, results = batch(tmp_path, capsys, "--protect", "wrp", "--after", "stay")
    assert code == 0, err
    assert [r["protection"] for r in results] == ["wrp:0"] * 3  # blinky lies in sector 0
    for img in chips:
        chip = on_file(img)
        assert chip.wrp == {0} and chip.rdp_level == 0
        assert bytes(chip.flash[: len(data)]) == data
    # a later write into sector 0 changes nothing (erase and write silently ignored)...
    other = tmp_path / "other.bin"
    other.write_bytes(bytes(range(256)) * 4)
    code, out, err = run_cli(["dfu", "--path", "1-1", str(other), "--no-image-check", "--address", hex(FLASH)], capsys)
    assert code == EXIT_PROTECTED and "write-protected" in err, err
    assert flash_bytes(chips[0])[: len(data)] == data
    # ... while sector 1, not covered by the image, still takes data
    code, out, err = run_cli(["dfu", "--path", "1-1", str(other), "--no-image-check", "--address", hex(SECTOR1)], capsys)
    assert code == 0, err
    assert flash_bytes(chips[0])[SECTOR1 - FLASH :][:1024] == other.read_bytes()
    assert flash_bytes(chips[0])[: len(data)] == data


def test_batch_wrp_and_rdp1_together(tmp_path, capsys, chips):
    code, err, results = batch(tmp_path, capsys, "--protect", "wrp:0,1", "--protect", "rdp1")
    assert code == 0, err
    assert all(r["protection"] == "wrp:0,1+rdp1" for r in results)
    for img in chips:
        chip = on_file(img)
        assert chip.rdp_level == 1 and chip.wrp == {0, 1}


def test_dfu_protect_then_unprotect(tmp_path, capsys, chips):
    data = load(HEX).segments[0].data
    code, out, err = run_cli(["dfu", "--path", "1-3", HEX, "--write-protect", "0-1", "--protect", "--leave"],
                             capsys)
    assert code == 0, err
    assert "application started" in err
    chip = on_file(chips[2])
    assert chip.rdp_level == 1 and chip.wrp == {0, 1}
    assert bytes(chip.flash[: len(data)]) == data
    # Read Unprotect (mass erase) then write unprotection: a blank, unprotected chip
    code, out, err = run_cli(["dfu", "--path", "1-3", "--unprotect", "--write-unprotect"], capsys)
    assert code == 0, err
    chip = on_file(chips[2])
    assert chip.rdp_level == 0 and chip.wrp == set()
    assert bytes(chip.flash[:64]) == b"\xff" * 64


def test_bad_write_protect_units_are_usage_errors(tmp_path, capsys, chips):
    code, out, err = run_cli(["dfu", "--path", "1-1", "--write-protect", "3-1"], capsys)
    assert code == 2 and "bad unit range" in err
    code, out, err = run_cli(["dfu", "--path", "1-1", "--write-protect", "99"], capsys)
    assert code == 2 and "unit 99" in err
    assert on_file(chips[0]).wrp == set()


@pytest.mark.parametrize("name, why", [("H7A3", "not in the table"), ("G0B1", "not supported")])
def test_real_devices_without_a_known_dfu_layout_are_refused(tmp_path, monkeypatch, name, why):
    """stmflash never guesses an option-byte layout (a wrong one can lock the part): no table
    layout, or an alt that is not the area the layout describes; the virtual chip is
    refused exactly as a real one would be (no simulator fallback)."""
    monkeypatch.setenv("STMFLASH_USB_SIM", f"{name}={tmp_path / 'x.img'}")
    usb_backend.forget()
    try:
        link = connect()
        with pytest.raises(UsageError, match=why):
            link.readout_protect()
        with pytest.raises(UsageError, match=why):
            link.write_protect([0])
        link.close()
        chip = usb_backend.bus_from_env().chip(0)
        assert chip.rdp_level == 0 and chip.wrp == set() and chip.reset_count == 0
    finally:
        usb_backend.forget()


@pytest.mark.parametrize("name", ["F407", "L476", "G474", "H743"])
def test_link_protection_matches_the_chip(tmp_path, monkeypatch, name):
    """DfuLink.write_protect/readout_protect leave the chip as asked; a write into a
    protected unit is silently ignored by the ROM (no error, no change)."""
    monkeypatch.setenv("STMFLASH_USB_SIM", f"{name}={tmp_path / 'x.img'}")
    usb_backend.forget()
    try:
        chip = usb_backend.bus_from_env().chip(0)
        link = connect()
        unit = link.device.erase_units[0]
        data = bytes(range(64))
        link.erase([unit])
        link.write(unit.address, data)
        link.write_protect([0])
        assert 0 in chip.wrp and link.protection() == (0, chip.wrp)
        link.erase([unit])  # ignored: the unit is protected
        assert link.read(unit.address, 64) == data
        link.write(unit.address + 64, b"\x00" * 64)  # ignored too, and no error
        assert link.read(unit.address + 64, 64) == b"\xff" * 64
        link.readout_protect()
        assert chip.rdp_level == 1 and link.protection()[0] == 1
        link.close()
    finally:
        usb_backend.forget()


def test_batch_rdp2_over_dfu_needs_confirmation_and_silences_the_rom(tmp_path, capsys, chips):
    link = connect(path="1-1")
    try:
        with pytest.raises(UsageError, match="permanent"):
            link.readout_protect(2)
    finally:
        link.close()
    assert usb_backend.bus_from_env().chip(0).rdp_level == 0
    code, err, results = batch(tmp_path, capsys, "--protect", "rdp2", "--i-understand-rdp2-is-permanent")
    assert code == 0, err
    assert all(r["protection"] == "rdp2" for r in results)
    data = load(HEX).segments[0].data
    for img in chips:
        chip = on_file(img)
        assert chip.rdp_level == 2 and bytes(chip.flash[: len(data)]) == data
    # the ROM is gone for good: nothing is listed on the bus any more
    code, out, err = run_cli(["dfu", "--path", "1-1"], capsys)
    assert code == 3 and "no DFU device" in err
