"""The stub protocol: what the host and the RAM flasher stub (``firmware/stub``) say.

Why a stub at all: AN3155 costs three turnarounds per 256-byte block, runs at a rate the
ROM's autobaud can follow and verifies by reading everything back. The stub, uploaded
with Write Memory and started with Go, streams at a higher rate with several frames in
flight and checks flash with an on-chip CRC (the model is esptool's ESP32 stub).

Framing (both directions): SLIP (RFC 1055: ``0xC0`` ends a frame, ``0xDB 0xDC`` / ``0xDB
0xDD`` escape 0xC0 / 0xDB), so a lost or garbled byte costs one frame and the next 0xC0
resynchronises; no timers are needed in the stub. A frame's body is::

    request   seq:u8  cmd:u8         payload...  crc:u32 (big-endian)
    response  seq:u8  cmd|0x80:u8  status:u8  payload...  crc:u32 (big-endian)

``crc`` is CRC-32/MPEG-2 (polynomial 0x04C11DB7, MSB first, init 0xFFFFFFFF, no final XOR:
the STM32 CRC unit's algorithm, one table in the stub) over the bytes before it; sent
big-endian, a whole frame then leaves the CRC register at 0. Integers in payloads are
little-endian.

Flow control and retransmission: the host numbers requests ``seq`` = 0, 1, 2 ... (mod 256)
and keeps up to ``credits`` unanswered (the stub's frame buffers, announced in HELLO; at
most 8), so there is no turnaround per block. The stub executes requests strictly in seq
order and answers each exactly once, in order. Losses are repaired selectively: a frame
that arrives after a gap is kept, and the gap (like a frame with a bad CRC) earns a NAK
carrying the first missing ``seq``, which the host resends alone; a repeated request whose
answer was lost gets that answer again (never a second execution: flash writes are not
idempotent); an answer that arrives while older ones are missing makes the host repeat
those older requests at once; a host timeout of the oldest request resends everything
unanswered. Special frames from the stub: ``READY`` (type 0x70, sent once at start) and
``NAK`` (0x7F), both with ``seq`` = the first seq not received.

Commands (payload -> answer payload):

==========  ============================================  ==================================
HELLO 0x01  -                                             version u8, group u8, credits u8,
                                                          program unit u8, USART base u32,
                                                          clock u32 (BRR x ROM baud),
                                                          BRR now u32
ERASE 0x02  unit address u32, unit index u32              -
WRITE 0x03  address u32, data (<= 1024, program units)    -
READ  0x04  address u32, length u32 (<= 1024)             the bytes (read from memory)
CRC   0x05  address u32, length u32 (multiples of 4)      CRC u32 (``stm32_crc`` convention)
BAUD  0x06  baud u32                                      actual baud u32, BRR u32, clock u32
LEAVE 0x07  mode u8 (0 reset, 1 ROM, 2 go), address u32   -
==========  ============================================  ==================================

Status: 0 ok, 1 flash error (payload: the controller's error flags u32 and the address
u32), 2 bad arguments (BAUD: payload is the highest rate, clock/16), 3 unknown command.
BAUD and LEAVE act once their answer is on the wire (transmission complete); after BAUD
the stub reverts to the old rate by itself when the first frames at the new rate arrive
garbled (framing/noise errors), and the host falls back too when HELLO at the new rate
goes unanswered. The clock is the one the ROM left (``BRR x ROM baud``): whatever error
the ROM's autobaud accepted at 115200 carries over unchanged, only the new divider's
rounding is added (the host reports it).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

SLIP_END, SLIP_ESC, SLIP_ESC_END, SLIP_ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD

HELLO, ERASE, WRITE, READ, CRC, BAUD, LEAVE = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
READY, NAK = 0x70, 0x7F
COMMAND_NAMES = {HELLO: "HELLO", ERASE: "ERASE", WRITE: "WRITE", READ: "READ", CRC: "CRC",
                 BAUD: "BAUD", LEAVE: "LEAVE"}

ST_OK, ST_FLASH, ST_ARGS, ST_CMD = 0, 1, 2, 3
LEAVE_RESET, LEAVE_ROM, LEAVE_GO = 0, 1, 2

MAX_DATA = 1024
MAX_CREDITS = 8
VERSION = 1

_MASK = 0xFFFFFFFF
_REV8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _rev32(x: int) -> int:
    return int(f"{x & _MASK:032b}"[::-1], 2)


def crc_mpeg2(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """CRC-32/MPEG-2 over bytes in order (zlib's reflected CRC on bit-reversed input)."""
    reg = zlib.crc32(bytes(data).translate(_REV8), _rev32(crc) ^ _MASK) ^ _MASK
    return _rev32(reg)


def slip_encode(body: bytes) -> bytes:
    esc = body.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + esc + b"\xc0"


def frame(body: bytes) -> bytes:
    """A complete wire frame: body + its CRC, SLIP-encoded."""
    return slip_encode(body + struct.pack(">I", crc_mpeg2(body)))


def request(seq: int, cmd: int, payload: bytes = b"") -> bytes:
    return frame(bytes([seq & 0xFF, cmd]) + payload)


@dataclass(frozen=True)
class Answer:
    """One frame from the stub (a response, READY or NAK)."""

    seq: int
    kind: int  # the command answered, or READY / NAK
    status: int
    payload: bytes


class Decoder:
    """SLIP bytes in, checked :class:`Answer` objects out (garbled frames are counted)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._esc = False
        self._bad = False
        self.garbled = 0

    def feed(self, data: bytes) -> list[Answer]:
        out: list[Answer] = []
        for b in data:
            if b == SLIP_END:
                if self._buf or self._bad:
                    ans = self._finish()
                    if ans is not None:
                        out.append(ans)
                self._buf.clear()
                self._esc = self._bad = False
            elif self._esc:
                self._esc = False
                if b == SLIP_ESC_END:
                    self._buf.append(SLIP_END)
                elif b == SLIP_ESC_ESC:
                    self._buf.append(SLIP_ESC)
                else:
                    self._bad = True
            elif b == SLIP_ESC:
                self._esc = True
            else:
                self._buf.append(b)
        return out

    def _finish(self) -> Answer | None:
        body = bytes(self._buf)
        if self._bad or len(body) < 7 or crc_mpeg2(body) != 0:
            self.garbled += 1
            return None
        seq, kind, status = body[0], body[1], body[2]
        if kind in (READY, NAK):
            return Answer(seq, kind, status, b"")
        if not kind & 0x80:
            self.garbled += 1
            return None
        return Answer(seq, kind & 0x7F, status, body[3:-4])


@dataclass(frozen=True)
class Hello:
    version: int
    group: int
    credits: int
    unit: int
    usart: int
    clock: int
    brr: int

    @classmethod
    def parse(cls, payload: bytes) -> Hello:
        v, g, c, u, usart, clock, brr = struct.unpack("<BBBBIII", payload[:16])
        return cls(v, g, c, u, usart, clock, brr)
