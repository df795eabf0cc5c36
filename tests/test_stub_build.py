"""The shipped stub binaries are exactly what ``firmware/stub`` builds, and broken builds fail.

``make -C firmware/stub`` with arm-none-eabi-gcc (``.ci/run`` installs it) must reproduce
``stmflash/data/stub/*.bin`` byte for byte, twice (reproducible build), and match the
manifest. Then two deliberately broken builds run in the virtual STM32 and fail there as
they would on silicon: skipping the flash unlock (the controller stays locked, so PG never
sets: PGSERR; L0/L1: WRPERR, RM0367 3.4) and programming with the wrong width (F4 PSIZE x8 for word writes: PGPERR;
G0/L4 and L0/L1 half-words where 32-bit words are required: SIZERR; F1 words where half-words are
required: a bus fault, after which the stub is silent).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from stmflash import devices
from stmflash.errors import LinkError
from stmflash.sim import registry
from stmflash.sim.chip import VirtualChip
from tests.peers import require

ROOT = Path(__file__).resolve().parent.parent
STUB_SRC = ROOT / "firmware" / "stub"
DATA = ROOT / "stmflash" / "data" / "stub"


def _make(build: Path, *extra: str) -> Path:
    require("arm-none-eabi-gcc")
    make = shutil.which("make")
    if make is None:
        pytest.skip("GNU make is not installed (Debian package make)")
    proc = subprocess.run([make, "-C", str(STUB_SRC), f"BUILD={build}", *extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning" not in (proc.stdout + proc.stderr).lower()
    return build


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("stub") / "a")


def test_shipped_binaries_match_a_rebuild_byte_for_byte(built, tmp_path):
    manifest = json.loads((DATA / "manifest.json").read_text())
    assert set(manifest) == {"f4", "f7", "g0l4", "f1", "l0l1"}
    again = _make(tmp_path / "b")
    for entry in manifest.values():
        shipped = (DATA / entry["file"]).read_bytes()
        rebuilt = (built / entry["file"]).read_bytes()
        assert rebuilt == shipped, f"{entry['file']} is stale: run make -C firmware/stub install"
        assert (again / entry["file"]).read_bytes() == rebuilt  # reproducible
        assert f"0x{zlib.crc32(shipped):08X}" == entry["crc32"] and len(shipped) == entry["size"]
        # the vector table: entry point inside the image, Thumb
        entry_pc = int.from_bytes(shipped[4:8], "little")
        load = int(entry["load"], 0)
        assert entry_pc & 1 and load < entry_pc < load + len(shipped)


def test_every_supported_device_has_room_for_the_stub():
    from stmflash.stub import stub_image, support

    supported = [d for d in devices.all_devices() if support(d)[0]]
    assert {d.family for d in supported} >= {"F0", "F1", "F2", "F3", "F4", "F7", "G0", "G4", "L0", "L1", "L4",
                                             "WB", "WL"}
    for d in supported:
        img = stub_image(d.stub["group"])
        assert d.ram_usable is not None and img.load >= d.ram_usable.start and img.end < d.ram_usable.end


def _broken(tmp_path: Path, flag: str, group: str) -> bytes:
    build = _make(tmp_path / flag, f"EXTRA=-D{flag}")
    return (build / f"stub-{group}.bin").read_bytes()


def _flash_with(binary: bytes, name: str) -> tuple[VirtualChip, Exception]:
    pytest.importorskip("unicorn", reason="unicorn (test and sim extras) runs the stub")
    from stmflash.sim import register_url_handler
    from stmflash.stub.link import start
    from stmflash.uart.link import connect

    register_url_handler()
    dev = devices.find(name)
    chip = VirtualChip(dev)
    registry.register("broken", chip)
    link = connect(f"sim://{name}?chip=broken")
    try:
        stub = start(link, binary=binary, retries=2)
        unit = dev.erase_units[1]
        stub.erase([unit])
        stub.write(unit.address, bytes(range(256)) * 4)
        with pytest.raises(Exception) as info:
            stub.flush()
        return chip, info.value
    finally:
        link.close()
        registry.clear()


@pytest.mark.parametrize("name,group", [("F407", "f4"), ("G071", "g0l4"), ("F103", "f1"), ("L072", "l0l1"),
                                        ("L152xC", "l0l1")])
def test_stub_that_skips_the_unlock_fails_as_on_silicon(tmp_path, name, group):
    chip, err = _flash_with(_broken(tmp_path, "STUB_FAULT_SKIP_UNLOCK", group), name)
    unit = chip.device.erase_units[1]
    assert chip.read(unit.address, 1024) == chip.device.erased_bytes * 1024  # nothing programmed
    if group == "f1":
        assert isinstance(err, LinkError)  # F1: writing flash without PG is a bus error
        assert "fault" in chip.cpu.result
    elif group == "l0l1":
        assert "WRPERR" in str(err)  # L0/L1: a write to locked program memory (RM0367 3.4)
    else:
        assert "PGSERR" in str(err)  # the erase never started either: CR stayed locked


@pytest.mark.parametrize("name,group,flag", [("F407", "f4", "PGPERR"), ("G071", "g0l4", "SIZERR"),
                                             ("F103", "f1", "fault"), ("L072", "l0l1", "SIZERR"),
                                             ("L152xC", "l0l1", "SIZERR")])
def test_stub_that_programs_with_the_wrong_width_fails_as_on_silicon(tmp_path, name, group, flag):
    chip, err = _flash_with(_broken(tmp_path, "STUB_FAULT_WIDTH", group), name)
    unit = chip.device.erase_units[1]
    assert chip.read(unit.address, 1024) == chip.device.erased_bytes * 1024
    if flag == "fault":
        assert isinstance(err, LinkError) and "half-words" in chip.cpu.result
    else:
        assert flag in str(err)
