"""Pin-less entry against ``stmflash sim uart --app``: a virtual board on a pseudo-terminal.

The host side runs in this process, the virtual STM32 in a subprocess, as a real board
would be: only bytes on the line connect them. Linux ptys keep the baud rate a client sets
(the application checks it) but not parity, so the bootloader session uses ``--parity none``.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from stmflash import devices
from stmflash.errors import EXIT_NO_ANSWER
from stmflash.sim.app import demo_vector_table
from stmflash.sim.chip import VirtualChip

F407 = devices.find("F407")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def board(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A virtual F407 running an application on a pty: (pty path, image file)."""
    img = tmp_path / "board.img"
    chip = VirtualChip(F407, image_path=img)
    chip.preload(F407.flash_start, demo_vector_table(chip))
    chip.save()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stmflash", "sim", "uart", "--device", "F407", "--image", str(img), "--app"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/"), f"sim uart printed {path!r}: {proc.stderr.read() if proc.stderr else ''}"
        yield path, img
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - defensive
            proc.kill()
            proc.wait()


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from stmflash.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def talk(path: str, data: bytes, *, baud: int = 115200) -> bytes:
    with serial.Serial(path, baud, timeout=0.3) as port:
        port.reset_input_buffer()
        port.write(data)
        return port.read(4096)


def test_application_talks_and_ignores_noise_and_typing(board: tuple[str, Path], capsys) -> None:
    path, _ = board
    noise = bytes(range(256)) + os.urandom(512) + b"\x7f" * 8
    talk(path, noise)
    assert b"echo: ping\r\n" in talk(path, b"\r\nping\r")  # still the application, not the ROM
    code, _, err = cli(["trigger", path], capsys)
    assert code == 0, err


def test_wrong_baud_is_not_obeyed(board: tuple[str, Path], capsys) -> None:
    path, _ = board
    code, _, err = cli(["trigger", path, "--app-baud", "9600", "--timeout", "0.3"], capsys)
    assert code == EXIT_NO_ANSWER and "9600 8N1" in err and "stmflash companion" in err
    assert b"echo: still here" in talk(path, b"still here\r")


def test_uart_enter_command_over_the_pty(board: tuple[str, Path], tmp_path: Path, capsys) -> None:
    path, _ = board
    data = bytearray(os.urandom(6000))
    data[:8] = struct.pack("<II", 0x20020000, F407.flash_start + 0x401)
    app = tmp_path / "app.bin"
    app.write_bytes(bytes(data))
    code, _, err = cli(["uart", path, str(app), "--enter", "command", "--parity", "none"], capsys)
    assert code == 0, err
    # the new application runs (Go): it answers the trigger again
    code, _, err = cli(["trigger", path], capsys)
    assert code == 0, err


def test_new_application_is_entered_again_and_reads_back(board: tuple[str, Path], tmp_path: Path, capsys) -> None:
    path, _ = board
    data = bytearray(os.urandom(4096))
    data[:8] = struct.pack("<II", 0x20020000, F407.flash_start + 0x401)
    app = tmp_path / "app.bin"
    app.write_bytes(bytes(data))
    code, _, err = cli(["uart", path, str(app), "--enter", "command", "--parity", "none"], capsys)
    assert code == 0, err
    code, _, err = cli(["uart", path, "--enter", "command", "--parity", "none", "--read",
                        str(tmp_path / "back.bin"), "--length", "4096"], capsys)
    assert code == 0, err
    assert (tmp_path / "back.bin").read_bytes() == bytes(data)
