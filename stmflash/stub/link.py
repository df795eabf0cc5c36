"""StubLink: the RAM flasher stub as one more :class:`~stmflash.link.Link`.

:func:`start` uploads the stub through an identified AN3155 session (Write Memory, each
block under the ROM's checksum), starts it with Go, waits for its READY frame, checks
HELLO, has the stub compute the CRC of its own RAM image and compares it with what was
sent before asking it for anything else (a garbled upload is reset, never used: this
costs one frame instead of reading the upload back at the ROM's rate), and raises the
line rate (``BAUD``, with a handshake at the new rate and a
fallback to the old one). The pipeline then drives the stub through the same few Link
operations as the ROM: ``write`` and ``erase`` return at once (frames in flight, bounded
by the stub's credits; errors surface at the next call that waits), ``read``,
``checksum`` and ``checksums`` wait for their answers. ``checksums`` is what the pipeline
uses for fast re-flash and verification: CRCs of many ranges in one pipelined batch.

Retransmission (see :mod:`stmflash.stub.protocol`): a NAK or a timeout of the oldest
request resends every unanswered frame from there; after ``retries`` timeouts in a row the
stub is taken for gone (the chip reset, the cable came out) and :class:`LinkError` ends
the run (exit 3) -- never a success that was not verified.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from stmflash.devices import Device, EraseUnit
from stmflash.errors import LinkError, ProtectionError, StmflashError
from stmflash.stub import GROUP_IDS, patched
from stmflash.stub import protocol as sp

DEFAULT_BAUDS = (2_000_000, 1_000_000, 921_600, 500_000, 460_800, 230_400)
MAX_BAUD_ERROR = 0.015  # divider rounding we accept on top of what the ROM link had
# The stub's main loop takes up to ~200 clock cycles per turn (receive a byte, send one,
# advance a flash job); a byte must not arrive faster (1-byte USART buffer): BRR >= 32
# keeps 11 bits x 32 = 352 cycles per byte. 16 MHz -> 500 kbaud, 8 MHz -> 250 kbaud.
MIN_BRR = 32

# flash controller error flags per group (bit -> name), for messages (reference manuals)
_FLAGS = {
    "f4": {1: "OPERR", 4: "WRPERR", 5: "PGAERR", 6: "PGPERR", 7: "PGSERR", 8: "RDERR"},
    "g0l4": {1: "OPERR", 3: "PROGERR", 4: "WRPERR", 5: "PGAERR", 6: "SIZERR", 7: "PGSERR",
             8: "MISERR", 9: "FASTERR", 14: "RDERR", 15: "OPTVERR"},
    "f1": {2: "PGERR", 4: "WRPRTERR"},
    # RM0377/RM0367/RM0038 FLASH_SR (CMSIS stm32l0xx.h / stm32l1xx.h); OPTVERRUSR is L1's,
    # NOTZEROERR and FWWERR L0's
    "l0l1": {8: "WRPERR", 9: "PGAERR", 10: "SIZERR", 11: "OPTVERR", 12: "OPTVERRUSR", 13: "RDERR",
             16: "NOTZEROERR", 17: "FWWERR"},
}
_FLAGS["f7"] = _FLAGS["f4"]
_WRP = {"WRPERR", "WRPRTERR"}


def set_baud(ser: Any, baud: int) -> None:
    """Change the port's rate. A Linux pty refuses PARENB after its first client (and
    ignores parity anyway): there the rate is set 8N1."""
    try:
        ser.baudrate = baud
    except Exception:
        if getattr(ser, "parity", "N") == "N":
            raise
        ser._parity = "N"
        ser.baudrate = baud


def _set_timeout(ser: Any, timeout: float) -> None:
    if hasattr(ser, "_timeout"):
        ser._timeout = timeout  # no reconfiguration of the port just for a read timeout
    else:
        ser.timeout = timeout


class StubError(StmflashError):
    """The stub reported a failure (flash controller error, bad request)."""


@dataclass
class _Pending:
    seq: int  # absolute sequence number
    cmd: int
    wire: bytes
    work_s: float  # how long the stub may need for it (erase/program/CRC), worst case
    sent: float = 0.0
    answer: sp.Answer | None = None


class StubSession:
    """Windowed request/answer exchange with the stub over an open serial port."""

    def __init__(self, ser: Any, *, baud: int, credits: int = 1, retries: int = 6,
                 log: Callable[[str], None] | None = None) -> None:
        self.ser = ser
        self.baud = baud
        self.credits = credits
        self.retries = retries
        self.log = log
        self.decoder = sp.Decoder()
        self._next = 0
        self._pending: list[_Pending] = []
        self._answers: dict[int, sp.Answer] = {}
        self._oldest_since = 0.0
        self._timeouts = 0
        self.resent = 0
        self.ready = False
        self.error: StmflashError | None = None

    # ---- timing ---------------------------------------------------------------------------
    def _wire(self, n: int) -> float:
        return n * 11 / self.baud

    def _deadline(self) -> float:
        head = self._pending[0]
        inflight = sum(len(p.wire) for p in self._pending) + 64 * len(self._pending)
        return self._oldest_since + head.work_s * 1.5 + self._wire(inflight) * 2 + 0.5

    # ---- sending ---------------------------------------------------------------------------
    def submit(self, cmd: int, payload: bytes = b"", *, work_s: float = 0.0) -> int:
        """Queue one request (waits for a free credit); returns its ticket."""
        while len(self._pending) >= self.credits:
            self._pump()
        seq = self._next
        self._next += 1
        p = _Pending(seq, cmd, sp.request(seq, cmd, payload), work_s)
        if not self._pending:
            self._oldest_since = time.monotonic()
        self._pending.append(p)
        self._send(p)
        return seq

    def _send(self, p: _Pending) -> None:
        p.sent = time.monotonic()
        self.ser.write(p.wire)

    def _resend_from(self, wire_seq: int) -> None:
        idx = next((i for i, p in enumerate(self._pending) if p.seq & 0xFF == wire_seq), None)
        if idx is None:
            return
        for p in self._pending[idx:]:
            if p.answer is None:
                self.resent += 1
                self._send(p)

    # ---- receiving ------------------------------------------------------------------------
    def _pump(self) -> None:
        if self.error is not None:
            raise self.error
        data = self.ser.read(max(1, getattr(self.ser, "in_waiting", 0) or 1))
        if data:
            for ans in self.decoder.feed(data):
                self._handle(ans)
        if self.error is not None:
            raise self.error
        if self._pending and time.monotonic() > self._deadline():
            self._timeouts += 1
            if self._timeouts > self.retries:
                head = self._pending[0]
                raise LinkError(
                    f"the stub stopped answering ({sp.COMMAND_NAMES.get(head.cmd, head.cmd)} "
                    f"#{head.seq}): the chip may have reset or the line failed"
                )
            if self.log:
                self.log(f"stub: no answer to #{self._pending[0].seq}, resending {len(self._pending)}")
            self._oldest_since = time.monotonic()
            self._resend_from(self._pending[0].seq & 0xFF)

    def _handle(self, ans: sp.Answer) -> None:
        if ans.kind == sp.READY:
            self.ready = True
            return
        now = time.monotonic()
        if ans.kind == sp.NAK:
            # the stub keeps frames that arrived after a gap: resend only the missing one,
            # once per its own wire time (several NAKs may name the same gap)
            p = next((p for p in self._pending if p.seq & 0xFF == ans.seq and p.answer is None), None)
            if p is not None and now - p.sent > self._wire(len(p.wire)) + 0.002:
                self.resent += 1
                self._send(p)
            return
        p = next((p for p in self._pending if p.seq & 0xFF == ans.seq and p.cmd == ans.kind), None)
        if p is None or p.answer is not None:
            return  # a repeated answer to something already done
        p.answer = ans
        # answers come in order: older ones without an answer were lost on the way back
        for q in self._pending:
            if q is p:
                break
            if q.answer is None and now - q.sent > self._wire(len(q.wire)) + 0.002:
                self.resent += 1
                self._send(q)
        while self._pending and self._pending[0].answer is not None:
            head = self._pending.pop(0)
            self._timeouts = 0
            self._oldest_since = now
            self._answers[head.seq] = head.answer
            if head.answer.status != sp.ST_OK and head.cmd in (sp.WRITE, sp.ERASE) and self.error is None:
                self.error = self._flash_error(head, head.answer)

    def _flash_error(self, req: _Pending, ans: sp.Answer) -> StmflashError:
        what = "erase" if req.cmd == sp.ERASE else "write"
        if ans.status == sp.ST_FLASH and len(ans.payload) >= 8:
            flags, addr = struct.unpack("<II", ans.payload[:8])
            group = next((g for g, i in GROUP_IDS.items() if i == getattr(self, "group_id", 0)), "")
            names = [n for b, n in _FLAGS.get(group, {}).items() if flags >> b & 1] or [f"0x{flags:X}"]
            msg = f"flash {what} failed at 0x{addr:08X}: controller reports {'+'.join(names)}"
            if set(names) & _WRP:
                # L0/L1 raise WRPERR for a locked controller too (RM0367 3.4.x): the stub
                # unlocks it first, so protection is what is left
                return ProtectionError(msg + " (write-protected: remove the protection first)")
            return StubError(msg)
        return StubError(f"the stub refused a {what} (status {ans.status})")

    def wait(self, ticket: int) -> sp.Answer:
        while ticket not in self._answers:
            self._pump()
        return self._answers.pop(ticket)

    def drain(self) -> None:
        while self._pending:
            self._pump()
        if self.error is not None:
            raise self.error
        self._answers.clear()

    def call(self, cmd: int, payload: bytes = b"", *, work_s: float = 0.0) -> sp.Answer:
        ans = self.wait(self.submit(cmd, payload, work_s=work_s))
        if ans.status != sp.ST_OK:
            raise StubError(f"the stub refused {sp.COMMAND_NAMES.get(cmd, cmd)} (status {ans.status})")
        return ans


class StubLink:
    """A running stub presented as a :class:`~stmflash.link.Link` (see module docstring)."""

    max_read = sp.MAX_DATA
    max_write = sp.MAX_DATA

    def __init__(self, rom_link: Any, session: StubSession, hello: sp.Hello) -> None:
        self.rom = rom_link
        self.session = session
        self.hello = hello
        self.device: Device = rom_link.device
        self.uid = rom_link.uid
        self.unit = hello.unit
        self.left = False
        self.baud = session.baud

    # ---- Link -----------------------------------------------------------------------------
    def _program_s(self, n: int) -> float:
        return self.device.program_time_ms(n)[1] / 1000.0

    def _crc_s(self, n: int) -> float:
        return n / 4 * 200 / max(self.hello.clock, 1_000_000)  # ~200 cycles per word

    def read(self, address: int, length: int, progress: Callable[[int], None] | None = None) -> bytes:
        tickets = []
        for off in range(0, length, self.max_read):
            n = min(self.max_read, length - off)
            tickets.append((n, self.session.submit(sp.READ, struct.pack("<II", address + off, n))))
        out = bytearray()
        for n, t in tickets:
            ans = self.session.wait(t)
            if ans.status != sp.ST_OK or len(ans.payload) != n:
                raise StubError(f"read at 0x{address + len(out):08X} failed (status {ans.status})")
            out += ans.payload
            if progress:
                progress(n)
        return bytes(out)

    def write(self, address: int, data: bytes) -> None:
        if len(data) > self.max_write:
            raise ValueError(f"write of {len(data)} bytes exceeds {self.max_write}")
        pad = -len(data) % self.unit
        if address % self.unit:
            raise ValueError(f"write at 0x{address:08X} is not aligned to the {self.unit}-byte program unit")
        data = bytes(data) + self.device.erased_bytes * pad  # reads as the unwritten rest
        self.session.submit(sp.WRITE, struct.pack("<I", address) + data, work_s=self._program_s(len(data)))

    def erase(self, units: Sequence[EraseUnit]) -> None:
        for u in units:
            work = self.device.unit_erase_ms(u)[1] / 1000.0
            self.session.submit(sp.ERASE, struct.pack("<II", u.address, u.index), work_s=work)

    def mass_erase(self) -> None:
        self.erase(self.device.erase_units)

    def checksums(self, ranges: Sequence[tuple[int, int]]) -> list[int]:
        """On-chip CRCs (``stm32_crc`` convention) of many ranges, pipelined."""
        tickets = [self.session.submit(sp.CRC, struct.pack("<II", a, n), work_s=self._crc_s(n))
                   for a, n in ranges]
        out = []
        for t in tickets:
            ans = self.session.wait(t)
            if ans.status != sp.ST_OK:
                raise StubError(f"the stub refused a CRC (status {ans.status})")
            out.append(struct.unpack("<I", ans.payload[:4])[0])
        self.session.drain()
        return out

    def checksum(self, address: int, length: int) -> int | None:
        if address % 4 or length % 4:
            return None
        return self.checksums([(address, length)])[0]

    def flush(self) -> None:
        """Wait until every queued write/erase is done (raises its error)."""
        self.session.drain()

    def start(self, address: int) -> None:
        self._leave(sp.LEAVE_GO, address)

    def reset(self) -> None:
        self._leave(sp.LEAVE_RESET)

    def leave_to_rom(self, *, sync: bool = True) -> None:
        """Jump back into the ROM bootloader (``--after stay``); ``sync``: talk to it again
        (the ROM restarts and waits for 0x7F, as after a reset)."""
        self._leave(sp.LEAVE_ROM)
        if sync:
            self.rom.bl.drain()
            self.rom.bl.sync()

    def _leave(self, mode: int, address: int = 0) -> None:
        self.session.drain()
        self.session.call(sp.LEAVE, struct.pack("<BI", mode, address))
        # the answer is out; the stub acts once it has left the wire
        time.sleep(self.session._wire(16))
        self.left = True
        if self.session.ser.baudrate != self.rom_baud:
            set_baud(self.session.ser, self.rom_baud)

    @property
    def rom_baud(self) -> int:
        return int(getattr(self, "_rom_baud", 115200))

    @property
    def port_name(self) -> str:
        return str(self.rom.port_name)

    def close(self) -> None:
        self.rom.close()


def _upload(rom_link: Any, device: Device, rom_baud: int, binary: bytes | None = None) -> Any:
    img = patched(device, rom_baud, binary)
    bl = rom_link.bl
    for off in range(0, len(img.data), 256):
        bl.write_memory(img.load + off, img.data[off : off + 256])
    bl.go(img.load)
    return img


def start(
    rom_link: Any,
    *,
    baud: int | None = None,
    rom_baud: int = 115200,
    retries: int = 6,
    log: Callable[[str], None] | None = None,
    binary: bytes | None = None,
) -> StubLink:
    """Upload and start the stub on an identified ROM session; see module docstring.

    ``baud``: the stub's line rate (None: the highest of :data:`DEFAULT_BAUDS` that the
    port and the chip's clock take (:data:`MIN_BRR`), tried with a handshake, falling back
    down the list).
    """
    device = rom_link.device
    img = _upload(rom_link, device, rom_baud, binary)
    group_id = GROUP_IDS[img.group]
    ser = rom_link.bl.ser
    session = StubSession(ser, baud=rom_baud, credits=1, retries=retries, log=log)
    session.group_id = group_id  # type: ignore[attr-defined]
    t0 = time.monotonic()
    _set_timeout(ser, 0.02)
    while not session.ready and time.monotonic() - t0 < 0.3:
        session._pump()
    hello = sp.Hello.parse(session.call(sp.HELLO).payload)
    if hello.version != sp.VERSION or hello.group != group_id:
        raise StubError(f"unexpected stub (version {hello.version}, group {hello.group})")
    session.credits = max(1, min(hello.credits, sp.MAX_CREDITS))
    link = StubLink(rom_link, session, hello)
    from stmflash.image.crc import stm32_crc

    n = len(img.data) & ~3
    if link.checksum(img.load, n) != stm32_crc(img.data[:n]):
        try:
            link.reset()
        finally:
            raise LinkError("the stub in RAM differs from what was uploaded (line noise): reset, not used")
    link._rom_baud = rom_baud  # type: ignore[attr-defined]
    candidates = [baud] if baud else [b for b in DEFAULT_BAUDS if b > rom_baud]
    for rate in candidates:
        if _try_baud(link, rate, rom_baud, log):
            break
    link.baud = session.baud
    return link


def _try_baud(link: StubLink, rate: int, rom_baud: int, log: Callable[[str], None] | None) -> bool:
    """Ask the stub for ``rate``; True when both ends talk at it afterwards."""
    clock = link.hello.clock
    brr = round(clock / rate)
    if brr < MIN_BRR or abs(clock / brr - rate) / rate > MAX_BAUD_ERROR:
        return False
    session = link.session
    ser = session.ser
    try:
        set_baud(ser, rate)  # the adapter must take it (pyserial raises otherwise)
    except Exception as exc:
        if log:
            log(f"stub: the port refuses {rate} baud ({exc})")
        return False
    set_baud(ser, session.baud)
    ans = session.wait(session.submit(sp.BAUD, struct.pack("<I", rate)))
    if ans.status != sp.ST_OK:
        return False
    actual, brr, _clk = struct.unpack("<III", ans.payload[:12])
    time.sleep(session._wire(32))  # the answer left; the stub switches when the line is idle
    set_baud(ser, rate)
    old = session.baud
    session.baud = rate
    t = session.submit(sp.HELLO)
    saved, session.retries = session.retries, 2
    try:
        hello = sp.Hello.parse(session.wait(t).payload)
        if hello.brr != brr:
            # answered, but at the old divider: the stub went back (an adapter that only
            # pretended to switch); the line runs at the old rate
            set_baud(ser, old)
            session.baud = old
            if log:
                log(f"stub: {rate} baud did not work, staying at {old}")
            return False
        link.baud_error = (actual - rate) / rate  # type: ignore[attr-defined]
        if log:
            log(f"stub: {rate} baud (chip {actual}, {100 * (actual - rate) / rate:+.2f}%)")
        return True
    except LinkError:
        pass
    finally:
        session.retries = saved
    # back to the old rate (the stub reverts by itself on the garbage it saw); the same
    # HELLO frame is resent there
    set_baud(ser, old)
    session.baud = old
    session._timeouts = 0
    session._oldest_since = time.monotonic()
    session._resend_from(t & 0xFF)
    session.wait(t)
    if log:
        log(f"stub: {rate} baud did not work, staying at {old}")
    return False
