"""An AN3155 client session: sync, identify and every ROM command, robust to a noisy line.

Design choices (each fixes something stm32flash or stm32loader gets wrong in practice;
the protocol is ST's AN3155):

* Sync accepts ACK, NACK (already synced) and a stray 0x00 before the ACK; a timeout is
  followed by a second 0x7F that an already-synced chip NACKs; repeated silence waits
  longer (start-up delays range from 0.1 ms to 2.6 s) and finally runs a general resync.
* Every command runs as one *transaction* that is retried after a timeout, a garbled
  answer or a NACK (a NACK is also what a corrupted checksum earns): the link is drained,
  re-synchronised (``0xFF 0x00`` pairs, in growing bursts, until a clean NACK), and the
  command is sent again. A Write Memory retry first reads the block back, so a write
  whose ACK was lost is not programmed twice.
* Pipelining, measured on the realistic simulator and kept *safe*: a Read Memory frame
  (command, address, length) and the command+address head of a Write Memory go out as one
  ``write()`` instead of waiting for each ACK (AN3155 asks the host to wait; a ROM that
  polls a one-byte receive register could lose bytes sent early). It saves two
  turnarounds per read and one per write (F4, 256 KiB, write+verify: 65.6 s instead of
  ~69 s). It is only done when no byte pair of the frame could be taken for a
  state-changing command if the ROM dropped bytes (see ``_harmless``); Write Memory data
  is never sent before both ACKs; the first failure of a pipelined frame switches the
  session to waiting for every ACK (``pipeline=False``, CLI ``--no-pipeline``).
* Identification believes nothing it heard once: Get, Get Version, Get ID and the Read
  Memory of the bootloader ID, flash-size register and UID are repeated until two answers
  agree, and the flash size must be plausible for the PID (device table). One flipped bit
  in an unchecked Get ID answer once made an F407 an L053 whose "pages 0-9" were erased as
  sectors 0-9; now such a chip is never erased (:class:`~stmflash.errors.IdentityError`).
* Timeouts scale with the work: wire time of the answer at the port's baud rate, the
  device table's maximum programming and erase times, with a margin.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from stmflash.an3155 import (  # noqa: F401  (re-exported for callers of this module)
    ACK,
    BANK1_ERASE,
    BANK2_ERASE,
    COMMAND_NAMES,
    CRC_INIT,
    CRC_POLY,
    ERASE,
    EXT_ERASE,
    GET,
    GET_CHECKSUM,
    GET_ID,
    GET_VERSION,
    GO,
    MASS_ERASE,
    NACK,
    READ,
    READOUT_PROTECT,
    READOUT_UNPROTECT,
    SYNC,
    WRITE,
    WRITE_PROTECT,
    WRITE_UNPROTECT,
)
from stmflash.devices import Device, lookup
from stmflash.errors import (
    IdentityError,
    LinkError,
    NackError,
    ProtectionError,
    TimeoutError_,
    UsageError,
)

MAX_BLOCK = 256
MAX_PAGES_LEGACY = 255  # 0x43: N-1 in one byte, 0xFF means global erase
MAX_PAGES_EXTENDED = 511  # 0x44: L152 limit 512, L082 511 (stm32flash)

# Sync: per-attempt answer timeouts; the total covers the slowest ROM start-up (2.6 s).
SYNC_TIMEOUTS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.2, 1.6)

T = TypeVar("T")


class _Nack(Exception):
    """The chip answered NACK (internal: becomes a retry or a NackError/ProtectionError)."""

    def __init__(self, phase: str) -> None:
        super().__init__(phase)
        self.phase = phase


class _Garbled(Exception):
    """The chip answered something that is neither ACK nor NACK."""


def xor(data: bytes | Sequence[int]) -> int:
    x = 0
    for b in data:
        x ^= b
    return x


def cmd_name(code: int) -> str:
    return f"{COMMAND_NAMES.get(code, 'command')} (0x{code:02X})"


def plausible_flash_size(device: Device, size: int) -> bool:
    """A flash-size register value the device table allows for this product ID: not more
    than the table's size, at least one erase unit, and ending on an erase-unit boundary."""
    if not 0 < size <= device.flash_size:
        return False
    ends = {u.end - device.flash_start for u in device.erase_units}
    return size in ends


@dataclass
class ChipInfo:
    """What identification found; printed by ``stmflash uart PORT``."""

    protocol: int
    commands: tuple[int, ...]
    version: int
    pid: int
    bl_id: int | None = None
    flash_size: int | None = None
    uid: bytes | None = None
    read_protected: bool = False
    device: Device | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = self.device
        return {
            "device": d.name if d else None,
            "pid": f"0x{self.pid:03X}",
            "bootloader_id": None if self.bl_id is None else f"0x{self.bl_id:02X}",
            "protocol": f"{self.protocol >> 4}.{self.protocol & 0xF}",
            "commands": [f"0x{c:02X}" for c in self.commands],
            "flash_start": f"0x{d.flash_start:08X}" if d else None,
            "flash_size": d.flash_size if d else self.flash_size,
            "uid": self.uid.hex().upper() if self.uid else None,
            "read_protected": self.read_protected,
            "notes": list(self.notes),
        }


class Bootloader:
    """One AN3155 session over an open pyserial port (device, ``sim://``, ``rfc2217://``...).

    ``timeout`` is the base wait for an ACK; answers that carry data or follow flash work
    get the wire time and the device's worst-case operation time on top.
    """

    def __init__(
        self,
        ser: Any,
        *,
        name: str | None = None,
        retries: int = 6,
        timeout: float = 0.3,
        sync_timeouts: Sequence[float] = SYNC_TIMEOUTS,
        log: Callable[[str], None] | None = None,
        pipeline: bool = True,
    ) -> None:
        self.ser = ser
        self.name = name or str(getattr(ser, "name", None) or getattr(ser, "port", "the port"))
        self.retries = retries
        self.timeout = timeout
        self.sync_timeouts = tuple(sync_timeouts)
        self.log = log or (lambda msg: None)
        self.commands: tuple[int, ...] = ()
        self.protocol = 0
        self.device: Device | None = None
        self.info: ChipInfo | None = None
        self.retried = 0  # transactions that needed a retry (reported, tested)
        # frame size for reads/writes: halved while the line garbles frames (a lost byte
        # costs a whole frame), grown back after a run of clean transactions
        self.block = MAX_BLOCK
        self._clean = 0
        # send a frame's phases back to back (see _harmless); off after the first failure
        self.pipeline = pipeline
        baud = getattr(ser, "baudrate", 115200) or 115200
        self._byte_s = 11.0 / baud

    # ---- bytes on the wire --------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        try:
            self.ser.write(data)
        except Exception as exc:  # serial.SerialException, OSError: the adapter went away
            raise LinkError(f"cannot write to {self.name}: {exc}") from None

    def _set_timeout(self, timeout: float) -> None:
        # pyserial's ``timeout`` setter re-applies every termios setting (one tcsetattr per
        # change, and EINVAL on a pty that refuses PARENB); its read() only consults
        # ``_timeout``, so set that directly when it exists.
        if hasattr(self.ser, "_timeout"):
            self.ser._timeout = timeout
        elif self.ser.timeout != timeout:
            self.ser.timeout = timeout

    def _recv(self, n: int, timeout: float, what: str) -> bytes:
        self._set_timeout(timeout)
        try:
            data = self.ser.read(n)
        except Exception as exc:
            raise LinkError(f"cannot read from {self.name}: {exc}") from None
        if len(data) < n:
            raise TimeoutError_(f"no answer from the chip on {self.name} {what}")
        return bytes(data)

    def _wire(self, n: int) -> float:
        return n * self._byte_s * 1.5

    def _ack(self, what: str, timeout: float | None = None, phase: str = "") -> None:
        t = self.timeout if timeout is None else timeout
        b = self._recv(1, t, what)[0]
        if b == 0x00:  # stray zero some adapters/ROMs emit (stm32flash issue #3)
            b = self._recv(1, t, what)[0]
        if b == ACK:
            return
        if b == NACK:
            raise _Nack(phase or what)
        raise _Garbled(f"unexpected byte 0x{b:02X} from the chip on {self.name} {what}")

    def drain(self, quiet: float = 0.02) -> bytes:
        """Discard whatever the chip is still sending (a second NACK, a stale answer)."""
        got = bytearray()
        try:
            self.ser.reset_input_buffer()
            self._set_timeout(quiet)
            for _ in range(64):
                chunk = self.ser.read(4096)
                if not chunk:
                    break
                got += chunk
        except Exception as exc:
            raise LinkError(f"cannot read from {self.name}: {exc}") from None
        return bytes(got)

    def _command(self, code: int, what: str) -> None:
        self._send(bytes([code, code ^ 0xFF]))
        self._ack(what, phase="command")

    @staticmethod
    def _addr_bytes(address: int) -> bytes:
        raw = address.to_bytes(4, "big")
        return raw + bytes([xor(raw)])

    # ---- sync -----------------------------------------------------------------------------
    def sync(self) -> None:
        """Bring the chip's bootloader and us into step (see module docstring)."""
        for i, t in enumerate(self.sync_timeouts):
            self.drain(0.0 if i == 0 else 0.01)
            self._send(bytes([SYNC]))
            try:
                b = self._recv(1, t, "to 0x7F")[0]
                if b == 0x00:
                    b = self._recv(1, t, "to 0x7F")[0]
            except TimeoutError_:
                # maybe already synced: the 0x7F was taken as a command byte; a second one
                # completes an invalid command pair and earns a NACK
                self._send(bytes([SYNC]))
                try:
                    b = self._recv(1, t, "to 0x7F")[0]
                    if b == 0x00:
                        b = self._recv(1, t, "to 0x7F")[0]
                except TimeoutError_:
                    if i >= 2 and i % 2 == 0:
                        # perhaps stuck inside a data phase: push it to its end
                        if self._resync(max_bytes=600):
                            return
                    continue
            if b in (ACK, NACK):
                if b == NACK:
                    self.log("chip was already synchronised (NACK to 0x7F)")
                self.drain(0.0)
                return
            self.log(f"unexpected 0x{b:02X} while syncing")
        raise LinkError(
            f"no answer from the chip on {self.name} to 0x7F (is it in its bootloader — BOOT0 "
            "high and reset, not running its application after a Go — and RX/TX crossed? "
            "try --enter pins:... or --enter command, a lower --baud, or --parity)"
        )

    def _resync(self, max_bytes: int = 1200) -> bool:
        """General resync: feed 0xFF bytes until the chip answers NACK.

        0xFF never completes a valid command (0xFF 0xFF fails the complement check), ends
        every data phase with a bad checksum, and cannot fall out of step the way
        ``0xFF 0x00`` pairs do (a shifted pair is ``0x00 0xFF``: a valid Get). The first
        NACK means the chip just returned to waiting for a command.
        """
        sent = 0
        misses = 0
        bursts = 0
        probe = min(self.timeout, 0.1) + self._wire(4)
        while sent < max_bytes:
            self._send(b"\xff")
            sent += 1
            try:
                b = self._recv(1, probe, "during resync")[0]
            except TimeoutError_:
                misses += 1
                if misses >= 2:
                    # two silent single bytes: inside a data phase. Fill it quickly, then
                    # step one byte at a time again (the burst leaves the phase unknown)
                    bursts += 1
                    burst = min(64 * bursts, 300)
                    self._send(b"\xff" * burst)
                    sent += burst
                    self.drain(max(0.03, self._wire(burst) + 0.02))
                    misses = 0
                continue
            if b == NACK:
                self.drain(0.02)  # a second NACK (RDP parts) or the tail of a burst
                return True
            self.drain(0.02)
        return False

    def recover(self, what: str) -> None:
        """After a confused exchange: drain, resync, or fail naming the operation."""
        self.drain(0.02)
        if self._resync():
            return
        raise LinkError(f"no answer from the chip on {self.name} after sync ({what})")

    # ---- transactions ----------------------------------------------------------------------
    def transaction(
        self,
        code: int,
        fn: Callable[[], T],
        *,
        address: int | None = None,
        on_retry: Callable[[], T | None] | None = None,
        retries: int | None = None,
    ) -> T:
        """Run one command exchange with retries; ``on_retry`` may find it already done."""
        where = f" at 0x{address:08X}" if address is not None else ""
        what = f"while running {cmd_name(code)}{where}"
        n = self.retries if retries is None else retries
        nacks: list[str] = []
        for attempt in range(n + 1):
            if attempt:
                self.retried += 1
                if on_retry is not None:
                    done = on_retry()
                    if done is not None:
                        return done
            try:
                result = fn()
                self._clean += 1
                if self._clean >= 32 and self.block < MAX_BLOCK:
                    self.block *= 2
                    self._clean = 0
                return result
            except _Nack as exc:
                nacks.append(exc.phase)
                if exc.phase != "command":
                    # a refused checksum is usually a garbled frame: use shorter frames
                    self._clean = 0
                    self.block = max(32, self.block // 2)
                # a NACK can also mean we are out of step by one byte: realign before retrying
                self.drain(0.01)
                if not self._resync():
                    raise LinkError(f"no answer from the chip on {self.name} after sync ({what})") from None
            except (TimeoutError_, _Garbled) as exc:
                self.log(f"{exc}; resyncing")
                self._clean = 0
                self.block = max(32, self.block // 2)
                if attempt == n:
                    raise TimeoutError_(f"no answer from the chip on {self.name} after sync ({what})") from None
                self.recover(what)
        self._explain_nack(code, address, nacks)
        raise AssertionError("unreachable")  # pragma: no cover

    def _explain_nack(self, code: int, address: int | None, phases: list[str]) -> None:
        where = f" at 0x{address:08X}" if address is not None else ""
        if code in (READ, WRITE, GO, ERASE, EXT_ERASE, GET_CHECKSUM, WRITE_PROTECT, WRITE_UNPROTECT,
                    READOUT_PROTECT) and all(p == "command" for p in phases):
            if self.probe_read_protected() and self._reprobe_read_protected():
                raise ProtectionError(
                    f"the chip on {self.name} is read-protected (RDP level 1): it refuses "
                    f"{cmd_name(code)}; run with --unprotect to remove the protection "
                    "(this mass-erases the flash)"
                )
        phase = phases[-1] if phases else "command"
        raise NackError(f"the chip refused {cmd_name(code)}{where} (NACK after the {phase})")

    def _reprobe_read_protected(self) -> bool:
        """The second look before "read-protected" is reported: on a resynced link."""
        try:
            self.recover("while confirming readout protection")
        except LinkError:
            return False
        return self.probe_read_protected()

    def probe_read_protected(self) -> bool:
        """True when Read Memory itself is refused (RDP level 1), six times in a row (a
        noisy line or a spurious NACK must not pass for protection)."""
        if self.commands and READ not in self.commands:
            return False
        for _ in range(6):
            try:
                self._command(READ, "to Read Memory")
            except _Nack:
                self.drain(0.01)
                self.recover("while probing readout protection")
                continue
            except (TimeoutError_, _Garbled):
                self.recover("while probing readout protection")
                continue
            # accepted: abandon it cleanly with a bad address checksum (earns a NACK)
            self._send(b"\x00\x00\x00\x00\xff")
            self.drain(0.02)
            return False
        return True

    # ---- identification ------------------------------------------------------------------------
    def get(self) -> tuple[int, tuple[int, ...]]:
        def op() -> tuple[int, tuple[int, ...]]:
            self._command(GET, "to Get")
            n = self._recv(1, self.timeout, "to Get")[0]
            raw = self._recv(n + 1, self.timeout + self._wire(n + 1), "to Get")
            self._ack("after Get")
            return raw[0], tuple(raw[1:])

        self.protocol, self.commands = self.transaction(GET, op)
        return self.protocol, self.commands

    def get_version(self) -> int:
        def op() -> int:
            self._command(GET_VERSION, "to Get Version")
            raw = self._recv(3, self.timeout, "to Get Version")
            self._ack("after Get Version")
            return raw[0]

        return self.transaction(GET_VERSION, op)

    def get_id(self) -> int:
        def op() -> int:
            self._command(GET_ID, "to Get ID")
            n = self._recv(1, self.timeout, "to Get ID")[0]
            raw = self._recv(n + 1, self.timeout, "to Get ID")
            self._ack("after Get ID")
            return int.from_bytes(raw[-2:], "big")

        return self.transaction(GET_ID, op)

    def _confirmed(self, what: str, read: Callable[[], T], tries: int = 6) -> T:
        """``read()`` repeated until two answers agree.

        Get, Get Version, Get ID and Read Memory answers carry no checksum: one flipped bit
        turns an F407 into an L053 whose "pages 0-9" are then sent as F4 sector numbers. A
        value is believed only when a second, independent answer says the same.
        """
        seen: list[T] = []
        for _ in range(tries):
            got = read()
            if got in seen:
                return got
            seen.append(got)
        raise IdentityError(
            f"the chip on {self.name} could not be identified reliably: {len(seen)} answers to "
            f"{what} all differ (line noise? try a lower --baud); nothing was erased or written"
        )

    def _confirmed_read(self, address: int, n: int) -> bytes | None:
        """Read Memory confirmed by a second identical read; None when the ROM refuses it."""
        try:
            return self._confirmed(f"Read Memory at 0x{address:08X}", lambda: self.read_memory(address, n))
        except NackError:
            return None

    def identify(self) -> ChipInfo:
        """Get, Get Version, Get ID, BL ID byte, flash-size register, UID; device lookup.

        Every answer is confirmed by a second identical one (see :meth:`_confirmed`) and the
        flash size must be plausible for the product ID (:func:`plausible_flash_size`): a
        chip whose identity cannot be confirmed raises :class:`IdentityError` before
        anything is erased.
        """
        import warnings

        protocol, commands = self._confirmed("Get", self.get)
        self.protocol, self.commands = protocol, commands
        version = self._confirmed("Get Version", self.get_version)
        pid = self._confirmed("Get ID", self.get_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base = lookup(pid)
        info = ChipInfo(protocol=protocol, commands=commands, version=version, pid=pid)
        if base.generic:
            info.notes.append(f"PID 0x{pid:03X} is not in the device table: generic profile")
        protected = READ in commands and self.probe_read_protected()
        if protected:
            # a diagnosis is confirmed before it is reported: probe again on a resynced link
            protected = self._reprobe_read_protected()
        info.read_protected = protected
        device = base
        if not protected:
            if base.bl_id_address is not None:
                raw = self._confirmed_read(base.bl_id_address, 1)
                if raw is not None:
                    info.bl_id = raw[0]
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        device = lookup(pid, info.bl_id)
            if device.flash_size_reg is not None:
                raw = self._confirmed_read(device.flash_size_reg, 2)
                if raw is not None:
                    kib = int.from_bytes(raw, "little")
                    if 0 < kib < 0xFFFF:
                        size = kib * 1024
                        if not device.generic and not plausible_flash_size(device, size):
                            raise IdentityError(
                                f"the chip on {self.name} answers PID 0x{pid:03X} ({device.short_name}) "
                                f"but its flash-size register says {kib} KiB, which no "
                                f"{device.short_name} has (at most {device.flash_size // 1024} KiB, on "
                                "an erase-unit boundary): identity not confirmed, nothing was erased"
                            )
                        info.flash_size = size
                        device = device.with_flash_size(size)
            if device.uid_reg is not None:
                info.uid = self._confirmed_read(device.uid_reg, 12)
        info.device = device
        self.device = device
        self.info = info
        return info

    def connect(self) -> ChipInfo:
        self.sync()
        return self.identify()

    # ---- memory ------------------------------------------------------------------------------------
    def read_memory(self, address: int, length: int) -> bytes:
        """Read Memory, 1..256 bytes."""
        if not 1 <= length <= MAX_BLOCK:
            raise ValueError(f"read length {length} not in 1..256")

        n = length - 1
        frame = bytes([READ, READ ^ 0xFF]) + self._addr_bytes(address) + bytes([n, n ^ 0xFF])

        def op() -> bytes:
            where = f"Read Memory at 0x{address:08X}"
            if self.pipeline and self._harmless(frame, (0, 7)):
                self._send(frame)
                try:
                    self._ack(f"to {where}", phase="command")
                    self._ack(f"to the address of {where}", phase="address")
                    self._ack(f"to the length of {where}", phase="length")
                except (_Nack, _Garbled, TimeoutError_):
                    self._pipeline_failed()
                    raise
            else:
                self._command(READ, f"to {where}")
                self._send(frame[2:7])
                self._ack(f"to the address of {where}", phase="address")
                self._send(frame[7:])
                self._ack(f"to the length of {where}", phase="length")
            return self._recv(length, self.timeout + self._wire(length), f"while reading 0x{address:08X}")

        return self.transaction(READ, op, address=address)

    def _harmless(self, frame: bytes, intended: tuple[int, ...]) -> bool:
        """True when no byte pair of ``frame`` except the ``intended`` command/length pairs
        could be taken for a state-changing command if the ROM lost bytes of a pipelined
        frame (a valid code followed by its complement)."""
        benign = {GET, GET_VERSION, GET_ID, READ}
        for i in range(len(frame) - 1):
            if i in intended:
                continue
            c = frame[i]
            if c ^ frame[i + 1] == 0xFF and c not in benign and (c in self.commands or not self.commands):
                return False
        return True

    def _pipeline_failed(self) -> None:
        # this ROM (or adapter) loses bytes sent ahead of its ACK: wait for every ACK from now on
        self.pipeline = False
        self.log("pipelined frame failed: waiting for each ACK from now on")

    def read(self, address: int, length: int, progress: Callable[[int], None] | None = None) -> bytes:
        out = bytearray()
        while len(out) < length:
            n = min(self.block, length - len(out))
            out += self.read_memory(address + len(out), n)
            if progress:
                progress(n)
        return bytes(out)

    def write_memory(self, address: int, data: bytes, *, program_s: float | None = None) -> None:
        """Write Memory, 4..256 bytes (a multiple of 4)."""
        if not 1 <= len(data) <= MAX_BLOCK:
            raise ValueError(f"write length {len(data)} not in 1..256")
        if len(data) % 4:
            data = bytes(data) + b"\xff" * (4 - len(data) % 4)
        payload = bytes([len(data) - 1]) + bytes(data)
        payload += bytes([xor(payload)])
        busy = program_s if program_s is not None else self._program_s(len(data))

        head = bytes([WRITE, WRITE ^ 0xFF]) + self._addr_bytes(address)

        def op() -> None:
            where = f"Write Memory at 0x{address:08X}"
            if self.pipeline and self._harmless(head, (0,)):
                # command and address in one go; the data waits for both ACKs, so a lost
                # byte can never turn payload bytes into commands
                self._send(head)
                try:
                    self._ack(f"to {where}", phase="command")
                    self._ack(f"to the address of {where}", phase="address")
                except (_Nack, _Garbled, TimeoutError_):
                    self._pipeline_failed()
                    raise
            else:
                self._command(WRITE, f"to {where}")
                self._send(head[2:])
                self._ack(f"to the address of {where}", phase="address")
            self._send(payload)
            self._ack(
                f"while writing 0x{address:08X}",
                timeout=self.timeout + self._wire(len(payload)) + busy,
                phase="data",
            )

        def already_done() -> bool | None:
            # the ACK may have been lost after programming: do not program twice
            # (a read garbled on its way back never equals the data by chance: a few tries)
            for _ in range(3):
                try:
                    got = self.transaction(READ, lambda: self._read_raw(address, len(data)), retries=2)
                except (NackError, ProtectionError, LinkError):
                    return None
                if got == data:
                    return True
            return None

        self.transaction(WRITE, op, address=address, on_retry=already_done)

    def _read_raw(self, address: int, length: int) -> bytes:
        self._command(READ, f"to Read Memory at 0x{address:08X}")
        self._send(self._addr_bytes(address))
        self._ack(f"to the address of Read Memory at 0x{address:08X}", phase="address")
        self._send(bytes([length - 1, (length - 1) ^ 0xFF]))
        self._ack(f"to the length of Read Memory at 0x{address:08X}", phase="length")
        return self._recv(length, self.timeout + self._wire(length), f"while reading 0x{address:08X}")

    def _program_s(self, nbytes: int) -> float:
        if self.device is None:
            return 0.5
        return self.device.program_time_ms(nbytes)[1] / 1000.0 * 2 + 0.05

    # ---- erase ----------------------------------------------------------------------------------------
    @property
    def erase_code(self) -> int:
        if EXT_ERASE in self.commands:
            return EXT_ERASE
        if ERASE in self.commands:
            return ERASE
        if self.device is not None:
            return self.device.erase_command
        return EXT_ERASE

    def erase_pages(self, pages: Sequence[int], *, timeout_s: float) -> None:
        """Erase numbered pages/sectors with one command (caller splits long lists)."""
        code = self.erase_code
        if code == EXT_ERASE:
            if not 1 <= len(pages) <= MAX_PAGES_EXTENDED:
                raise ValueError("bad page count")
            body = (len(pages) - 1).to_bytes(2, "big") + b"".join(p.to_bytes(2, "big") for p in pages)
        else:
            if not 1 <= len(pages) <= MAX_PAGES_LEGACY or max(pages) > 0xFF:
                raise UsageError(f"page {max(pages)} cannot be addressed by the legacy Erase command")
            body = bytes([len(pages) - 1, *pages])
        body += bytes([xor(body)])
        first = pages[0]

        def op() -> None:
            self._command(code, "to Erase")
            self._send(body)
            self._ack(
                f"while erasing from page {first}",
                timeout=self.timeout + self._wire(len(body)) + timeout_s,
                phase="page list",
            )

        self.transaction(code, op, address=None)

    def erase_special(self, which: str, *, timeout_s: float) -> None:
        """``mass`` (0xFFFF / legacy 0xFF), ``bank1`` (0xFFFE), ``bank2`` (0xFFFD)."""
        code = self.erase_code
        if code == EXT_ERASE:
            n = {"mass": MASS_ERASE, "bank1": BANK1_ERASE, "bank2": BANK2_ERASE}[which]
            body = n.to_bytes(2, "big") + bytes([(n >> 8) ^ (n & 0xFF)])
        else:
            if which != "mass":
                raise UsageError("bank erase needs the Extended Erase command")
            body = b"\xff\x00"

        def op() -> None:
            self._command(code, "to Erase")
            self._send(body)
            self._ack(f"during the {which} erase", timeout=self.timeout + timeout_s, phase=f"{which} erase")

        self.transaction(code, op)

    # ---- go, checksum --------------------------------------------------------------------------------
    def go(self, address: int) -> None:
        def op() -> None:
            self._command(GO, f"to Go 0x{address:08X}")
            self._send(self._addr_bytes(address))
            self._ack(f"to the address of Go 0x{address:08X}", phase="address")

        # not retried after the address went out: the chip may already be running the app
        self.transaction(GO, op, address=address, retries=1)

    def get_checksum(self, address: int, length: int, *, poly: int = CRC_POLY, init: int = CRC_INIT) -> int:
        """Get Checksum (AN3155 rev 20): CRC over ``length`` bytes (a multiple of 4)."""
        if length % 4 or address % 4:
            raise ValueError("checksum range must be word aligned")
        words = length // 4

        def field4(v: int) -> bytes:
            raw = v.to_bytes(4, "big")
            return raw + bytes([xor(raw)])

        # the chip reads the whole range before answering: allow for a slow CRC unit
        busy = 0.5 + length / 2e6

        def op() -> int:
            self._command(GET_CHECKSUM, f"to Get Checksum at 0x{address:08X}")
            self._send(self._addr_bytes(address))
            self._ack(f"to the address of Get Checksum at 0x{address:08X}", phase="address")
            self._send(field4(words))
            self._ack("to the size of Get Checksum", phase="size")
            self._send(field4(poly))
            self._ack("to the polynomial of Get Checksum", phase="polynomial")
            self._send(field4(init))
            self._ack("to the initial value of Get Checksum", phase="initial value")
            raw = self._recv(5, self.timeout + busy, "to Get Checksum")
            if raw[0] == ACK and xor(raw[:4]) != raw[4]:
                # some ROM revisions send one more ACK before the CRC
                raw = raw[1:] + self._recv(1, self.timeout, "to Get Checksum")
            if xor(raw[:4]) != raw[4]:
                raise _Garbled("bad checksum byte in the Get Checksum answer")
            return int.from_bytes(raw[:4], "big")

        return self.transaction(GET_CHECKSUM, op, address=address)

    # ---- protection ---------------------------------------------------------------------------------
    def _after_reset(self, what: str) -> None:
        """The ROM resets itself after protection changes (on some parts): sync again."""
        time.sleep(0.01 + (self.device.startup_ms / 1000.0 if self.device else 0.1))
        try:
            self.sync()
        except LinkError:
            raise LinkError(f"no answer from the chip on {self.name} after {what} (it should have reset)") from None

    def _two_acks(self, code: int, what: str, second_timeout: float) -> None:
        def op() -> None:
            self._command(code, f"to {what}")
            self._ack(f"during {what}", timeout=self.timeout + second_timeout, phase="operation")

        self.transaction(code, op, retries=2)

    def readout_protect(self) -> None:
        self._two_acks(READOUT_PROTECT, "Readout Protect", 2.0)
        self._after_reset("Readout Protect")

    def readout_unprotect(self) -> None:
        """Removes RDP level 1; the ROM mass-erases the flash first (long timeout)."""
        mass = self.device.mass_erase_time_ms()[1] / 1000.0 if self.device else 35.0
        self._two_acks(READOUT_UNPROTECT, "Readout Unprotect", mass * 1.5 + 2.0)
        self._after_reset("Readout Unprotect")

    def write_unprotect(self) -> None:
        self._two_acks(WRITE_UNPROTECT, "Write Unprotect", 2.0)
        self._after_reset("Write Unprotect")

    def write_protect(self, codes: Sequence[int]) -> None:
        if not codes or len(codes) > 256 or max(codes) > 0xFF or min(codes) < 0:
            raise UsageError("write protection needs 1..256 sector codes in 0..255")
        body = bytes([len(codes) - 1, *codes])
        body += bytes([xor(body)])

        def op() -> None:
            self._command(WRITE_PROTECT, "to Write Protect")
            self._send(body)
            self._ack("during Write Protect", timeout=self.timeout + 2.0, phase="sector list")

        self.transaction(WRITE_PROTECT, op, retries=2)
        self._after_reset("Write Protect")
