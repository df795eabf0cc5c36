"""The DfuSe ROM bootloader of a virtual STM32 (AN3156), on the shared VirtualChip.

It answers DFU class requests the way ST's ROM does: a DNLOAD only records the request,
the first GETSTATUS executes it and answers dfuDNBUSY with a poll timeout from the timing
model, the next GETSTATUS reports dfuDNLOAD-IDLE or dfuERROR with errTARGET (bad address)
or errVENDOR (readout protection).  While the operation runs the ROM does not serve the
control pipe: a GETSTATUS sent before the operation is over (pydfu sends the second one
back to back, never waiting for bwPollTimeout) is NAKed by the USB peripheral until the
operation completes, then answered (:class:`SimNak`; the host sees a slow transfer, or a
USB timeout when its own timeout is shorter).  AN3156 describes the host flow; pydfu,
which works on real F4/F7/H7 ROMs, relies on this hold.  Leave, Read Unprotect and
option-byte writes end with the chip leaving its bootloader (``chip.go``) or resetting
(``chip.reset``); the USB backend turns that into a disconnect or a re-enumeration.

ROM quirks come from the device table (``dfu.quirks``) and are reproduced generically:

* ``mass_erase_poll_underreported``: mass erase announces 100 ms for a 16-32 s erase
  (polls are held as above: a host trusting the 100 ms with a short USB timeout fails);
* ``getstatus_stall_during_erase``: page erase announces half its time; a GETSTATUS sent
  after that announced time while the erase still runs is STALLed (dfu-util's L4 quirk:
  it treats up to three EPIPEs as "still busy"); one sent earlier is held as above;
* ``dnbusy_stuck``: after erasing a unit of bank 2 or above the ROM stays dfuDNBUSY with a
  zero poll timeout until CLRSTATUS (errUNKNOWN/dfuERROR), then CLRSTATUS again (dfuIDLE).
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from stmflash.dfu.facts import DfuFacts, dfu_facts, find_alt, serial_string
from stmflash.dfu.layout import AltLayout
from stmflash.dfu.protocol import (
    ABORT,
    CLRSTATUS,
    CMD_ERASE,
    CMD_READ_UNPROTECT,
    CMD_SET_ADDRESS,
    DNLOAD,
    GETSTATE,
    GETSTATUS,
    Q_DNBUSY_STUCK,
    Q_MASS_ERASE_UNDERREPORTED,
    Q_STALL_DURING_ERASE,
    UPLOAD,
    State,
    Status,
)
from stmflash.sim.chip import AccessError, ProgramError, VirtualChip

UNDERREPORTED_POLL_MS = 100


class SimStall(Exception):
    """The ROM STALLs this request."""


class SimNak(Exception):
    """The ROM NAKs until ``until`` (perf_counter time): the host waits or times out."""

    def __init__(self, until: float) -> None:
        super().__init__("NAK")
        self.until = until


@dataclass
class _Pending:
    kind: str  # write | set_address | erase | mass_erase | unprotect | leave | bad
    address: int = 0
    data: bytes = b""


class DfuseRom:
    """DFU state machine + DfuSe command set over one :class:`VirtualChip`.

    ``scale`` divides every modelled duration (tests use it to exercise poll timeouts
    quickly).
    """

    def __init__(self, chip: VirtualChip, *, scale: float = 1.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.chip = chip
        self.facts: DfuFacts = dfu_facts(chip.device)
        self.layouts: list[AltLayout] = self.facts.layouts()
        self.quirks = self.facts.quirks
        self.transfer_size = self.facts.transfer_size
        # what the functional descriptor announces; differs only for the ``wtransfersize``
        # fault (a broken ROM, so a test can show that a wrong descriptor byte is caught)
        self.announced_transfer_size = self.transfer_size
        self.scale = scale if scale > 0 else 1.0
        self.clock = clock
        self.quirk_hits: dict[str, int] = {}  # how often each quirk showed (tests check it)
        # The option-bytes alt presents the chip's option bytes (simulator layout, see
        # stmflash.sim.chip) at the start of its first region, whatever address the ROM
        # string gives; bytes of the alt beyond them are kept here (not persisted).
        self.ob_layout = find_alt(self.layouts, "Option Bytes")
        self.ob_shadow: dict[int, bytearray] = {}
        if self.ob_layout is not None:
            for start, end in self.ob_layout.regions():
                self.ob_shadow[start] = bytearray(b"\xff" * (end - start))
        self.reset_state()

    # ---- descriptors ----------------------------------------------------------------------
    @property
    def serial(self) -> str:
        return serial_string(self.facts, self.chip.uid)

    def functional_descriptor(self) -> bytes:
        # bmAttributes 0x0B: WillDetach | CanUpload | CanDnload, not manifestation tolerant
        return struct.pack("<BBBHHH", 9, 0x21, 0x0B, 255, self.announced_transfer_size, 0x011A)

    # ---- state ------------------------------------------------------------------------------
    def reset_state(self) -> None:
        self.state = State.IDLE
        self.status = Status.OK
        self.alt = 0
        self.pointer = self.chip.device.flash_start
        self.pending: _Pending | None = None
        self.busy_until = 0.0
        self.announced_until = 0.0  # when the bwPollTimeout announced for it ran out
        self.busy_kind = ""
        self.result: tuple[int, int] = (State.DNLOAD_IDLE, Status.OK)
        self.stuck = False
        self.clear_count = 0

    def _error(self, status: int) -> None:
        self.state, self.status = State.ERROR, status

    def _duration(self, seconds: float) -> float:
        return seconds / self.scale

    @property
    def layout(self) -> AltLayout:
        return self.layouts[self.alt] if 0 <= self.alt < len(self.layouts) else AltLayout("")

    def set_alt(self, alt: int) -> None:
        if not 0 <= alt < len(self.layouts):
            raise SimStall()
        self.alt = alt
        self.state, self.status = State.IDLE, Status.OK

    # ---- requests --------------------------------------------------------------------------
    def request(self, req: int, value: int, data: bytes | None, length: int) -> bytes | int:
        """One class request; returns the IN data or the OUT byte count, or raises.

        :class:`SimNak`: the ROM is busy with the last operation; the transport holds the
        request until ``until`` and then sends it again.
        """
        if req != GETSTATUS and self.state == State.DNBUSY and self.clock() < self.busy_until:
            raise SimNak(self.busy_until)
        if req == DNLOAD:
            return self._dnload(value, data or b"")
        if req == UPLOAD:
            return self._upload(value, length)
        if req == GETSTATUS:
            return self._getstatus()
        if req == CLRSTATUS:
            return self._clrstatus()
        if req == GETSTATE:
            return bytes([self.state])
        if req == ABORT:
            if self.state in (State.IDLE, State.DNLOAD_SYNC, State.DNLOAD_IDLE, State.MANIFEST_SYNC, State.UPLOAD_IDLE):
                self.state, self.status, self.pending = State.IDLE, Status.OK, None
                return 0
            raise SimStall()
        # DETACH and unknown requests: the ROM is already in DFU mode
        self._error(Status.errSTALLEDPKT)
        raise SimStall()

    def _dnload(self, value: int, data: bytes) -> int:
        if self.state not in (State.IDLE, State.DNLOAD_IDLE):
            self._error(Status.errSTALLEDPKT)
            raise SimStall()
        if len(data) > self.transfer_size:
            self._error(Status.errSTALLEDPKT)
            raise SimStall()
        if not data:
            self.pending = _Pending("leave", self.pointer)
            self.state = State.MANIFEST_SYNC
            return 0
        if value == 0:
            cmd = data[0]
            if cmd == CMD_SET_ADDRESS and len(data) == 5:
                self.pending = _Pending("set_address", struct.unpack_from("<I", data, 1)[0])
            elif cmd == CMD_ERASE and len(data) == 5:
                self.pending = _Pending("erase", struct.unpack_from("<I", data, 1)[0])
            elif cmd == CMD_ERASE and len(data) == 1:
                self.pending = _Pending("mass_erase")
            elif cmd == CMD_READ_UNPROTECT and len(data) == 1:
                self.pending = _Pending("unprotect")
            else:
                self._error(Status.errSTALLEDPKT)
                raise SimStall()
        elif value == 1:
            self._error(Status.errSTALLEDPKT)
            raise SimStall()
        else:
            address = (value - 2) * self.transfer_size + self.pointer
            self.pending = _Pending("write", address, bytes(data))
        self.state = State.DNLOAD_SYNC
        return len(data)

    def _status_bytes(self, poll_ms: int) -> bytes:
        poll_ms = max(0, min(poll_ms, 0xFFFFFF))
        return bytes([self.status, poll_ms & 0xFF, poll_ms >> 8 & 0xFF, poll_ms >> 16 & 0xFF, self.state, 0])

    def _getstatus(self) -> bytes:
        now = self.clock()
        if self.state == State.DNLOAD_SYNC:
            duration, reported = self._execute()
            self.busy_until = now + duration
            self.announced_until = now + reported / 1000.0
            self.state, self.status = State.DNBUSY, Status.OK
            return self._status_bytes(reported)
        if self.state == State.MANIFEST_SYNC:
            self.state = State.MANIFEST
            answer = self._status_bytes(0)
            self._leave()
            return answer
        if self.state == State.DNBUSY:
            if now < self.busy_until:
                if self.busy_kind == "mass_erase" and Q_MASS_ERASE_UNDERREPORTED in self.quirks:
                    self._hit(Q_MASS_ERASE_UNDERREPORTED)
                if (self.busy_kind == "erase" and Q_STALL_DURING_ERASE in self.quirks
                        and now >= self.announced_until):
                    self._hit(Q_STALL_DURING_ERASE)
                    raise SimStall()
                raise SimNak(self.busy_until)  # the ROM is busy: the control pipe waits
            if self.stuck:
                self._hit(Q_DNBUSY_STUCK)
                return self._status_bytes(0)
            self.state, self.status = self.result
        return self._status_bytes(0)

    def _hit(self, quirk: str) -> None:
        self.quirk_hits[quirk] = self.quirk_hits.get(quirk, 0) + 1

    def _clrstatus(self) -> int:
        if self.state == State.DNBUSY and self.stuck and self.clock() >= self.busy_until:
            # H7: first CLRSTATUS reports errUNKNOWN, the second one returns to dfuIDLE
            self.stuck = False
            self._error(Status.errUNKNOWN)
            return 0
        if self.state == State.ERROR:
            self.state, self.status = State.IDLE, Status.OK
            return 0
        if self.state == State.DNBUSY:
            raise SimStall()
        self.status = Status.OK
        return 0

    def _upload(self, value: int, length: int) -> bytes:
        if self.state not in (State.IDLE, State.UPLOAD_IDLE):
            self._error(Status.errSTALLEDPKT)
            raise SimStall()
        if value == 0:
            self.state = State.UPLOAD_IDLE
            return bytes([0x00, CMD_SET_ADDRESS, CMD_ERASE, CMD_READ_UNPROTECT])[:length]
        if value == 1 or length > self.transfer_size:
            self._error(Status.errSTALLEDPKT)
            raise SimStall()
        address = (value - 2) * self.transfer_size + self.pointer
        if self._ob_region(address) is not None:
            self.state = State.UPLOAD_IDLE
            return self._ob_read(address, length)
        if self.chip.rdp_level > 0 and self.chip.region_kind(address) in ("flash", "ram", "otp"):
            self._error(Status.errVENDOR)
            raise SimStall()
        try:
            data = self._read(address, length)
        except AccessError:
            self._error(Status.errTARGET)
            raise SimStall() from None
        self.state = State.UPLOAD_IDLE
        return data

    # ---- option bytes ----------------------------------------------------------------------
    def _ob_region(self, address: int) -> tuple[int, int] | None:
        if self.ob_layout is None or self.alt != self.layouts.index(self.ob_layout):
            return None
        return next(((a, b) for a, b in self.ob_layout.regions() if a <= address < b), None)

    def _is_block2(self, start: int) -> bool:
        """The alt's region is the chip's second option-byte block (F42x bank 2)."""
        second = self.chip.device.option_bytes2
        return second is not None and start == second.start and bool(self.chip.option_bytes2())

    def _ob_area(self, start: int) -> bytearray:
        area = bytearray(self.ob_shadow[start])
        if self.ob_layout is not None and start == self.ob_layout.regions()[0][0]:
            real = self.chip.option_bytes()[: len(area)]
            area[: len(real)] = real
        elif self._is_block2(start):
            real = self.chip.option_bytes2()[: len(area)]
            area[: len(real)] = real
        return area

    def _ob_read(self, address: int, length: int) -> bytes:
        start, end = self._ob_region(address) or (address, address)
        area = self._ob_area(start)
        return bytes(area[address - start : min(end, address + length) - start])

    def _ob_write(self, address: int, data: bytes) -> None:
        start, end = self._ob_region(address) or (address, address)
        if address + len(data) > end:
            raise AccessError(f"option-byte write at 0x{address:08X} overflows the area")
        area = self._ob_area(start)
        area[address - start : address - start + len(data)] = data
        self.ob_shadow[start][:] = area
        if self.ob_layout is not None and start == self.ob_layout.regions()[0][0]:
            n = len(self.chip.option_bytes())
            self.chip.write_option_bytes(bytes(area[:n]))  # reloads the option bytes: reset
        elif self._is_block2(start):
            n = len(self.chip.option_bytes2())
            self.chip.write_option_bytes2(bytes(area[:n]))  # reloads the option bytes: reset
        else:
            self.chip.reset()

    def _read(self, address: int, length: int) -> bytes:
        out = bytearray()
        pos = address
        while len(out) < length:
            try:
                out += self.chip.read(pos, 1 if self.chip.region_kind(pos) is None else min(length - len(out), 256))
            except AccessError:
                if self.layout.sector_at(pos) is None:
                    if out:
                        break  # end of the region: short packet
                    raise
                out.append(0xFF)  # described by the alt but not modelled by the chip
            pos = address + len(out)
        return bytes(out[:length])

    # ---- operations (run on the first GETSTATUS) ---------------------------------------
    def _execute(self) -> tuple[float, int]:
        """Run the pending operation; returns (duration s, reported poll ms)."""
        p, self.pending = self.pending, None
        self.busy_kind = p.kind if p else ""
        self.result = (State.DNLOAD_IDLE, Status.OK)
        self.stuck = False
        chip, timing, dev = self.chip, self.chip.timing, self.chip.device
        if p is None:
            return 0.0, 0
        protected = chip.rdp_level > 0
        duration = 0.0
        reported: int | None = None
        try:
            if p.kind == "set_address":
                # the option bytes stay reachable under level 1: it is how RDP is lowered
                if protected and self._ob_region(p.address) is None:
                    self.result = (State.ERROR, Status.errVENDOR)
                else:
                    self.pointer = p.address
            elif p.kind == "erase":
                unit = dev.unit_at(p.address)
                if protected:
                    self.result = (State.ERROR, Status.errVENDOR)
                elif unit is None or self.layout.sector_at(p.address) is None:
                    self.result = (State.ERROR, Status.errTARGET)
                else:
                    chip.erase_units([unit.index])
                    duration = self._duration(timing.erase_time([unit]))
                    if Q_STALL_DURING_ERASE in self.quirks:
                        reported = int(duration * 1000 / 2)
                    if Q_DNBUSY_STUCK in self.quirks and unit.bank > 1:
                        self.stuck = True
                self.pointer = p.address
            elif p.kind == "mass_erase":
                if protected:
                    self.result = (State.ERROR, Status.errVENDOR)
                else:
                    chip.mass_erase()
                    duration = self._duration(timing.mass_erase_time())
                    if Q_MASS_ERASE_UNDERREPORTED in self.quirks:
                        reported = min(UNDERREPORTED_POLL_MS, math.ceil(duration * 1000))
            elif p.kind == "unprotect":
                duration = self._duration(timing.mass_erase_time())
                chip.readout_unprotect()  # mass erase + reset: the device re-enumerates
            elif p.kind == "write":
                duration = self._write(p.address, p.data, protected)
        except ProgramError:
            self.result = (State.ERROR, Status.errPROG)
        except AccessError:
            self.result = (State.ERROR, Status.errTARGET)
        if reported is None:
            reported = math.ceil(duration * 1000)
        return duration, reported

    def _write(self, address: int, data: bytes, protected: bool) -> float:
        chip = self.chip
        if self._ob_region(address) is not None:
            self._ob_write(address, data)
            return self._duration(chip.timing.program_time(len(data)))
        kind = chip.region_kind(address)
        sector = self.layout.sector_at(address)
        if kind is None or sector is None or not sector.writable and kind != "ob":
            self.result = (State.ERROR, Status.errTARGET)
            return 0.0
        if protected and kind != "ob":
            self.result = (State.ERROR, Status.errVENDOR)
            return 0.0
        chip.program(address, data)  # option bytes: the chip reloads them and resets
        return self._duration(chip.timing.program_time(len(data))) if kind in ("flash", "otp") else 0.0

    def _leave(self) -> None:
        """Jump to the application at the pointer (or reset when no valid vector table)."""
        chip = self.chip
        addr = self.pointer
        try:
            sp, pc = struct.unpack("<II", chip.read(addr, 8))
        except AccessError:
            sp = pc = 0xFFFFFFFF
        valid = chip.device.ram_region_of(sp - 1) is not None and chip.region_kind(pc & ~1) == "flash"
        if valid and chip.rdp_level < 2:
            chip.go(addr)
        else:
            chip.reset()
