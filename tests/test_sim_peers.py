"""The virtual STM32 against flashers none of us wrote: stm32flash 0.7 and stm32loader.

Each test starts ``python -m stmflash sim uart`` as a subprocess, reads the pty path from
its first stdout line, runs the peer on it, stops the server with SIGINT (which saves the
image) and compares the image file's flash with what the peer was asked to write.

Pty quirks handled here (not simulator bugs): a Linux pty refuses PARENB after the first
client, so stm32flash runs with ``-m 8n1`` (or ``-b 0``: the server sets VTIME=0.5 s so
kept settings time out like a real port) and stm32loader with ``-P none``; stm32loader toggles
RTS/DTR, which a pty does not have, so it runs under a shim that ignores ENOTTY from the
modem-line ioctls. The bytes on the wire are the peers' own.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from stmflash import devices, ob_fields
from stmflash.sim.chip import VirtualChip, flash_bytes, load_image_file
from stmflash.sim.spawn import pty_server, stm32loader_command
from tests.peers import require, run

pytestmark = pytest.mark.peer

# one device per erase style: Extended Erase pages, sectors, legacy 0x43, no mass erase
DEVICES = {
    "G0-0x460": ("0x460", "STM32G07xxx/08xxx", "G0"),
    "F4-0x413": ("0x413", "STM32F40xxx/41xxx", "F4"),
    "F1-0x410": ("0x410", "STM32F10xxx Medium-density", "F1"),
    "L0-0x417": ("0x417", "STM32L05xxx/06xxx", "L0"),
}



def sim_server(device: str, image: Path, *extra: str):
    """``stmflash sim uart`` in a child process; SIGINT (saves the image) on exit.

    Each server start is a power-on. A G0 with programmed flash and factory option bytes
    boots that flash then (nBOOT_SEL = 1 ignores the BOOT0 pin, RM0444 Table 8), so the
    image is given nBOOT_SEL = 0 first: the strapped-high BOOT0 pin then selects the ROM,
    as on a board wired for the bootloader."""
    _pin_boot(devices.find(device), image)
    return pty_server(device, image, *extra, stop_timeout=20)


def _pin_boot(device: devices.Device, image: Path) -> None:
    table = ob_fields.table_of(device)
    if table is None or not table.boot or table.find("nBOOT_SEL") is None:
        return  # only the G0/C0 boot table ignores the pin with factory options
    chip = VirtualChip(device, image_path=image)
    values = ob_fields.resolve(device, {"nBOOT_SEL": "pin"})
    chip.store_raw_option_bytes(ob_fields.apply(device, chip.option_bytes(), values))
    chip.save()


def firmware(tmp_path: Path, size: int, seed: int = 1) -> Path:
    data = random.Random(seed).randbytes(size)
    path = tmp_path / "fw.bin"
    path.write_bytes(data)
    return path


def stm32flash(*args: str, check: bool = True, keep_settings: bool = False) -> subprocess.CompletedProcess:
    line = ["-b", "0"] if keep_settings else ["-m", "8n1"]
    return run([require("stm32flash"), *line, *args], timeout=120, check=check)


def stm32loader(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    require("stm32loader")
    return run(stm32loader_command("-P", "none", "-n", *args), timeout=120, check=check)


@pytest.mark.parametrize("key", list(DEVICES))
def test_stm32flash_write_read_erase(tmp_path: Path, key: str) -> None:
    dev_arg, expect_name, _ = DEVICES[key]
    device = devices.find(dev_arg)
    image = tmp_path / "chip.img"
    fw = firmware(tmp_path, 16384)
    with sim_server(dev_arg, image) as pty:
        info = stm32flash(pty)
        assert f"Device ID    : 0x{device.pid:04x}" in info.stdout
        assert expect_name in info.stdout
        stm32flash("-w", str(fw), "-v", pty)
        back = tmp_path / "back.bin"
        # third session on a synced chip, keeping the pty's settings: 0x7F, timeout, NACK
        stm32flash("-r", str(back), "-S", f"0x{device.flash_start:08x}:{fw.stat().st_size}", pty, keep_settings=True)
        assert back.read_bytes() == fw.read_bytes()
    flash = flash_bytes(image)
    assert flash[:16384] == fw.read_bytes()
    assert flash[16384:] == device.erased_bytes * (len(flash) - 16384)  # 0x00 on L0/L1

    with sim_server(dev_arg, image) as pty:  # state survived the restart; now erase it all
        stm32flash("-o", pty)
    assert flash_bytes(image) == device.erased_bytes * device.flash_size


@pytest.mark.parametrize("key", list(DEVICES))
def test_stm32loader_write_verify_read(tmp_path: Path, key: str) -> None:
    dev_arg, _, family = DEVICES[key]
    device = devices.find(dev_arg)
    image = tmp_path / "chip.img"
    old = VirtualChip(device, image_path=image)
    old.preload(device.flash_start, b"\x00" * 8192)  # old firmware: the erase must happen
    old.save()
    fw = firmware(tmp_path, 8192, seed=7)
    with sim_server(dev_arg, image) as pty:
        if device.mass_erase:
            out = stm32loader("-p", pty, "-f", family, "-e", "-w", "-v", str(fw))
        else:
            # No mass erase on this part: erase the region page by page. stm32loader
            # numbers pages from address 0 and applies -a to the write too, so erase in a
            # session of its own (the next session resyncs after one 5 s timeout).
            stm32loader("-p", pty, "-f", family, "-e", "-a", "0", "-l", "8192")
            out = stm32loader("-p", pty, "-f", family, "-w", "-v", str(fw))
        text = out.stdout + out.stderr
        assert f"Chip id: 0x{device.pid:x}" in text
        assert "Verification OK" in text  # stm32loader read the whole image back
        if key == "G0-0x460":
            # A second session: the chip is still synced, so stm32loader's 0x7F times out
            # once (5 s) before the documented NACK resync; do it for one device only.
            back = tmp_path / "back.bin"
            stm32loader("-p", pty, "-f", family, "-r", "-a", f"0x{device.flash_start:08X}", "-l", "8192", str(back))
            assert back.read_bytes() == fw.read_bytes()
    assert flash_bytes(image)[:8192] == fw.read_bytes()


def _rdp(image: Path) -> int:
    """RDP level stored in an image file, decoded with the family's option-byte layout."""
    from stmflash import devices, option_bytes

    header, regions = load_image_file(image)
    return option_bytes.rdp_level(devices.lookup(header["pid"]), regions["option_bytes"])


@pytest.mark.parametrize("key", ["G0-0x460", "F1-0x410"])
def test_stm32flash_protection_commands(tmp_path: Path, key: str) -> None:
    dev_arg = DEVICES[key][0]
    device = devices.find(dev_arg)
    image = tmp_path / "chip.img"
    chip = VirtualChip(device, image_path=image)
    chip.preload(device.flash_start, b"\x5a" * 1024)
    chip.write_protect([0, len(device.erase_units) - 1], reset=False)
    chip.save()

    with sim_server(dev_arg, image) as pty:
        stm32flash("-u", pty)  # write unprotect: chip resets itself
    saved = VirtualChip(device, image_path=image)
    assert saved.wrp == set()
    assert saved.flash[:1024] == b"\x5a" * 1024

    with sim_server(dev_arg, image) as pty:
        stm32flash("-j", pty)  # readout protect
    assert _rdp(image) == 1
    assert flash_bytes(image)[:1024] == b"\x5a" * 1024

    with sim_server(dev_arg, image) as pty:
        denied = stm32flash("-r", os.devnull, "-S", f"0x{device.flash_start:08x}:256", pty, check=False)
        assert denied.returncode != 0
        stm32flash("-k", pty)  # readout unprotect: mass erase and level 0
    assert _rdp(image) == 0
    assert flash_bytes(image) == device.erased_bytes * device.flash_size
