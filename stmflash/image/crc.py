"""The two CRC-32 flavours a firmware meets: zlib's and the STM32 CRC unit's.

The STM32 CRC unit (and the AN3155 Get Checksum command, which uses it) computes
CRC-32/MPEG-2 — polynomial 0x04C11DB7, not reflected, initial value 0xFFFFFFFF, no final
XOR — over 32-bit words fed most-significant bit first. Memory is little-endian, so the
word at ``addr`` is ``int.from_bytes(data[addr:addr+4], "little")``: in byte terms the
unit sees each group of four bytes in reverse order. A bitwise loop over a 2 MiB image
takes seconds in Python; instead we let zlib do the work: a non-reflected CRC equals the
bit-reversed reflected CRC of the bit-reversed input, and zlib's CRC-32 is exactly the
reflected CRC with the same polynomial.
"""

from __future__ import annotations

import zlib

__all__ = ["stm32_crc", "stm32_crc_bitwise", "zlib_crc", "pad_to_words"]

_MASK = 0xFFFFFFFF
# byte -> the byte with its 8 bits in reverse order
_REV8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _rev32(x: int) -> int:
    return int(f"{x & _MASK:032b}"[::-1], 2)


def zlib_crc(data: bytes, crc: int = 0) -> int:
    """CRC-32 as zlib, PNG, Ethernet and ``crc32`` commands compute it.

    ``crc`` continues a previous result, as :func:`zlib.crc32` does.
    """
    return zlib.crc32(data, crc) & _MASK


def pad_to_words(data: bytes, fill: int = 0xFF) -> bytes:
    """``data`` extended with ``fill`` to a multiple of 4 bytes (erased flash reads 0xFF)."""
    rem = len(data) % 4
    return bytes(data) + bytes([fill]) * (4 - rem) if rem else bytes(data)


def stm32_crc(data: bytes, init: int = 0xFFFFFFFF) -> int:
    """CRC-32/MPEG-2 over little-endian 32-bit words, as the STM32 CRC unit computes it.

    A length that is not a multiple of 4 is padded with 0xFF (what erased flash holds), so
    the result matches a Get Checksum over the rounded-up range of freshly erased flash.
    ``init`` continues a previous result when the previous data was a multiple of 4 bytes.
    """
    data = pad_to_words(data)
    # reverse the byte order inside every word: the unit reads the word MSB first
    swapped = bytearray(len(data))
    swapped[0::4] = data[3::4]
    swapped[1::4] = data[2::4]
    swapped[2::4] = data[1::4]
    swapped[3::4] = data[0::4]
    reflected_init = _rev32(init)
    # zlib.crc32(data, value) starts its register at ~value and returns ~register
    reg = zlib.crc32(bytes(swapped).translate(_REV8), reflected_init ^ _MASK) ^ _MASK
    return _rev32(reg)


def stm32_crc_bitwise(data: bytes, init: int = 0xFFFFFFFF) -> int:
    """The CRC unit's algorithm written out word by word, as in the reference manuals.

    Slow; kept as the readable definition that the fast :func:`stm32_crc` is tested against.
    """
    data = pad_to_words(data)
    crc = init & _MASK
    for i in range(0, len(data), 4):
        crc ^= int.from_bytes(data[i : i + 4], "little")
        for _ in range(32):
            crc = ((crc << 1) ^ 0x04C11DB7) & _MASK if crc & 0x80000000 else (crc << 1) & _MASK
    return crc


def crc16_ccitt(data: bytes, init: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR): the CRC-16
    most small bootloaders use; ``srec_cat -crc16-l-e ADDR -broken`` computes the same."""
    import binascii

    return binascii.crc_hqx(data, init)
