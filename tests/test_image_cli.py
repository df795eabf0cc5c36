"""``stmflash image info|convert|merge|stamp`` through the real entry point."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from stmflash.cli import main
from stmflash.image import load, save
from stmflash.image.model import Image
from stmflash.image.stamp import check_stamp

BASE = 0x08000000


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), out, err


def firmware() -> Image:
    vectors = struct.pack("<II", 0x20020000, BASE + 0x101)
    img = Image()
    img.add(BASE, vectors + bytes(range(256)) * 2)
    img.add(BASE + 0x800, b"\xaa" * 64)
    return img


@pytest.fixture()
def fw_hex(tmp_path: Path) -> Path:
    p = tmp_path / "fw.hex"
    save(firmware(), p)
    return p


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("stmflash: error: ")
    for n in needles:
        assert n in lines[0], lines[0]


def test_info_json(capsys, fw_hex: Path) -> None:
    code, out, err = cli(capsys, "image", "info", str(fw_hex), "--json")
    assert code == 0, err
    r = json.loads(out)
    img = firmware()
    assert r["segments"][0]["address"] == f"0x{BASE:08X}" and r["segments"][0]["size"] == 520
    assert [(int(s["address"], 16), s["size"]) for s in r["segments"]] == [(s.address, len(s)) for s in img.segments]
    assert r["crc32"] == f"0x{img.crc32():08X}"
    assert r["format"] == "hex"
    assert r["vector_table"]["checked"] and r["vector_table"]["problems"] == []
    assert err == ""


def test_info_text(capsys, fw_hex: Path) -> None:
    code, out, _ = cli(capsys, "image", "info", str(fw_hex))
    assert code == 0
    assert "0x08000000..0x08000208" in out and f"0x{firmware().crc32():08X}" in out
    assert "vectors:   ok" in out


def test_info_vector_warning_and_strict(capsys, tmp_path: Path) -> None:
    bad = Image.from_bytes(struct.pack("<II", 0x30000000, BASE + 0x100) + bytes(64), BASE)
    p = tmp_path / "bad.hex"
    save(bad, p)
    code, out, err = cli(capsys, "image", "info", str(p))
    assert code == 0
    assert "warning" in err and "initial stack pointer 0x30000000" in err and "even" in err
    code, out, err = cli(capsys, "image", "info", str(p), "--strict")
    assert_one_line_error(code, err, "bad.hex", "initial stack pointer 0x30000000")


def test_info_with_device(capsys, tmp_path: Path) -> None:
    from stmflash.devices import all_devices

    dev = next((d for d in all_devices() if d.ram), None)
    if dev is None:
        pytest.fail("the device table has no part with RAM")
    top = dev.ram[0].end
    img = Image.from_bytes(struct.pack("<II", top, dev.flash_start + 9) + bytes(64), dev.flash_start)
    p = tmp_path / "d.hex"
    save(img, p)
    code, out, err = cli(capsys, "image", "info", str(p), "--device", dev.short_name, "--json", "--strict")
    assert code == 0, err
    assert json.loads(out)["vector_table"]["against"] == dev.short_name
    code, _, err = cli(capsys, "image", "info", str(p), "--device", "NOPE999")
    assert_one_line_error(code, err, "NOPE999")


def test_bin_needs_address(capsys, tmp_path: Path) -> None:
    p = tmp_path / "raw.bin"
    p.write_bytes(firmware().to_bin())
    code, _, err = cli(capsys, "image", "info", str(p))
    assert_one_line_error(code, err, "raw.bin", "--address")
    code, out, _ = cli(capsys, "image", "info", str(p), "--address", "0x08000000", "--json")
    assert code == 0 and json.loads(out)["segments"][0]["address"] == f"0x{BASE:08X}"


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("cs.hex", ":0400000001020304F0\n", "line 1: bad record checksum"),
        ("t.dfu", b"DfuSe\x01\x00\x00", "truncated"),
        ("missing.hex", None, "cannot read"),
        ("j.s19", "S1070000010203046E\n", "line 1: bad record checksum"),
    ],
)
def test_bad_inputs_exit_2_one_line(capsys, tmp_path: Path, name: str, content, needle: str) -> None:
    p = tmp_path / name
    if isinstance(content, str):
        p.write_text(content)
    elif content is not None:
        p.write_bytes(content)
    code, _, err = cli(capsys, "image", "info", str(p))
    assert_one_line_error(code, err, name, needle)


def test_convert_all_formats(capsys, tmp_path: Path, fw_hex: Path) -> None:
    img = firmware()
    for ext in ("srec", "s19", "dfu", "hex"):
        out = tmp_path / f"o.{ext}"
        code, _, err = cli(capsys, "image", "convert", str(fw_hex), str(out))
        assert code == 0, err
        assert load(out) == img
    out = tmp_path / "o.bin"
    code, _, err = cli(capsys, "image", "convert", str(fw_hex), str(out), "--fill", "0x00")
    assert code == 0, err
    assert out.read_bytes() == img.to_bin(0x00)
    # bin back to hex with an address
    back = tmp_path / "back.hex"
    code, _, err = cli(capsys, "image", "convert", str(out), str(back), "--address", "0x08000000")
    assert code == 0, err
    assert load(back).to_bin(0x00) == img.to_bin(0x00)
    # .dfu with chosen USB IDs
    d = tmp_path / "ids.dfu"
    code, _, err = cli(capsys, "image", "convert", str(fw_hex), str(d), "--dfu-id", "1209:0001", "--bcd-device", "0x0100")
    assert code == 0, err
    assert load(d).dfu_ids == (0x1209, 0x0001, 0x0100)
    code, _, err = cli(capsys, "image", "convert", str(fw_hex), str(tmp_path / "x.zip"))
    assert_one_line_error(code, err, "--format")
    code, _, err = cli(capsys, "image", "convert", str(fw_hex), str(tmp_path / "x.bin"), "--fill", "0x100")
    assert_one_line_error(code, err, "--fill")


def test_merge(capsys, tmp_path: Path) -> None:
    boot = tmp_path / "boot.bin"
    boot.write_bytes(b"\x01" * 0x100)
    app = tmp_path / "app.hex"
    save(Image.from_bytes(b"\x02" * 0x80, BASE + 0x4000), app)
    out = tmp_path / "all.hex"
    code, _, err = cli(capsys, "image", "merge", f"{boot}@0x08000000", str(app), "-o", str(out))
    assert code == 0, err
    merged = load(out)
    assert [(s.address, s.data) for s in merged.segments] == [(BASE, b"\x01" * 0x100), (BASE + 0x4000, b"\x02" * 0x80)]
    over = tmp_path / "over.hex"
    save(Image.from_bytes(b"\x03" * 0x10, BASE + 0xF8), over)
    code, _, err = cli(capsys, "image", "merge", f"{boot}@0x08000000", str(over), "-o", str(tmp_path / "x.hex"))
    assert_one_line_error(code, err, "boot.bin", "over.hex", "0x080000F8")
    assert not (tmp_path / "x.hex").exists()


def test_stamp(capsys, tmp_path: Path, fw_hex: Path) -> None:
    out = tmp_path / "stamped.hex"
    code, stdout, err = cli(
        capsys, "image", "stamp", str(fw_hex), "-o", str(out), "--at", "0x08000300",
        "--version", "2.0.7", "--crc", "stm32", "--json",
    )  # fmt: skip
    assert code == 0, err
    h = json.loads(stdout)
    assert h["version"] == "0x02000007" and h["length"] == 0x840 and h["address"] == "0x08000300"
    img = load(out)
    assert len(img.segments) == 1 and img.start == BASE
    assert check_stamp(img, 0x08000300, crc="stm32") == []
    # re-stamping an existing header is allowed; stamping over code or far away is not
    again = tmp_path / "again.hex"
    code, _, err = cli(capsys, "image", "stamp", str(out), "-o", str(again), "--at", "0x08000300", "--version", "2.0.8")
    assert code == 0, err
    code, _, err = cli(capsys, "image", "stamp", str(fw_hex), "-o", str(again), "--at", "0x08000100")
    assert_one_line_error(code, err, "0x08000100", "overwrite")
    code, _, err = cli(capsys, "image", "stamp", str(fw_hex), "-o", str(again), "--at", "0x07000000")
    assert_one_line_error(code, err, "0x07000000", "outside")
    assert not again.exists() or load(again).start == BASE
    code, _, err = cli(capsys, "image", "stamp", str(fw_hex), "-o", str(out), "--at", "0x08000102")
    assert_one_line_error(code, err, "0x08000102")
    code, _, err = cli(capsys, "image", "stamp", str(fw_hex), "-o", str(out), "--at", "0x08000100", "--version", "1.x")
    assert_one_line_error(code, err, "1.x")


def test_subprocess_no_traceback(tmp_path: Path) -> None:
    p = tmp_path / "garbage.elf"
    p.write_bytes(b"\x7fELF" + b"\xff" * 20)
    proc = subprocess.run(
        [sys.executable, "-m", "stmflash", "image", "info", str(p)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("stmflash: error: ") and "garbage.elf" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
