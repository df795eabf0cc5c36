"""CRC-32 flavours: the fast STM32 CRC equals its bitwise definition and srec_cat's."""

from __future__ import annotations

import os
import zlib

from hypothesis import given
from hypothesis import strategies as st

from stmflash.image.crc import pad_to_words, stm32_crc, stm32_crc_bitwise, zlib_crc
from tests.peers import require, run


def test_known_values() -> None:
    # one zero word: the register after shifting 0xFFFFFFFF 32 times through the polynomial
    assert stm32_crc(b"\x00\x00\x00\x00") == 0xC704DD7B
    assert stm32_crc(b"") == 0xFFFFFFFF
    # words are little-endian in memory: "0123" is the word 0x33323130
    assert stm32_crc(b"0123") == stm32_crc_bitwise(b"0123")
    assert zlib_crc(b"123456789") == 0xCBF43926


@given(st.binary(max_size=600), st.sampled_from([0xFFFFFFFF, 0, 0x12345678]))
def test_fast_equals_bitwise(data: bytes, init: int) -> None:
    assert stm32_crc(data, init) == stm32_crc_bitwise(data, init)


def test_odd_length_is_padded_with_ff() -> None:
    data = b"\x01\x02\x03\x04\x05"
    assert stm32_crc(data) == stm32_crc(data + b"\xff\xff\xff")
    assert stm32_crc(data) != stm32_crc(data + b"\x00\x00\x00")
    assert pad_to_words(data) == data + b"\xff\xff\xff"


def test_chaining_over_word_multiples() -> None:
    a, b = os.urandom(64), os.urandom(36)
    assert stm32_crc(b, stm32_crc(a)) == stm32_crc(a + b)
    assert zlib_crc(b, zlib_crc(a)) == zlib.crc32(a + b)


def test_two_mebibytes_is_fast_enough_to_use() -> None:
    # not a timing assertion: just that the big case runs and agrees with chaining
    data = os.urandom(2 << 20)
    half = 1 << 20
    assert stm32_crc(data) == stm32_crc(data[half:], stm32_crc(data[:half]))


def test_matches_srec_cat_stm32(tmp_path) -> None:
    srec_cat = require("srec_cat")
    for n in (4, 64, 1001, 4099):
        data = os.urandom(n)
        src = tmp_path / f"d{n}.bin"
        src.write_bytes(data)
        end = -(-n // 4) * 4
        out = tmp_path / f"o{n}.bin"
        # srec_cat ignores a partial last word: pad with 0xFF first, as our stm32_crc does
        run([
            srec_cat, str(src), "-binary",
            "-fill", "0xFF", "-within", str(src), "-binary", "-range-padding", "4",
            "-STM32", hex(end),
            "-o", str(out), "-binary",
        ])  # fmt: skip
        blob = out.read_bytes()
        assert blob[:n] == data
        assert int.from_bytes(blob[end : end + 4], "little") == stm32_crc(data)
