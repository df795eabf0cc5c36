"""F42x/F43x SPRMOD (0x1FFFC008 bit 15): with it set the nWRP bits select PCROP sectors, an
nWRP bit at 1 protecting its sector (RM0090 3.7.5 and FLASH_OPTCR's SPRMOD description), in
both banks (nWRP of sectors 12-23 at 0x1FFEC008). A factory part has every nWRP bit at 1, so
SPRMOD = 1 alone makes every sector PCROP: decoding the bits the usual way would report "not
protected" for all of them. stmflash decodes SPRMOD, never writes it, and does not change
write protection while it is set."""

from __future__ import annotations

import pytest

from stmflash import devices, ob_fields
from stmflash.errors import EXIT_PROTECTED, ProtectionError
from stmflash.sim import registry
from stmflash.sim.chip import VirtualChip
from tests.clirun import result
from tests.clirun import run_cli as cli

F429 = devices.find("F429")


def _sprmod(chip: VirtualChip, nwrp: int = 0xFFF) -> None:
    ob = bytearray(chip.option_bytes())
    ob[8] = nwrp & 0xFF
    ob[9] = (ob[9] & 0x70) | (nwrp >> 8 & 0x0F) | 0x80  # SPRMOD = 1, DB1M as it was
    chip.store_raw_option_bytes(bytes(ob))
    chip.reset()


@pytest.mark.parametrize("name", ["F429", "F446", "F411"])
def test_sprmod_turns_the_nwrp_bits_round_in_both_banks(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    dev = devices.find(name)
    every = set(range(len(dev.erase_units)))  # F429: sectors 0-23, bank 2's nWRP at 0x1FFEC008 too
    chip = VirtualChip(dev)
    assert not chip.wrp
    _sprmod(chip)  # factory nWRP (and nWRP2): all ones
    assert chip.wrp == every
    registry.register(f"f4-sprmod-{name}", chip)
    code, out, err = cli(["uart", f"sim://{name}?chip=f4-sprmod-{name}", "--ob-show", "--json"], capsys)
    assert code == 0, err
    res = result(out)
    assert res["wrp_units"] == sorted(every)
    rows = {r["field"]: r for r in res["option_fields"]}
    assert rows["SPRMOD"]["value"] == 1 and not rows["SPRMOD"]["writable"]
    # an nWRP bit at 0 leaves its sector out of PCROP
    chip2 = VirtualChip(dev)
    _sprmod(chip2, nwrp=0xFFE)
    assert chip2.wrp == every - {0}
    # a factory area decodes SPRMOD 0 and the bits as write protection: nothing protected
    assert ob_fields.table_of(dev).find("SPRMOD").get(VirtualChip(dev).option_bytes()) == 0


def test_sprmod_is_refused_and_wrp_is_not_changed_under_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["uart", "/dev/ttyNOSUCHPORT-stmflash", "--device", "F429", "--ob", "SPRMOD=1"], capsys)
    assert code == 2 and "SPRMOD" in err and "RM0090 3.7.5" in err
    chip = VirtualChip(F429)
    _sprmod(chip)
    registry.register("f4-sprmod-wp", chip)
    before = chip.option_bytes()
    for args in (["--write-protect", "0"], ["--write-protect", "13"], ["--write-unprotect"]):
        code, _, err = cli(["uart", "sim://F429?chip=f4-sprmod-wp", *args], capsys)
        assert code == EXIT_PROTECTED and "SPRMOD = 1" in err, (args, err)
        assert chip.option_bytes() == before


def test_dfu_decodes_sprmod_and_refuses_wrp_changes_under_it(dfu_link) -> None:
    chip, link = dfu_link("F429")
    _sprmod(chip)
    level, units = link.protection()
    assert level == 0 and units == set(range(24))
    before = chip.option_bytes()
    with pytest.raises(ProtectionError, match="SPRMOD = 1"):
        link.write_protect([0])
    with pytest.raises(ProtectionError, match="SPRMOD = 1"):
        link.write_unprotect()
    assert chip.option_bytes() == before
    assert ob_fields.table_of(F429).find("SPRMOD").readonly


def test_raw_option_bytes_that_set_sprmod_are_said(capsys: pytest.CaptureFixture[str]) -> None:
    """--write-option-bytes that turn SPRMOD on are written (the mode is not permanent: an RDP
    regression removes it), and the warning says what they do: every sector with its nWRP
    bit at 1 - all of them here - becomes PCROP."""
    chip = VirtualChip(F429)
    registry.register("f4-raw-sprmod", chip)
    area = bytearray(chip.option_bytes())
    area[9] |= 0x80
    code, _, err = cli(["uart", "sim://F429?chip=f4-raw-sprmod", "--write-option-bytes", area.hex()], capsys)
    assert code == 0, err
    assert "SPRMOD = 1" in err and "every sector" in err
    assert chip.wrp == set(range(24))  # bank 2's nWRP (its own block, all ones) turns round too
