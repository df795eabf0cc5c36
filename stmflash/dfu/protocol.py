"""DFU 1.1 state machine and ST's DfuSe commands over pyusb control transfers.

Why this is more than a request table: the ROM executes an erase or a write on the first
GETSTATUS after the DNLOAD and answers dfuDNBUSY with a poll timeout; the host has to wait,
poll again, and cope with ROMs that misreport (F4 mass erase under-reports its time, L4
stalls GETSTATUS while a page erase runs, H7 stays dfuDNBUSY until cleared twice).  Those
quirks are names in the device table (``dfu.quirks``) and are honoured here generically.
Every USB failure becomes a :mod:`stmflash.errors` exception naming the operation.
"""

from __future__ import annotations

import errno
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from stmflash.errors import (
    LinkError,
    ProtectionError,
    StmflashError,
    TimeoutError_,
    UsageError,
)

# requests (DFU 1.1 §3)
DETACH, DNLOAD, UPLOAD, GETSTATUS, CLRSTATUS, GETSTATE, ABORT = range(7)
REQ_OUT = 0x21  # class, interface, host-to-device
REQ_IN = 0xA1

# DfuSe commands (AN3156), sent as DNLOAD with wValue = 0
CMD_SET_ADDRESS = 0x21
CMD_ERASE = 0x41
CMD_READ_UNPROTECT = 0x92

# known ROM quirks (device table ``dfu.quirks``)
Q_MASS_ERASE_UNDERREPORTED = "mass_erase_poll_underreported"
Q_STALL_DURING_ERASE = "getstatus_stall_during_erase"
Q_DNBUSY_STUCK = "dnbusy_stuck"


class State(IntEnum):
    APP_IDLE = 0
    APP_DETACH = 1
    IDLE = 2
    DNLOAD_SYNC = 3
    DNBUSY = 4
    DNLOAD_IDLE = 5
    MANIFEST_SYNC = 6
    MANIFEST = 7
    MANIFEST_WAIT_RESET = 8
    UPLOAD_IDLE = 9
    ERROR = 10


class Status(IntEnum):
    OK = 0x00
    errTARGET = 0x01
    errFILE = 0x02
    errWRITE = 0x03
    errERASE = 0x04
    errCHECK_ERASED = 0x05
    errPROG = 0x06
    errVERIFY = 0x07
    errADDRESS = 0x08
    errNOTDONE = 0x09
    errFIRMWARE = 0x0A
    errVENDOR = 0x0B
    errUSBR = 0x0C
    errPOR = 0x0D
    errUNKNOWN = 0x0E
    errSTALLEDPKT = 0x0F


def _status_name(code: int) -> str:
    try:
        return Status(code).name
    except ValueError:
        return f"status 0x{code:02X}"


def _state_name(code: int) -> str:
    try:
        return "dfu" + State(code).name if code >= 2 else State(code).name
    except ValueError:
        return f"state {code}"


@dataclass(frozen=True)
class DfuStatus:
    status: int
    poll_ms: int
    state: int
    istring: int = 0

    @classmethod
    def parse(cls, raw: bytes) -> DfuStatus:
        if len(raw) < 6:
            raise LinkError(f"short DFU GETSTATUS answer ({len(raw)} bytes, expected 6)")
        return cls(raw[0], raw[1] | raw[2] << 8 | raw[3] << 16, raw[4], raw[5])

    def __str__(self) -> str:
        return f"{_state_name(self.state)}/{_status_name(self.status)}"


class DeviceGone(LinkError):
    """The device disappeared from the bus (unplugged, reset, or left DFU mode)."""


class Stall(LinkError):
    """The device stalled a control request (EPIPE)."""


def status_error(st: DfuStatus, what: str) -> StmflashError:
    """The exception explaining a dfuERROR answer to ``what``."""
    code = st.status
    if code == Status.errVENDOR:
        return ProtectionError(
            f"{what}: refused with errVENDOR - readout protection is active "
            "(use --unprotect to remove it; this erases the flash)"
        )
    if code in (Status.errTARGET, Status.errADDRESS):
        return UsageError(f"{what}: the device rejected the address ({_status_name(code)})")
    if code in (Status.errWRITE, Status.errERASE, Status.errCHECK_ERASED, Status.errPROG, Status.errVERIFY):
        return StmflashError(f"{what}: the device reported a flash failure ({_status_name(code)})")
    return StmflashError(f"{what}: the device reported {st}")


def translate_usb_error(exc: BaseException, what: str) -> LinkError:
    """A pyusb exception as the stmflash error a user can act on."""
    import usb.core

    if isinstance(exc, usb.core.USBTimeoutError):
        return TimeoutError_(f"{what}: USB timeout, the device stopped answering")
    if isinstance(exc, usb.core.USBError):
        code = getattr(exc, "backend_error_code", None)
        err = getattr(exc, "errno", None)
        if err == errno.ENODEV or code == -4:
            return DeviceGone(f"{what}: the DFU device disconnected")
        if err == errno.EPIPE or code == -9:
            return Stall(f"{what}: the device stalled the request")
        if err == errno.ETIMEDOUT or code == -7:
            return TimeoutError_(f"{what}: USB timeout, the device stopped answering")
        if err == errno.EACCES or code == -3:
            return LinkError(
                f"{what}: permission denied opening the DFU device (on Linux install udev/50-stmflash.rules)"
            )
        return LinkError(f"{what}: USB error: {exc}")
    return LinkError(f"{what}: {exc}")


class DfuProtocol:
    """Requests and polling on one claimed DFU interface of an opened pyusb device."""

    def __init__(
        self,
        dev: Any,
        interface: int = 0,
        *,
        transfer_size: int = 2048,
        device_transfer_size: int | None = None,
        quirks: Iterable[str] = (),
        timeout_ms: int = 5000,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dev = dev
        self.interface = interface
        self.transfer_size = transfer_size
        # block numbers are counted by the ROM in units of *its* wTransferSize
        self.device_transfer_size = device_transfer_size or transfer_size
        self.quirks = frozenset(quirks)
        self.timeout_ms = timeout_ms
        self.sleep = sleep
        self.clock = clock
        self.pointer: int | None = None  # last SET_ADDRESS (None: unknown)
        self.uploading = False
        self.upload_next: tuple[int, int] | None = None  # (address, block) a read may continue at
        self.transfers = 0

    # ---- raw requests -----------------------------------------------------------------
    def _ctrl(self, what: str, rtype: int, req: int, value: int, data_or_len: Any, timeout_ms: int | None = None) -> Any:
        import usb.core

        from stmflash import trace

        self.transfers += 1
        try:
            result = self.dev.ctrl_transfer(rtype, req, value, self.interface, data_or_len,
                                            timeout_ms or self.timeout_ms)
        except (usb.core.USBError, NotImplementedError) as exc:
            trace.usb(rtype, req, value, self.interface, data_or_len, None)
            raise translate_usb_error(exc, what) from None
        trace.usb(rtype, req, value, self.interface, data_or_len, result)
        return result

    def get_status(self, what: str = "GETSTATUS", timeout_ms: int | None = None) -> DfuStatus:
        raw = self._ctrl(what, REQ_IN, GETSTATUS, 0, 6, timeout_ms)
        return DfuStatus.parse(bytes(raw))

    def clear_status(self, what: str = "CLRSTATUS") -> None:
        self._ctrl(what, REQ_OUT, CLRSTATUS, 0, None)

    def get_state(self) -> int:
        raw = self._ctrl("GETSTATE", REQ_IN, GETSTATE, 0, 1)
        return bytes(raw)[0]

    def abort(self) -> None:
        self._ctrl("ABORT", REQ_OUT, ABORT, 0, None)
        self.uploading = False
        self.upload_next = None

    def dnload(self, block: int, data: bytes, what: str = "DNLOAD") -> None:
        n = self._ctrl(what, REQ_OUT, DNLOAD, block, bytes(data) if data else None)
        if data and n != len(data):
            raise LinkError(f"{what}: the device accepted {n} of {len(data)} bytes")

    def upload(self, block: int, length: int, what: str = "UPLOAD") -> bytes:
        self.uploading = True
        return bytes(self._ctrl(what, REQ_IN, UPLOAD, block, length))

    # ---- state handling -----------------------------------------------------------------
    def to_idle(self, what: str = "reaching dfuIDLE", attempts: int = 4) -> DfuStatus:
        """Bring the device to dfuIDLE from wherever a previous session left it."""
        st = self.get_status(what)
        for _ in range(attempts):
            if st.state == State.IDLE and st.status == Status.OK:
                return st
            if st.state in (State.APP_IDLE, State.APP_DETACH):
                raise LinkError(f"{what}: the device is in run-time mode, not in its DFU bootloader")
            if st.state in (State.DNLOAD_IDLE, State.UPLOAD_IDLE, State.DNLOAD_SYNC, State.MANIFEST_SYNC):
                self.abort()
            elif st.state == State.DNBUSY:
                self.sleep(max(st.poll_ms, 5) / 1000.0)
            else:  # dfuERROR, or a bad status in another state
                self.clear_status(what)
            st = self.get_status(what)
        if st.state == State.IDLE:
            if st.status != Status.OK:
                self.clear_status(what)
            return st
        raise LinkError(f"{what}: the device stays in {st}")

    def abort_to_idle(self) -> None:
        self.abort()
        st = self.get_status("ABORT")
        if st.state != State.IDLE:
            if st.state == State.ERROR:
                self.clear_status()
                st = self.get_status("ABORT")
            if st.state != State.IDLE:
                raise LinkError(f"ABORT: the device is in {st}, not dfuIDLE")

    def explain_stall(self, stall: Stall, what: str) -> StmflashError:
        """After a stalled DNLOAD/UPLOAD, GETSTATUS tells why (errVENDOR under RDP, ...)."""
        try:
            st = self.get_status(what)
        except LinkError:
            return stall
        if st.state == State.ERROR or st.status != Status.OK:
            try:
                self.clear_status(what)
            except LinkError:
                pass
            if st.status != Status.OK:
                return status_error(st, what)
        return stall

    def wait(
        self,
        what: str,
        deadline_s: float,
        *,
        tolerate_stalls: bool = False,
        long_poll: bool = False,
        expect_reset: bool = False,
        maybe_stuck: bool = False,
    ) -> DfuStatus:
        """Poll GETSTATUS until the operation started by a DNLOAD finishes.

        The first GETSTATUS starts the operation (dfuDNBUSY + poll timeout); we sleep for the
        announced time and poll again, within an overall deadline.  ``tolerate_stalls``:
        STALLed polls mean "still busy" (L4 page erase).  ``long_poll``: the poll timeout is
        under-reported and the ROM NAKs until done, so the USB timeout stretches to the
        deadline (F4 mass erase).  ``maybe_stuck``: the ROM may stay dfuDNBUSY after the
        operation; two CLRSTATUS finish it (H7).
        """
        start = self.clock()
        deadline = start + deadline_s
        st = self.get_status(what)
        slept_poll = False
        last_poll = st.poll_ms
        backoff = 0.0
        while True:
            if st.state == State.DNBUSY:
                if expect_reset:
                    return st
                if maybe_stuck and slept_poll and st.poll_ms == 0:
                    # H7: operation done but the ROM never leaves dfuDNBUSY
                    self._clear_stuck(what)
                    return DfuStatus(Status.OK, 0, State.IDLE)
                now = self.clock()
                if now >= deadline:
                    raise TimeoutError_(f"{what}: still busy after {deadline_s:.1f} s")
                delay = max(st.poll_ms / 1000.0, backoff)
                self.sleep(min(delay, max(deadline - now, 0.0)))
                slept_poll = True
                timeout = None
                if long_poll:
                    timeout = max(int((deadline - self.clock()) * 1000) + 100, self.timeout_ms)
                try:
                    st = self.get_status(what, timeout)
                    last_poll = st.poll_ms
                    backoff = 0.0
                except Stall:
                    if not tolerate_stalls or self.clock() >= deadline:
                        raise
                    backoff = max(backoff * 2, last_poll / 1000.0, 0.005)
                    st = DfuStatus(Status.OK, 0, State.DNBUSY)
                except TimeoutError_:
                    if not long_poll or self.clock() >= deadline:
                        raise
                    st = DfuStatus(Status.OK, 0, State.DNBUSY)
            elif st.state == State.ERROR or st.status != Status.OK:
                err = status_error(st, what)
                try:
                    self.clear_status(what)
                except LinkError:
                    pass
                raise err
            else:
                return st

    def _clear_stuck(self, what: str) -> None:
        for _ in range(2):
            self.clear_status(what)
            st = self.get_status(what)
            if st.state == State.IDLE:
                return
        raise LinkError(f"{what}: the device stays in {st} after CLRSTATUS")

    # ---- DfuSe commands -----------------------------------------------------------------
    def _leave_upload(self) -> None:
        if self.uploading:
            self.abort_to_idle()

    def special(self, payload: bytes, what: str, deadline_s: float, **wait_kw: Any) -> DfuStatus:
        self._leave_upload()
        try:
            self.dnload(0, payload, what)
        except Stall as stall:
            raise self.explain_stall(stall, what) from None
        return self.wait(what, deadline_s, **wait_kw)

    def set_address(self, address: int, deadline_s: float = 5.0) -> None:
        what = f"SET_ADDRESS 0x{address:08X}"
        self.special(struct.pack("<BI", CMD_SET_ADDRESS, address), what, deadline_s)
        self.pointer = address

    def erase_page(self, address: int, deadline_s: float) -> None:
        self.special(
            struct.pack("<BI", CMD_ERASE, address),
            f"erasing the page at 0x{address:08X}",
            deadline_s,
            tolerate_stalls=Q_STALL_DURING_ERASE in self.quirks,
            maybe_stuck=Q_DNBUSY_STUCK in self.quirks,
        )
        self.pointer = None

    def mass_erase(self, deadline_s: float) -> None:
        self.special(
            bytes([CMD_ERASE]),
            "mass erase",
            deadline_s,
            long_poll=Q_MASS_ERASE_UNDERREPORTED in self.quirks,
            tolerate_stalls=Q_STALL_DURING_ERASE in self.quirks,
            maybe_stuck=Q_DNBUSY_STUCK in self.quirks,
        )
        self.pointer = None

    def read_unprotect(self) -> None:
        """Read Unprotect: the ROM answers dfuDNBUSY, mass-erases and resets (disconnects)."""
        self._leave_upload()
        what = "Read Unprotect"
        try:
            self.dnload(0, bytes([CMD_READ_UNPROTECT]), what)
            self.wait(what, 5.0, expect_reset=True)
        except DeviceGone:
            pass

    def get_commands(self) -> bytes:
        """UPLOAD block 0: the command bytes the ROM supports (``00 21 41 92``)."""
        self.abort_to_idle()
        data = self.upload(0, 16, "Get Commands")
        self.abort_to_idle()
        return data

    def download(self, address: int, data: bytes, deadline_s: float, *, expect_reset: bool = False) -> None:
        """Write ``data`` (<= transfer size) at ``address``.

        When ``address`` continues the current pointer in whole device transfer units, the
        next block number addresses it and the SET_ADDRESS round trip is saved.
        """
        self._leave_upload()
        xfer = self.device_transfer_size
        block = None
        if self.pointer is not None and address >= self.pointer and (address - self.pointer) % xfer == 0:
            candidate = (address - self.pointer) // xfer + 2
            if candidate <= 0xFFFF:
                block = candidate
        if block is None:
            self.set_address(address)
            block = 2
        what = f"writing {len(data)} bytes at 0x{address:08X}"
        try:
            self.dnload(block, data, what)
        except Stall as stall:
            raise self.explain_stall(stall, what) from None
        self.wait(what, deadline_s, expect_reset=expect_reset)

    def read(self, address: int, length: int, progress: Callable[[int], None] | None = None) -> bytes:
        """UPLOAD ``length`` bytes from ``address`` (SET_ADDRESS, ABORT, blocks 2, 3, ...)."""
        out = bytearray()
        xfer = self.device_transfer_size
        chunk = min(self.transfer_size, xfer)
        pos = address
        while len(out) < length:
            if self.uploading and self.upload_next is not None and self.upload_next[0] == pos:
                block = self.upload_next[1]  # a sequential read continues the UPLOAD blocks
            else:
                self._leave_upload()
                self.set_address(pos)
                self.abort_to_idle()
                block = 2
            self.upload_next = None
            while len(out) < length and block <= 0xFFFF:
                n = min(chunk, length - len(out))
                what = f"reading {n} bytes at 0x{pos:08X}"
                try:
                    got = self.upload(block, n, what)
                except Stall as stall:
                    self.uploading = False
                    raise self.explain_stall(stall, what) from None
                if len(got) < n:
                    out += got
                    raise LinkError(f"{what}: the device returned only {len(got)} bytes")
                out += got
                pos += n
                if progress:
                    progress(n)
                block += 1
                if chunk != xfer and len(out) < length:
                    break  # block numbers count device-sized units: re-address
        if chunk == xfer and length % xfer == 0 and block <= 0xFFFF:
            self.upload_next = (pos, block)  # stay in dfuUPLOAD-IDLE for the next read
        else:
            self.abort_to_idle()
        self.pointer = None
        return bytes(out)

    def leave(self, address: int | None) -> None:
        """Leave DFU: SET_ADDRESS to the vector table, zero-length DNLOAD, one GETSTATUS.

        The ROM jumps to the application and drops off the bus, often before answering;
        a disconnect, stall or I/O error from here on is the expected outcome.
        """
        for attempt in range(2):
            try:
                if address is not None:
                    self.set_address(address)
                self._leave_upload()
                self.dnload(2, b"", "leave DFU")
                st = self.get_status("leave DFU")
            except DeviceGone:
                return
            except LinkError:
                # a stall or timeout before the ROM took the request: once more from dfuIDLE
                # (a device that already left answers nothing, which is success)
                if attempt:
                    return
                try:
                    self.to_idle("leave DFU")
                except LinkError:
                    return
                continue
            if st.state == State.ERROR:
                raise status_error(st, "leave DFU")
            return
