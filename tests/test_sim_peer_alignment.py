"""stm32flash and stm32loader against the pty simulator on one device of every family they
know, with image lengths that are not multiples of 4, 8 or 16.

What the ROM does with such writes is device data (``write_align``, ``write_misaligned``
in ``devices.toml``, with sources): both peers pad the last block to 4 bytes only, the
ROM completes a programming unit with 0xFF, so the write and the peer's verify succeed
and the flash holds the image followed by 0xFF. A write that starts inside a unit
(``stm32flash -S flash+4``) is ACKed and dropped on the parts that do that (G0 field
reports; the same flash interface on G4/L4/H7...): the peer's read-back verify fails, as it
would on silicon, while the parts programming in 4-byte units take it. Our own client then
programs every case, including the misaligned start (it aligns down and fills with 0xFF).
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from stmflash import devices
from stmflash.errors import VerifyError
from stmflash.image.model import Image
from stmflash.pipeline import verify_image
from stmflash.progress import Reporter
from stmflash.sim.chip import flash_bytes
from stmflash.sim.spawn import pty_server, stm32loader_command
from stmflash.uart.link import connect
from tests.peers import require, run

pytestmark = pytest.mark.peer

# one device per family in stm32flash 0.7's table (it aborts on a PID it does not know)
STM32FLASH_DEVICES = ["F072", "F103", "F205", "F303xC", "F407", "F746", "G031", "G474", "H743",
                      "L072", "L151xB", "L476", "L4R5", "W108xB"]
# stm32loader 0.7's families (-f) and one device of each that its PID table names
# (F2 and L1 are in its PID table but have no -f family: it runs without one)
STM32LOADER_DEVICES = {"F051": "F0", "F103": "F1", "F205": None, "F303xC": "F3", "F407": "F4",
                       "F746": "F7", "G071": "G0", "H743": "H7", "L053": "L0", "L151xB": None,
                       "L431": "L4", "WLE5": "WL"}
LENGTHS = (1257, 1028, 1048)  # odd; a multiple of 4 but not 8; a multiple of 8 but not 16


def image(tmp_path: Path, size: int) -> Path:
    path = tmp_path / f"fw{size}.bin"
    path.write_bytes(random.Random(size).randbytes(size))
    return path


def expected(data: bytes, device: devices.Device) -> bytes:
    """The image as the flash holds it: the last programming unit filled with 0xFF."""
    return data + b"\xff" * (-len(data) % max(device.write_align, 4))


def ours(pty: str, fw: Path, address: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stmflash", "uart", pty, str(fw), "--no-image-check", "--address", f"0x{address:08x}",
         "--after", "stay", "--json"],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("name", STM32FLASH_DEVICES)
def test_stm32flash_unaligned_lengths(tmp_path: Path, name: str) -> None:
    tool = require("stm32flash")
    device = devices.find(name)
    base = device.flash_start
    chip = tmp_path / "chip.img"
    with pty_server(name, chip, stop_timeout=20) as pty:
        for size in LENGTHS:
            fw = image(tmp_path, size)
            out = run([tool, "-m", "8n1", "-b", "115200", "-w", str(fw), "-v", pty])
            assert f"Device ID    : 0x{device.pid:04x}" in out.stdout
            back = tmp_path / "back.bin"
            want = expected(fw.read_bytes(), device)
            run([tool, "-m", "8n1", "-b", "115200", "-r", str(back), "-S", f"0x{base:08x}:{len(want)}", pty])
            assert back.read_bytes() == want, f"{size} bytes"
        # a start inside a programming unit (stm32flash writes 256-byte blocks from there):
        # every block is ACKed, so without -v the peer reports success
        fw = image(tmp_path, 1028)
        run([tool, "-m", "8n1", "-b", "115200", "-w", str(fw), "-S", f"0x{base + 4:08x}", pty])
        img = Image.from_bytes(fw.read_bytes(), base + 4)
        with connect(pty, timeout=0.5) as link:
            if device.write_align > 4:
                assert device.write_misaligned == "drop"
                with pytest.raises(VerifyError):  # our verify catches the dropped write
                    verify_image(link, img, Reporter())
            else:
                verify_image(link, img, Reporter())
        # our client programs the same image at the same start on every part
        proc = ours(pty, fw, base + 4)
        assert proc.returncode == 0, proc.stderr
        assert '"verified": true' in proc.stdout
    flash = flash_bytes(chip)
    assert flash[4 : 4 + 1028] == fw.read_bytes()
    assert flash[:4] == device.erased_bytes * 4  # never written: erased (0x00 on L0/L1)


@pytest.mark.parametrize("name", list(STM32LOADER_DEVICES))
def test_stm32loader_unaligned_length(tmp_path: Path, name: str) -> None:
    require("stm32loader")
    family = STM32LOADER_DEVICES[name]
    device = devices.find(name)
    fw = image(tmp_path, LENGTHS[0])  # stm32loader pads it to 1260: a unit tail on every family
    chip = tmp_path / "chip.img"
    with pty_server(name, chip, stop_timeout=20) as pty:
        # a fresh chip is erased: no -e (L0 has no mass erase, and a second session costs
        # stm32loader a 5 s resync timeout)
        fam = ["-f", family] if family else []
        out = run(stm32loader_command("-P", "none", "-n", "-p", pty, *fam, "-w", "-v", str(fw)))
        text = out.stdout + out.stderr
        assert f"Chip id: 0x{device.pid:x}" in text
        assert "Verification OK" in text
    data = fw.read_bytes()
    flash = flash_bytes(chip)
    assert flash[: len(data)] == data
    pad = -len(data) % 4  # stm32loader's 0xFF padding to a word, programmed as sent
    assert flash[len(data) : len(data) + pad] == b"\xff" * pad
    assert flash[len(data) + pad : len(data) + 64] == device.erased_bytes * (64 - pad)  # beyond: erased
