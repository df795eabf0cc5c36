"""``stmflash uart`` over a real pseudo-terminal (``stmflash sim uart``), checked by a peer.

The server runs as a separate process; after we flash, stm32flash (a program none of us
wrote) reads the flash back over the same pty, and the server's saved image file is
compared too. Linux ptys ignore parity and refuse PARENB after the first client, so
stm32flash runs with ``-m 8n1`` and stmflash falls back to 8N1 on a pty by itself.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from stmflash import devices
from stmflash.image import save
from stmflash.image.model import Image
from stmflash.sim.chip import flash_bytes
from stmflash.sim.spawn import pty_server
from tests.peers import require, run


@pytest.mark.peer
@pytest.mark.parametrize("pid", ["0x460", "0x413", "0x410", "0x417"])
def test_flash_over_pty_then_stm32flash_reads_it_back(tmp_path: Path, pid: str) -> None:
    stm32flash = require("stm32flash")
    dev = devices.find(pid)
    data = random.Random(int(pid, 16)).randbytes(5000)
    fw = tmp_path / "fw.srec"
    save(Image.from_bytes(data, dev.flash_start), str(fw))
    sim_img = tmp_path / "chip.img"
    with pty_server(pid, sim_img) as pty:
        proc = subprocess.run(
            [sys.executable, "-m", "stmflash", "uart", pty, str(fw), "--no-image-check", "--after", "stay", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert '"verified": true' in proc.stdout
        out = tmp_path / "out.bin"
        run([stm32flash, "-m", "8n1", "-r", str(out), "-S", f"0x{dev.flash_start:08x}:{len(data)}", pty])
        assert out.read_bytes() == data
    assert flash_bytes(sim_img)[: len(data)] == data
