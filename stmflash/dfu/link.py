"""DfuLink: the Link protocol (stmflash.link) over a DfuSe ROM bootloader.

The pipeline programs through four verbs (read, write, erase, start); this class maps them
onto DfuSe: alternate settings chosen by *name* and by the address being accessed, block
numbers relative to the address pointer, an erase per page/sector, read-back through
UPLOAD (the ROM has no checksum command), and leave as "start".  Each operation gets a
deadline from the device table's worst-case timings rather than a fixed timeout, so a 32 s
F4 mass erase and a 20 ms L4 page erase are both waited for correctly.

A stalled, timed-out or disconnected request is retried (:meth:`DfuLink._retry`): the
status is cleared and the device brought back to dfuIDLE (or waited for on the same port
after a disconnect), a block is read back before it is sent again (never programmed twice;
a partly programmed block is handed to the pipeline, which erases and rewrites its unit),
an erase is re-issued, and the pipeline's verification re-checks everything written. A
readout-protection answer (errVENDOR) is believed only when it comes again after that.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from stmflash.devices import Device, EraseUnit
from stmflash.dfu.facts import DfuFacts, dfu_facts, find_alt, identify
from stmflash.dfu.layout import AltLayout
from stmflash.dfu.protocol import DeviceGone, DfuProtocol, Stall
from stmflash.dfu.usb import DfuAlt, DfuDeviceInfo, find_devices
from stmflash.errors import LinkError, NackError, ProtectionError, TimeoutError_, UsageError

LINUX_MAX_TRANSFER = 4096  # usbfs limit on one control transfer
FLASH, OPTION_BYTES, OTP, FEATURE = "Internal Flash", "Option Bytes", "OTP Memory", "Device Feature"
REENUMERATE_S = 10.0
RETRIES = 4  # per request: a USB hub glitch costs a retry, not a board
REAPPEAR_S = 3.0  # after an unexpected disconnect: a glitch re-enumerates within a second or two

T = TypeVar("T")


def block2_in_regions(device: Device, regions: Iterable[tuple[int, int]]) -> bool:
    """Does one of an option-bytes alt's regions hold the part's second option-byte block
    (F42x, L4+ and G47x ROMs name it; F469 and L47x/L49x as modelled do not)?"""
    second = device.option_bytes2
    return second is not None and any(a == second.start and b - a >= second.size for a, b in regions)


def block2_wrp_error(device: Device) -> UsageError:
    """Bank-2 write protection through an alt that does not name the second block."""
    second = device.option_bytes2
    return UsageError(
        f"{device.short_name}: the DFU option-bytes alt does not name the bank-2 option bytes"
        + (f" at 0x{second.start:08X}" if second is not None else "")
        + "; protect those sectors over uart"
    )


def block2_fields_error(device: Device, names: Sequence[str], what: str = "") -> UsageError:
    """Option fields of the second block through an alt that does not name it."""
    second = device.option_bytes2
    listed = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    where = f" at 0x{second.start:08X}" if second is not None else ""
    return UsageError(
        f"{what + ' ' if what else ''}{listed}: {device.short_name}'s second option-byte block{where} "
        "is not in its DFU option-bytes alt: write it over uart (--ob-reset-defaults includes it)"
    )


class DfuLink:
    """An opened, identified DfuSe device (implements :class:`stmflash.link.Link`)."""

    def __init__(
        self,
        info: DfuDeviceInfo,
        *,
        device: Device | None = None,
        timeout_ms: int = 5000,
        sleep: Callable[[float], None] = time.sleep,
        retries: int = RETRIES,
    ) -> None:
        self.info = info
        self.retries = retries
        self.retried = 0  # requests that needed a retry (reported, tested)
        self.timeout_ms = timeout_ms
        self.sleep = sleep
        layouts = [a.layout for a in info.alts]
        ident = identify(layouts, info.bcd_device, info.product)
        self.device: Device = device.with_flash_size(_flash_size(layouts) or device.flash_size) if device else ident
        self.facts: DfuFacts = dfu_facts(self.device)
        xfer = info.transfer_size or 2048
        if sys.platform.startswith("linux"):
            xfer = min(xfer, LINUX_MAX_TRANSFER)
        xfer = max(xfer, 64)
        align = max(self.device.write_align, 1)
        self.max_write = self.max_read = xfer - xfer % align if xfer >= align else xfer
        self.uid = info.serial or None  # the board's identity for batch; not the chip UID
        self.uid_is_usb_serial = True
        self.alt: DfuAlt | None = None
        self.proto = self._protocol()
        self.closed = False

    def _protocol(self) -> DfuProtocol:
        return DfuProtocol(
            self.info.dev,
            self.info.alts[0].interface if self.info.alts else 0,
            transfer_size=self.max_write,
            device_transfer_size=self.info.transfer_size or self.max_write,
            quirks=self.facts.quirks,
            timeout_ms=self.timeout_ms,
            sleep=self.sleep,
        )

    # ---- session ------------------------------------------------------------------------
    def open(self) -> DfuLink:
        """Configure, claim the DFU interface, select the flash alt and reach dfuIDLE."""
        import usb.core

        def once() -> None:
            dev = self.info.dev
            self.alt = None
            try:
                try:
                    dev.set_configuration()
                except usb.core.USBError:
                    pass  # already configured (Linux/macOS may refuse a second SET_CONFIGURATION)
                self.select(FLASH if self.find_alt(FLASH) is not None else self.info.alts[0])
            except usb.core.USBError as exc:
                from stmflash.dfu.protocol import translate_usb_error

                raise translate_usb_error(exc, f"opening the DFU device at {self.info.path}") from None

        self._retry(f"opening the DFU device at {self.info.path}", once, reopen=False)
        return self

    # ---- retries ------------------------------------------------------------------------
    def _retry(
        self,
        what: str,
        op: Callable[[], T],
        *,
        before_retry: Callable[[], T | None] | None = None,
        reopen: bool = True,
        retry_on: tuple[type[LinkError], ...] = (),
    ) -> T:
        """Run ``op``; after a stall, timeout or disconnect (or one of ``retry_on``) recover
        the link and run it again (``before_retry`` may find it already done). errVENDOR is
        confirmed the same way."""
        last: LinkError | None = None
        protection_seen = False
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                try:
                    self._recover(last, reopen=reopen)
                    if before_retry is not None:
                        done = before_retry()
                        if done is not None:
                            return done
                except (Stall, TimeoutError_, DeviceGone) as exc:
                    last = exc
                    continue
            try:
                return op()
            except ProtectionError as exc:
                if protection_seen or attempt == self.retries:
                    raise
                protection_seen = True  # a diagnosis is confirmed before it is reported
                last = LinkError(str(exc))
            except (Stall, TimeoutError_, DeviceGone, *retry_on) as exc:
                last = exc
        assert last is not None
        raise type(last)(f"{last} (after {self.retries} retries)") if isinstance(last, LinkError) else last

    def _recover(self, exc: BaseException | None, *, reopen: bool = True) -> None:
        """Back to a known state: dfuIDLE with a cleared status, or (after a disconnect) the
        device found again on the same port path and reopened."""
        self.proto.pointer = None
        self.proto.upload_next = None
        self.proto.uploading = False
        if not isinstance(exc, DeviceGone):
            try:
                self.proto.to_idle("recovering after a failed request")
                return
            except DeviceGone as gone:
                exc = gone
        try:
            self._wait_back(REAPPEAR_S)
        except LinkError:
            raise LinkError(f"{exc}; it did not come back within {REAPPEAR_S:.0f} s") from None
        if reopen:
            self.open()

    def close(self) -> None:
        import usb.util

        if self.closed:
            return
        self.closed = True
        try:
            usb.util.dispose_resources(self.info.dev)
        except Exception:  # noqa: BLE001 - the device may be gone already
            pass

    def __enter__(self) -> DfuLink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def layouts(self) -> list[AltLayout]:
        return [a.layout for a in self.info.alts]

    def find_alt(self, name: str) -> DfuAlt | None:
        lay = find_alt(self.layouts, name)
        if lay is None:
            return None
        return next(a for a in self.info.alts if a.layout is lay)

    def select(self, name_or_alt: str | DfuAlt) -> DfuAlt:
        """Switch to an alternate setting (by name, case-insensitive) and reach dfuIDLE."""
        import usb.core

        alt = name_or_alt if isinstance(name_or_alt, DfuAlt) else self.find_alt(name_or_alt)
        if alt is None:
            names = ", ".join(repr(a.name) for a in self.info.alts)
            raise UsageError(f"the DFU device has no alternate setting {name_or_alt!r} (it has {names})")
        if self.alt is not None and self.alt.alt == alt.alt:
            return alt
        if self.proto.uploading:
            self.proto.abort_to_idle()
        try:
            self.info.dev.set_interface_altsetting(alt.interface, alt.alt)
        except usb.core.USBError as exc:
            from stmflash.dfu.protocol import translate_usb_error

            raise translate_usb_error(exc, f"selecting alternate setting {alt.alt} ({alt.name})") from None
        self.alt = alt
        self.proto.pointer = None
        self.proto.uploading = False
        self.proto.to_idle(f"selecting {alt.name}")
        return alt

    def _alt_for(self, address: int, length: int = 1) -> None:
        if self.alt is not None and self.alt.layout.contains(address, length):
            return
        for a in self.info.alts:
            if a.layout.contains(address, length):
                self.select(a)
                return
        if self.alt is None or not self.alt.layout.sectors:
            self.select(FLASH)

    # ---- deadlines ----------------------------------------------------------------------------
    def _unit_deadline(self, unit: EraseUnit) -> float:
        return max(self.device.unit_erase_ms(unit)[1] * 2 / 1000.0, 5.0)

    def _mass_deadline(self) -> float:
        return max(self.device.mass_erase_time_ms()[1] * 1.5 / 1000.0, 35.0)

    def _write_deadline(self, n: int) -> float:
        return max(self.device.program_time_ms(n)[1] * 2 / 1000.0, 5.0)

    # ---- Link ------------------------------------------------------------------------------------
    def read(self, address: int, length: int, progress: Callable[[int], None] | None = None) -> bytes:
        if length <= 0:
            return b""

        def op() -> bytes:
            self._alt_for(address, length)
            return self.proto.read(address, length, progress)

        return self._retry(f"reading 0x{address:08X}", op)

    def write(self, address: int, data: bytes) -> None:
        if len(data) > self.max_write:
            raise UsageError(f"write of {len(data)} bytes exceeds the DFU transfer size {self.max_write}")

        def op() -> None:
            self._alt_for(address, len(data))
            sector = self.alt.layout.sector_at(address) if self.alt else None
            if sector is not None and not sector.writable:
                raise ProtectionError(
                    f"0x{address:08X} is not writable through the DFU bootloader ({self.alt.name if self.alt else ''})"
                )
            self.proto.download(address, data, self._write_deadline(len(data)))

        def already_done() -> bool | None:
            # the block may have been programmed before the failure: never program it twice
            got = self.read(address, len(data))
            if got == data:
                return True
            if got == self.device.erased_bytes * len(data):
                return None  # not programmed (reads erased): send it again
            raise NackError(
                f"writing {len(data)} bytes at 0x{address:08X}: the block was partly programmed when "
                "the request failed"
            )  # the pipeline erases the unit and rewrites it

        self._retry(f"writing 0x{address:08X}", op, before_retry=already_done)

    def erase(self, units: Sequence[EraseUnit]) -> None:
        for unit in units:
            def op(u: EraseUnit = unit) -> None:
                self._alt_for(u.address)
                self.proto.erase_page(u.address, self._unit_deadline(u))

            self._retry(f"erasing 0x{unit.address:08X}", op)

    def mass_erase(self) -> None:
        def op() -> None:
            self.select(FLASH)
            self.proto.mass_erase(self._mass_deadline())

        self._retry("mass erase", op)

    def resync(self) -> None:
        """Back to dfuIDLE with a cleared status (before a diagnosis is confirmed)."""
        self._retry("resynchronising", lambda: self._recover(None))

    def checksum(self, address: int, length: int) -> int | None:
        return None  # DfuSe has no checksum command: the pipeline reads back

    def start(self, address: int) -> None:
        """Leave DFU and run the application whose vector table is at ``address``."""
        self.select(FLASH)
        self.proto.leave(address)
        self.close()

    def reset(self) -> None:
        """DfuSe has no reset request: leave to the flash start (the ROM resets when no
        valid application is there)."""
        self.select(FLASH)
        try:
            self.proto.leave(self.device.flash_start)
        except ProtectionError:
            # readout protection refuses SET_ADDRESS; after its reset the ROM's pointer
            # already is the flash start, so leave from there
            self.proto.to_idle("leaving DFU under readout protection")
            self.proto.leave(None)
        self.close()

    # ---- beyond the pipeline ---------------------------------------------------------------
    def get_commands(self) -> bytes:
        return self.proto.get_commands()

    def option_bytes_alt(self) -> DfuAlt:
        alt = self.find_alt(OPTION_BYTES)
        if alt is None or not alt.layout.sectors:
            raise UsageError("this DFU bootloader exposes no option-bytes alternate setting")
        return alt

    def read_option_bytes(self) -> list[tuple[int, bytes]]:
        """Every region of the option-bytes alt, read whole as the ROM requires."""
        def op() -> list[tuple[int, bytes]]:
            alt = self.select(self.option_bytes_alt())
            return [(start, self.proto.read(start, end - start)) for start, end in alt.layout.regions()]

        return self._retry("reading the option bytes", op)

    def check_option_bytes(
        self, data: bytes, address: int | None = None, *, confirm_permanent: bool = False, where: str = ""
    ) -> int:
        """Everything about an option-byte write that can be refused before the device is
        opened (no request is sent): the alt and the range exist, and the RDP-2 gate
        (:mod:`stmflash.safety`). Returns the start address."""
        from stmflash.safety import check_option_bytes_data

        alt = self.option_bytes_alt()
        regions = alt.layout.regions()
        start = address if address is not None else regions[0][0]
        region = next(((a, b) for a, b in regions if a <= start < b), None)
        if region is None:
            raise UsageError(f"0x{start:08X} is not in the option-bytes area ({alt.layout.describe()})")
        if start + len(data) > region[1]:
            raise UsageError(
                f"{len(data)} option bytes at 0x{start:08X} overflow the area (ends 0x{region[1]:08X})"
            )
        check_option_bytes_data(
            self.device, start, data, rdp2_confirmed=confirm_permanent,
            where=where or f"option bytes at 0x{start:08X}",
        )
        return start

    def write_option_bytes(
        self, data: bytes, address: int | None = None, *, confirm_permanent: bool = False
    ) -> bool:
        """Write option bytes through their alt (checked by :meth:`check_option_bytes`
        first); the ROM applies them and resets (re-enumerates). False when the device
        does not come back (RDP level 2, confirmed: its bootloader is gone for good)."""
        from stmflash.safety import sets_rdp2

        start = self.check_option_bytes(data, address, confirm_permanent=confirm_permanent)
        level2 = sets_rdp2(self.device, start, data)
        return self._download_ob(start, data, come_back=level2 is False, may_come_back=level2 is None)

    def _download_ob(self, start: int, data: bytes, *, come_back: bool = True, may_come_back: bool = False) -> bool:
        self.select(self.option_bytes_alt())
        try:
            self.proto.download(start, data, 5.0, expect_reset=True)
        except DeviceGone:
            pass
        if come_back:
            self.reconnect()
            return True
        if may_come_back:
            try:
                self.reconnect()
                return True
            except LinkError:
                return False
        self.close()
        return False

    # ---- protection: the option bytes, rewritten through their alt ---------------------------
    def _ob_rules(self) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
        """(rdp_level, set_rdp, wrp_units, set_wrp) for this device's option-byte layout.

        Only the table's layout is ever used, on a real chip and a virtual one alike (a
        wrong guess can lock a chip; the virtual chip refuses what the table cannot encode).
        """
        from stmflash import option_bytes as obl

        obl.layout_of(self.device)  # raises the UsageError naming the device
        return obl.rdp_level, obl.set_rdp, obl.wrp_units, obl.set_wrp

    def check_protection(self, wp_units: Sequence[int] | None = None, rdp_level: int = 0) -> None:
        """Refuse, before the device is opened (no request is sent), a protection request
        that :meth:`write_protect` / :meth:`readout_protect` would refuse after flashing:
        no option-bytes alt, an alt that is not the layout's area, a unit without a WRP bit."""
        rules = self._ob_rules()
        self._ob_geometry()
        if wp_units:
            dev = self.device
            from stmflash import option_bytes as obl

            if obl.supported(dev):
                obl.check_wrp_units(dev, wp_units)
                if obl.split_wrp(dev, wp_units)[1]:
                    self._block2_region()
            else:
                obl.sim_codes(dev, list(wp_units))
        if rdp_level == 2:
            ob = self.device.option_bytes
            size = ob.size if ob is not None else 16
            rules[1](self.device, b"\xff" * size, 2)

    def check_ob_fields(self, fields: Iterable[Any]) -> None:
        """Refuse (UsageError, no I/O) option fields this link cannot reach: any, when the
        option-bytes alt is missing or is not the layout's area (G0B1); fields of the second
        option-byte block when the alt does not name it (F469, L47x/L49x as modelled) - what
        reading or writing the area would refuse after flashing."""
        self._ob_geometry()  # an alt that is not the layout's area (G0B1), or none (L5)
        first = self.device.option_bytes.size if self.device.option_bytes is not None else 0
        beyond = [f.name for f in fields if f.offset >= first]
        if beyond and not block2_in_regions(self.device, self.option_bytes_alt().layout.regions()):
            raise block2_fields_error(self.device, beyond)

    def _ob_geometry(self) -> tuple[int, int]:
        """(address, size of the layout's area) of the option-bytes alt, checked (no I/O)."""
        alt = self.option_bytes_alt()
        start, end = alt.layout.regions()[0]
        ob = self.device.option_bytes
        size = ob.size if ob is not None else end - start
        if ob is None or ob.start != start:
            where = f"0x{ob.start:08X}, {ob.size} bytes" if ob is not None else "unknown"
            raise UsageError(
                f"{self.device.short_name}: the DFU option-bytes alt covers 0x{start:08X}-0x{end - 1:08X}, not "
                f"the option-byte area whose layout stmflash knows ({where}); protection and option "
                "fields over DFU are not supported"
            )
        if end - start < size:
            raise UsageError(
                f"{self.device.short_name}: the DFU option-bytes alt holds {end - start} bytes, "
                f"the option-byte layout needs {size}"
            )
        return start, size

    def _ob_area(self) -> tuple[int, bytes, int]:
        """(address, bytes of the alt's first region, length of the layout's area in it)."""
        start, size = self._ob_geometry()
        return start, self.read_option_bytes()[0][1], size

    def _rewrite_ob(self, change: Callable[[bytes], bytes], what: str) -> bytes:
        """Apply ``change`` to the option bytes, write them (the ROM resets and comes back on
        the same port), and return them as read back afterwards.

        Retried like every other request (:meth:`_retry`): a stall or timeout on the way, or
        a disconnect that was not the ROM applying them (they read back unchanged), costs a
        retry; before each retry the option bytes are read, and a write that did take
        effect is not sent again. Writing the same option bytes twice is harmless.
        """
        from stmflash.safety import check_option_bytes_write

        start, area, size = self._ob_area()
        new = change(area[:size])
        # computed from the layout (level 1, WRP): never level 2, and the one gate says so too
        check_option_bytes_write(self.device, new, rdp2_confirmed=False, where=what, current=area[:size])
        if new == area[:size]:
            return self._ob_area()[1][:size]
        last: list[bytes] = []

        def applied() -> bytes | None:
            back = self._ob_area()[1][:size]
            last[:] = [back]
            return back if back == new else None

        def op() -> bytes:
            self._download_ob(start, new + area[size:])
            back = applied()
            if back is None:
                raise _ObNotApplied(f"{what} at {self.info.path}: the option bytes did not take the new value")
            return back

        try:
            return self._retry(what, op, before_retry=applied, retry_on=(_ObNotApplied,))
        except _ObNotApplied:
            from stmflash.errors import VerifyError

            got = last[0].hex() if last else "?"
            raise VerifyError(
                f"{what} at {self.info.path}: option bytes read back as {got} after writing {new.hex()} "
                f"({self.retries} retries)"
            ) from None

    def ob_area_read(self) -> bytes:
        """The option-byte area the table describes (for :mod:`stmflash.ob_ops`), followed by
        the second block (F42x bank 2) where the alt names it ("/0x1FFFC000/01*016 e/0x1FFEC000/
        01*016 e"); an alt without it presents the first block only, and fields of the second
        are then refused."""
        _, size = self._ob_geometry()
        regions = self.read_option_bytes()
        area = regions[0][1][:size]
        block = self._ob_block2(regions)
        return area + block if block is not None else area

    def _ob_block2(self, regions: list[tuple[int, bytes]]) -> bytes | None:
        second = self.device.option_bytes2
        if second is None:
            return None
        data = next((d for a, d in regions if a == second.start), None)
        if data is None or len(data) < second.size:
            return None
        return data[: second.size]

    def _ob_area_size(self) -> int:
        ob = self.device.option_bytes
        return ob.size if ob is not None else 0

    def ob_area_write(self, new: bytes, current: bytes, *, silent: bool = False) -> None:
        """Write the area through its alt (the ROM resets and re-enumerates, waited for);
        ``silent``: it will not come back in DFU mode (RDP level 2), so it is not waited for."""
        start, area, size = self._ob_area()
        second = self.device.option_bytes2
        if second is not None and len(new) > size:
            if new[size:] != current[size:]:
                self._download_ob(second.start, new[size:])  # the ROM reloads and re-enumerates
                start, area, size = self._ob_area()
            if new[:size] == current[:size]:
                return
            new = new[:size]
        data = new + area[size:]
        if not silent:
            self.write_option_bytes(data, start)
            return
        self.select(self.option_bytes_alt())
        try:
            self.proto.download(start, data, 5.0, expect_reset=True)
        except DeviceGone:
            pass
        self.close()

    def readout_protect(self, level: int = 1, *, confirm_permanent: bool = False) -> None:
        """Set readout protection through the option bytes (the ROM resets and comes back).

        Level 1 keeps the bootloader but it refuses flash access (errVENDOR). Level 2
        disables the bootloader and debug for good: only with ``confirm_permanent``, and
        the device is not waited for afterwards (it never enumerates in DFU mode again).
        """
        rdp_level, set_rdp, _, _ = self._ob_rules()
        dev = self.device
        if level not in (1, 2):
            raise UsageError(f"RDP level {level}: only 1 or 2 can be set")
        if level == 2:
            if not confirm_permanent:
                raise UsageError(
                    "RDP level 2 is permanent (no bootloader, no debug, ever); pass "
                    "--i-understand-rdp2-is-permanent to really do it"
                )
            current = self.ob_area_read()
            self.ob_area_write(set_rdp(dev, current, 2), current, silent=True)
            return
        back = self._rewrite_ob(lambda ob: set_rdp(dev, ob, level), f"setting RDP level {level}")
        if rdp_level(dev, back) != level:
            raise ProtectionError(f"{self.info.path}: RDP level is {rdp_level(dev, back)} after setting {level}")

    def _block2_region(self) -> int:
        """The address of the second option-byte block (F42x bank 2) in the option-bytes alt,
        or UsageError when the alt does not name it (no I/O)."""
        second = self.device.option_bytes2
        if second is None or not block2_in_regions(self.device, self.option_bytes_alt().layout.regions()):
            raise block2_wrp_error(self.device)
        return second.start

    def _write_block2(self, change: Callable[[bytes], bytes]) -> bytes:
        """Rewrite the second option-byte block through its region of the alt (the ROM
        reloads and re-enumerates); returns it as read back."""
        start = self._block2_region()
        size = self.device.option_bytes2.size  # type: ignore[union-attr]
        current = self._ob_block2(self.read_option_bytes())
        assert current is not None  # _block2_region checked the alt
        new = change(current)
        if new != current:
            self._download_ob(start, new)
        back = self._ob_block2(self.read_option_bytes())
        return back if back is not None else b"\xff" * size

    def write_protect(self, units: Sequence[int]) -> None:
        """Write-protect the erase units (the option bits covering them; replaces the
        previous set). The ROM then leaves protected units unchanged on write/erase.
        Units of the second option-byte block (F42x sectors 12-23) are written through its
        region of the alt; each bank's set is replaced only when units of it are named."""
        from stmflash import option_bytes as obl

        _, _, wrp_units, set_wrp = self._ob_rules()
        dev = self.device
        if (dev.ob_layout.get("wrp") or {}).get("pcrop_mode"):  # read before anything is written
            why = obl.pcrop_mode_error(dev, self.ob_area_read())
            if why:
                raise ProtectionError(why)
        first, second = obl.split_wrp(dev, sorted(set(units)))
        if second:
            back2 = self._write_block2(lambda b: obl.set_wrp2(dev, b, second))
            missing = set(second) - obl.wrp2_units(dev, back2)
            if missing:
                raise ProtectionError(f"{self.info.path}: units {sorted(missing)} are not write-protected after writing")
        if second and not first:
            return
        back = self._rewrite_ob(lambda ob: set_wrp(dev, ob, first), "write protection")
        missing = set(first) - wrp_units(dev, back)
        if missing:
            raise ProtectionError(f"{self.info.path}: units {sorted(missing)} are not write-protected after writing")

    def write_unprotect(self) -> None:
        """Remove every write protection (option bytes; the ROM resets)."""
        _, _, wrp_units, set_wrp = self._ob_rules()
        dev = self.device
        back = self._rewrite_ob(lambda ob: set_wrp(dev, ob, []), "write unprotection")
        if wrp_units(dev, back):
            raise ProtectionError(f"{self.info.path}: units {sorted(wrp_units(dev, back))} are still write-protected")
        from stmflash import option_bytes as obl

        if dev.option_bytes2 is not None and self._ob_block2(self.read_option_bytes()) is not None:
            back2 = self._write_block2(lambda b: obl.clear_wrp2(dev, b))
            if obl.wrp2_units(dev, back2):
                raise ProtectionError(
                    f"{self.info.path}: units {sorted(obl.wrp2_units(dev, back2))} are still write-protected"
                )

    def protection(self) -> tuple[int, set[int]]:
        """(RDP level, write-protected unit indices) as the option bytes say."""
        from stmflash import option_bytes as obl

        self._ob_rules()  # the layout's, or the UsageError naming the device
        _, size = self._ob_geometry()
        regions = self.read_option_bytes()
        # what the chip runs with: the loader's complement check applied, both blocks
        return obl.loaded_protection(self.device, regions[0][1][:size], self._ob_block2(regions))

    def read_unprotect(self) -> None:
        """Remove readout protection: the ROM mass-erases the flash and resets.

        The request is retried like every other one (a stall or timeout before the ROM took
        it); once the ROM has it, it resets, which the protocol expects.
        """

        def op() -> None:
            self.select(FLASH)
            self.proto.read_unprotect()

        self._retry("Read Unprotect", op)
        self.reconnect(self._mass_deadline() + REENUMERATE_S)
        from stmflash import option_bytes as obl

        # the re-enumeration is not the proof: where the table decodes the option bytes, level 0
        # is read back (the alt is readable at level 0 only)
        if not obl.supported(self.device):
            return
        try:
            self._ob_geometry()  # an option-bytes alt over the area the table decodes
        except UsageError:
            return
        level, _ = self.protection()
        if level != 0:
            raise ProtectionError(f"{self.info.path}: RDP level is {level} after Read Unprotect")

    def reconnect(self, timeout_s: float = REENUMERATE_S) -> None:
        """Wait for the device to come back on the same port after a reset, and reopen it."""
        self._wait_back(timeout_s)
        self.open()

    def _wait_back(self, timeout_s: float) -> None:
        """Wait for the device to be listed again on the same port path (after a reset or
        a disconnect) and take the new handle; not opened yet."""
        self.close()
        deadline = time.monotonic() + timeout_s
        while True:
            found = find_devices(
                path=self.info.path, vid_pid=(self.info.vid, self.info.pid), backend=self.info.backend
            )
            if found:
                self.info = found[0]
                self.closed = False
                self.alt = None
                self.proto = self._protocol()
                return
            if time.monotonic() >= deadline:
                raise LinkError(
                    f"the DFU device at {self.info.path} did not come back within {timeout_s:.0f} s after its reset"
                )
            self.sleep(0.05)


class _ObNotApplied(LinkError):
    """The option bytes read back without the value just written (retried, then a VerifyError)."""


def _flash_size(layouts: list[AltLayout]) -> int:
    lay = find_alt(layouts, FLASH)
    return lay.size if lay is not None else 0


def connect(
    *,
    serial: str | None = None,
    path: str | None = None,
    vid_pid: tuple[int, int] | None = None,
    device: Device | None = None,
) -> DfuLink:
    """Find the one matching DFU device and open a link to it."""
    from stmflash.dfu.usb import open_one

    info = open_one(serial=serial, path=path, vid_pid=vid_pid)
    return DfuLink(info, device=device).open()
