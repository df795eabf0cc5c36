"""Raw option bytes that set a permanent field (not only RDP level 2) need the confirmation.

``--write-option-bytes FILE|HEX`` (uart, dfu), option-byte data in a ``.hex``/``.dfu`` image
and a job file's ``[option_bytes] hex`` are decoded with the family's field table; a value
the table marks ``permanent`` (U5/L5 TZEN=1, G4 BOOT_LOCK=1, H7 SECURITY=1) is refused like
``--ob TZEN=1``: exit 2, before the port is opened (an unregistered ``sim://`` chip name
stays unregistered; a virtual USB device counts every request it gets), and accepted with
``--i-understand-rdp2-is-permanent``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stmflash import devices, ob_fields
from stmflash.errors import EXIT_USAGE, UsageError
from stmflash.image import save
from stmflash.image.model import Image
from stmflash.safety import check_option_bytes_data, check_option_bytes_write, permanent_values
from stmflash.sim import registry
from stmflash.sim.chip import VirtualChip
from tests.clirun import run_cli

ROOT = Path(__file__).resolve().parents[1]
HEX = str(ROOT / "examples" / "blinky-f407.hex")
FLAG = "--i-understand-rdp2-is-permanent"
U5 = devices.find("U575")


def with_field(dev: devices.Device, name: str, value: int, area: bytes | None = None) -> bytes:
    """The factory area (or ``area``) with one field set, as a host would send it raw."""
    out = bytearray(area if area is not None else ob_fields.factory_area(dev))
    ob_fields.table_of(dev).find(name).put(out, value)
    return bytes(out)


U5_TZEN = with_field(U5, "TZEN", 1)


def tzen(chip) -> int:
    return ob_fields.table_of(U5).find("TZEN").get(chip.option_bytes())


# ---- the gate -----------------------------------------------------------------------------------
def test_gate_decodes_permanent_fields_of_raw_bytes() -> None:
    with pytest.raises(UsageError, match="TZEN=0x1 on U575"):
        check_option_bytes_write(U5, U5_TZEN, rdp2_confirmed=False, where="x")
    check_option_bytes_write(U5, U5_TZEN, rdp2_confirmed=True, where="x")
    check_option_bytes_write(U5, ob_fields.factory_area(U5), rdp2_confirmed=False, where="x")
    check_option_bytes_write(U5, U5_TZEN[:3], rdp2_confirmed=False, where="x")  # OPTR bit 31 not reached
    # the chip already has TZEN=1 and the write keeps it: nothing changes for good
    check_option_bytes_write(U5, U5_TZEN, rdp2_confirmed=False, where="x", current=U5_TZEN)
    g4 = devices.find("G474")
    with pytest.raises(UsageError, match="BOOT_LOCK=0x1"):
        check_option_bytes_write(g4, with_field(g4, "BOOT_LOCK", 1), rdp2_confirmed=False, where="x")


def test_gate_by_address_sees_only_the_data() -> None:
    start = U5.option_bytes.start
    # a segment after OPTR: the 0xFF padding in front is not data, so no TZEN is read into it
    check_option_bytes_data(U5, start + 4, ob_fields.factory_area(U5)[4:], rdp2_confirmed=False, where="x")
    with pytest.raises(UsageError, match="TZEN"):
        check_option_bytes_data(U5, start, U5_TZEN[:4], rdp2_confirmed=False, where="x")


def test_h7_security_is_read_where_a_write_programs_it() -> None:
    """H7: the ROM programs FLASH_OPTSR_PRG (area offset 4), a read shows OPTSR_CUR (0):
    SECURITY=1 in the _PRG word is what takes effect; in the _CUR word it is ignored."""
    h7 = devices.find("H743")
    area = bytearray(ob_fields.factory_area(h7))
    prg = bytearray(area)
    prg[4:8] = with_field(h7, "SECURITY", 1)[0:4]
    assert [f.name for f, _ in permanent_values(h7, bytes(prg))] == ["SECURITY"]
    cur_only = with_field(h7, "SECURITY", 1, bytes(area))
    assert permanent_values(h7, cur_only) == []


# ---- uart -----------------------------------------------------------------------------------------
def test_uart_raw_tzen_refused_before_the_port_is_opened(capsys) -> None:
    code, _, err = run_cli(["uart", "sim://U575?chip=perm-never", "--write-option-bytes", U5_TZEN.hex()], capsys)
    assert code == EXIT_USAGE, err
    assert "TZEN=0x1" in err and FLAG in err and len(err.strip().splitlines()) == 1
    assert registry.get("perm-never") is None  # the port was never opened


def test_uart_raw_tzen_leaves_the_sim_image_unchanged(capsys) -> None:
    """The same request on an existing virtual chip: its option bytes are unchanged."""
    chip = registry.register("perm-known", VirtualChip(U5))
    before = chip.option_bytes()
    code, _, err = run_cli(["uart", "sim://U575?chip=perm-known", "--write-option-bytes", U5_TZEN.hex()], capsys)
    assert code == EXIT_USAGE and "TZEN=0x1" in err
    assert chip.option_bytes() == before and tzen(chip) == 0


def test_uart_raw_tzen_accepted_with_the_flag(capsys) -> None:
    chip = registry.register("perm-ok", VirtualChip(U5))
    code, _, err = run_cli(["uart", "sim://U575?chip=perm-ok", "--write-option-bytes", U5_TZEN.hex(), FLAG, "-q"],
                           capsys)
    assert code == 0, err
    assert tzen(chip) == 1


# ---- dfu ------------------------------------------------------------------------------------------
def test_dfu_raw_tzen(usb, capsys) -> None:
    dev = usb("U575")
    code, _, err = run_cli(["dfu", "--device", "U575", "--write-option-bytes", U5_TZEN.hex()], capsys)
    assert code == EXIT_USAGE and "TZEN=0x1" in err and FLAG in err
    assert dev.requests == 0 and tzen(dev.chip) == 0
    code, _, err = run_cli(["dfu", "--device", "U575", "--write-option-bytes", U5_TZEN.hex(), FLAG, "-q"], capsys)
    assert code == 0, err
    assert tzen(dev.chip) == 1


@pytest.mark.parametrize("fmt", ["hex", "dfu"])
def test_dfu_image_carrying_tzen(usb, tmp_path, capsys, fmt: str) -> None:
    dev = usb("U575")
    img = Image(alt_names={0: "Internal Flash", 1: "Option Bytes"})
    img.add(0x08000000, bytes(range(256)) * 4, alt=0)
    img.add(U5.option_bytes.start, U5_TZEN, alt=1)
    path = tmp_path / f"tz.{fmt}"
    save(img, str(path))
    code, _, err = run_cli(["dfu", "--device", "U575", str(path), "--no-image-check"], capsys)
    assert code == EXIT_USAGE and "TZEN=0x1" in err and "0x40022040" in err
    assert dev.requests == 0 and bytes(dev.chip.flash[:16]) == b"\xff" * 16  # nothing flashed first


# ---- job files ------------------------------------------------------------------------------------
def test_job_file_raw_tzen(tmp_path, capsys) -> None:
    job = tmp_path / "job.toml"
    job.write_text(f'image = "{HEX}"\ntargets = ["sim://U575?chip=perm-job"]\ndevice = "U575"\n'
                   f'report_dir = "{tmp_path / "rep"}"\n[option_bytes]\nhex = "{U5_TZEN.hex()}"\n')
    code, _, err = run_cli(["batch", "--job", str(job)], capsys)
    assert code == EXIT_USAGE and "TZEN=0x1" in err
    assert registry.get("perm-job") is None
