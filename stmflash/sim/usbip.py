"""USB/IP server (protocol v1.1.1): the virtual STM32s as USB devices of a real Linux host.

A Linux machine with the ``vhci-hcd`` module imports a device from this server (``usbip
attach -r 127.0.0.1 -b 1-1``); from then on its kernel enumerates the virtual chip like a
board on a USB port, and every host program -- dfu-util, libusb, pyusb, the ``cdc_acm``
tty driver -- talks to it through the real usbcore, usbfs and termios. Each URB the
kernel submits arrives here as ``CMD_SUBMIT`` and is answered by the same device model
the in-process pyusb backend uses (:class:`stmflash.sim.usb_backend.VirtualUsbDevice`:
descriptors, DfuSe state machine, the application's CDC-ACM face), so there is one
device model for both.

What is served (per imported device, one TCP connection, as vhci-hcd uses):

* ep0 control transfers, in order, on their own worker: the chapter 9 requests the kernel
  forwards (GET_DESCRIPTOR, SET_CONFIGURATION, SET_INTERFACE, GET_STATUS...) and the
  DFU / CDC class requests;
* bulk and interrupt endpoints of the current face: OUT data is delivered at once, IN
  URBs wait (the device NAKs) until the face has data, so several URBs are in flight at
  a time (``cdc_acm`` keeps 16 bulk IN reads and the notification URB queued);
* ``CMD_UNLINK``: an URB still queued or running is cancelled (``RET_UNLINK`` -ECONNRESET,
  no ``RET_SUBMIT`` follows); one already answered gets status 0. A host timeout is an
  unlink: a DFU request the fault injector leaves unanswered (``timeout@N``) or a NAK
  longer than the host waits ends exactly as on a wire;
* a device that leaves the bus (DfuSe leave, reset, 1200-baud touch, DFU_DETACH, a
  ``disconnect`` fault) answers the request that made it leave, then the connection is
  closed: vhci-hcd sees the unplug. The chip comes back under the same bus ID, as its
  other face, and can be imported again on the same vhci port (same port path).

USB/IP has no authentication and no encryption: whoever reaches the port can attach
the device. The server therefore listens on loopback unless told otherwise, and must
never listen on a public address. ``--stdio`` serves one connection on stdin/stdout
(QEMU's ``guestfwd=...-cmd:`` hands a guest connection to a command that way).

Protocol reference: Linux kernel ``Documentation/usb/usbip_protocol.rst``; speeds are
``enum usb_device_speed`` (``include/uapi/linux/usb/ch9.h``).
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import os
import queue
import socket
import struct
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import usb.core

from stmflash.errors import StmflashError
from stmflash.sim.usb_backend import VirtualBus, VirtualUsbDevice

USBIP_VERSION = 0x0111
OP_REQ_DEVLIST, OP_REP_DEVLIST = 0x8005, 0x0005
OP_REQ_IMPORT, OP_REP_IMPORT = 0x8003, 0x0003
CMD_SUBMIT, CMD_UNLINK, RET_SUBMIT, RET_UNLINK = 1, 2, 3, 4
DIR_OUT, DIR_IN = 0, 1
SPEED_FULL = 2  # USB_SPEED_FULL
ST_OK, ST_NA, ST_DEV_BUSY = 0, 1, 2  # usbip_common.h op_status
DEVICE_RECORD = struct.Struct(">256s32sIIIHHHBBBBBB")  # struct usbip_usb_device, 312 bytes
HEADER_LEN = 48
# USB/IP does not carry the host's timeout: a NAKing request is answered when the ROM is
# done, up to this long; the host's own timeout (an unlink) usually comes first.
NAK_LIMIT_MS = 60_000
IN_POLL_S = 0.005  # how often waiting IN URBs look for new data
SAVE_IDLE_S = 0.3  # ep0 quiet this long after a class OUT request: save the image file


class Conn(Protocol):
    def recv(self, n: int) -> bytes: ...
    def sendall(self, data: bytes) -> Any: ...
    def close(self) -> None: ...


class StdioConn:
    """A connection on file descriptors 0/1 that may be pipes, not sockets."""

    def __init__(self, rfd: int = 0, wfd: int = 1) -> None:
        self.rfd, self.wfd = rfd, wfd

    def recv(self, n: int) -> bytes:
        return os.read(self.rfd, n)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view):]

    def shutdown(self, how: int) -> None:
        self.close()

    def close(self) -> None:
        for fd in (self.rfd, self.wfd):
            try:
                os.close(fd)
            except OSError:
                pass


def stdio_conn() -> Conn:
    """Fd 0/1 as a connection: a socket when they are one (QEMU guestfwd), else pipes."""
    try:
        sock = socket.socket(fileno=os.dup(0))
        if sock.type == socket.SOCK_STREAM:
            return sock
        sock.close()
    except OSError:
        pass
    return StdioConn()


def recv_exact(conn: Conn, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = conn.recv(n - len(buf))
        except OSError as exc:
            raise ConnectionError(str(exc)) from None
        if not chunk:
            raise ConnectionError("peer closed the connection")
        buf += chunk
    return bytes(buf)


def check_listen_address(host: str) -> bool:
    """True for loopback addresses (``localhost`` included)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- records ----------------------------------------------------------------------------
def interface_classes(dev: VirtualUsbDevice) -> list[tuple[int, int, int]]:
    """(class, subclass, protocol) of each interface's alt 0, from the configuration."""
    blob = dev.raw_descriptor(2, 0, 0)
    out, pos = [], 0
    while pos + 2 <= len(blob) and blob[pos] >= 2:
        if blob[pos + 1] == 4 and blob[pos + 3] == 0:
            out.append((blob[pos + 5], blob[pos + 6], blob[pos + 7]))
        pos += blob[pos]
    return out


def device_record(dev: VirtualUsbDevice) -> bytes:
    """``struct usbip_usb_device`` of the device's current face."""
    d = dev.device_descriptor()
    return DEVICE_RECORD.pack(
        f"/sys/devices/virtual/stmflash-sim/{dev.path}".encode(), dev.path.encode(), dev.bus,
        dev.address, SPEED_FULL, d.idVendor, d.idProduct, d.bcdDevice, d.bDeviceClass,
        d.bDeviceSubClass, d.bDeviceProtocol, 1, d.bNumConfigurations,
        len(interface_classes(dev)),
    )


def ret_submit(seq: int, status: int, actual: int, data: bytes = b"") -> bytes:
    return struct.pack(">IIIIIiiiii8x", RET_SUBMIT, seq, 0, 0, 0, status, actual, 0, 0, 0) + data


def ret_unlink(seq: int, status: int) -> bytes:
    return struct.pack(">IIIIIi24x", RET_UNLINK, seq, 0, 0, 0, status)


@dataclass
class Urb:
    seq: int
    ep: int
    direction: int
    length: int
    setup: bytes
    data: bytes = b""
    started: bool = False


@dataclass
class SessionStats:
    urbs: int = 0
    unlinked: int = 0
    stalls: int = 0
    max_in_flight: int = 0
    per_endpoint: dict[str, int] = field(default_factory=dict)


class _Session:
    """One imported device on one connection (see module doc for the threads)."""

    def __init__(self, conn: Conn, dev: VirtualUsbDevice, log: Callable[[str], None]) -> None:
        self.conn, self.dev, self.log = conn, dev, log
        self.generation = dev.generation
        self.lock = threading.Lock()  # in-flight table and the socket's write side
        self.in_flight: dict[int, Urb] = {}
        self.controls: queue.Queue[Urb | None] = queue.Queue()
        self.endpoint_work = threading.Condition()
        self.outs: collections.deque[Urb] = collections.deque()
        self.waiting_in: collections.deque[Urb] = collections.deque()
        self.closed = threading.Event()
        self.left = False
        self.changed = False
        self.stats = SessionStats()

    # ---- answering -------------------------------------------------------------------------
    def complete(self, urb: Urb, status: int, data: bytes = b"", actual: int | None = None) -> None:
        with self.lock:
            if self.in_flight.pop(urb.seq, None) is None:
                return  # unlinked meanwhile: the host has given it back already
            if status == -errno.EPIPE:
                self.stats.stalls += 1
            n = len(data) if actual is None else actual
            try:
                self.conn.sendall(ret_submit(urb.seq, status, n, data if urb.direction == DIR_IN else b""))
            except OSError:
                self.closed.set()

    def unlink(self, seq: int, target: int) -> None:
        with self.lock:
            urb = self.in_flight.pop(target, None)
            status = -errno.ECONNRESET if urb is not None else 0
            if urb is not None:
                self.stats.unlinked += 1
                self.log(f"{self.dev.path} unlink seq {target} (ep {urb.ep}{' running' if urb.started else ''})")
            try:
                self.conn.sendall(ret_unlink(seq, status))
            except OSError:
                self.closed.set()

    def check_left(self) -> None:
        """After a request: if the device left the bus, unplug it from the host."""
        if self.dev.generation != self.generation and not self.left:
            self.left = True
            self.log(f"{self.dev.path} left the bus (generation {self.generation} -> "
                     f"{self.dev.generation}): disconnecting")
            self.closed.set()
            shutdown = getattr(self.conn, "shutdown", None)
            try:
                if shutdown is not None:
                    shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ---- workers -------------------------------------------------------------------------------
    def control_worker(self) -> None:
        while True:
            try:
                urb = self.controls.get(timeout=SAVE_IDLE_S)
            except queue.Empty:
                self.save_if_changed()
                continue
            if urb is None or self.closed.is_set():
                return
            if urb.setup[0] & 0x80 == 0 and urb.setup[0] & 0x60:
                self.changed = True  # a class OUT request may have changed the chip
            with self.lock:
                if urb.seq not in self.in_flight:
                    continue  # unlinked before it started
                urb.started = True
            status, data, actual = self.control(urb)
            if status == -errno.ETIMEDOUT:
                self.log(f"{self.dev.path} seq {urb.seq} left unanswered (host times out)")
            else:
                self.complete(urb, status, data, actual)
            self.check_left()

    def save_if_changed(self) -> None:
        """The host went quiet: write the image file, so it shows what the host just did
        (a host program ending has no request of its own on the wire)."""
        if not self.changed:
            return
        self.changed = False
        with self.dev.lock:
            try:
                self.dev.chip.save()
            except (OSError, StmflashError) as exc:
                self.log(f"{self.dev.path}: cannot save the image: {exc}")

    def control(self, urb: Urb) -> tuple[int, bytes, int]:
        rtype, req, value, index, length = struct.unpack("<BBHHH", urb.setup)
        is_in = bool(rtype & 0x80)
        buf = array("B", bytes(min(length, urb.length))) if is_in else array("B", urb.data)
        try:
            n = self.dev.control(self.generation, rtype, req, value, index, buf, NAK_LIMIT_MS)
        except usb.core.USBError as exc:
            status = -(exc.errno or errno.EPIPE)
            if rtype & 0x60:
                self.log(f"{self.dev.path} ctrl {rtype:02x}/{req:02x} value 0x{value:04x} index {index} "
                         f"len {length}: {errno.errorcode.get(-status, status)}")
            return status, b"", 0
        if rtype & 0x60:  # class/vendor requests are what the tier's checks look at
            self.log(f"{self.dev.path} ctrl {rtype:02x}/{req:02x} value 0x{value:04x} index {index} "
                     f"len {length}: ok {bytes(buf[:n]).hex() if is_in else urb.data.hex()}")
        return (0, bytes(buf[:n]), n) if is_in else (0, b"", len(urb.data))

    def endpoint_worker(self) -> None:
        while not self.closed.is_set():
            with self.endpoint_work:
                if not self.outs:
                    self.endpoint_work.wait(IN_POLL_S if self.waiting_in else 0.5)
                outs = list(self.outs)
                self.outs.clear()
            for urb in outs:
                try:
                    self.dev.endpoint_out(self.generation, urb.ep, urb.data)
                    self.changed = True
                    self.complete(urb, 0, actual=len(urb.data))
                except usb.core.USBError as exc:
                    self.complete(urb, -(exc.errno or errno.EPIPE), actual=0)
                self.check_left()
            for urb in list(self.waiting_in):
                with self.lock:
                    gone = urb.seq not in self.in_flight
                if gone:
                    self.waiting_in.remove(urb)
                    continue
                try:
                    data = self.dev.endpoint_in(self.generation, urb.ep, urb.length)
                except usb.core.USBError as exc:
                    self.waiting_in.remove(urb)
                    self.complete(urb, -(exc.errno or errno.EPIPE))
                    continue
                if data is not None:
                    self.waiting_in.remove(urb)
                    self.complete(urb, 0, data)

    # ---- reading -----------------------------------------------------------------------------
    def run(self) -> None:
        workers = [threading.Thread(target=self.control_worker, daemon=True),
                   threading.Thread(target=self.endpoint_worker, daemon=True)]
        for w in workers:
            w.start()
        try:
            while not self.closed.is_set():
                self.read_one()
        except (ConnectionError, OSError) as exc:
            if not self.left:
                self.log(f"{self.dev.path} connection ended: {exc}")
        finally:
            self.closed.set()
            self.controls.put(None)
            with self.endpoint_work:
                self.endpoint_work.notify_all()
            for w in workers:
                w.join(timeout=NAK_LIMIT_MS / 1000)
            s = self.stats
            self.log(f"{self.dev.path} session end: {s.urbs} URBs, {s.max_in_flight} max in flight, "
                     f"{s.unlinked} unlinked, {s.stalls} stalls, per endpoint {s.per_endpoint}")

    def read_one(self) -> None:
        hdr = recv_exact(self.conn, HEADER_LEN)
        cmd, seq, _devid, direction, ep = struct.unpack(">IIIII", hdr[:20])
        if cmd == CMD_UNLINK:
            self.unlink(seq, struct.unpack(">I", hdr[20:24])[0])
            return
        if cmd != CMD_SUBMIT:
            raise ConnectionError(f"unknown USB/IP command {cmd}")
        _flags, length, _start, npackets, _interval = struct.unpack(">IiiiI", hdr[20:40])
        data = recv_exact(self.conn, length) if direction == DIR_OUT and length > 0 else b""
        iso = 0 < npackets < 0xFFFFFFFF
        if iso:
            recv_exact(self.conn, 16 * npackets)  # no isochronous endpoint here
        urb = Urb(seq, ep, direction, max(length, 0), hdr[40:48], data)
        key = f"{ep}{'in' if direction == DIR_IN else 'out'}"
        with self.lock:
            self.in_flight[seq] = urb
            self.stats.urbs += 1
            self.stats.per_endpoint[key] = self.stats.per_endpoint.get(key, 0) + 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, len(self.in_flight))
        if iso:
            self.complete(urb, -errno.EPIPE)
        elif ep == 0:
            self.controls.put(urb)
        else:
            with self.endpoint_work:
                (self.waiting_in if direction == DIR_IN else self.outs).append(urb)
                self.endpoint_work.notify_all()


class UsbipServer:
    """Serves the devices of one :class:`VirtualBus`; one thread per connection."""

    def __init__(self, bus: VirtualBus, log: Callable[[str], None] | None = None) -> None:
        self.bus = bus
        self._log = log
        self.imported: dict[str, int] = {}  # bus ID -> generation imported
        self.lock = threading.Lock()
        self.t0 = time.monotonic()

    def log(self, text: str) -> None:
        if self._log is not None:
            self._log(f"[{time.monotonic() - self.t0:8.3f}] {text}")

    def exported(self) -> list[VirtualUsbDevice]:
        return [d for d in self.bus.snapshot() if d.attached]

    def serve_connection(self, conn: Conn) -> None:
        """One USB/IP connection: a device list, or an import and its URB traffic."""
        try:
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]
            except (AttributeError, OSError):
                pass  # a Unix socket or a pipe
            version, code, _status = struct.unpack(">HHI", recv_exact(conn, 8))
            if version != USBIP_VERSION:
                self.log(f"client speaks USB/IP 0x{version:04x}, this server 0x{USBIP_VERSION:04x}")
            if code == OP_REQ_DEVLIST:
                devs = self.exported()
                body = b"".join(device_record(d) + b"".join(bytes([*c, 0]) for c in interface_classes(d))
                                for d in devs)
                conn.sendall(struct.pack(">HHII", USBIP_VERSION, OP_REP_DEVLIST, ST_OK, len(devs)) + body)
            elif code == OP_REQ_IMPORT:
                self._import(conn, recv_exact(conn, 32).rstrip(b"\0").decode(errors="replace"))
            else:
                self.log(f"unknown USB/IP operation 0x{code:04x}")
        except ConnectionError as exc:
            self.log(f"connection ended: {exc}")
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _import(self, conn: Conn, busid: str) -> None:
        dev = self.bus.by_path(busid)
        status = ST_OK
        with self.lock:
            if dev is None or not dev.attached:
                status = ST_NA
            elif self.imported.get(busid) == dev.generation:
                status = ST_DEV_BUSY  # a device that left the bus is free for a new import at once
            else:
                self.imported[busid] = dev.generation
        if status != ST_OK:
            self.log(f"import {busid} refused ({'busy' if status == ST_DEV_BUSY else 'not on the bus'})")
            conn.sendall(struct.pack(">HHI", USBIP_VERSION, OP_REP_IMPORT, status))
            return
        assert dev is not None
        generation = dev.generation
        try:
            with dev.lock:
                record = device_record(dev)
            d = dev.device_descriptor()
            self.log(f"import {busid}: {d.idVendor:04x}:{d.idProduct:04x} virtual {dev.chip.device.name} "
                     f"({dev.chip.mode}), generation {dev.generation}")
            conn.sendall(struct.pack(">HHI", USBIP_VERSION, OP_REP_IMPORT, ST_OK) + record)
            _Session(conn, dev, self.log).run()
        finally:
            with dev.lock:
                dev.save_if_dropped()
                try:
                    dev.chip.save()
                except (OSError, StmflashError) as exc:
                    self.log(f"{busid}: cannot save the image: {exc}")
            with self.lock:
                if self.imported.get(busid) == generation:
                    del self.imported[busid]

    def serve_forever(self, listener: socket.socket, stop: threading.Event | None = None) -> None:
        """Accept connections until ``stop`` is set (or forever)."""
        listener.settimeout(0.2)
        while stop is None or not stop.is_set():
            try:
                conn, _peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=self.serve_connection, args=(conn,), daemon=True).start()
