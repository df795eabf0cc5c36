"""L0's protection-mode bit WPRMOD (FLASH_OPTR bit 8) and the loader's mismatch rule for it.

RM0367 3.4.4 "Write/erase protection management": with WPRMOD = 1 (PcROP) a WRPROT bit at 0
protects its sector from read as well as write; protection can then be added but not
removed, except by the mass erase of an RDP level 1 to 0 regression, which "deletes the
PcROP field too" and keeps the WRPROT words. RM0367 3.8.2 "Mismatch when loading protection
flags": a mismatch on WPRMOD loads its default 1 and WRPROT as zeros, so every sector is
read-protected. The facts are written out here from the manual, not from the data file.
"""

from __future__ import annotations

import pytest

from stmflash import devices, ob_fields
from stmflash import option_bytes as obl
from stmflash.sim import registry
from stmflash.sim.chip import VirtualChip
from tests.clirun import result
from tests.clirun import run_cli as cli

L053 = devices.find("L053")


def _area(*, wprmod: int, wrprot: int, rdp: int = 0xAA) -> bytes:
    """The L0 area as the flash interface writes it: each word's low half-word the value, the
    high half-word its complement (RM0367 3.4.1)."""
    ob = bytearray(VirtualChip(L053).option_bytes())
    low = rdp | wprmod << 8
    ob[0:4] = (low | (low ^ 0xFFFF) << 16).to_bytes(4, "little")
    for i, off in enumerate((8, 12)):
        half = wrprot >> (16 * i) & 0xFFFF
        ob[off : off + 4] = (half | (half ^ 0xFFFF) << 16).to_bytes(4, "little")
    return bytes(ob)


def _chip(area: bytes) -> VirtualChip:
    chip = VirtualChip(L053)
    chip.store_raw_option_bytes(area)
    chip.reset()
    return chip


def test_wprmod_is_refused_before_the_port_opens(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--device", "L053", "--ob", "WPRMOD=1"], capsys)
    assert code == 2 and "WPRMOD" in err and "RM0367 3.4.4" in err


def test_pcrop_mode_read_protects_the_sectors_whose_bit_is_zero() -> None:
    everything = set(range(len(L053.erase_units)))
    # a factory WRPROT (all zeros) with WPRMOD = 1: every sector protected
    chip = _chip(_area(wprmod=1, wrprot=0))
    assert set(chip.wrp) == everything
    # WRPROT bit 1 (sector 1: 4 KiB, pages 32..63) at 1: that sector free, the rest protected
    chip = _chip(_area(wprmod=1, wrprot=0b10))
    sector1 = {u.index for u in L053.erase_units if (u.address - L053.flash_start) // 4096 == 1}
    assert set(chip.wrp) == everything - sector1
    # WPRMOD = 0: the same bits are plain write protection, 1 = protected
    chip = _chip(_area(wprmod=0, wrprot=0b10))
    assert set(chip.wrp) == sector1


def test_a_wprmod_mismatch_read_protects_every_sector() -> None:
    good = _area(wprmod=0, wrprot=0b1)  # sector 0 write-protected, WPRMOD 0
    bad = bytearray(good)
    bad[3] ^= 0x01  # WPRMOD's complement bit flipped: value 0, complement 0 - a mismatch
    chip = _chip(bytes(bad))
    t = ob_fields.table_of(L053)
    view = chip.loaded_ob_view()
    assert t.find("WPRMOD").get(view) == 1 and t.find("WRP1").get(view) == 0 and t.find("WRP2").get(view) == 0
    assert set(chip.wrp) == set(range(len(L053.erase_units)))
    assert chip.rdp_level == 0  # the RDP byte itself matched its complement
    assert obl.complement_mismatches(L053, bytes(bad)) == [1]  # only WPRMOD's byte failed


@pytest.mark.parametrize("wprmod, loads", [(0, 0xFF), (1, 0x00)])
def test_a_wrprot_mismatch_protects_its_sectors_in_the_mode_that_loaded(wprmod: int, loads: int) -> None:
    bad = bytearray(_area(wprmod=wprmod, wrprot=0x0000FF00 if wprmod else 0))
    bad[8 + 2] ^= 0x01  # WRPROT byte 0's complement flipped
    chip = _chip(bytes(bad))
    view = chip.loaded_option_bytes()
    assert view[8] == loads
    first8 = {u.index for u in L053.erase_units if (u.address - L053.flash_start) // 4096 < 8}
    assert first8 <= set(chip.wrp)


def test_rdp_regression_clears_wprmod_and_keeps_wrprot(capsys: pytest.CaptureFixture[str]) -> None:
    chip = _chip(_area(wprmod=1, wrprot=0x0000000F, rdp=0xBB))
    assert chip.rdp_level == 1 and chip.wrp
    chip.readout_unprotect()
    t = ob_fields.table_of(L053)
    view = chip.loaded_ob_view()
    assert chip.rdp_level == 0 and t.find("WPRMOD").get(view) == 0 and t.find("WRP1").get(view) == 0x000F
    sectors0to3 = {u.index for u in L053.erase_units if (u.address - L053.flash_start) // 4096 < 4}
    assert set(chip.wrp) == sectors0to3  # now plain write protection


def test_write_protect_in_pcrop_mode_is_not_done_and_not_reported_as_done(capsys: pytest.CaptureFixture[str]) -> None:
    """The option bytes are read before Write Protect is sent: in PcROP mode the bits mean
    read protection, so nothing is sent (exit 4, the reason named)."""
    from stmflash.errors import EXIT_PROTECTED

    chip = _chip(_area(wprmod=1, wrprot=0xFFFFFFFF))  # PcROP mode, nothing protected yet
    registry.register("l0-pcrop", chip)
    url = "sim://L053?chip=l0-pcrop"
    before = chip.option_bytes()
    for args in (["--write-protect", "0"], ["--write-unprotect"]):
        code, _, err = cli(["uart", url, *args], capsys)
        assert code == EXIT_PROTECTED and "WPRMOD = 1" in err and "RM0367 3.4.4" in err, args
        assert chip.option_bytes() == before and not chip.wrp
    code, out, err = cli(["uart", url, "--ob-show", "--json"], capsys)
    assert code == 0, err
    rows = {r["field"]: r for r in result(out)["option_fields"]}
    assert rows["WPRMOD"]["value"] == 1 and not rows["WPRMOD"]["writable"]


def test_write_unprotect_is_checked_by_reading_back(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The ROM ACKs Write Unprotect; whether the protection went is read back from the option
    bytes: a ROM that ACKs and changes nothing (injected) is exit 4, not a success."""
    from stmflash.errors import EXIT_PROTECTED

    chip = _chip(_area(wprmod=0, wrprot=0b11))
    registry.register("l0-wrp-wu", chip)
    url = "sim://L053?chip=l0-wrp-wu"
    monkeypatch.setattr(chip, "write_unprotect", lambda *, reset=True: chip.reset())
    code, _, err = cli(["uart", url, "--write-unprotect"], capsys)
    assert code == EXIT_PROTECTED and "still write-protected" in err and chip.wrp
    monkeypatch.undo()
    code, _, err = cli(["uart", url, "--write-unprotect"], capsys)  # the real thing passes
    assert code == 0 and not chip.wrp, err


def test_ob_show_decodes_what_the_loader_takes(capsys: pytest.CaptureFixture[str]) -> None:
    """--ob-show reports the protection the chip runs with: with WPRMOD's complement damaged
    the stored byte says 0, the loader takes 1 and WRPROT zeros - every sector protected, and
    the warning says why."""
    bad = bytearray(_area(wprmod=0, wrprot=0))
    bad[3] ^= 0x01
    chip = _chip(bytes(bad))
    registry.register("l0-show-loaded", chip)
    code, out, err = cli(["uart", "sim://L053?chip=l0-show-loaded", "--ob-show", "--json"], capsys)
    assert code == 0, err
    res = result(out)
    assert res["wrp_units"] == list(range(len(L053.erase_units))) and res["rdp_level"] == 0
    assert res["option_bytes_complement_mismatch"] == ["0x1FF80001"]
    code, _, err = cli(["uart", "sim://L053?chip=l0-show-loaded", "--ob-show"], capsys)
    assert code == 0 and "WPRMOD = 1" in err and "proprietary-code protection" in err
