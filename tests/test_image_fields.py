"""``image stamp`` custom fields (--crc-at/--crc-over, --version-at, --length-at), checked
against srec_cat, the reference tool such bootloaders' build scripts use."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from stmflash.cli import main
from stmflash.image import load, save
from stmflash.image.crc import crc16_ccitt
from stmflash.image.model import Image

BASE = 0x08004000
SRECORD = shutil.which("srec_cat")
needs_srec = pytest.mark.skipif(SRECORD is None, reason="srec_cat (Debian package srecord) is not installed")


def run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def app(tmp_path: Path) -> Path:
    """An application with a gap (filled before the CRC) and a reserved, blank header."""
    img = Image()
    img.add(BASE, struct.pack("<II", 0x20020000, BASE + 0x101) + bytes(range(200)))
    img.add(BASE + 0x200, b"\xff" * 16)  # header placeholder (version, length)
    img.add(BASE + 0x400, bytes(range(256)) * 3)
    p = tmp_path / "app.hex"
    save(img, p)
    return p


@needs_srec
@pytest.mark.parametrize("flavour, srec_args, width", [
    ("zlib", ["-crc32-l-e"], 4),
    ("stm32", ["-stm32-l-e"], 4),
    ("crc16-ccitt", ["-crc16-l-e", "{at}", "-broken"], 2),
])
def test_crc_matches_srec_cat(capsys, tmp_path, flavour, srec_args, width):
    src = app(tmp_path)
    end = BASE + 0x2000  # the whole application space, not just the image
    out = tmp_path / "out.hex"
    code, _, err = run(capsys, "image", "stamp", str(src), "-o", str(out), "--crc", flavour,
                       "--crc-over", f"0x{BASE:08X}..0x{end:08X}", "--crc-at", f"0x{end:08X}")
    assert code == 0, err
    ref = tmp_path / "ref.hex"
    args = [a.format(at=f"0x{end:X}") for a in srec_args]
    if "{at}" not in srec_args:
        args.append(f"0x{end:X}")
    subprocess.run([SRECORD, str(src), "-intel", "-fill", "0xFF", f"0x{BASE:X}", f"0x{end:X}",
                    "-crop", f"0x{BASE:X}", f"0x{end:X}", *args, "-o", str(ref), "-intel"], check=True)
    ours, theirs = load(out), load(ref)
    assert ours.read(end, width) == theirs.read(end, width)
    assert ours.read(BASE, end - BASE) == theirs.read(BASE, end - BASE)  # the filled space is written
    assert len(ours.segments) == 1 and ours.end == end + width


@needs_srec
def test_version_and_length_are_inside_the_crc(capsys, tmp_path):
    src = app(tmp_path)
    end = BASE + 0x1000
    out = tmp_path / "out.hex"
    code, out_text, err = run(capsys, "image", "stamp", str(src), "-o", str(out), "--json",
                              "--version-at", f"0x{BASE + 0x200:08X}", "--version", "1.2.3.4",
                              "--version-format", "u16x4", "--length-at", f"0x{BASE + 0x208:08X}",
                              "--crc-over", f"0x{BASE:08X}:4K", "--crc-at", f"0x{end:08X}", "--fill", "0x00")
    assert code == 0, err
    img = load(out)
    assert img.read(BASE + 0x200, 8) == struct.pack("<4H", 1, 2, 3, 4)
    assert img.read(BASE + 0x208, 4) == struct.pack("<I", 0x1000)
    assert img.read(BASE + 0x100, 4) == b"\x00" * 4  # the gap took --fill
    # srec_cat over our output, CRC field cropped away, agrees with the CRC we stored
    ref = tmp_path / "ref.hex"
    subprocess.run([SRECORD, str(out), "-intel", "-crop", f"0x{BASE:X}", f"0x{end:X}", "-crc32-l-e",
                    f"0x{end:X}", "-o", str(ref), "-intel"], check=True)
    assert load(ref).read(end, 4) == img.read(end, 4)


@pytest.mark.parametrize("fmt, version, want", [
    ("u32", "1.4.2", struct.pack("<I", 0x01040002)),
    ("semver", "1.4.2", bytes([1, 4, 2, 0])),
    ("u16x4", "1.4.2", struct.pack("<4H", 1, 4, 2, 0)),
])
def test_version_formats(capsys, tmp_path, fmt, version, want):
    out = tmp_path / "o.hex"
    code, _, err = run(capsys, "image", "stamp", str(app(tmp_path)), "-o", str(out), "--version-at",
                       f"0x{BASE + 0x200:08X}", "--version", version, "--version-format", fmt)
    assert code == 0, err
    assert load(out).read(BASE + 0x200, len(want)) == want


def test_crc16_is_ccitt_false():
    assert crc16_ccitt(b"123456789") == 0x29B1  # the CRC catalogue's check value


@pytest.mark.parametrize("args, needle", [
    (["--crc-at", "0x08004000", "--crc-over", "0x08004000:4K"], "overwrite"),
    (["--crc-at", "0x08004100", "--crc-over", "0x08004000:4K"], "inside --crc-over"),
    (["--crc-at", "0x09000000", "--crc-over", "0x08004000:4K"], "outside the image"),
    (["--crc-at", "0x08005000"], "go together"),
    (["--version-at", "0x08004200", "--length-at", "0x08004202"], "overlaps"),
    (["--version-at", "0x08004200", "--version", "1.2.3.4"], "fourth field"),
    (["--at", "0x08004200", "--crc-at", "0x08005000", "--crc-over", "0x08004000:4K"], "not both"),
    ([], "needs --at"),
])
def test_refusals(capsys, tmp_path, args, needle):
    code, _, err = run(capsys, "image", "stamp", str(app(tmp_path)), "-o", str(tmp_path / "o.hex"), *args)
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "o.hex").exists()
