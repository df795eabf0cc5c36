"""Register-level models of the peripherals code in RAM meets: USART and flash controller.

Used by :mod:`stmflash.sim.cpu` when the virtual STM32 runs uploaded code (the stmflash
RAM flasher stub, or any other RAM program started with Go). Each model works on the
CPU's virtual time ``t`` (seconds) so waiting, busy flags and overruns behave as on the
part. The flash controllers program and erase the :class:`~stmflash.sim.chip.VirtualChip`'s
one flash array, so what the code writes is what the ROM's Read Memory and the image
file show afterwards. Facts (register offsets, bits, key sequence, which error a wrong
access raises) are from the reference manuals:

* F2/F4 (``f4``, RM0090 3.9): KEYR 0x04, SR 0x0C, CR 0x10; PSIZE must match the access
  size (PGPERR), PG must be set (PGSERR), write-protected sectors give WRPERR, BSY while
  programming/erasing; a wrong key sequence locks the controller until reset.
* G0/G4/L4/WB/WL (``g0l4``, RM0444/RM0351 3.3.7): KEYR 0x08, SR 0x10, CR 0x14; 64-bit double
  words written as two 32-bit words (first one 8-aligned: PGAERR; the second at +4: MISERR),
  other access sizes SIZERR, a double word that is not erased PROGERR, programming without
  PG or with an error flag left set PGSERR.
* F0/F1/F3 (``f1``, RM0008 3.3): KEYR 0x04, SR 0x0C, CR 0x10, AR 0x14; half-words only
  (any other size is a bus error: the CPU faults), a cell not erased gives PGERR. XL
  density (RM0008 3.3.3 "dual-bank"): bank 2 (from 0x08080000) has its own KEYR2/SR2/CR2/
  AR2 at +0x40, its own lock; each bank's controller programs and erases only its bank (a
  write into bank 2 with only bank 1's PG set faults as a write without PG).
* L0/L1 (``l0l1``, RM0377/RM0367/RM0038 3.3-3.7, CMSIS stm32l0xx.h/stm32l1xx.h): PECR 0x04,
  PEKEYR 0x0C, PRGKEYR 0x10, SR 0x18. PECR unlocks with PEKEY1/PEKEY2, then the program
  memory with PRGKEY1/PRGKEY2 (a wrong key locks until reset); a flash write while PELOCK
  or PRGLOCK is set gives WRPERR and is not executed (RM0367 "write protection error
  flag": "write to the Flash program memory ... if not unlocked by PEKEY, PRGKEY"); words
  only (SIZERR otherwise), word-aligned (PGAERR); ERASE + PROG and a word written into a
  page erase the page (to 0x00); a word that does not read 0 gives NOTZEROERR on L0
  (``notzeroerr`` in the stub facts; L1 has no such flag: the word stays unchanged and the
  host's CRC catches it -- what L1 silicon does there is not established, this is the
  stricter outcome). Half-page programming: FPRG + PROG, then every word of the half-page
  (``half_page`` bytes in the stub facts) in order from its aligned start (PGAERR
  otherwise); the half-page is programmed when its last word arrives; a flash read in
  between aborts it (FWWERR on L0). A word and a half-page cost one programming time each
  (the datasheets give one tprog for both), the time of ``half_page`` bytes in the timing
  model, so word-by-word programming is as slow here as on the part.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from stmflash.sim.chip import AccessError, PowerLoss, VirtualChip

KEY1, KEY2 = 0x45670123, 0xCDEF89AB
BITS_PER_BYTE = 11  # 8E1, as the ROM set the USART up


class BusFault(Exception):
    """An access the part answers with a bus error: the CPU takes a fault."""


# ---- USART -------------------------------------------------------------------------------
PE, FE, NE, ORE, RXNE, TC, TXE = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 5, 1 << 6, 1 << 7


@dataclass
class Usart:
    """One USART (v1: SR/DR/BRR/CR1 of F1/F2/F4; v2: CR1/BRR/ISR/ICR/RDR/TDR), 1-byte buffers.

    Received bytes wait in ``_rx`` with their arrival time; a byte that arrives while RDR is
    still full is lost and sets ORE, exactly the overrun a real part has. Bytes sent leave
    one after the other at the rate BRR gives; TXE/TC follow the shift register.
    """

    base: int
    v2: bool
    clock: int
    brr: int
    enabled: bool = True
    host_baud: int | None = None  # what the host's port is set to (None: unknown = matching)
    _rx: deque = field(default_factory=deque)
    _rx_end: float = 0.0
    rdr: int = 0
    flags: int = TXE | TC
    _shift_end: float = 0.0
    _tdr: int | None = None
    out: list = field(default_factory=list)
    # nothing changes before this time: a read before it needs no sync (the CPU polls the
    # status register several times per byte, so the common read must be cheap)
    _quiet_until: float = float("-inf")

    def __post_init__(self) -> None:
        self.sr_off = 0x1C if self.v2 else 0x00  # plain attributes: read on every access
        self.rd_off = 0x24 if self.v2 else 0x04

    @property
    def baud(self) -> float:
        return self.clock / max(self.brr, 1)

    def byte_time(self) -> float:
        return BITS_PER_BYTE / self.baud

    def matches_host(self) -> bool:
        return self.host_baud is None or abs(self.host_baud / self.baud - 1) < 0.025

    # ---- host side ----------------------------------------------------------------------
    def receive(self, data: bytes, start: float) -> None:
        bt = self.byte_time()
        t = max(start, self._rx_end)
        good = self.matches_host()
        for b in data:
            t += bt
            self._rx.append((t, b if good else (b ^ 0x5A) & 0xFF, 0 if good else FE))
        self._rx_end = t
        if self._rx:
            self._quiet_until = min(self._quiet_until, self._rx[0][0])

    def next_event(self, t: float) -> float | None:
        """When the flags change next (``t`` itself when a byte has arrived unseen)."""
        times = []
        if self._rx:
            times.append(self._rx[0][0])
        if self._tdr is not None or self._shift_end > t:
            times.append(self._shift_end)
        return max(t, min(times)) if times else None

    def sync(self, t: float) -> None:
        """Bring the flags up to time ``t``."""
        if t < self._quiet_until:
            return
        while self._rx and self._rx[0][0] <= t:
            _, b, err = self._rx.popleft()
            if not self.enabled:
                continue
            if self.flags & RXNE:
                self.flags |= ORE  # RDR still full: the new byte is lost
                continue
            self.rdr = b
            self.flags |= RXNE | err
        if self._tdr is not None and self._shift_end <= t:
            self._start_tx(self._tdr, self._shift_end)
            self._tdr = None
        self.flags |= TXE
        if self._tdr is not None:
            self.flags &= ~TXE
        if self._shift_end <= t and self._tdr is None:
            self.flags |= TC
        else:
            self.flags &= ~TC
        # the next change: a byte arriving, the shift register emptying (TC, or the byte
        # waiting in TDR starting)
        quiet = self._rx[0][0] if self._rx else float("inf")
        if self._shift_end > t:
            quiet = min(quiet, self._shift_end)
        self._quiet_until = quiet

    def _start_tx(self, b: int, start: float) -> None:
        end = start + self.byte_time()
        self._shift_end = end
        self.out.append((end, b if self.matches_host() else (b ^ 0xA5) & 0xFF))

    # ---- CPU side ---------------------------------------------------------------------
    def read(self, off: int, t: float) -> tuple[int, bool]:
        """(value, is data): a data read consumes the received byte."""
        if t >= self._quiet_until:
            self.sync(t)
        if off == self.sr_off:
            return self.flags, False
        if off == self.rd_off:
            value = self.rdr
            got = bool(self.flags & RXNE)
            self.flags &= ~RXNE
            if not self.v2:
                self.flags &= ~(ORE | FE | NE | PE)  # v1: SR read then DR read clears them
            return value, got
        if off == (0x0C if self.v2 else 0x08):
            return self.brr, False
        if off == (0x00 if self.v2 else 0x0C):
            return self._cr1(), False
        return 0, False

    def _cr1(self) -> int:
        if self.v2:
            return 0x0000000D | (1 if self.enabled else 0) | 1 << 12 | 1 << 10  # UE RE TE M0 PCE
        return (1 << 13 if self.enabled else 0) | 1 << 12 | 1 << 10 | 0x0C

    def write(self, off: int, value: int, t: float) -> bool:
        """True when the write is activity (data or configuration)."""
        self.sync(t)
        td = 0x28 if self.v2 else 0x04
        if off == td:
            if self._shift_end <= t and self._tdr is None:
                self._start_tx(value & 0xFF, t)
            elif self._tdr is None:
                self._tdr = value & 0xFF
            # TXE clear: the byte overwrites the one waiting (lost), as on the part
            else:
                self._tdr = value & 0xFF
            self._quiet_until = float("-inf")  # the shift register changed
            self.sync(t)
            return True
        if off == (0x0C if self.v2 else 0x08):
            if self.v2 and self.enabled:
                return True  # v2: BRR is writable only while UE = 0
            self.brr = value & 0xFFFF
            return True
        if off == (0x00 if self.v2 else 0x0C):
            self.enabled = bool(value & (1 if self.v2 else 1 << 13))
            self._quiet_until = float("-inf")  # what arrives from now on is kept or dropped
            return True
        if self.v2 and off == 0x20:  # ICR
            self.flags &= ~(value & (PE | FE | NE | ORE))
            return True
        return False

    def take(self, until: float | None) -> bytes:
        out = bytearray()
        keep = []
        for t, b in self.out:
            if until is None or t <= until:
                out.append(b)
            else:
                keep.append((t, b))
        self.out = keep
        return bytes(out)

    def next_output_time(self) -> float | None:
        return self.out[0][0] if self.out else None


# ---- flash controllers ---------------------------------------------------------------------
class FlashController:
    """Common part: keys, lock, busy time, error flags; subclasses decide the access rules."""

    KEYR = 0x04
    SR = 0x0C
    CR = 0x10
    BSY = 1 << 16
    LOCK = 1 << 31
    ERRORS = 0
    WRPERR = 1 << 4
    PGSERR = 1 << 7

    def __init__(self, chip: VirtualChip, base: int, facts: dict) -> None:
        self.chip = chip
        self.base = base
        self.facts = facts
        self.device = chip.device
        self.timing = chip.timing
        self.locked = True
        self.frozen = False  # wrong key sequence: locked until the next reset
        self._key_stage = 0
        self.cr = 0
        self.sr = 0
        self.busy_until = 0.0
        # write protection cannot change while RAM code runs (option bytes reload = reset)
        self.wrp = set(chip.wrp)
        self._starts = [u.address for u in self.device.erase_units]
        self.bank_units = 0
        if self.device.bank_count >= 2:
            self.bank_units = len(self.device.bank_units(1))

    # registers
    def read(self, off: int, t: float) -> int:
        if off == self.SR:
            return self.sr | (self.BSY if t < self.busy_until else 0)
        if off == self.CR:
            return self.cr | (self.LOCK if self.locked else 0)
        return 0

    def write(self, off: int, value: int, t: float) -> None:
        if off == self.KEYR:
            self._key(value)
        elif off == self.SR:
            self.sr &= ~(value & (self.ERRORS | self.EOP))
        elif off == self.CR:
            if self.locked:
                return  # CR is read-only while locked
            if t < self.busy_until:
                return
            self.cr = value & ~self.LOCK
            if value & self.LOCK:
                self.locked = True
                self.cr = 0
                return
            self.control(t)
        else:
            self.other(off, value, t)

    EOP = 1 << 0

    def _key(self, value: int) -> None:
        if not self.locked or self.frozen:
            return
        if self._key_stage == 0 and value == KEY1:
            self._key_stage = 1
        elif self._key_stage == 1 and value == KEY2:
            self.locked = False
            self._key_stage = 0
        else:
            self.frozen = True  # RM: a wrong sequence locks the controller until reset
            self._key_stage = 0

    def other(self, off: int, value: int, t: float) -> None:
        pass

    STRT = 1 << 16

    def control(self, t: float) -> None:
        """A CR write with STRT starts an erase (the bit clears itself)."""
        cr = self.cr
        if cr & self.STRT:
            self.cr &= ~self.STRT
            self.start(cr, t)

    def start(self, cr: int, t: float) -> None:
        raise NotImplementedError

    def _mass_erase(self, t: float) -> None:
        if self.wrp:
            self.sr |= self.WRPERR  # refused as a whole while any unit is protected
            return
        self.chip.mass_erase()
        self.busy_until = t + self.timing.mass_erase_time()

    # helpers
    def unit_index(self, index: int) -> int:
        return index

    def _erase(self, index: int, t: float) -> None:
        units = self.device.erase_units
        if not 0 <= index < len(units):
            self.sr |= self.PGSERR
            return
        unit = units[index]
        if unit.index in self.chip.wrp:
            self.sr |= self.WRPERR
            return
        self.chip.erase_units([index])
        self.busy_until = t + self.timing.erase_time([unit])

    def _protected(self, addr: int) -> bool:
        import bisect

        i = bisect.bisect_right(self._starts, addr) - 1
        return i >= 0 and self.device.erase_units[i].index in self.wrp

    def _program(self, addr: int, data: bytes, t: float, allow_and: bool = False,
                 cost: int | None = None) -> bool:
        """Program cells of the chip's one flash array; False (flag set) on failure."""
        if self._protected(addr):
            self.sr |= self.WRPERR
            return False
        chip = self.chip
        off = addr - self.device.flash_start
        n = len(data)
        old = bytes(chip.flash[off : off + n])
        if old != self.device.erased_bytes * n and old != data:
            if not allow_and:
                return False
            data = bytes(a & b for a, b in zip(old, data, strict=True))  # F4: bits only clear
        if chip._power_budget_exhausted(n):
            chip.program(addr, data)  # the chip's own path: half a unit, then the power is gone
        chip.flash[off : off + n] = data
        chip.programmed_bytes += n
        self.busy_until = t + self.timing.program_time(n if cost is None else cost)
        return True

    def flash_write(self, addr: int, size: int, value: int, t: float) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        self.locked, self.frozen, self._key_stage, self.cr, self.sr = True, False, 0, 0, 0


class FlashF4(FlashController):
    """F2/F4 (RM0090 3.9): sectors, PSIZE parallelism."""

    EOP = 1 << 0
    ERRORS = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8)
    PGAERR, PGPERR = 1 << 5, 1 << 6
    PG, SER, MER, STRT = 1 << 0, 1 << 1, 1 << 2, 1 << 16

    def start(self, cr: int, t: float) -> None:
        if cr & self.MER:
            self._mass_erase(t)
        elif cr & self.SER:
            snb = cr >> 3 & 0x1F
            code = int(self.facts.get("bank_code", 16))
            index = snb - code + self.bank_units if self.bank_units and snb >= code else snb
            self._erase(index, t)
        else:
            self.sr |= self.PGSERR

    def flash_write(self, addr: int, size: int, value: int, t: float) -> None:
        if self.locked or not self.cr & self.PG:
            self.sr |= self.PGSERR
            return
        psize = 1 << (self.cr >> 8 & 3)
        if size != psize:
            self.sr |= self.PGPERR
            return
        if addr % size:
            self.sr |= self.PGAERR
            return
        self._program(addr, value.to_bytes(size, "little"), t, allow_and=True)


class FlashG0L4(FlashController):
    """G0/G4/L4/WB/WL (RM0444/RM0351): 64-bit double words, pages, BKER on dual-bank parts."""

    KEYR, SR, CR = 0x08, 0x10, 0x14
    EOP = 1 << 0
    PROGERR, PGAERR, SIZERR, MISERR = 1 << 3, 1 << 5, 1 << 6, 1 << 8
    ERRORS = (1 << 1) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 14) | (1 << 15)
    PG, PER, MER1, STRT = 1 << 0, 1 << 1, 1 << 2, 1 << 16
    PROG_ERRORS = (1 << 3) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9)

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self._latch: tuple[int, int] | None = None

    def start(self, cr: int, t: float) -> None:
        if self.sr & self.PROG_ERRORS:
            self.sr |= self.PGSERR  # error flags of an earlier operation still set
            return
        if cr & self.MER1:
            self._mass_erase(t)
        elif cr & self.PER:
            page = cr >> 3 & 0x3FF
            bker = int(self.facts.get("bank_code", 0))
            if self.bank_units and bker:
                page &= (1 << (bker - 3)) - 1
                if cr >> bker & 1:
                    page += self.bank_units
            self._erase(page, t)
        else:
            self.sr |= self.PGSERR

    def flash_write(self, addr: int, size: int, value: int, t: float) -> None:
        if size != 4:
            self.sr |= self.SIZERR
            self._latch = None
            return
        if self.locked or not self.cr & self.PG or self.sr & self.PROG_ERRORS:
            self.sr |= self.PGSERR
            self._latch = None
            return
        if self._latch is None:
            if addr % 8:
                self.sr |= self.PGAERR
                return
            self._latch = (addr, value)
            return
        first, v0 = self._latch
        self._latch = None
        if addr != first + 4:
            self.sr |= self.MISERR
            return
        data = v0.to_bytes(4, "little") + value.to_bytes(4, "little")
        if not self._program(first, data, t):
            if not self.sr & self.WRPERR:
                self.sr |= self.PROGERR

    def reset(self) -> None:
        super().reset()
        self._latch = None


class FlashF1(FlashController):
    """F0/F1/F3 (RM0008 3.3): half-words, PER + AR page erase; bank 2 of XL parts at +0x40."""

    KEYR, SR, CR, AR = 0x04, 0x0C, 0x10, 0x14
    BSY = 1 << 0
    LOCK = 1 << 7
    EOP = 1 << 5
    PGERR, WRPRTERR = 1 << 2, 1 << 4
    WRPERR = WRPRTERR
    PGSERR = PGERR
    ERRORS = PGERR | WRPRTERR
    PG, PER, MER, STRT = 1 << 0, 1 << 1, 1 << 2, 1 << 6

    def __init__(self, *args: object, bank: int = 0) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.ar = 0
        self.bank = bank  # XL: the bank this register set controls (0: all flash)

    def other(self, off: int, value: int, t: float) -> None:
        if off == self.AR and not self.locked:
            self.ar = value

    def start(self, cr: int, t: float) -> None:
        if cr & self.MER:
            self._mass_erase(t)
        elif cr & self.PER:
            unit = self.device.unit_at(self.ar)
            if unit is None or (self.bank and unit.bank != self.bank):
                return  # not a page of this bank: nothing erased, no EOP
            self._erase(unit.index, t)
        else:
            return
        if not self.sr & self.ERRORS:
            self.sr |= self.EOP

    def flash_write(self, addr: int, size: int, value: int, t: float) -> None:
        if self.locked or not self.cr & self.PG:
            raise BusFault(f"write to flash 0x{addr:08X} without PG")
        if size != 2:
            raise BusFault(f"{size}-byte write to flash 0x{addr:08X}: the F1 controller takes half-words only")
        data = value.to_bytes(2, "little")
        if not self._program(addr, data, t) and not self.sr & self.WRPRTERR:
            self.sr |= self.PGERR
        elif not self.sr & self.ERRORS:
            self.sr |= self.EOP


class FlashL0L1(FlashController):
    """L0/L1 (RM0377/RM0367/RM0038): PECR/PEKEYR/PRGKEYR, words, page erase by a word write."""

    PECR, PEKEYR, PRGKEYR, SR = 0x04, 0x0C, 0x10, 0x18
    KEYR = CR = -1  # not used: this controller has its own key registers
    PEKEY1, PEKEY2, PRGKEY1, PRGKEY2 = 0x89ABCDEF, 0x02030405, 0x8C9DAEBF, 0x13141516
    PELOCK, PRGLOCK, OPTLOCK, PROG, ERASE, FPRG = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 9, 1 << 10
    BSY, EOP, READY = 1 << 0, 1 << 1, 1 << 3
    WRPERR, PGAERR, SIZERR, NOTZEROERR, FWWERR = 1 << 8, 1 << 9, 1 << 10, 1 << 16, 1 << 17
    PGSERR = PGAERR  # an erase of a unit that does not exist (base-class helper)
    ERRORS = (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 16) | (1 << 17)

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.prg_locked = True
        self._prg_stage = 0
        self.half_page = int(self.facts.get("half_page", 0))
        self._half: tuple[int, bytearray] | None = None  # half-page being written
        self.operations = {"word": 0, "half-page": 0}  # programming operations started

    def on_flash_read(self) -> None:
        """A read of the flash while a half-page is being written aborts it."""
        if self._half is not None:
            self._half = None
            if self.facts.get("notzeroerr"):  # the L0 status register (NOTZEROERR, FWWERR)
                self.sr |= self.FWWERR

    def read(self, off: int, t: float) -> int:
        if off == self.SR:
            return self.sr | self.READY | (self.BSY if t < self.busy_until else 0)
        if off == self.PECR:
            locks = (self.PELOCK if self.locked else 0) | (self.PRGLOCK if self.prg_locked else 0)
            return self.cr | locks | self.OPTLOCK
        return 0

    def write(self, off: int, value: int, t: float) -> None:
        if off == self.PEKEYR:
            self._key(value)  # PEKEY1, PEKEY2 in that order (base class: stage, freeze)
        elif off == self.PRGKEYR:
            self._prg_key(value)
        elif off == self.SR:
            self.sr &= ~(value & (self.ERRORS | self.EOP))  # rc_w1
        elif off == self.PECR:
            if self.locked or t < self.busy_until:
                return  # PECR is write-protected while PELOCK is set
            if value & self.PELOCK:
                self.locked = self.prg_locked = True
                self.cr = 0
                return
            if value & self.PRGLOCK:
                self.prg_locked = True
            self._half = None
            self.cr = value & (self.PROG | self.ERASE | self.FPRG)

    def _key(self, value: int) -> None:
        keys = (self.PEKEY1, self.PEKEY2)
        if not self.locked or self.frozen:
            return
        if value == keys[self._key_stage]:
            self._key_stage += 1
            if self._key_stage == 2:
                self.locked, self._key_stage = False, 0
        else:
            self.frozen, self._key_stage = True, 0  # locked until the next reset

    def _prg_key(self, value: int) -> None:
        keys = (self.PRGKEY1, self.PRGKEY2)
        if self.locked or not self.prg_locked or self.frozen:
            return  # PRGKEYR works only once PECR is unlocked
        if value == keys[self._prg_stage]:
            self._prg_stage += 1
            if self._prg_stage == 2:
                self.prg_locked, self._prg_stage = False, 0
        else:
            self.frozen, self._prg_stage = True, 0

    def start(self, cr: int, t: float) -> None:  # erases start by a word write, not STRT
        pass

    def flash_write(self, addr: int, size: int, value: int, t: float) -> None:
        if self.locked or self.prg_locked:
            self.sr |= self.WRPERR  # not unlocked by PEKEY + PRGKEY: not executed
            return
        if self.cr & self.FPRG:
            self._half_write(addr, size, value, t)
            return
        if size != 4:
            self.sr |= self.SIZERR  # program memory takes words (bytes/half-words: data EEPROM)
            return
        if addr % 4:
            self.sr |= self.PGAERR
            return
        if self.cr & self.ERASE:
            if not self.cr & self.PROG:
                self.sr |= self.PGAERR  # ERASE alone addresses the data EEPROM, not this
                return
            unit = self.device.unit_at(addr)
            if unit is None:
                self.sr |= self.PGAERR
                return
            before = self.sr
            self._erase(unit.index, t)
            if self.sr == before:
                self.sr |= self.EOP
            return
        if self.cr & self.PROG:
            self.sr |= self.PGAERR  # PROG without ERASE/FPRG: no word operation
            return
        self._finish(addr, value.to_bytes(4, "little"), t)

    def _finish(self, addr: int, data: bytes, t: float) -> None:
        # one programming operation: a word or a half-page, one tprog either way
        self.operations["word" if len(data) == 4 else "half-page"] += 1
        if self._program(addr, data, t, cost=self.half_page or len(data)):
            self.sr |= self.EOP
        elif not self.sr & self.WRPERR and self.facts.get("notzeroerr"):
            self.sr |= self.NOTZEROERR

    def _half_write(self, addr: int, size: int, value: int, t: float) -> None:
        hp = self.half_page
        if not hp:
            raise BusFault(f"half-page write at 0x{addr:08X}: no half-page size in the device table")
        if not self.cr & self.PROG or self.cr & self.ERASE:
            self.sr |= self.PGAERR  # FPRG alone is the data EEPROM's double-word write
            self._half = None
            return
        if size != 4:
            self.sr |= self.SIZERR
            self._half = None
            return
        if self._half is None:
            if addr % hp:
                self.sr |= self.PGAERR  # the first word must start the half-page
                return
            self._half = (addr, bytearray())
        start, buf = self._half
        if addr != start + len(buf):
            self.sr |= self.PGAERR  # every word, in order, inside the one half-page
            self._half = None
            return
        buf += value.to_bytes(4, "little")
        if len(buf) == hp:
            self._half = None
            self._finish(start, bytes(buf), t)

    def reset(self) -> None:
        super().reset()
        self.prg_locked, self._prg_stage, self._half = True, 0, None


CONTROLLERS = {"f4": FlashF4, "f7": FlashF4, "g0l4": FlashG0L4, "f1": FlashF1, "l0l1": FlashL0L1}


class FlashF1XL:
    """F1 XL density: the two F1 register sets (bank 1 at the base, bank 2 at +``bank_code``,
    RM0008 3.3.3) in one 1 KiB register block; flash writes go to the bank they address."""

    SR = FlashF1.SR
    STATUS = (FlashF1.SR, FlashF1.SR + 0x40)

    def __init__(self, chip: VirtualChip, base: int, facts: dict) -> None:
        self.base = base
        self.offset = int(facts.get("bank_code", 0x40))
        self.banks = (FlashF1(chip, base, facts, bank=1), FlashF1(chip, base + self.offset, facts, bank=2))
        self.device = chip.device
        self._bank2 = min(u.address for u in chip.device.bank_units(2))

    @property
    def busy_until(self) -> float:
        return max(b.busy_until for b in self.banks)

    def _reg(self, off: int) -> tuple[FlashF1, int]:
        return (self.banks[1], off - self.offset) if off >= self.offset else (self.banks[0], off)

    def read(self, off: int, t: float) -> int:
        ctl, o = self._reg(off)
        return ctl.read(o, t)

    def write(self, off: int, value: int, t: float) -> None:
        ctl, o = self._reg(off)
        ctl.write(o, value, t)

    def flash_write(self, addr: int, size: int, value: int, t: float) -> None:
        self.banks[1 if addr >= self._bank2 else 0].flash_write(addr, size, value, t)

    def reset(self) -> None:
        for b in self.banks:
            b.reset()


def controllers_for(chip: VirtualChip) -> list[Any]:
    """The flash controller(s) of ``chip`` (bank 2 of F1 XL has its own register set)."""
    facts = chip.device.stub
    group = facts["group"]
    base = int(facts["flash_regs"])
    if group == "f1" and chip.device.bank_count >= 2:
        return [FlashF1XL(chip, base, facts)]
    return [CONTROLLERS[group](chip, base, facts)]


__all__ = ["AccessError", "BusFault", "CONTROLLERS", "PowerLoss", "Usart", "controllers_for"]
