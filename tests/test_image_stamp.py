"""Application header stamping and the vector-table check."""

from __future__ import annotations

import struct
import zlib

import pytest

from stmflash.devices import Device, Region
from stmflash.errors import UsageError
from stmflash.image.crc import stm32_crc
from stmflash.image.model import Image
from stmflash.image.stamp import MAGIC, check_stamp, parse_version, read_header, stamp
from stmflash.image.vectors import check_vector_table

APP = 0x08004000


def app_image() -> Image:
    vectors = struct.pack("<II", 0x20020000, APP + 0x201)
    img = Image()
    img.add(APP, vectors + bytes(0x200 - 8) + b"\x70\x47" * 64)  # reserved header area inside
    img.add(APP + 0x1000, b"\x12\x34\x56")  # sparse tail, odd length
    return img


def test_parse_version() -> None:
    assert parse_version("1.2.3") == 0x01020003
    assert parse_version("255.255.65535") == 0xFFFFFFFF
    assert parse_version("0x10203") == 0x10203
    assert parse_version("42") == 42
    for bad in ("1.2", "256.0.0", "x", "1.2.3.4", str(1 << 32)):
        with pytest.raises(UsageError):
            parse_version(bad)


@pytest.mark.parametrize("kind", ["zlib", "stm32"])
def test_stamp_layout_and_crc(kind: str) -> None:
    img = app_image()
    at = APP + 0x100
    out, hdr = stamp(img, at, version=parse_version("1.4.2"), crc=kind)
    # one contiguous block from the image start, length rounded up to whole words
    assert len(out.segments) == 1 and out.start == APP
    assert hdr.length == 0x1004 and out.end == APP + 0x1004
    raw = out.read(at, 16)
    magic, version, length, crc = struct.unpack("<IIII", raw)
    assert (magic, version, length, crc) == (MAGIC, 0x01040002, 0x1004, hdr.crc)
    assert raw[:4] == b"STMF"
    # the bootloader's computation, spelled out: gaps 0xFF, CRC field zero
    blob = bytearray(img.read(APP, 0x1004, 0xFF))
    blob[0x100:0x110] = struct.pack("<IIII", MAGIC, 0x01040002, 0x1004, 0)
    want = zlib.crc32(bytes(blob)) if kind == "zlib" else stm32_crc(bytes(blob))
    assert crc == want
    assert out.read(APP + 0x1003, 1) == b"\xff"
    assert check_stamp(out, at, crc=kind) == []
    assert read_header(out, at).version_text == "1.4.2"
    # any change in the covered range is detected
    data = bytearray(out.segments[0].data)
    data[0x800] ^= 1
    assert check_stamp(Image.from_bytes(bytes(data), APP), at, crc=kind) != []


def test_stamp_header_after_the_end_and_errors() -> None:
    img = Image.from_bytes(b"\x01\x02\x03\x04\x05", APP)
    out, hdr = stamp(img, APP + 8, version=7)
    assert out.end == APP + 24 and hdr.length == 24
    assert out.read(APP + 5, 3) == b"\xff\xff\xff"
    with pytest.raises(UsageError, match="multiple of 4"):
        stamp(img, APP + 2)
    with pytest.raises(UsageError, match="unknown CRC"):
        stamp(img, APP, crc="md5")


# ---- vector table --------------------------------------------------------------------------
F4 = Device(
    pid=0x413,
    name="test F4",
    family="F4",
    flash_start=0x08000000,
    flash_size=0x100000,
    ram=(Region(0x20000000, 0x20020000), Region(0x10000000, 0x10010000)),
)


def vt(sp: int, reset: int, base: int = 0x08000000, size: int = 0x400) -> Image:
    return Image.from_bytes(struct.pack("<II", sp, reset) + bytes(size - 8), base)


def test_vector_table_ok_including_top_of_ram() -> None:
    assert check_vector_table(vt(0x20020000, 0x08000101), F4) == []
    assert check_vector_table(vt(0x10010000, 0x08000101), F4) == []
    assert check_vector_table(vt(0x2001FFF0, 0x08000101), F4) == []


def test_vector_table_problems() -> None:
    (p,) = check_vector_table(vt(0x20020004, 0x08000101), F4)
    assert "initial stack pointer 0x20020004" in p and "0x08000000" in p
    (p,) = check_vector_table(vt(0x20020000, 0x08000100), F4)
    assert "even" in p and "0x08000004" in p
    (p,) = check_vector_table(vt(0x20020000, 0x08100001), F4)
    assert "outside the image" in p
    assert len(check_vector_table(vt(0xFFFFFFFF, 0xFFFFFFFF), F4)) == 2
    assert "fewer than 8 bytes" in check_vector_table(Image.from_bytes(b"\x00" * 4, 0x08000000), F4)[0]


def test_vector_table_of_an_application_behind_a_bootloader() -> None:
    img = vt(0x20020000, APP + 0x101, base=APP)
    assert check_vector_table(img, F4) == []
    # flash start present: the table there is the one the chip boots
    both = vt(0x20020000, 0x08000101)
    both.add(APP, struct.pack("<II", 0x1, 0x2))
    assert check_vector_table(both, F4) == []


def test_vector_table_generic_ranges() -> None:
    assert check_vector_table(vt(0x20005000, 0x08000101)) == []
    assert check_vector_table(vt(0x00000000, 0x08000101)) != []
