"""The example images committed under examples/: consistent formats, real Cortex-M images.

These run without any ARM toolchain (the README's quick start flashes them on a fresh
machine); test_firmware_build.py checks that rebuilding from source gives the same layout.
"""

from __future__ import annotations

import struct
from pathlib import Path

import bincopy
import pytest
from elftools.elf.elffile import ELFFile
from intelhex import IntelHex

from stmflash import devices

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {
    "blinky-f407": ("F407", ("hex", "bin", "elf", "srec")),
    "blinky-g071": ("G071", ("hex", "bin", "elf")),
}
Segments = list[tuple[int, bytes]]


def load_hex(path: Path) -> Segments:
    ih = IntelHex(str(path))
    return [(start, ih.tobinstr(start=start, end=end - 1)) for start, end in ih.segments()]


def load_srec(path: Path) -> Segments:
    f = bincopy.BinFile()
    f.add_srec_file(str(path))
    return [(seg.minimum_address, bytes(seg.data)) for seg in f.segments]


def load_elf(path: Path) -> Segments:
    """Loadable bytes at their load (flash) addresses, merged when contiguous."""
    out: Segments = []
    with path.open("rb") as fh:
        elf = ELFFile(fh)
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or seg["p_filesz"] == 0:
                continue
            addr, data = seg["p_paddr"], seg.data()[: seg["p_filesz"]]
            if out and out[-1][0] + len(out[-1][1]) == addr:
                out[-1] = (out[-1][0], out[-1][1] + data)
            else:
                out.append((addr, data))
    return out


def vector_problems(segments: Segments, device_name: str) -> list[str]:
    """Why this image would not start on the device (empty list: it would)."""
    dev = devices.find(device_name)
    problems = []
    base, data = segments[0]
    end = segments[-1][0] + len(segments[-1][1])
    if base != dev.flash_start:
        problems.append(f"image starts at {base:#x}, not at flash start")
    sp, reset = struct.unpack_from("<II", data)
    if sp % 4 or not any(r.start < sp <= r.end for r in dev.ram):
        problems.append(f"initial SP {sp:#x} not in RAM")
    if not reset & 1 or not base <= (reset & ~1) < end:
        problems.append(f"reset vector {reset:#x} not Thumb or outside the image")
    for i in range(2, 16):
        (vec,) = struct.unpack_from("<I", data, 4 * i)
        if vec and (not vec & 1 or not base <= (vec & ~1) < end):
            problems.append(f"exception vector {i} = {vec:#x} bad")
    return problems


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_all_formats_hold_the_same_bytes(name):
    device, formats = EXAMPLES[name]
    reference = load_hex(ROOT / "examples" / f"{name}.hex")
    assert len(reference) == 1, "examples are one contiguous flash segment"
    assert load_elf(ROOT / "examples" / f"{name}.elf") == reference
    raw = (ROOT / "examples" / f"{name}.bin").read_bytes()
    assert [(reference[0][0], raw)] == reference
    if "srec" in formats:
        assert load_srec(ROOT / "examples" / f"{name}.srec") == reference


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_vector_table_is_valid_for_the_device(name):
    device, _ = EXAMPLES[name]
    segments = load_hex(ROOT / "examples" / f"{name}.hex")
    assert vector_problems(segments, device) == []
    assert vector_problems([(segments[0][0], b"\xff" * 64)], device)  # the check can fail


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_is_small_and_carries_the_companion(name):
    data = (ROOT / "examples" / f"{name}.bin").read_bytes()
    assert 256 < len(data) <= 4096, "keep examples tiny: they are flashed in timed tests"
    assert struct.pack("<I", 0xEDB88320) in data, "trigger CRC code missing"
    assert struct.pack("<I", 0x424D5453) in data, "boot-request magic missing"


def test_examples_readme_documents_the_rebuild():
    text = (ROOT / "examples" / "README.md").read_text()
    assert "make -C firmware examples" in text
    for name in EXAMPLES:
        assert name in text
