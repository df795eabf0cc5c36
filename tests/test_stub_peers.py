"""The stub on the pty simulator (``stmflash sim uart``), checked by a flasher none of us wrote.

stmflash programs through the stub (the pty carries the baud change: the simulator reads
the rate the client set on the terminal), then stm32flash reads the flash back through the
ROM's Read Memory (``-r``) and the image file the server saves is compared too.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from stmflash import devices
from stmflash.sim.chip import flash_bytes
from stmflash.sim.spawn import pty_server
from tests.peers import require, run

pytest.importorskip("unicorn", reason="unicorn (test and sim extras) runs the stub in the simulator")


@pytest.mark.parametrize("name", ["F407", "G071", "L476", "F103", "L072", "L152xC"])
def test_stub_over_a_pty_reads_back_identically_with_stm32flash(tmp_path: Path, name: str) -> None:
    stm32flash = require("stm32flash")
    dev = devices.find(name)
    image = tmp_path / "chip.img"
    data = random.Random(name).randbytes(36 * 1024)
    fw = tmp_path / "fw.bin"
    fw.write_bytes(data)
    back = tmp_path / "back.bin"
    with pty_server(name, image, stop_timeout=20) as pty:
        proc = subprocess.run([sys.executable, "-m", "stmflash", "uart", pty, str(fw), "--no-image-check", "--stub", "on",
                               "--after", "stay", "--json"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert '"path": "stub"' in proc.stdout
        # the stub went back into the ROM (--after stay): stm32flash syncs and reads
        run([stm32flash, "-m", "8n1", "-r", str(back), "-S", f"0x{dev.flash_start:08x}:{len(data)}", pty],
            timeout=300)
    assert back.read_bytes() == data
    flash = flash_bytes(image)
    assert flash[: len(data)] == data and flash[len(data):] == dev.erased_bytes * (len(flash) - len(data))
