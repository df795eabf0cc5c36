"""Virtual STM32s on a virtual USB bus, presented to pyusb as a backend.

``usb.core.find(backend=bus.backend)`` enumerates the chips as DFU-mode devices with the
descriptors their ROM presents (from the device table), and control transfers reach the
DfuSe front-end (:mod:`stmflash.sim.dfuse`).  No kernel, root or libusb is involved, so
every stmflash command, test and benchmark can run the real client code against it.

``STMFLASH_USB_SIM`` attaches chips to the bus used by every stmflash command::

    STMFLASH_USB_SIM="F407=/tmp/f4.img,H743"
    STMFLASH_USB_SIM="F407=/tmp/f4.img;timing=realistic;fault=disconnect@dnload:40"

Entries are separated by ``,``; each is ``DEVICE[=IMAGEFILE][;key=value...]`` with keys

=============  ==========================================================================
timing         ``instant`` (default) or ``realistic`` (erase/program times and USB costs
               really elapse)
scale          divide every modelled duration by this factor (e.g. ``scale=50``)
port           port path, default ``1-N`` for the N-th entry (e.g. ``port=2-1.3``)
seed           seed of the unique ID (so the serial) and of random faults
rdp            start with readout protection level 0/1/2
app            ``1``: the chip runs its flash application when the flash holds a valid vector
               table and enumerates as a CDC-ACM device 0483:5740 with a DFU runtime interface
               (:mod:`stmflash.sim.app`); a 1200-baud touch or DFU_DETACH brings up the ROM
               (0483:df11) on the same port. ``nodetach``: bitWillDetach clear (USB reset needed)
adapter        ``1``: not the DFU ROM but a USB-serial adapter (CDC-ACM, 1209:0001) wired to
               the chip's USART bootloader (AN3155, 8E1) (:mod:`stmflash.sim.cdc`);
               ``pins``: with DTR driving NRST and RTS driving BOOT0
fault          ``+``-separated items: ``stall@N``, ``timeout@N``, ``disconnect@N`` act once on
               the N-th DFU class request (1-based); ``stall@dnload:N`` counts only DNLOAD
               (also ``upload``, ``getstatus``); ``stall=P`` (``timeout=P``,
               ``disconnect=P``) hits each request with probability P (seeded); other
               items go to the chip's fault plan (e.g. ``power_loss=after:4096``).
               ``wtransfersize=N``: a *broken* ROM whose DFU functional descriptor
               announces N while it still takes at most its real transfer size (the
               kernel tier's test of the test: dfu-util must fail on it)
=============  ==========================================================================

Flash persists in IMAGEFILE (the simulator image format of :mod:`stmflash.sim.chip`),
saved when a handle closes, when the device leaves DFU mode and at exit.

USB timing model (``timing=realistic``): each control transfer costs one 1 ms frame for
its setup/status stages plus its data stage at 1 MB/s (full-speed control throughput,
64-byte packets), i.e. ``CONTROL_FRAME_S + len/CONTROL_BYTES_PER_S``. Each transfer is
due at its start plus that cost (deadline based: the DfuSe front-end's CPU time, e.g.
programming a block on the GETSTATUS that executes it, runs inside it); the chip's
``stats`` count that CPU and any transfer that still ended late, and a late end does not
push the next transfer's deadline back (:class:`~stmflash.sim.timing.Pacer`). There is
no serial adapter on USB: the UART ``adapter`` profiles do not apply here. Erase/program
durations come from the chip's timing model; a request that reaches the ROM while it is
busy is held (NAKed, as the USB peripheral does) until the operation ends, or fails with a
USB timeout when the host's own timeout ends first (``VirtualUsbDevice.held`` counts
them).  A disconnect or reset takes the device off
the bus for the rest of the operation plus ``device.startup_ms``.
"""

from __future__ import annotations

import atexit
import errno
import itertools
import os
import random
import re
import struct
import threading
import time
from array import array
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import usb.backend
import usb.core

from stmflash.dfu.protocol import REQ_IN, REQ_OUT
from stmflash.errors import StmflashError, UsageError
from stmflash.sim.chip import PowerLoss, VirtualChip
from stmflash.sim.dfuse import DfuseRom, SimNak, SimStall
from stmflash.sim.timing import Pacer, sleep_until

ST_VID, DFU_PID = 0x0483, 0xDF11
LANGID_EN_US = 0x0409
CONTROL_FRAME_S = 0.001
CONTROL_BYTES_PER_S = 1_000_000.0

# string descriptor indices
S_MANUFACTURER, S_PRODUCT, S_SERIAL, S_CONFIG, S_ALT0 = 1, 2, 3, 4, 5

USB_FAULT_KINDS = ("stall", "timeout", "disconnect")
_FAULT_RE = re.compile(r"^(stall|timeout|disconnect)@(?:(dnload|upload|getstatus):)?(\d+)$")
_FAULT_P_RE = re.compile(r"^(stall|timeout|disconnect)=(0(?:\.\d+)?|1(?:\.0*)?|\.\d+)$")
_FAULT_TS_RE = re.compile(r"^wtransfersize=(\d+)$", re.IGNORECASE)


def control_cost(nbytes: int) -> float:
    """Modelled wall time of one full-speed control transfer with ``nbytes`` of data."""
    return CONTROL_FRAME_S + nbytes / CONTROL_BYTES_PER_S


def _enodev(what: str = "No such device (it may have been disconnected)") -> usb.core.USBError:
    return usb.core.USBError(what, error_code=-4, errno=errno.ENODEV)


def _stall() -> usb.core.USBError:
    return usb.core.USBError("Pipe error", error_code=-9, errno=errno.EPIPE)


def _timeout() -> usb.core.USBError:
    return usb.core.USBTimeoutError("Operation timed out", error_code=-7, errno=errno.ETIMEDOUT)


@dataclass
class UsbFault:
    """``n``-th request (fires once), or each request with probability ``p`` (seeded)."""

    kind: str
    request: str | None
    n: int
    fired: bool = False
    p: float = 0.0


@dataclass
class SimEntry:
    """One parsed ``STMFLASH_USB_SIM`` entry."""

    device: str
    image: str | None = None
    timing: str = "instant"
    scale: float = 1.0
    port: str | None = None
    seed: int = 0
    rdp: int | None = None
    usb_faults: list[UsbFault] = field(default_factory=list)
    chip_faults: str = ""
    app: str | None = None  # run the flash application (stmflash.sim.app): "1" or "nodetach"
    adapter: str | None = None  # a USB-serial adapter on the UART bootloader: "1" or "pins"
    announced_transfer_size: int | None = None  # fault wtransfersize=N (a lying descriptor)


def parse_fault_items(text: str, entry: SimEntry | None = None) -> tuple[list[UsbFault], str]:
    usb_faults: list[UsbFault] = []
    rest: list[str] = []
    for item in re.split(r"[+|]", text):
        item = item.strip()
        if not item:
            continue
        ts = _FAULT_TS_RE.match(item)
        if ts and entry is not None:
            size = int(ts.group(1))
            if not 1 <= size <= 0xFFFF:
                raise UsageError(f"bad USB fault {item!r} (wTransferSize is 1..65535)")
            entry.announced_transfer_size = size
            continue
        m = _FAULT_RE.match(item)
        mp = _FAULT_P_RE.match(item)
        if m:
            usb_faults.append(UsbFault(m.group(1), m.group(2), int(m.group(3))))
        elif mp:
            usb_faults.append(UsbFault(mp.group(1), None, 0, p=float(mp.group(2))))
        elif re.split("[@=]", item)[0] in USB_FAULT_KINDS:
            raise UsageError(
                f"bad USB fault {item!r} (use stall@N, timeout@N, disconnect@N, stall@dnload:N or stall=P)"
            )
        else:
            rest.append(item)
    return usb_faults, ",".join(rest)


def parse_spec(text: str) -> list[SimEntry]:
    """Parse ``STMFLASH_USB_SIM`` (see module doc); bad entries are UsageErrors."""
    entries: list[SimEntry] = []
    for raw in text.split(","):
        raw = raw.strip()
        if not raw:
            continue
        head, *opts = raw.split(";")
        name, _, image = head.partition("=")
        entry = SimEntry(device=name.strip(), image=image.strip() or None)
        for opt in opts:
            if not opt.strip():
                continue
            key, sep, value = opt.partition("=")
            key, value = key.strip().lower(), value.strip()
            if not sep:
                raise UsageError(f"STMFLASH_USB_SIM: option {opt!r} needs a value (key=value)")
            try:
                if key == "timing":
                    if value not in ("instant", "realistic"):
                        raise ValueError
                    entry.timing = value
                elif key == "scale":
                    entry.scale = float(value)
                    if entry.scale <= 0:
                        raise ValueError
                elif key == "port":
                    if not re.fullmatch(r"\d+-\d+(\.\d+)*", value):
                        raise ValueError
                    entry.port = value
                elif key == "seed":
                    entry.seed = int(value, 0)
                elif key == "rdp":
                    entry.rdp = int(value)
                    if entry.rdp not in (0, 1, 2):
                        raise ValueError
                elif key == "app":
                    if value.lower() not in ("0", "1", "yes", "no", "true", "false", "on", "off", "nodetach"):
                        raise ValueError
                    entry.app = value.lower()
                elif key == "adapter":
                    if value.lower() not in ("1", "pins"):
                        raise ValueError
                    entry.adapter = value.lower()
                elif key in ("fault", "faults"):
                    uf, cf = parse_fault_items(value, entry)
                    entry.usb_faults += uf
                    entry.chip_faults = ",".join(x for x in (entry.chip_faults, cf) if x)
                else:
                    raise UsageError(
                        f"STMFLASH_USB_SIM: unknown option {key!r} (timing, scale, port, seed, rdp, fault, app, adapter)"
                    )
            except ValueError:
                raise UsageError(f"STMFLASH_USB_SIM: bad value in {opt.strip()!r}") from None
        entries.append(entry)
    if not entries:
        raise UsageError("STMFLASH_USB_SIM is empty (e.g. STMFLASH_USB_SIM=F407)")
    return entries


class VirtualUsbDevice:
    """A chip on the bus: its ROM front-end, port, address and connection generation."""

    def __init__(self, chip: VirtualChip, *, bus: int, ports: tuple[int, ...], scale: float = 1.0,
                 usb_faults: list[UsbFault] | None = None) -> None:
        self.chip = chip
        self.rom = DfuseRom(chip, scale=scale)
        self.bus = bus
        self.ports = ports
        self.address = 1
        self.generation = 0
        self.attach_at = 0.0
        self.seen_resets = chip.reset_count
        self.seen_mode = chip.mode
        self.present = self.shows()
        self.usb_faults = usb_faults or []
        self.rng = random.Random(getattr(chip, "seed", 0))
        self.requests = 0
        self.held = 0  # requests NAKed (held) while the ROM was busy
        self.per_request: dict[str, int] = {}
        # Held for a whole transfer and for every change of the device's bus state, so
        # that another board's thread enumerating the bus never acts on this device.
        self.lock = threading.RLock()
        self.unsaved = False  # dropped off the bus since the image file was last written
        self.realistic = chip.timing.realistic
        self.scale = scale
        self.pacer = Pacer(chip.stats)  # one late wake-up must not delay later transfers

    def persona(self) -> Any:
        """The face other than the DFU ROM: a USB-serial adapter on the chip's UART
        (:mod:`stmflash.sim.cdc`, whatever the chip does), or the application's USB face
        while the chip runs it (:mod:`stmflash.sim.app`)."""
        adapter = getattr(self.chip, "usb_adapter", None)
        if adapter is not None:
            return adapter
        app = getattr(self.chip, "usb_app", None)
        return app if app is not None and self.chip.mode == "app" else None

    def shows(self) -> bool:
        """On the bus in the current mode: the ROM (unreachable at RDP level 2, AN2606; only
        on parts whose ROM has USB DFU: an L05x ROM listens on its USARTs and never
        enumerates, AN2606 sec. 65.1), or an application with a USB face; an adapter is
        powered by USB and always shows."""
        chip = self.chip
        if getattr(chip, "usb_adapter", None) is not None:
            return True
        rom = chip.mode == "bootloader" and chip.rdp_level < 2 and "dfu" in chip.device.interfaces
        return chip.powered and (rom or self.persona() is not None)

    @property
    def path(self) -> str:
        return f"{self.bus}-" + ".".join(str(p) for p in self.ports)

    def sync(self) -> None:
        """Follow the chip: a reset re-enumerates the device, leaving DFU removes it.

        Callers hold ``self.lock``. Nothing is saved here: the image file is written by the
        thread using the device (:meth:`save_if_dropped`), never behind its back by another
        board's enumeration.
        """
        chip = self.chip
        if getattr(chip, "usb_adapter", None) is not None:
            return  # the bridge stays on the bus while the chip behind it resets
        if chip.reset_count != self.seen_resets or chip.mode != self.seen_mode:
            self.seen_resets = chip.reset_count
            self.seen_mode = chip.mode
            self._drop()
            self.rom.reset_state()
            now = time.perf_counter()
            startup = chip.timing.startup_delay() / self.scale
            self.attach_at = max(now, self.rom.busy_until) + startup
            self.present = self.shows()
        if self.present and not self.shows():
            self._drop()
            self.present = False

    def _drop(self) -> None:
        self.generation += 1
        self.address = self.address % 127 + 1
        self.unsaved = True

    def save_if_dropped(self) -> None:
        """Persist the chip after it left the bus (reset, leave, disconnect); lock held."""
        if self.unsaved:
            self.unsaved = False
            self.chip.save()

    @property
    def attached(self) -> bool:
        """On the bus now. While a transfer is in flight (lock taken by the thread using
        the device) the device is on the bus as last seen: an enumeration from another
        thread neither waits for that transfer nor changes the device's state under it."""
        if self.lock.acquire(blocking=False):
            try:
                self.sync()
            finally:
                self.lock.release()
        return self.present and time.perf_counter() >= self.attach_at

    def unplug(self) -> None:
        """A disconnect fault or USB reset: off the bus, then back as after a power cycle."""
        with self.lock:
            self.chip.reset()
            self.sync()
            self.save_if_dropped()

    # ---- descriptors -------------------------------------------------------------------
    def strings(self) -> dict[int, str]:
        rom = self.rom
        if self.persona() is not None:
            return self.persona().strings(rom.serial)
        s = {
            S_MANUFACTURER: rom.facts.manufacturer,
            S_PRODUCT: rom.facts.product,
            S_SERIAL: rom.serial,
            S_CONFIG: "DFU Config",
        }
        for i, alt in enumerate(rom.facts.alts):
            s[S_ALT0 + i] = alt
        return s

    def device_descriptor(self) -> SimpleNamespace:
        if self.persona() is not None:
            return SimpleNamespace(
                **self.persona().device_fields(), bus=self.bus, address=self.address,
                port_number=self.ports[-1], port_numbers=self.ports, speed=usb.util.SPEED_FULL,
            )
        return SimpleNamespace(
            bLength=18, bDescriptorType=1, bcdUSB=0x0200, bDeviceClass=0, bDeviceSubClass=0,
            bDeviceProtocol=0, bMaxPacketSize0=64, idVendor=ST_VID, idProduct=DFU_PID,
            bcdDevice=self.rom.facts.bcd_device, iManufacturer=S_MANUFACTURER, iProduct=S_PRODUCT,
            iSerialNumber=S_SERIAL, bNumConfigurations=1, bus=self.bus, address=self.address,
            port_number=self.ports[-1], port_numbers=self.ports, speed=usb.util.SPEED_FULL,
        )

    def n_alts(self) -> int:
        return len(self.rom.facts.alts)

    def config_descriptor(self) -> SimpleNamespace:
        if self.persona() is not None:
            return SimpleNamespace(**self.persona().config_fields())
        total = 9 + self.n_alts() * 9 + 9
        return SimpleNamespace(
            bLength=9, bDescriptorType=2, wTotalLength=total, bNumInterfaces=1,
            bConfigurationValue=1, iConfiguration=S_CONFIG, bmAttributes=0xC0, bMaxPower=50,
            extra_descriptors=[],
        )

    def interface_descriptor(self, intf: int, alt: int) -> SimpleNamespace:
        if self.persona() is not None:
            return SimpleNamespace(**self.persona().interface_fields(intf, alt))
        if intf != 0 or not 0 <= alt < self.n_alts():
            raise IndexError(f"no interface {intf} alt {alt}")
        # the ROM puts the DFU functional descriptor after the last alternate setting
        extra = list(self.rom.functional_descriptor()) if alt == self.n_alts() - 1 else []
        return SimpleNamespace(
            bLength=9, bDescriptorType=4, bInterfaceNumber=0, bAlternateSetting=alt,
            bNumEndpoints=0, bInterfaceClass=0xFE, bInterfaceSubClass=0x01,
            bInterfaceProtocol=0x02, iInterface=S_ALT0 + alt, extra_descriptors=extra,
        )

    def raw_descriptor(self, dtype: int, index: int, langid: int) -> bytes:
        persona = self.persona()
        if persona is not None and dtype in (1, 2):
            return persona.device_blob() if dtype == 1 else persona.config_blob()
        if dtype == 1:
            d = self.device_descriptor()
            return struct.pack(
                "<BBHBBBBHHHBBBB", 18, 1, d.bcdUSB, 0, 0, 0, 64, ST_VID, DFU_PID, d.bcdDevice,
                S_MANUFACTURER, S_PRODUCT, S_SERIAL, 1,
            )
        if dtype == 2 and index == 0:
            c = self.config_descriptor()
            body = b""
            for alt in range(self.n_alts()):
                i = self.interface_descriptor(0, alt)
                body += struct.pack("<BBBBBBBBB", 9, 4, 0, alt, 0, 0xFE, 1, 2, i.iInterface)
            body += self.rom.functional_descriptor()
            return struct.pack("<BBHBBBBB", 9, 2, 9 + len(body), 1, 1, S_CONFIG, 0xC0, 50) + body if c else b""
        if dtype == 3:
            if index == 0:
                return struct.pack("<BBH", 4, 3, LANGID_EN_US)
            text = self.strings().get(index)
            if text is None:
                raise _stall()
            enc = text.encode("utf-16-le")[:252]
            return bytes([2 + len(enc), 3]) + enc
        if dtype == 0x21:
            return self.rom.functional_descriptor()
        raise _stall()

    # ---- standard requests and endpoints (USB 2.0 §9.4) ---------------------------------
    def set_interface(self, intf: int, alt: int) -> None:
        """SET_INTERFACE: the ROM selects the memory of that alternate setting."""
        persona = self.persona()
        if persona is not None:
            if alt != 0 or not 0 <= intf < persona.n_interfaces():
                raise _stall()
            return
        if intf != 0:
            raise _stall()
        try:
            self.rom.set_alt(alt)
        except SimStall:
            raise _stall() from None

    def standard_request(self, rtype: int, req: int, value: int, index: int) -> bytes:
        """The chapter 9 requests other than GET_DESCRIPTOR; IN data (or b"" for OUT)."""
        if req == 0 and rtype & 0x80:  # GET_STATUS: self-powered 0, no remote wakeup
            return b"\x00\x00"
        if req == 8 and rtype == 0x80:  # GET_CONFIGURATION
            return b"\x01"
        if req == 10 and rtype == 0x81:  # GET_INTERFACE
            return bytes([self.rom.alt if self.persona() is None else 0])
        if req == 11 and rtype == 0x01:  # SET_INTERFACE
            self.set_interface(index, value)
            return b""
        if req == 9 and rtype == 0x00:  # SET_CONFIGURATION
            if value not in (0, 1):
                raise _stall()
            persona = self.persona()
            if persona is not None:
                persona.configured()
            return b""
        if req in (1, 3) and rtype in (0x00, 0x01, 0x02):  # CLEAR_FEATURE / SET_FEATURE
            return b""
        raise _stall()

    def endpoints(self) -> dict[int, tuple[str, int]]:
        """``{address: (type, wMaxPacketSize)}`` of the current face (the ROM has none)."""
        persona = self.persona()
        return persona.endpoints() if persona is not None else {}

    def endpoint_out(self, generation: int, ep: int, data: bytes) -> None:
        """Bulk/interrupt OUT data to endpoint ``ep`` (address without the direction bit)."""
        with self.lock:
            if generation != self.generation or not self.attached:
                raise _enodev()
            if ep not in self.endpoints():
                raise _stall()
            try:
                self.persona().endpoint_out(ep, data)
            finally:
                self.sync()
                self.save_if_dropped()

    def endpoint_in(self, generation: int, ep: int, maxlen: int) -> bytes | None:
        """Bulk/interrupt IN: the bytes ready, or None while the endpoint NAKs."""
        with self.lock:
            if generation != self.generation or not self.attached:
                raise _enodev()
            if ep | 0x80 not in self.endpoints():
                raise _stall()
            return self.persona().endpoint_in(ep | 0x80, maxlen)

    # ---- transfers -------------------------------------------------------------------------
    def _fault(self, req: int) -> str | None:
        self.requests += 1
        name = {1: "dnload", 2: "upload", 3: "getstatus"}.get(req)
        if name:
            self.per_request[name] = self.per_request.get(name, 0) + 1
        for f in self.usb_faults:
            if f.p:
                if self.rng.random() < f.p:
                    return f.kind
                continue
            if f.fired:
                continue
            count = self.requests if f.request is None else self.per_request.get(f.request, 0) if f.request == name else -1
            if count == f.n:
                f.fired = True
                return f.kind
        return None

    def control(self, generation: int, rtype: int, req: int, value: int, index: int,
                data: array, timeout_ms: int) -> int:
        with self.lock:
            if generation != self.generation or not self.attached:
                raise _enodev()
            wall0 = time.perf_counter()  # the host's timeout runs on the wall clock
            t0 = self.pacer.arrival(wall0) if self.realistic else wall0
            due = t0 + control_cost(len(data)) / self.scale  # deadline of this transfer
            is_in = bool(rtype & 0x80)
            nbytes = len(data)
            try:
                if rtype == 0x80 and req == 6:  # GET_DESCRIPTOR
                    raw = self.raw_descriptor(value >> 8, value & 0xFF, index)[:nbytes]
                    data[: len(raw)] = array("B", raw)
                    return len(raw)
                if rtype in (0x00, 0x01, 0x02, 0x80, 0x81, 0x82):  # other standard requests
                    raw = self.standard_request(rtype, req, value, index)[:nbytes]
                    data[: len(raw)] = array("B", raw)
                    return len(raw) if is_in else 0
                persona = self.persona()
                if persona is not None:  # the application's CDC / DFU runtime requests
                    from stmflash.sim.cdc import UsbStall

                    try:
                        out = persona.control(rtype, req, value, index, None if is_in else bytes(data), nbytes)
                    except UsbStall:
                        raise _stall() from None
                    finally:
                        self.sync()
                        self.save_if_dropped()
                    if is_in and not isinstance(out, int):
                        data[: len(out)] = array("B", out)
                        return len(out)
                    return nbytes
                if rtype not in (REQ_IN, REQ_OUT) or index != 0:
                    raise _stall()
                fault = self._fault(req)
                if fault == "stall":
                    raise _stall()
                if fault == "timeout":
                    time.sleep(min(timeout_ms, 50) / 1000.0)
                    raise _timeout()
                if fault == "disconnect":
                    self.unplug()
                    raise _enodev()
                try:
                    out, held_until = self._rom_request(req, value, None if is_in else bytes(data), nbytes,
                                                        wall0, timeout_ms)
                    due = max(due, held_until)
                except SimStall:
                    raise _stall() from None
                except PowerLoss:
                    raise _enodev() from None  # the chip died: off the bus until powered on
                finally:
                    self.sync()
                    self.save_if_dropped()
                if is_in:
                    raw = bytes(out)[:nbytes] if not isinstance(out, int) else b""
                    data[: len(raw)] = array("B", raw)
                    return len(raw)
                return nbytes
            finally:
                if self.realistic:
                    # deadline-based: the simulator's CPU before ``due`` is hidden in the
                    # modelled transfer time; what runs past it (or a late wake-up) is
                    # counted as late and not carried into the next transfer
                    sleep_until(due)
                    self.pacer.sent(due, time.perf_counter())


    def _rom_request(self, req: int, value: int, data: bytes | None, nbytes: int, t0: float,
                     timeout_ms: int) -> tuple[bytes | int, float]:
        """The ROM's answer and the time it was held until (``-inf`` when not held); while it
        is busy the USB peripheral NAKs and the host's controller retries the transfer until
        the ROM answers or the host's timeout (counted from ``t0``, wall clock) ends."""
        held_until = float("-inf")
        while True:
            try:
                with self.chip.stats.work():
                    return self.rom.request(req, value, data, nbytes), held_until
            except SimNak as nak:
                deadline = t0 + (timeout_ms / 1000.0 if timeout_ms else float("inf"))
                self.held += 1
                if nak.until > deadline:
                    sleep_until(deadline)
                    raise _timeout() from None
                sleep_until(nak.until)
                held_until = nak.until


class _Handle:
    def __init__(self, dev: VirtualUsbDevice) -> None:
        self.dev = dev
        self.generation = dev.generation


class VirtualUsbBackend(usb.backend.IBackend):
    """pyusb backend over a :class:`VirtualBus` (see module doc for what is modelled)."""

    virtual = True

    def __init__(self, bus: VirtualBus) -> None:
        self.bus = bus

    def enumerate_devices(self) -> list[VirtualUsbDevice]:
        return [d for d in self.bus.snapshot() if d.attached]

    def get_device_descriptor(self, dev: VirtualUsbDevice) -> SimpleNamespace:
        return dev.device_descriptor()

    def get_configuration_descriptor(self, dev: VirtualUsbDevice, config: int) -> SimpleNamespace:
        if config != 0:
            raise IndexError(f"no configuration {config}")
        return dev.config_descriptor()

    def get_interface_descriptor(self, dev: VirtualUsbDevice, intf: int, alt: int, config: int) -> SimpleNamespace:
        if config != 0:
            raise IndexError(f"no configuration {config}")
        return dev.interface_descriptor(intf, alt)

    def get_endpoint_descriptor(self, dev: VirtualUsbDevice, ep: int, intf: int, alt: int, config: int) -> Any:
        persona = dev.persona()
        if persona is None:
            raise IndexError("DFU devices have no endpoints")
        return SimpleNamespace(**persona.endpoint_fields(intf, alt, ep))

    def open_device(self, dev: VirtualUsbDevice) -> _Handle:
        if not dev.attached:
            raise _enodev()
        return _Handle(dev)

    def close_device(self, handle: _Handle) -> None:
        dev = handle.dev
        with dev.lock:
            dev.unsaved = False
            dev.chip.save()

    def _check(self, handle: _Handle) -> VirtualUsbDevice:
        dev = handle.dev
        if handle.generation != dev.generation or not dev.attached:
            raise _enodev()
        return dev

    def set_configuration(self, handle: _Handle, config_value: int) -> None:
        self._check(handle)

    def get_configuration(self, handle: _Handle) -> int:
        self._check(handle)
        return 1

    def claim_interface(self, handle: _Handle, intf: int) -> None:
        self._check(handle)

    def release_interface(self, handle: _Handle, intf: int) -> None:
        pass

    def set_interface_altsetting(self, handle: _Handle, intf: int, altsetting: int) -> None:
        dev = self._check(handle)
        with dev.lock:
            dev.set_interface(intf, altsetting)
            if dev.realistic:
                time.sleep(control_cost(0) / dev.scale)

    def ctrl_transfer(self, handle: _Handle, bmRequestType: int, bRequest: int, wValue: int,
                      wIndex: int, data: array, timeout: int) -> int:
        return handle.dev.control(handle.generation, bmRequestType, bRequest, wValue, wIndex, data, timeout)

    def reset_device(self, handle: _Handle) -> None:
        dev = self._check(handle)
        dev.unplug()

    def clear_halt(self, handle: _Handle, ep: int) -> None:
        self._check(handle)

    def is_kernel_driver_active(self, handle: _Handle, intf: int) -> bool:
        return False

    def detach_kernel_driver(self, handle: _Handle, intf: int) -> None:
        pass

    def attach_kernel_driver(self, handle: _Handle, intf: int) -> None:
        pass


class VirtualBus:
    """The chips attached to the virtual USB bus, and the pyusb backend that shows them.

    One bus is shared by every thread of a process (``stmflash batch`` runs one per
    board): the device list is changed and read under ``lock``, and each device's state
    under its own lock, so enumerating never races a neighbour's transfer.
    """

    def __init__(self) -> None:
        self.devices: list[VirtualUsbDevice] = []
        self.backend = VirtualUsbBackend(self)
        self._ports = itertools.count(1)
        self.lock = threading.RLock()

    def attach(self, chip: VirtualChip, *, port: str | None = None, scale: float = 1.0,
               usb_faults: list[UsbFault] | None = None) -> VirtualUsbDevice:
        with self.lock:
            taken = {d.path for d in self.devices}
            if port is None:
                while True:
                    port = f"1-{next(self._ports)}"
                    if port not in taken:
                        break
            elif port in taken:
                raise UsageError(f"STMFLASH_USB_SIM: two devices on port path {port}")
            bus_s, _, ports_s = port.partition("-")
            dev = VirtualUsbDevice(chip, bus=int(bus_s), ports=tuple(int(p) for p in ports_s.split(".")),
                                   scale=scale, usb_faults=usb_faults)
            self.devices.append(dev)
            return dev

    def snapshot(self) -> list[VirtualUsbDevice]:
        """The attached devices now (a copy: safe to iterate while another thread attaches)."""
        with self.lock:
            return list(self.devices)

    def chip(self, index: int = 0) -> VirtualChip:
        return self.snapshot()[index].chip

    def by_path(self, path: str) -> VirtualUsbDevice | None:
        return next((d for d in self.snapshot() if d.path == path), None)

    def save_all(self) -> None:
        for d in self.snapshot():
            with d.lock:
                try:
                    d.unsaved = False
                    d.chip.save()
                except (OSError, StmflashError):
                    pass


def bus_from_spec(text: str) -> VirtualBus:
    """A new bus with the chips of a ``STMFLASH_USB_SIM`` value."""
    from stmflash.devices import find

    bus = VirtualBus()
    for entry in parse_spec(text):
        try:
            device = find(entry.device)
        except KeyError as exc:
            raise UsageError(f"STMFLASH_USB_SIM: {exc.args[0]}") from None
        if entry.adapter is None and entry.app is None and "dfu" not in device.interfaces:
            # its ROM would never enumerate (AN2606): only its application or a USB-serial
            # adapter on its UART can be on the bus
            raise UsageError(f"STMFLASH_USB_SIM: {device.name} has no USB DFU bootloader "
                             "(give it app=1 for its application's USB face, or adapter=1)")
        chip = VirtualChip(device, image_path=entry.image, timing=entry.timing,
                           faults=entry.chip_faults or None, seed=entry.seed)
        if entry.rdp is not None:
            chip.set_rdp(entry.rdp)
        if chip.image_path is not None and not chip.image_path.exists():
            chip.save()  # created at once, so the file always shows the chip's state
        if entry.app is not None:
            from stmflash.sim.app import install, install_usb

            if entry.adapter is not None:
                install(chip, {"app": entry.app})  # its console is the adapter's UART
            else:
                install_usb(chip, {"app": entry.app})
        if entry.adapter is not None:
            from stmflash.sim.cdc import install_adapter

            install_adapter(chip, entry.adapter)
        dev = bus.attach(chip, port=entry.port, scale=entry.scale, usb_faults=entry.usb_faults)
        if entry.announced_transfer_size is not None:
            dev.rom.announced_transfer_size = entry.announced_transfer_size
    return bus


_cache: dict[str, VirtualBus] = {}
_cache_lock = threading.Lock()


def bus_from_env() -> VirtualBus:
    """The process-wide bus for the current ``STMFLASH_USB_SIM`` (same value, same chips)."""
    text = os.environ.get("STMFLASH_USB_SIM", "").strip()
    with _cache_lock:
        bus = _cache.get(text)
        if bus is None:
            bus = bus_from_spec(text)
            _cache[text] = bus
        return bus


def forget() -> None:
    """Drop cached buses (tests), saving their chips."""
    with _cache_lock:
        for bus in _cache.values():
            bus.save_all()
        _cache.clear()


@atexit.register
def _save_at_exit() -> None:
    for bus in list(_cache.values()):
        bus.save_all()
