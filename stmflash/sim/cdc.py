"""USB CDC-ACM faces of the virtual STM32: descriptors, line coding, and the USB-serial adapter.

:class:`CdcAcmFace` holds what every CDC-ACM device the simulator presents shares: the
communication interface (02/02/01, notification endpoint) with the CDC 1.10 header,
call-management, ACM and union functional descriptors, the data interface (0A/00/00,
bulk OUT/IN), and the line coding the host sets with SET_LINE_CODING (CDC PSTN 1.2 §6.3).
Those are what the Linux ``cdc_acm`` driver needs to bind a device as ``/dev/ttyACM*``.
Two faces use it: the application's VCP (:class:`stmflash.sim.app.UsbApp`) and
:class:`UsbSerialAdapter` here.

:class:`UsbSerialAdapter` is a USB-serial adapter wired to the chip's USART bootloader
(AN3155) -- a board with a bridge chip on the bootloader's UART. Its USB side is powered
by the host, so it stays on the bus while the chip resets. The wire between bridge and
chip carries the host's line settings: the ROM (8 data bits, even parity, 1 stop bit,
AN3155 §2) only understands bytes sent at 8E1 at the baud rate it locked on with its
0x7F autobaud, so a host at 8N1 never gets its sync acknowledged. With ``adapter=pins``
DTR drives NRST and RTS drives BOOT0 (:class:`stmflash.sim.protocol_sim.PinWiring`), the
usual auto-reset wiring that ``--enter pins:`` sequences expect.
"""

from __future__ import annotations

import struct
import time
from typing import Any

CDC_SET_LINE_CODING = 0x20
CDC_GET_LINE_CODING = 0x21
CDC_SET_CONTROL_LINE_STATE = 0x22
CDC_SEND_BREAK = 0x23
PARITY = "NOEMS"  # bParityType 0..4 (CDC PSTN 1.2, table 17)
DEFAULT_LINE = struct.pack("<IBBB", 115200, 0, 0, 8)  # 115200 8N1
# The adapter's own USB ids: pid.codes' test PID (a simulator is a test device, and an
# adapter id stmflash's udev rules grant access to would misrepresent it).
ADAPTER_VID_PID = (0x1209, 0x0001)
ROM_FRAMING = (8, "E", 0)  # data bits, parity, bCharFormat 0 = 1 stop bit


class UsbStall(Exception):
    """The face STALLs this request (the USB backend turns it into EPIPE)."""


class CdcAcmFace:
    """Descriptor layout and line coding shared by the simulator's CDC-ACM devices."""

    S_MANUFACTURER, S_PRODUCT, S_SERIAL, S_CONFIG, S_INTF0 = 1, 2, 3, 4, 5
    # (class, subclass, protocol, name) per interface; subclasses may append more
    INTERFACES: tuple[tuple[int, int, int, str], ...] = (
        (0x02, 0x02, 0x01, "CDC Control"),
        (0x0A, 0x00, 0x00, "CDC Data"),
    )
    # (address, attributes, wMaxPacketSize, bInterval) per interface (USB 2.0 §9.6.6)
    ENDPOINTS: tuple[tuple[tuple[int, int, int, int], ...], ...] = (
        ((0x82, 0x03, 8, 16),),  # interrupt IN: serial-state notifications
        ((0x01, 0x02, 64, 0), (0x81, 0x02, 64, 0)),  # bulk OUT / IN: the data
    )
    EP_TYPES = {2: "bulk", 3: "interrupt"}
    DEVICE_CLASS = (0x02, 0x00, 0x00)  # CDC at device level; composite faces use an IAD
    IAD = False
    BCD_DEVICE = 0x0200

    vid: int
    pid: int

    def __init__(self) -> None:
        self.line_coding = DEFAULT_LINE
        self.dtr = self.rts = False
        self._rx = bytearray()

    # ---- line coding -------------------------------------------------------------------------
    @property
    def baud(self) -> int:
        return struct.unpack_from("<I", self.line_coding)[0]

    def line(self) -> tuple[int, int, str, int]:
        """``(baud, data bits, parity letter, bCharFormat)`` the host set."""
        baud, stop, parity, bits = struct.unpack("<IBBB", self.line_coding)
        return baud, bits, PARITY[parity] if parity < len(PARITY) else "?", stop

    def cdc_request(self, rtype: int, req: int, value: int, index: int, data: bytes | None,
                    length: int) -> bytes | int | None:
        """The ACM requests on interface 0; None when the request is not one of them."""
        if index != 0:
            return None
        if rtype == 0x21 and req == CDC_SET_LINE_CODING:
            if data is None or len(data) < 7:
                raise UsbStall("short line coding")
            self.line_coding = bytes(data[:7])
            return len(data)
        if rtype == 0xA1 and req == CDC_GET_LINE_CODING:
            return self.line_coding[:length]
        if rtype == 0x21 and req == CDC_SET_CONTROL_LINE_STATE:
            dtr, rts = bool(value & 1), bool(value & 2)
            old = (self.dtr, self.rts)
            self.dtr, self.rts = dtr, rts
            self.control_lines(old, (dtr, rts))
            return 0
        if rtype == 0x21 and req == CDC_SEND_BREAK:
            return 0
        return None

    def control_lines(self, old: tuple[bool, bool], new: tuple[bool, bool]) -> None:
        """DTR/RTS changed (hook)."""

    # ---- descriptors ----------------------------------------------------------------------------
    def n_interfaces(self) -> int:
        return len(self.INTERFACES)

    def endpoints(self) -> dict[int, tuple[str, int]]:
        return {a: (self.EP_TYPES[t & 3], mps) for eps in self.ENDPOINTS for a, t, mps, _ in eps}

    def endpoint_fields(self, intf: int, alt: int, ep: int) -> dict[str, int]:
        address, attrs, mps, interval = self.ENDPOINTS[intf][ep]
        return {"bLength": 7, "bDescriptorType": 5, "bEndpointAddress": address,
                "bmAttributes": attrs, "wMaxPacketSize": mps, "bInterval": interval,
                "bRefresh": 0, "bSynchAddress": 0, "extra_descriptors": []}

    @staticmethod
    def cdc_functional() -> bytes:
        """Header (CDC 1.10), call management, ACM (line coding + line state), union 0->1."""
        return bytes([5, 0x24, 0x00, 0x10, 0x01, 5, 0x24, 0x01, 0x00, 0x01,
                      4, 0x24, 0x02, 0x02, 5, 0x24, 0x06, 0x00, 0x01])

    def extra_descriptor(self, intf: int) -> bytes:
        """Class descriptors after interface ``intf``'s endpoints (hook)."""
        return b""

    def device_fields(self) -> dict[str, int]:
        cls, sub, proto = self.DEVICE_CLASS
        return {
            "bLength": 18, "bDescriptorType": 1, "bcdUSB": 0x0200, "bDeviceClass": cls,
            "bDeviceSubClass": sub, "bDeviceProtocol": proto, "bMaxPacketSize0": 64,
            "idVendor": self.vid, "idProduct": self.pid, "bcdDevice": self.BCD_DEVICE,
            "iManufacturer": self.S_MANUFACTURER, "iProduct": self.S_PRODUCT,
            "iSerialNumber": self.S_SERIAL, "bNumConfigurations": 1,
        }

    def config_fields(self) -> dict[str, Any]:
        return {
            "bLength": 9, "bDescriptorType": 2, "wTotalLength": len(self.config_blob()),
            "bNumInterfaces": len(self.INTERFACES), "bConfigurationValue": 1,
            "iConfiguration": self.S_CONFIG, "bmAttributes": 0x80, "bMaxPower": 50,
            "extra_descriptors": [],
        }

    def interface_fields(self, intf: int, alt: int) -> dict[str, Any]:
        if alt != 0 or not 0 <= intf < len(self.INTERFACES):
            raise IndexError(f"no interface {intf} alt {alt}")
        cls, sub, proto, _ = self.INTERFACES[intf]
        extra = self.cdc_functional() if cls == 0x02 else self.extra_descriptor(intf)
        return {
            "bLength": 9, "bDescriptorType": 4, "bInterfaceNumber": intf, "bAlternateSetting": 0,
            "bNumEndpoints": len(self.ENDPOINTS[intf]), "bInterfaceClass": cls,
            "bInterfaceSubClass": sub, "bInterfaceProtocol": proto, "iInterface": self.S_INTF0 + intf,
            "extra_descriptors": list(extra),
        }

    def device_blob(self) -> bytes:
        d = self.device_fields()
        return struct.pack(
            "<BBHBBBBHHHBBBB", 18, 1, d["bcdUSB"], d["bDeviceClass"], d["bDeviceSubClass"],
            d["bDeviceProtocol"], 64, self.vid, self.pid, d["bcdDevice"], self.S_MANUFACTURER,
            self.S_PRODUCT, self.S_SERIAL, 1,
        )

    def config_blob(self) -> bytes:
        # interface association: the CDC pair is one function (USB IAD ECN)
        body = bytes([8, 0x0B, 0, 2, 0x02, 0x02, 0x01, 0]) if self.IAD else b""
        for i, (cls, sub, proto, _) in enumerate(self.INTERFACES):
            body += struct.pack("<BBBBBBBBB", 9, 4, i, 0, len(self.ENDPOINTS[i]), cls, sub, proto,
                                self.S_INTF0 + i)
            if cls == 0x02:
                body += self.cdc_functional()
            for address, attrs, mps, interval in self.ENDPOINTS[i]:
                body += struct.pack("<BBBBHB", 7, 5, address, attrs, mps, interval)
            body += self.extra_descriptor(i)
        head = struct.pack("<BBHBBBBB", 9, 2, 9 + len(body), len(self.INTERFACES), 1,
                           self.S_CONFIG, 0x80, 50)
        return head + body

    # ---- data -----------------------------------------------------------------------------------
    def configured(self) -> None:
        """SET_CONFIGURATION: nothing buffered survives it."""
        self._rx = bytearray()

    def receive(self, data: bytes) -> None:
        """Bytes the host wrote to the data endpoint (hook)."""

    def transmit(self) -> bytes:
        """Bytes the far end sent since the last call (hook)."""
        return b""

    def endpoint_out(self, ep: int, data: bytes) -> None:
        self.receive(data)

    def endpoint_in(self, ep: int, maxlen: int) -> bytes | None:
        """The far end's output on the data endpoint; notifications never come (None = NAK)."""
        if ep != 0x81:
            return None
        self._rx += self.transmit()
        if not self._rx:
            return None
        out, self._rx = bytes(self._rx[:maxlen]), self._rx[maxlen:]
        return out


class UsbSerialAdapter(CdcAcmFace):
    """A USB-serial bridge on the USART bootloader of a :class:`VirtualChip` (module doc)."""

    def __init__(self, chip: Any, *, pins: bool = False, vid_pid: tuple[int, int] = ADAPTER_VID_PID) -> None:
        from stmflash.sim.an3155 import An3155Rom
        from stmflash.sim.app import with_app

        super().__init__()
        self.chip = chip
        self.vid, self.pid = vid_pid
        self.realistic = chip.timing.realistic
        self.front = with_app(An3155Rom(chip, now=self._clock()))
        self.wiring = None
        if pins:
            from stmflash.sim.protocol_sim import PinWiring

            self.wiring = PinWiring(reset="dtr", boot0="rts")
        self.rom_baud: int | None = None  # what the ROM's autobaud locked on
        self.seen_reset = chip.reset_count
        self.dropped = 0  # bytes lost to a framing/parity/baud mismatch (tests look)
        chip.usb_adapter = self

    def _clock(self) -> float:
        return time.perf_counter() if self.realistic else 0.0

    def strings(self, serial: str) -> dict[int, str]:
        return {
            self.S_MANUFACTURER: "stmflash",
            self.S_PRODUCT: f"USB-serial adapter on a virtual {self.chip.device.short_name} USART bootloader",
            self.S_SERIAL: f"SIM{serial}",
            self.S_CONFIG: "CDC ACM",
            self.S_INTF0: "CDC Control",
            self.S_INTF0 + 1: "CDC Data",
        }

    def control(self, rtype: int, req: int, value: int, index: int, data: bytes | None,
                length: int) -> bytes | int:
        out = self.cdc_request(rtype, req, value, index, data, length)
        if out is None:
            raise UsbStall(f"request 0x{req:02X} type 0x{rtype:02X} to interface {index}")
        return out

    def control_lines(self, old: tuple[bool, bool], new: tuple[bool, bool]) -> None:
        if self.wiring is None:
            return
        # BOOT0 first, so releasing NRST in the same request samples the new BOOT0
        for name, before, now in (("rts", old[1], new[1]), ("dtr", old[0], new[0])):
            if before != now:
                self.wiring(self.chip, name, now)

    def _follow_resets(self) -> None:
        if self.chip.reset_count != self.seen_reset:
            self.seen_reset = self.chip.reset_count
            self.rom_baud = None  # the ROM autobauds again after every reset

    def _chip_alive(self) -> bool:
        return self.chip.powered and not (self.wiring is not None and self.wiring.nrst_low)

    def _rom_wire_ok(self) -> bool:
        """Would the ROM's USART (8E1, the autobauded rate) and the host understand each other?"""
        baud, bits, parity, stop = self.line()
        if (bits, parity, stop) != ROM_FRAMING:
            return False
        return self.rom_baud is None or self.rom_baud == baud

    def receive(self, data: bytes) -> None:
        self._follow_resets()
        baud, _bits, parity, _stop = self.line()
        if hasattr(self.front, "line_settings"):
            self.front.line_settings(baud, parity)  # the application checks its own settings
        rom = self.chip.mode == "bootloader"
        if not self._chip_alive() or (rom and not self._rom_wire_ok()):
            self.dropped += len(data)
            return
        self.front.feed(data, self._clock())
        if rom and self.rom_baud is None and getattr(self.front, "synced", False):
            self.rom_baud = baud

    def transmit(self) -> bytes:
        self._follow_resets()
        now = time.perf_counter() if self.realistic else None
        app = getattr(self.front, "app", None)
        rom = self.front.rom if app is not None else self.front
        out = rom.take_output(now)
        if out and not (self._chip_alive() and self._rom_wire_ok()):
            self.dropped += len(out)
            out = b""
        # what the application sent left at its own settings (it gates that itself), also
        # the acknowledgement it sent just before resetting into the ROM
        return out + (app.take_output(now) if app is not None else b"")


def install_adapter(chip: Any, value: str) -> UsbSerialAdapter:
    """The ``adapter=1`` / ``adapter=pins`` option of a ``STMFLASH_USB_SIM`` entry."""
    existing = getattr(chip, "usb_adapter", None)
    if isinstance(existing, UsbSerialAdapter):
        return existing
    return UsbSerialAdapter(chip, pins=value == "pins")
