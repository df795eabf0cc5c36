"""The trigger frame: how a host asks a running application to reboot into the ROM.

An application that carries the firmware companion (``firmware/stmflash_boot``) watches
its UART / USB CDC receive path for this frame. The format exists so that stray traffic,
a terminal program or line noise cannot reboot a board into its bootloader by accident:

* the frame opens with the sync bytes ``B0 07`` (0xB0 is not 7-bit ASCII and 0x07 is BEL,
  so no typed text and no plain-ASCII protocol produces the pair);
* it carries a 32-bit nonce chosen by the host, so the acknowledgement of *this* request
  cannot be confused with an echo, a stale answer or the request itself;
* it ends with a CRC-32 over the command, the nonce **and an optional shared key**, so a
  random 11-byte window matches with probability 2**-32 * 2**-24, and a board built with
  a key only obeys hosts that know it (this is a guard against accidents, not security:
  the CRC is not a MAC).

Wire format (all multi-byte fields little-endian)::

    request  B0 07 | 01 | nonce[4] | crc32(01 || nonce || key)[4]     11 bytes
    ack      B0 07 | 81 | nonce[4] | crc32(81 || nonce || key)[4]     11 bytes

``crc32`` is the zlib/IEEE CRC-32 (reflected polynomial 0xEDB88320, init 0xFFFFFFFF,
final xor 0xFFFFFFFF), i.e. :func:`zlib.crc32`. The key is raw bytes (default empty) and is
never sent.

The receiver keeps a sliding window of the last 11 bytes and reports a trigger when the
window is a valid request; this resynchronises on any input (``B0 B0 07 ...``, a request
whose first bytes were the tail of garbage, a frame straight after a broken one) without
any state beyond the window. :class:`Matcher` mirrors the C matcher byte for byte; the
virtual chip's application mode uses it, and a test cross-checks both on random streams.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque

SYNC = b"\xb0\x07"
CMD_ENTER_BOOTLOADER = 0x01
ACK_FLAG = 0x80  # ack command = request command | ACK_FLAG
FRAME_LEN = 11

# Host-side defaults (the trigger command exposes them as options).
DEFAULT_APP_BAUD = 115200  # the application's own link; the ROM then wants 8E1 + autobaud
DEFAULT_APP_PARITY = "N"
DEFAULT_ACK_TIMEOUT_S = 1.0  # request sent -> ack seen
DEFAULT_RESET_SETTLE_S = 0.1  # ack seen -> ROM ready for 0x7F (reset + ROM start-up)

KeyLike = bytes | bytearray | str


def _key_bytes(key: KeyLike) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def check_value(cmd: int, nonce: int, key: KeyLike = b"") -> int:
    """CRC-32 over ``cmd || nonce(LE) || key``: the value both halves compute."""
    if not 0 <= cmd <= 0xFF:
        raise ValueError(f"command byte out of range: {cmd:#x}")
    if not 0 <= nonce <= 0xFFFFFFFF:
        raise ValueError(f"nonce must fit 32 bits: {nonce:#x}")
    return zlib.crc32(bytes([cmd]) + struct.pack("<I", nonce) + _key_bytes(key)) & 0xFFFFFFFF


def encode_frame(cmd: int, nonce: int, key: KeyLike = b"") -> bytes:
    """One frame of any command (requests and acks share the layout)."""
    return SYNC + bytes([cmd]) + struct.pack("<II", nonce, check_value(cmd, nonce, key))


def encode_request(nonce: int, key: KeyLike = b"") -> bytes:
    """The 'enter bootloader' request a host writes to the application's port."""
    return encode_frame(CMD_ENTER_BOOTLOADER, nonce, key)


def encode_ack(nonce: int, key: KeyLike = b"") -> bytes:
    """What the application answers before it resets (the virtual chip sends this too)."""
    return encode_frame(CMD_ENTER_BOOTLOADER | ACK_FLAG, nonce, key)


def decode_frame(frame: bytes, key: KeyLike = b"") -> tuple[int, int] | None:
    """``(cmd, nonce)`` of a well-formed 11-byte frame, else ``None``."""
    if len(frame) != FRAME_LEN or frame[:2] != SYNC:
        return None
    cmd = frame[2]
    nonce, check = struct.unpack("<II", bytes(frame[3:11]))
    if check != check_value(cmd, nonce, key):
        return None
    return cmd, nonce


def new_nonce() -> int:
    """A fresh random nonce, so an ack from an earlier attempt never counts."""
    return int.from_bytes(os.urandom(4), "little")


def find_ack(buffer: bytes, nonce: int, key: KeyLike = b"") -> bool:
    """True when ``buffer`` (everything read back from the app) holds the ack for ``nonce``.

    The app may echo the request or print text around the ack, so search rather than parse.
    """
    return encode_ack(nonce, key) in bytes(buffer)


class Matcher:
    """Byte-at-a-time request detector; the exact twin of ``stmflash_boot_feed`` in C.

    Semantics (shared with C): keep the last :data:`FRAME_LEN` bytes; after each byte, if
    the window holds a valid request (sync, command, check value with this key) report it,
    remember its nonce and empty the window, so one request triggers exactly once.
    """

    def __init__(self, key: KeyLike = b"", cmd: int = CMD_ENTER_BOOTLOADER) -> None:
        self.key = _key_bytes(key)
        self.cmd = cmd
        self.nonce: int | None = None  # nonce of the last request matched
        self._window: deque[int] = deque(maxlen=FRAME_LEN)

    def reset(self) -> None:
        self._window.clear()

    def feed(self, byte: int) -> bool:
        self._window.append(byte & 0xFF)
        w = self._window
        if len(w) < FRAME_LEN or w[0] != SYNC[0] or w[1] != SYNC[1] or w[2] != self.cmd:
            return False
        decoded = decode_frame(bytes(w), self.key)
        if decoded is None:
            return False
        self.nonce = decoded[1]
        w.clear()
        return True

    def feed_bytes(self, data: bytes) -> int:
        """Feed a chunk; the number of requests completed inside it."""
        return sum(self.feed(b) for b in data)
