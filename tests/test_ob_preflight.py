"""Option-byte requests a board's link cannot carry out are refused before its flash is
touched: DFU fields or bank-2 units its option-bytes alt does not reach (L47x/L49x as
modelled, F469), an alt that is not the option-byte area (G0B1), on the dfu command (with
or without --device) and in batch line jobs - so exit 2 never follows a flash that happened."""

from __future__ import annotations

from pathlib import Path

import pytest

from stmflash import devices, ob_fields
from stmflash.sim import usb_backend
from tests import test_ob_bank2 as f42x
from tests.clirun import run_cli as cli

usb_sim = f42x.usb_sim  # the fixture: one virtual DFU device of the part given

L476 = devices.find("L476")


def _dfu_batch_job(tmp_path: Path, extra: str) -> Path:
    fw = tmp_path / "fw.bin"
    fw.write_bytes((0x20001000).to_bytes(4, "little") + (0x08000041).to_bytes(4, "little") + b"\x5a" * 248)
    job = tmp_path / "line.toml"
    job.write_text(f'image = "{fw}"\naddress = 0x08000000\ndevice = "L476"\ntargets = ["dfu:*"]\n{extra}')
    return job


@pytest.mark.parametrize("extra", ['[option_bytes]\nfields = { WRP2A_STRT = 0, WRP2A_END = 1 }\n',
                                   'protect = ["wrp:256"]\n'])
def test_a_dfu_batch_reaching_l476_bank2_is_refused_before_flashing(extra: str, tmp_path: Path, usb_sim,
                                                                     capsys) -> None:
    """L47x's DFU alt (as modelled) names bank 1 only: a line job that would set bank-2
    option bytes over DFU fails on each board before its flash is touched, not after."""
    bus = usb_sim(L476)
    job = _dfu_batch_job(tmp_path, extra)
    code, out, err = cli(["batch", "--job", str(job), "--report-dir", str(tmp_path / "r")], capsys)
    assert code != 0
    assert "DFU option-bytes alt" in err + out, err + out
    chip = bus.devices[0].chip
    assert chip.read(0x08000000, 8) == b"\xff" * 8  # nothing flashed
    assert not chip.wrp and chip.option_bytes2() == ob_fields.factory_block2(L476)


def test_dfu_without_device_refuses_bank2_fields_of_the_identified_l476_before_flashing(tmp_path: Path, usb_sim,
                                                                                     capsys) -> None:
    """No --device: the part is known only once identified; its alt is checked then, before
    the image goes to the flash."""
    bus = usb_sim(L476)
    fw = _dfu_batch_job(tmp_path, "").parent / "fw.bin"
    code, _, err = cli(["dfu", str(fw), "--ob", "WRP2A_STRT=0"], capsys)
    assert code == 2 and "DFU option-bytes alt" in err, err
    assert bus.devices[0].chip.read(0x08000000, 8) == b"\xff" * 8


@pytest.mark.parametrize("args", [["--ob", "nBOOT_SEL=0"], ["--ob-show"]])
def test_g0b1_dfu_option_fields_are_refused_before_flashing(args: list[str], tmp_path: Path, usb_sim,
                                                            capsys) -> None:
    """G0B1's option-bytes alt holds FLASH registers, not the area: refused before the image
    is written, so exit 2 never follows a flash that happened."""
    bus = usb_sim(devices.find("G0B1"))
    fw = _dfu_batch_job(tmp_path, "").parent / "fw.bin"
    code, _, err = cli(["dfu", str(fw), *args], capsys)
    assert code == 2 and "not supported" in err, err
    assert bus.devices[0].chip.read(0x08000000, 8) == b"\xff" * 8


def test_l476_dfu_reset_defaults_names_the_bank2_fields_it_cannot_reach(monkeypatch, capsys) -> None:
    """--ob-reset-defaults includes bank 2's WRP fields; L47x's DFU alt (as modelled) does not
    reach them, so the request is refused whole (bank 2 might still protect pages) and says
    which fields and what to use instead - before any device is looked for with --device."""
    usb_backend.forget()
    monkeypatch.delenv("STMFLASH_USB_SIM", raising=False)
    code, _, err = cli(["dfu", "--device", "L476", "--ob-reset-defaults"], capsys)
    assert code == 2 and "--ob-reset-defaults" in err and "WRP2A_STRT" in err and "uart" in err, err
