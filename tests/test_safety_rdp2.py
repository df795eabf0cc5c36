"""RDP level 2 is permanent: every path that can set it is refused without
``--i-understand-rdp2-is-permanent``, with exit 2, before the port is opened.

"Not opened" is observable on the virtual chips: a ``sim://F407?chip=NAME`` port creates
and registers its chip when it is opened (so an unregistered name means no open), and a
virtual USB device counts every DFU request it receives.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stmflash import devices
from stmflash import option_bytes as obl
from stmflash.errors import EXIT_USAGE, UsageError
from stmflash.image import save
from stmflash.image.model import Image
from stmflash.safety import (
    check_option_bytes_data,
    check_option_bytes_early,
    check_option_bytes_write,
)
from stmflash.sim import registry, usb_backend
from tests.clirun import run_cli

ROOT = Path(__file__).resolve().parents[1]
HEX = str(ROOT / "examples" / "blinky-f407.hex")
F4 = devices.find("F407")
F4_RDP2 = obl.set_rdp(F4, obl.default_ob(F4), 2)  # ec cc ff ff ... (RDP byte 1 = 0xCC)
F4_LEVEL0 = obl.default_ob(F4)
FLAG = "--i-understand-rdp2-is-permanent"



def untouched(dev: usb_backend.VirtualUsbDevice) -> bool:
    chip = dev.chip
    return dev.requests == 0 and chip.rdp_level == 0 and bytes(chip.flash[:64]) == b"\xff" * 64


# ---- the gate itself -----------------------------------------------------------------------
def test_gate_decodes_the_family_layout() -> None:
    with pytest.raises(UsageError, match="set RDP level 2 on F407"):
        check_option_bytes_write(F4, F4_RDP2, rdp2_confirmed=False, where="x")
    check_option_bytes_write(F4, F4_RDP2, rdp2_confirmed=True, where="x")
    check_option_bytes_write(F4, F4_LEVEL0, rdp2_confirmed=False, where="x")
    check_option_bytes_write(F4, F4_RDP2[:1], rdp2_confirmed=False, where="x")  # RDP byte not reached
    g0 = devices.find("G071")
    with pytest.raises(UsageError, match="RDP level 2"):
        check_option_bytes_write(g0, obl.set_rdp(g0, obl.default_ob(g0), 2), rdp2_confirmed=False, where="x")


@pytest.mark.parametrize("name", ["H563", "H7A3"])
def test_gate_refuses_any_write_where_the_layout_is_unknown(name: str) -> None:
    dev = devices.find(name)
    assert not obl.supported(dev)
    with pytest.raises(UsageError, match="not in the device table"):
        check_option_bytes_write(dev, b"\xff" * 16, rdp2_confirmed=False, where="x")
    check_option_bytes_write(dev, b"\xff" * 16, rdp2_confirmed=True, where="x")


def test_gate_by_address_and_before_the_part_is_known() -> None:
    start = F4.option_bytes.start
    with pytest.raises(UsageError, match="RDP level 2"):
        check_option_bytes_data(F4, start, F4_RDP2, rdp2_confirmed=False, where="x")
    check_option_bytes_data(F4, start + 2, F4_RDP2[2:], rdp2_confirmed=False, where="x")  # after the RDP byte
    with pytest.raises(UsageError, match="outside the option-byte area"):
        check_option_bytes_data(F4, start - 4, b"\xff" * 8, rdp2_confirmed=False, where="x")
    with pytest.raises(UsageError, match="--device"):
        check_option_bytes_early(None, F4_LEVEL0, rdp2_confirmed=False, where="x")
    check_option_bytes_early(F4, F4_LEVEL0, rdp2_confirmed=False, where="x")
    check_option_bytes_early(None, F4_RDP2, rdp2_confirmed=True, where="x")


# ---- uart ----------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [[], ["--device", "F407"]])
def test_uart_write_option_bytes_rdp2(capsys, extra: list[str]) -> None:
    name = f"r2-uart-{len(extra)}"
    code, _, err = run_cli(["uart", f"sim://F407?chip={name}", "--write-option-bytes", F4_RDP2.hex(), *extra], capsys)
    assert code == EXIT_USAGE and FLAG in err
    assert registry.get(name) is None  # the port was never opened


@pytest.mark.parametrize("name", ["H7A3", "H7R3"])
def test_uart_write_option_bytes_unknown_layout(capsys, name: str) -> None:
    chip_name = f"r2-unknown-{name}"
    code, _, err = run_cli(["uart", f"sim://{name}?chip={chip_name}", "--device", name,
                            "--write-option-bytes", "ffffffff"], capsys)
    assert code == EXIT_USAGE and "not in the device table" in err and FLAG in err
    assert registry.get(chip_name) is None


def test_uart_protect_level_2(capsys) -> None:
    code, _, err = run_cli(["uart", "sim://F407?chip=r2-level", HEX, "--protect-level", "2"], capsys)
    assert code == EXIT_USAGE and FLAG in err
    assert registry.get("r2-level") is None


def test_uart_harmless_option_bytes_pass_with_the_part_named(capsys) -> None:
    try:
        code, _, err = run_cli(["uart", "sim://F407?chip=r2-ok", "--device", "F407",
                                "--write-option-bytes", F4_LEVEL0.hex(), "-q"], capsys)
        assert code == 0, err
        assert registry.get("r2-ok").rdp_level == 0
    finally:
        registry.unregister("r2-ok")


# ---- dfu -------------------------------------------------------------------------------------
def test_dfu_write_option_bytes_rdp2(usb, capsys) -> None:
    dev = usb("F407")
    code, _, err = run_cli(["dfu", "--write-option-bytes", F4_RDP2.hex()], capsys)
    assert code == EXIT_USAGE and FLAG in err
    assert untouched(dev)
    code, _, err = run_cli(["dfu", "--write-option-bytes", F4_RDP2.hex(), FLAG, "-q"], capsys)
    assert code == 0, err
    assert dev.chip.rdp_level == 2  # confirmed: the chip is locked for good


def ob_image(tmp_path: Path, fmt: str) -> str:
    img = Image(alt_names={0: "Internal Flash", 1: "Option Bytes"})
    img.add(0x08000000, bytes(range(256)) * 4, alt=0)
    img.add(F4.option_bytes.start, F4_RDP2, alt=1)
    path = tmp_path / f"locks.{fmt}"
    save(img, str(path))
    return str(path)


@pytest.mark.parametrize("fmt", ["hex", "dfu"])
def test_dfu_image_carrying_rdp2_option_bytes(usb, tmp_path, capsys, fmt: str) -> None:
    dev = usb("F407")
    code, _, err = run_cli(["dfu", ob_image(tmp_path, fmt), "--no-image-check"], capsys)
    assert code == EXIT_USAGE and FLAG in err and "0x1FFFC000" in err
    assert untouched(dev)  # refused before the flash part was written


def test_dfu_option_bytes_of_a_part_whose_layout_is_unknown(usb, capsys) -> None:
    dev = usb("H7A3")
    code, _, err = run_cli(["dfu", "--write-option-bytes", "ff" * 128], capsys)
    assert code == EXIT_USAGE and "not in the device table" in err
    assert untouched(dev)


# ---- batch and job files ------------------------------------------------------------------------
def job_file(tmp_path: Path, target: str, ob: bytes, *, device: str | None = None, confirm: bool = False) -> str:
    lines = [f'image = "{HEX}"', f'targets = ["{target}"]', f'report_dir = "{tmp_path / "rep"}"']
    if device:
        lines.append(f'device = "{device}"')
    if confirm:
        lines.append("i_understand_rdp2_is_permanent = true")
    lines += ["[option_bytes]", f'hex = "{ob.hex()}"']
    path = tmp_path / "job.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("device", [None, "F407"])
def test_job_option_bytes_rdp2_on_a_uart_target(tmp_path, capsys, device: str | None) -> None:
    name = f"r2-job-{device}"
    code, _, err = run_cli(["batch", "--job", job_file(tmp_path, f"sim://F407?chip={name}", F4_RDP2,
                                                        device=device)], capsys)
    assert code == EXIT_USAGE and FLAG in err  # not exit 6 after flashing the board
    assert registry.get(name) is None


def test_job_option_bytes_rdp2_on_a_dfu_target(usb, tmp_path, capsys) -> None:
    dev = usb("F407")
    code, _, err = run_cli(["batch", "--job", job_file(tmp_path, "dfu:*", F4_RDP2, device="F407")], capsys)
    assert code == EXIT_USAGE and FLAG in err
    assert untouched(dev)


def test_job_option_bytes_harmless_with_the_part_named(usb, tmp_path, capsys) -> None:
    dev = usb("F407")
    code, _, err = run_cli(["batch", "--job", job_file(tmp_path, "dfu:*", F4_LEVEL0, device="F407"), "-q"], capsys)
    assert code == 0, err
    assert dev.chip.rdp_level == 0 and dev.requests > 0


def test_job_option_bytes_rdp2_confirmed_in_the_file(usb, tmp_path, capsys) -> None:
    dev = usb("F407")
    code, _, err = run_cli(["batch", "--job", job_file(tmp_path, "dfu:*", F4_RDP2, confirm=True), "-q"], capsys)
    assert code == 0, err
    assert dev.chip.rdp_level == 2


def test_batch_protect_rdp2_flag(tmp_path, capsys) -> None:
    code, _, err = run_cli(["batch", HEX, "sim://F407?chip=r2-batch", "--protect", "rdp2",
                            "--report-dir", str(tmp_path / "rep")], capsys)
    assert code == EXIT_USAGE and FLAG in err
    assert registry.get("r2-batch") is None
    path = tmp_path / "p.toml"
    path.write_text(f'image = "{HEX}"\ntargets = ["sim://F407?chip=r2-batchjob"]\nprotect = ["rdp2"]\n')
    code, _, err = run_cli(["batch", "--job", str(path)], capsys)
    assert code == EXIT_USAGE and "rdp2" in err
    assert registry.get("r2-batchjob") is None


# ---- other requests checked before the first byte --------------------------------------------------
def test_dfu_write_protect_unit_that_does_not_exist(usb, tmp_path, capsys) -> None:
    dev = usb("F407")
    code, _, err = run_cli(["dfu", HEX, "--write-protect", "99"], capsys)
    assert code == EXIT_USAGE and "unit 99 does not exist" in err
    assert untouched(dev)  # not written and verified first


def test_dfu_protect_where_the_alt_is_not_the_layout(usb, capsys) -> None:
    # G0B1: a G0 whose ROM has USB DFU (AN2606 sec. 50.1 Table 111; the G07x ROM has none,
    # sec. 48.1 Table 107, so a virtual G071 is not on the USB bus at all)
    dev = usb("G0B1")
    code, _, err = run_cli(["dfu", os.path.join(ROOT, "examples", "blinky-g071.elf"), "--protect"], capsys)
    assert code == EXIT_USAGE and "option-bytes alt" in err
    assert untouched(dev)


def test_batch_image_with_option_byte_data_refused_before_any_board(tmp_path, capsys) -> None:
    code, _, err = run_cli(["batch", ob_image(tmp_path, "hex"), "sim://F407?chip=r2-batchimg", "--device", "F407",
                            "--report-dir", str(tmp_path / "rep")], capsys)
    assert code == EXIT_USAGE and "0x1FFFC000" in err and "outside the flash" in err
    assert registry.get("r2-batchimg") is None
