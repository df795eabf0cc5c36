"""Random and damaged input to every loader: an ImageError (or a valid image), nothing else.

A user's file can be anything; a traceback from intelhex, bincopy, pyelftools or struct
would reach the console, so any other exception type is a bug.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stmflash.errors import ImageError
from stmflash.image.loaders import FORMATS, load_bytes
from stmflash.image.model import Image
from stmflash.image.writers import render


class FakeDevice:
    flash_start = 0x08000000


def make_elf(loads: list[tuple[int, int, bytes, int]], entry: int = 0x08000009) -> bytes:
    """A 32-bit little-endian ARM executable; ``loads`` = (vaddr, paddr, data, memsz)."""
    ehsize, phentsize = 52, 32
    phoff = ehsize
    data_off = phoff + phentsize * len(loads)
    phdrs, blobs = b"", b""
    for vaddr, paddr, data, memsz in loads:
        phdrs += struct.pack("<8I", 1, data_off + len(blobs), vaddr, paddr, len(data), memsz, 7, 4)
        blobs += data
    ident = b"\x7fELF\x01\x01\x01" + bytes(9)
    hdr = ident + struct.pack("<HHIIIIIHHHHHH", 2, 40, 1, entry, phoff, 0, 0, ehsize, phentsize, len(loads), 40, 0, 0)
    return hdr + phdrs + blobs


def test_handmade_elf_uses_load_addresses_and_skips_bss() -> None:
    text = bytes(range(64))
    data = b"\x11\x22\x33\x44"
    elf = make_elf([(0x08000000, 0x08000000, text, 64), (0x20000000, 0x08000040, data, 0x100), (0x20000100, 0x20000100, b"", 0x80)])
    img = load_bytes(elf, "h.elf")
    assert [(s.address, s.data) for s in img.segments] == [(0x08000000, text + data)]
    assert img.entry == 0x08000009


def valid_files() -> dict[str, bytes]:
    img = Image.from_segments([(0x08000000, bytes(range(200))), (0x08000400, b"\x55" * 40)])
    files = {fmt: render(img, fmt) for fmt in ("hex", "srec", "dfu")}
    files["elf"] = make_elf([(0x08000000, 0x08000000, bytes(range(100)), 100), (0x20000000, 0x08000064, b"abcd", 8)])
    return files


VALID = valid_files()


def try_load(data: bytes, fmt: str | None, name: str) -> None:
    address = 0x08000000 if fmt in ("bin", "dfu-bin") else None
    try:
        img = load_bytes(data, name, fmt=fmt, address=address, device=FakeDevice())  # type: ignore[arg-type]
    except ImageError as exc:
        assert "\n" not in str(exc)
        assert str(exc).startswith(name)
        return
    assert img.segments  # a success is a real image


@given(st.binary(max_size=400), st.sampled_from([None, *FORMATS]), st.sampled_from(["f.bin", "f.hex", "f.s19", "f.elf", "f.dfu", "f"]))
def test_random_bytes(data: bytes, fmt: str | None, name: str) -> None:
    try_load(data, fmt, name)


@given(st.sampled_from([None, *FORMATS]), st.binary(min_size=1, max_size=200))
def test_random_bytes_behind_magic(fmt: str | None, tail: bytes) -> None:
    for magic in (b"\x7fELF", b"\x7fELF\x01\x01\x01", b"DfuSe\x01", b":", b"S3", b"S0"):
        try_load(magic + tail, fmt, "m.x")


@pytest.mark.parametrize("kind", sorted(VALID))
@given(data=st.data())
def test_mutated_valid_files(kind: str, data: st.DataObject) -> None:
    blob = bytearray(VALID[kind])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(blob) - 1, 0)))
        if op == "flip" and blob:
            blob[pos] ^= data.draw(st.integers(1, 255))
        elif op == "truncate":
            del blob[pos:]
        elif op == "insert":
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif blob:
            del blob[pos : pos + data.draw(st.integers(1, 8))]
    try_load(bytes(blob), data.draw(st.sampled_from([None, kind])), f"mut.{kind}")


@pytest.mark.parametrize("kind", sorted(VALID))
def test_every_truncation_of_dfu_and_elf_headers(kind: str) -> None:
    blob = VALID[kind]
    for n in range(0, min(len(blob), 400)):
        try_load(blob[:n], kind, f"cut.{kind}")
