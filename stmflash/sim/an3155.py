"""The AN3155 USART bootloader of a virtual STM32, as a byte-in/byte-out state machine.

Transport-free: :meth:`An3155Rom.feed` takes the bytes the host sent (with the time they
reached the adapter), :meth:`An3155Rom.take_output` returns the bytes the chip has sent
by a given time. The pseudo-terminal server and the in-process ``sim://`` port both drive
this one class, so they cannot disagree. Behaviour comes from the Device record:

* Get lists exactly ``device.commands``; any other code, or a code whose complement is
  wrong, is NACKed (so a second 0x7F after sync — taken as a command byte with 0x7F as
  its "complement" — gets a NACK, which is how hosts detect an already synced chip);
* only ``device.erase_command`` (0x43 or 0x44) exists; mass and bank erase are NACKed
  when the memory model refuses them (``device.mass_erase`` False, no such bank);
* RDP level 1: Read, Write, Go, Erase, Write (Un)Protect, Readout Protect and Get
  Checksum answer NACK (two NACKs when the chip is built with ``rdp_double_nack``);
  level 2: the chip never answers (AN2606: the bootloader is unreachable);
* Write Protect / Write Unprotect / Readout Protect / Readout Unprotect and writes to the
  option bytes reset the chip after their last ACK: the host must sync again;
* writes/erases on write-protected units are ACKed and change nothing.

Timing (realistic mode): each received byte occupies 11 bit times after the previous one;
each answer leaves after the adapter turnaround plus the operation's programming/erase
time and occupies the wire for its own bytes (see :mod:`stmflash.sim.timing`). Each ACK
is its own burst, sent when the ROM sends it: Read Memory's third ACK (after N and its
checksum) leaves before the data, Get/Get Version/Get ID's first ACK before their
payload. A burst is handed to the transport when its last byte has left the chip.
"""

from __future__ import annotations

from collections.abc import Generator

from stmflash.an3155 import (  # noqa: F401  (re-exported for callers of this module)
    ACK,
    BANK1_ERASE,
    BANK2_ERASE,
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
from stmflash.sim.chip import AccessError, PowerLoss, VirtualChip

_Machine = Generator[None, int, None]


def _xor(data: bytes | list[int]) -> int:
    x = 0
    for b in data:
        x ^= b
    return x


def crc32_words(data: bytes, poly: int = CRC_POLY, init: int = CRC_INIT) -> int:
    """STM32 CRC unit: MSB-first CRC-32 over 32-bit little-endian words, no final XOR."""
    if poly == CRC_POLY:
        try:
            from stmflash.image.crc import stm32_crc
        except ImportError:  # pragma: no cover - the image helper may not be there yet
            pass
        else:
            return stm32_crc(data, init)
    crc = init & 0xFFFFFFFF
    for i in range(0, len(data) - len(data) % 4, 4):
        crc ^= int.from_bytes(data[i : i + 4], "little")
        for _ in range(32):
            crc = ((crc << 1) ^ poly) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


class An3155Rom:
    """The ROM USART bootloader sitting on a :class:`VirtualChip`."""

    def __init__(self, chip: VirtualChip, *, now: float = 0.0) -> None:
        self.chip = chip
        self.timing = chip.timing
        self.faults = chip.faults
        self._out: list[tuple[float, bytes]] = []
        self._now = now  # virtual time the current byte finished arriving
        self._rx_end = now
        self._tx_end = now
        self._answered = False  # an answer already paid the turnaround since last input
        self._autobaud_left = self.faults.autobaud_fail
        self.synced = False
        self.log: list[str] = []  # one line per command handled (debugging, tests)
        self._restart(now + self.timing.startup_delay())

    # ---- driving ------------------------------------------------------------------------
    def _restart(self, ready_at: float) -> None:
        self._seen_reset = self.chip.reset_count
        self._ready_at = ready_at
        self.synced = False
        self._stray_pending = self.faults.stray_zero
        self._machine = self._run()
        next(self._machine)

    def external_reset(self, now: float = 0.0) -> None:
        """The chip was reset from outside (NRST pin): sync again after start-up."""
        self.chip.reset()
        self._restart(now + self.timing.startup_delay())

    @property
    def listening(self) -> bool:
        chip = self.chip
        return (
            chip.powered and chip.mode == "bootloader" and chip.rdp_level != 2 and not self.faults.silent
        )

    def feed(self, data: bytes, now: float = 0.0) -> None:
        """Bytes from the host; ``now`` is when they reached the adapter (perf_counter)."""
        data = self.faults.mangle(bytes(data))
        bt = self.timing.byte_time()
        for b in data:
            self._rx_end = max(now, self._rx_end) + bt
            self._now = self._rx_end
            self._answered = False
            if self.chip.reset_count != self._seen_reset:
                # Reset by a command (after its last ACK left) or from outside.
                since = max(self._tx_end, self.chip.last_reset_time if self.timing.realistic else 0.0)
                self._restart(since + self.timing.startup_delay())
            if not self.listening:
                continue
            try:
                self._machine.send(b)
            except StopIteration:  # pragma: no cover - the machine loops forever
                self._restart(self._now)
            except PowerLoss:
                self.log.append("power loss")

    def take_output(self, now: float | None = None) -> bytes:
        """Bytes whose last bit has left the chip by ``now`` (everything when None)."""
        out = bytearray()
        keep: list[tuple[float, bytes]] = []
        for t, data in self._out:
            if now is None or t <= now:
                out += data
            else:
                keep.append((t, data))
        self._out = keep
        return bytes(out)

    def next_output_time(self) -> float | None:
        return min((t for t, _ in self._out), default=None)

    def pending(self) -> int:
        return sum(len(d) for _, d in self._out)

    # ---- output ---------------------------------------------------------------------------
    def _emit(self, data: bytes | list[int] | int, busy: float = 0.0) -> None:
        if isinstance(data, int):
            data = bytes([data])
        data = bytes(data)
        start = self._now + busy
        if not self._answered:
            start += self.timing.latency()
            self._answered = True
        start = max(start, self._tx_end)
        self._tx_end = start + self.timing.wire_time(len(data))
        self._now = max(self._now, start)
        data = self.faults.mangle(data)
        if data:
            self._out.append((self._tx_end, data))

    def _nack(self, rdp: bool = False) -> None:
        self._emit(bytes([NACK, NACK]) if rdp and self.chip.rdp_double_nack else NACK)

    # ---- the machine ------------------------------------------------------------------------
    def _run(self) -> _Machine:
        while True:
            b = yield
            if b != SYNC or self._now < self._ready_at:
                continue
            if self._autobaud_left > 0:
                self._autobaud_left -= 1
                continue
            if self._stray_pending:
                self._stray_pending = False
                self._emit(bytes([0x00, ACK]))
            else:
                self._emit(ACK)
            self.synced = True
            break
        commands = self.chip.device.commands
        handlers = {
            GET: self._get,
            GET_VERSION: self._get_version,
            GET_ID: self._get_id,
            READ: self._read,
            GO: self._go,
            WRITE: self._write,
            ERASE: self._erase,
            EXT_ERASE: self._ext_erase,
            WRITE_PROTECT: self._write_protect,
            WRITE_UNPROTECT: self._write_unprotect,
            READOUT_PROTECT: self._readout_protect,
            READOUT_UNPROTECT: self._readout_unprotect,
            GET_CHECKSUM: self._checksum,
        }
        while True:
            cmd = yield
            comp = yield
            if cmd ^ comp != 0xFF or cmd not in commands or cmd not in handlers:
                self.log.append(f"NACK command 0x{cmd:02X}/0x{comp:02X}")
                self._nack()
                continue
            if self.faults.spurious_nack():
                self.log.append(f"spurious NACK 0x{cmd:02X}")
                self._nack()
                continue
            self.log.append(f"command 0x{cmd:02X}")
            yield from handlers[cmd]()

    def _protected(self) -> bool:
        """RDP level 1 refuses this command: NACK (twice on some parts)."""
        if self.chip.rdp_level >= 1:
            self.log.append("NACK: readout protection")
            self._nack(rdp=True)
            return True
        return False

    def _recv(self, n: int) -> Generator[None, int, list[int]]:
        out = []
        for _ in range(n):
            out.append((yield))
        return out

    def _address(self) -> Generator[None, int, int | None]:
        """4 address bytes MSB first + XOR; None (after a NACK) on a bad checksum."""
        raw = yield from self._recv(5)
        if _xor(raw[:4]) != raw[4]:
            self._nack()
            return None
        return int.from_bytes(bytes(raw[:4]), "big")

    # ---- commands ----------------------------------------------------------------------------
    def _get(self) -> _Machine:
        cmds = self.chip.device.commands
        self._emit(ACK)
        self._emit(bytes([len(cmds), self.chip.device.usart_protocol, *cmds, ACK]))
        return
        yield  # pragma: no cover

    def _get_version(self) -> _Machine:
        self._emit(ACK)
        self._emit(bytes([self.chip.device.usart_protocol, 0x00, 0x00, ACK]))
        return
        yield  # pragma: no cover

    def _get_id(self) -> _Machine:
        pid = self.chip.device.pid
        self._emit(ACK)
        self._emit(bytes([0x01, pid >> 8 & 0xFF, pid & 0xFF, ACK]))
        return
        yield  # pragma: no cover

    def _read(self) -> _Machine:
        if self._protected():
            return
        self._emit(ACK)
        addr = yield from self._address()
        if addr is None:
            return
        if self.chip.region_kind(addr) is None:
            self._nack()
            return
        self._emit(ACK)
        n, comp = yield from self._recv(2)
        if n ^ comp != 0xFF or not self.chip.readable(addr, n + 1):
            self._nack()
            return
        # AN3155 Read Memory: the ACK for N+checksum leaves as soon as they are checked,
        # then the data (a host watching the line sees the ACK before the first data byte)
        self._emit(ACK)
        self._emit(self.chip.read(addr, n + 1))

    def _go(self) -> _Machine:
        if self._protected():
            return
        self._emit(ACK)
        addr = yield from self._address()
        if addr is None:
            return
        if self.chip.region_kind(addr) not in ("flash", "ram"):
            self._nack()
            return
        self._emit(ACK)
        self.chip.go(addr)

    def _write_target_ok(self, addr: int) -> bool:
        kind = self.chip.region_kind(addr)
        if kind not in ("flash", "ram", "ob", "ob2", "otp"):
            return False
        usable = self.chip.device.ram_usable
        return not (kind == "ram" and usable is not None and addr not in usable)

    def _write(self) -> _Machine:
        if self._protected():
            return
        self._emit(ACK)
        addr = yield from self._address()
        if addr is None:
            return
        if not self._write_target_ok(addr):
            self._nack()
            return
        self._emit(ACK)
        (n,) = yield from self._recv(1)
        data = yield from self._recv(n + 1)
        (check,) = yield from self._recv(1)
        if _xor([n, *data]) != check:
            self._nack()
            return
        kind = self.chip.region_kind(addr)
        if kind in ("flash", "otp", "ob", "ob2") and len(data) % 4:
            self._nack()  # AN3155: N+1 must be a multiple of 4 for flash
            return
        try:
            self.chip.program(addr, bytes(data))
        except PowerLoss:
            raise
        except AccessError as exc:
            self.log.append(f"NACK write: {exc}")
            self._nack()
            return
        busy = self.timing.program_time(len(data)) if kind in ("flash", "otp") else 0.0
        self._emit(ACK, busy)  # an option-byte write has reset the chip: resync follows

    def _erase_list(self, pages: list[int]) -> None:
        units = self.chip.device.erase_units
        if any(not 0 <= p < len(units) for p in pages):
            self._nack()
            return
        self.chip.erase_units(pages)
        self._emit(ACK, self.timing.erase_time(units[p] for p in pages))

    def _mass_erase(self, bank: int | None) -> None:
        """Mass or bank erase as the memory model allows it (refused -> NACK)."""
        try:
            if bank is None:
                self.chip.mass_erase()
            else:
                self.chip.erase_bank(bank)
        except AccessError as exc:
            self.log.append(f"NACK erase: {exc}")
            self._nack()
            return
        if bank is None:
            self._emit(ACK, self.timing.mass_erase_time())
        else:
            self._emit(ACK, self.timing.erase_time(self.chip.device.bank_units(bank)))

    def _erase(self) -> _Machine:
        if self._protected():
            return
        self._emit(ACK)
        (n,) = yield from self._recv(1)
        if n == 0xFF:
            (check,) = yield from self._recv(1)
            if check != 0x00:
                self._nack()
                return
            self._mass_erase(None)
            return
        pages = yield from self._recv(n + 1)
        (check,) = yield from self._recv(1)
        if _xor([n, *pages]) != check:
            self._nack()
            return
        self._erase_list(pages)

    def _ext_erase(self) -> _Machine:
        if self._protected():
            return
        self._emit(ACK)
        hi, lo = yield from self._recv(2)
        n = hi << 8 | lo
        if n >= 0xFFF0:
            (check,) = yield from self._recv(1)
            if check != hi ^ lo or n not in (MASS_ERASE, BANK1_ERASE, BANK2_ERASE):
                self._nack()
            else:
                self._mass_erase(None if n == MASS_ERASE else 1 if n == BANK1_ERASE else 2)
            return
        raw = yield from self._recv(2 * (n + 1))
        (check,) = yield from self._recv(1)
        if _xor([hi, lo, *raw]) != check:
            self._nack()
            return
        self._erase_list([raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)])

    def _write_protect(self) -> _Machine:
        if self._protected():
            return
        self._emit(ACK)
        (n,) = yield from self._recv(1)
        codes = yield from self._recv(n + 1)
        (check,) = yield from self._recv(1)
        if _xor([n, *codes]) != check:
            self._nack()
            return
        try:  # codes as stmflash.option_bytes.wrp_codes gives them for the family layout
            self.chip.write_protect_groups(codes, reset=False)
        except AccessError as exc:
            self.log.append(f"NACK write protect: {exc}")
            self._nack()
            return
        self._emit(ACK)
        self.chip.reset()

    def _write_unprotect(self) -> _Machine:
        if self._protected():
            return
        self._emit(bytes([ACK, ACK]))
        self.chip.write_unprotect()
        return
        yield  # pragma: no cover

    def _readout_protect(self) -> _Machine:
        if self._protected():
            return
        self._emit(bytes([ACK, ACK]))
        self.chip.readout_protect()
        return
        yield  # pragma: no cover

    def _readout_unprotect(self) -> _Machine:
        self._emit(ACK)
        self._emit(ACK, self.timing.mass_erase_time())
        self.chip.readout_unprotect()
        return
        yield  # pragma: no cover

    def _checksum(self) -> _Machine:
        """AN3155 rev 20: address, size in words, polynomial, initial value; then CRC."""
        if self._protected():
            return
        self._emit(ACK)
        addr = yield from self._address()
        if addr is None:
            return
        if addr % 4 or self.chip.region_kind(addr) is None:
            self._nack()
            return
        self._emit(ACK)
        values = []
        for _ in range(3):
            raw = yield from self._recv(5)
            if _xor(raw[:4]) != raw[4]:
                self._nack()
                return
            values.append(int.from_bytes(bytes(raw[:4]), "big"))
            if len(values) == 1 and not self.chip.readable(addr, values[0] * 4):
                self._nack()
                return
            self._emit(ACK)
        words, poly, init = values
        crc = crc32_words(self.chip.read(addr, words * 4), poly, init)
        out = crc.to_bytes(4, "big")
        self._emit(out + bytes([_xor(out)]))
