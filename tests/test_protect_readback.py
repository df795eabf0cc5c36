"""Readout protection and its removal are checked after the ROM's reset, not taken from its
ACKs: a ROM that acknowledges Readout Protect / Readout Unprotect and changes nothing (the
fault is injected by replacing the virtual chip's action with nothing) ends in exit 4 with
the reason, never in a success. On UART a level-1 ROM refuses Read Memory (AN3155 3.7),
which is probed; over DFU the option bytes' RDP level is read back."""

from __future__ import annotations

import pytest

from stmflash import devices
from stmflash.errors import EXIT_PROTECTED, ProtectionError
from stmflash.sim import registry
from stmflash.sim.chip import VirtualChip
from tests.clirun import run_cli as cli


def _uart_chip(name: str, key: str) -> tuple[VirtualChip, str]:
    chip = VirtualChip(devices.find(name))
    registry.register(key, chip)
    return chip, f"sim://{name}?chip={key}"


@pytest.mark.parametrize("name", ["F103", "G071", "L476"])
def test_uart_protect_that_did_not_take_is_exit_4(name: str, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    chip, url = _uart_chip(name, f"rp-nop-{name}")
    monkeypatch.setattr(chip, "readout_protect", lambda: chip.reset())  # ACKed, nothing changed
    code, _, err = cli(["uart", url, "--protect"], capsys)
    assert code == EXIT_PROTECTED and "RDP level 1 did not take" in err
    assert chip.rdp_level == 0
    monkeypatch.undo()
    code, _, err = cli(["uart", url, "--protect"], capsys)  # the real thing passes
    assert code == 0 and chip.rdp_level == 1, err


@pytest.mark.parametrize("name", ["F103", "G071"])
def test_uart_unprotect_that_did_not_take_is_exit_4(name: str, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    chip, url = _uart_chip(name, f"ru-nop-{name}")
    chip.readout_protect()
    assert chip.rdp_level == 1
    monkeypatch.setattr(chip, "readout_unprotect", lambda: chip.reset())
    code, _, err = cli(["uart", url, "--unprotect"], capsys)
    assert code == EXIT_PROTECTED and "still read-protected" in err
    monkeypatch.undo()
    code, _, err = cli(["uart", url, "--unprotect"], capsys)
    assert code == 0 and chip.rdp_level == 0, err


def test_dfu_read_unprotect_is_read_back(dfu_link, monkeypatch: pytest.MonkeyPatch) -> None:
    chip, link = dfu_link("F407")
    link.readout_protect()
    assert chip.rdp_level == 1
    real = chip.readout_unprotect
    monkeypatch.setattr(chip, "readout_unprotect", lambda: chip.reset())
    with pytest.raises(ProtectionError, match="RDP level is 1 after Read Unprotect"):
        link.read_unprotect()
    monkeypatch.setattr(chip, "readout_unprotect", real)
    link.read_unprotect()
    assert chip.rdp_level == 0 and link.protection()[0] == 0


def test_uart_raw_option_bytes_setting_level_1_are_checked(capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """--write-option-bytes whose RDP byte sets level 1 cannot be read back; that the ROM now
    refuses Read Memory is checked instead."""
    from stmflash import option_bytes as obl

    chip, url = _uart_chip("F103", "raw-rdp1-nop")
    rdp1 = obl.set_rdp(chip.device, chip.option_bytes(), 1)
    monkeypatch.setattr(chip, "write_option_bytes", lambda data: chip.reset())  # ACKed, nothing changed
    code, _, err = cli(["uart", url, "--write-option-bytes", rdp1.hex()], capsys)
    assert code == EXIT_PROTECTED and "did not take" in err and chip.rdp_level == 0
    monkeypatch.undo()
    code, _, err = cli(["uart", url, "--write-option-bytes", rdp1.hex()], capsys)
    assert code == 0 and chip.rdp_level == 1, err
