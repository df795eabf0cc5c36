"""``stmflash sim uart``: announcement, symlink, signals, image saving, usage errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import serial

from stmflash import devices
from stmflash.sim.chip import flash_bytes


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stmflash", "sim", "uart", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_pty_server_link_sigterm_and_image(tmp_path: Path) -> None:
    image, link = tmp_path / "f1.img", tmp_path / "ttySIM"
    proc = start("--device", "F103", "--image", str(image), "--link", str(link), "--seed", "4")
    try:
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/pts/") and os.readlink(link) == path
        with serial.Serial(str(link), 115200, timeout=2) as port:
            port.write(b"\x7f")
            assert port.read(1) == b"\x79"
            port.write(b"\x02\xfd")
            assert port.read(5) == bytes([0x79, 1, 0x04, 0x10, 0x79])
            port.write(b"\x31\xce")
            assert port.read(1) == b"\x79"
            port.write(bytes.fromhex("0800000008"))
            assert port.read(1) == b"\x79"
            port.write(bytes([3, 1, 2, 3, 4, 3 ^ 1 ^ 2 ^ 3 ^ 4]))
            assert port.read(1) == b"\x79"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert not link.exists()
    flash = flash_bytes(image)
    assert len(flash) == devices.find("F103").flash_size and flash[:4] == b"\x01\x02\x03\x04"


def test_pty_server_usage_errors(tmp_path: Path) -> None:
    proc = start("--device", "NOSUCHCHIP")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and out == ""
    assert err.startswith("stmflash: error:") and "NOSUCHCHIP" in err and "Traceback" not in err
    proc = start("--device", "F103", "--fault", "explode=1")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and "explode" in err
    wrong = tmp_path / "g0.img"
    wrong.write_bytes(b'{"format": "stmflash-sim", "version": 1, "pid": 1120, "regions": []}\n')
    proc = start("--device", "F103", "--image", str(wrong))
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and str(wrong) in err
