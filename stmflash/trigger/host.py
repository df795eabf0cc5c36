"""Host side of "enter the bootloader without BOOT pins": three ways to ask an application.

* ``command`` — the application carries the stmflash companion (``firmware/``): open its
  own serial port at its own settings (115200 8N1 by default), send the trigger frame of
  :mod:`stmflash.trigger.frame`, wait for the acknowledgement that carries our nonce; the
  application then resets into the ROM, and the port goes back to the bootloader's 8E1
  settings for the sync (0x7F) that proves the entry.
* ``1200`` — the Arduino-style touch for USB CDC applications: open at 1200 bps, drop DTR,
  close; the application reboots into the ROM DFU bootloader (0483:df11).
* ``detach`` — DFU 1.1 runtime: DFU_DETACH to the application's runtime DFU interface
  (FE/01/01), plus a USB reset when the device does not detach by itself.

For USB the board changes identity, so we follow it by physical port path
(:mod:`stmflash.trigger.wait`). Every failure names the port and the likely causes: a
silent application is by far the most common case (wrong port, wrong baud, firmware
without the companion) and the user cannot tell those apart from the host.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from stmflash import enter as _registry
from stmflash.enter import EntryStrategy
from stmflash.errors import LinkError, UsageError
from stmflash.trigger import frame
from stmflash.trigger.wait import (
    DEFAULT_SETTLE_S,
    DEFAULT_TIMEOUT_S,
    UsbSeen,
    is_rom_dfu,
    location_path,
    scan_usb,
    usb_path,
    wait_for_reenumeration,
)

DEFAULT_APP_BAUD = frame.DEFAULT_APP_BAUD
DEFAULT_ACK_TIMEOUT_S = frame.DEFAULT_ACK_TIMEOUT_S
DEFAULT_RESET_SETTLE_S = frame.DEFAULT_RESET_SETTLE_S
TOUCH_BAUD = 1200
TOUCH_WAIT_S = 0.5  # the app resets 250 ms after the touch; scanning earlier may re-raise DTR
DETACH_TIMEOUT_MS = 1000  # wValue of DFU_DETACH (clamped to the device's wDetachTimeOut)

# USB constants (CDC PSTN and DFU 1.1 class requests)
CDC_SET_LINE_CODING = 0x20
CDC_SET_CONTROL_LINE_STATE = 0x22
DFU_DETACH = 0x00
DFU_GETSTATUS = 0x03
DFU_FUNCTIONAL = 0x21
RUNTIME_DFU = (0xFE, 0x01, 0x01)
ATTR_WILL_DETACH = 0x08

NO_ACK_CAUSES = (
    "wrong port or baud, or the firmware does not include the stmflash companion (firmware/)"
)


class NoAckError(LinkError):
    """The application did not acknowledge the trigger (exit code 3)."""


def parse_key(text: str | bytes | None) -> bytes:
    """``--trigger-key HEX``: the shared key the firmware was built with (default empty)."""
    if text is None:
        return b""
    if isinstance(text, bytes):
        return text
    cleaned = text.strip().replace(" ", "").replace(":", "")
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise UsageError(f"bad trigger key {text!r}: give it as hex bytes, e.g. 5a17c0de") from None


@dataclass
class TriggerOptions:
    """Everything configurable about the serial trigger; defaults match the firmware."""

    app_baud: int = DEFAULT_APP_BAUD
    key: bytes = b""
    timeout: float = DEFAULT_ACK_TIMEOUT_S  # request sent -> ack seen
    settle: float | None = None  # ack -> ROM ready; None: DEFAULT_RESET_SETTLE_S + start-up
    device: Any = None  # the part, when known (--device, sim://NAME): where its ROM listens

    def settle_for(self, device: Any = None) -> float:
        if self.settle is not None:
            return self.settle
        startup = float(getattr(device, "startup_ms", 0.0) or 0.0) / 1000.0
        return DEFAULT_RESET_SETTLE_S + startup


@dataclass
class TriggerAck:
    """Proof the application took the request: it echoed our nonce in its ack."""

    port: str
    nonce: int
    app_baud: int
    seconds: float
    received: bytes = field(repr=False, default=b"")

    def to_dict(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "nonce": f"{self.nonce:08x}",
            "app_baud": self.app_baud,
            "seconds": round(self.seconds, 4),
        }


def _open_app_port(port: str, baud: int) -> Any:
    from stmflash.ports import open_port

    return open_port(port, baud=baud, parity="none", timeout=0.02)


def send_trigger(
    port: str | Any,
    *,
    app_baud: int = DEFAULT_APP_BAUD,
    key: bytes | str = b"",
    timeout: float = DEFAULT_ACK_TIMEOUT_S,
    nonce: int | None = None,
    opener: Callable[[str, int], Any] = _open_app_port,
    clock: Callable[[], float] = time.monotonic,
) -> TriggerAck:
    """Send one trigger to the application on ``port`` and wait for its acknowledgement.

    ``port`` is a name (opened at ``app_baud`` 8N1 and closed again) or an open serial
    object (left open). Raises :class:`NoAckError` naming the port and the likely causes.
    """
    key_b = key.encode() if isinstance(key, str) else bytes(key)
    nonce = frame.new_nonce() if nonce is None else nonce
    owned = isinstance(port, str)
    ser = opener(port, app_baud) if owned else port
    name = port if owned else str(getattr(ser, "name", None) or getattr(ser, "port", "the port"))
    received = bytearray()
    try:
        try:
            _drain(ser)  # banner lines and old chatter must not count as an answer
            started = clock()
            ser.write(frame.encode_request(nonce, key_b))
            ser.flush()
            deadline = started + timeout
            while True:
                waiting = getattr(ser, "in_waiting", 0) or 1
                received += ser.read(min(waiting, 4096))
                if frame.find_ack(received, nonce, key_b):
                    return TriggerAck(name, nonce, app_baud, clock() - started, bytes(received))
                if clock() >= deadline:
                    break
        except OSError as exc:  # serial.SerialException is an OSError
            raise LinkError(f"serial port {name} failed during the trigger: {exc}") from None
    finally:
        if owned:
            _close(ser)
    keyed = (f"or the firmware was built with another key than --trigger-key {key_b.hex()}" if key_b
             else "or the firmware was built with a key (STMFLASH_BOOT_KEY) and no --trigger-key was given")
    raise NoAckError(
        f"no acknowledgement from the application on {name} at {app_baud} 8N1 within "
        f"{timeout:g} s: {NO_ACK_CAUSES}, {keyed}"
    )


def _drain(ser: Any) -> None:
    try:
        ser.reset_input_buffer()
    except (OSError, AttributeError):
        pass


def _close(ser: Any) -> None:
    try:
        ser.close()
    except OSError:
        pass


# ---- USB: the virtual bus or the real one --------------------------------------------------


def usb_sim_active() -> bool:
    return bool(os.environ.get("STMFLASH_USB_SIM"))


def usb_backend() -> Any:
    """The pyusb backend to scan: the virtual bus under ``STMFLASH_USB_SIM``, else libusb."""
    from stmflash.dfu.usb import get_backend

    return get_backend()


def _seen(dev: Any) -> UsbSeen:
    return UsbSeen(
        int(dev.idVendor),
        int(dev.idProduct),
        usb_path(getattr(dev, "bus", None), getattr(dev, "port_numbers", None)),
    )


def _interfaces(dev: Any) -> Iterable[Any]:
    import usb.core

    try:
        for cfg in dev:
            yield from cfg
    except (usb.core.USBError, ValueError, NotImplementedError):
        return


def _matches_selector(seen: UsbSeen, selector: str | None) -> bool:
    """``selector``: a port path (``1-1.2``) or ``VID:PID`` (hex); None matches anything."""
    if not selector:
        return True
    sel = selector.strip().lower()
    if ":" in sel and "-" not in sel:
        return seen.id == sel
    return seen.path == sel


@dataclass
class RuntimeDfu:
    """An application's DFU 1.1 runtime interface and its functional descriptor."""

    device: Any
    interface: int
    attributes: int
    detach_timeout_ms: int

    @property
    def will_detach(self) -> bool:
        return bool(self.attributes & ATTR_WILL_DETACH)


def parse_functional(extra: Iterable[int]) -> tuple[int, int] | None:
    """``(bmAttributes, wDetachTimeOut)`` from an interface's extra descriptor bytes."""
    raw = bytes(extra)
    i = 0
    while i + 2 <= len(raw):
        length, dtype = raw[i], raw[i + 1]
        if length < 2:
            return None
        if dtype == DFU_FUNCTIONAL and length >= 5 and i + 5 <= len(raw):
            attrs = raw[i + 2]
            (timeout,) = struct.unpack_from("<H", raw, i + 3)
            return attrs, timeout
        i += length
    return None


def find_runtime_dfu(backend: Any, selector: str | None = None) -> list[RuntimeDfu]:
    """Every device (matching ``selector``) exposing a DFU runtime interface FE/01/01."""
    import usb.core

    found = []
    for dev in usb.core.find(find_all=True, backend=backend) or ():
        if is_rom_dfu(_seen(dev)) or not _matches_selector(_seen(dev), selector):
            continue
        for intf in _interfaces(dev):
            triple = (intf.bInterfaceClass, intf.bInterfaceSubClass, intf.bInterfaceProtocol)
            if triple != RUNTIME_DFU:
                continue
            func = parse_functional(getattr(intf, "extra_descriptors", b"") or b"")
            attrs, timeout = func if func else (0, DETACH_TIMEOUT_MS)
            found.append(RuntimeDfu(dev, intf.bInterfaceNumber, attrs, timeout))
            break
    return found


def find_cdc_devices(backend: Any, selector: str | None = None) -> list[tuple[Any, int]]:
    """``(device, communication interface)`` of USB CDC-ACM devices on the bus."""
    import usb.core

    found = []
    for dev in usb.core.find(find_all=True, backend=backend) or ():
        if not _matches_selector(_seen(dev), selector):
            continue
        for intf in _interfaces(dev):
            if (intf.bInterfaceClass, intf.bInterfaceSubClass) == (0x02, 0x02):
                found.append((dev, intf.bInterfaceNumber))
                break
    return found


def _one(items: list[Any], what: str, selector: str | None, describe: Callable[[Any], str]) -> Any:
    if not items:
        where = f" matching {selector}" if selector else ""
        raise LinkError(
            f"no {what}{where} found on the USB bus: is the board plugged in and running its "
            "application? (a board already in DFU mode needs no --enter)"
        )
    if len(items) > 1:
        names = ", ".join(describe(i) for i in items)
        raise UsageError(f"several {what}s ({names}): name one as PORT-PATH or VID:PID")
    return items[0]


def _tolerant(fn: Callable[[], Any]) -> None:
    """Run a request to a device that may vanish while answering (that is success)."""
    import usb.core

    try:
        fn()
    except (usb.core.USBError, NotImplementedError):
        pass


@dataclass
class DetachEntry:
    """``--enter detach``: DFU_DETACH to the runtime interface, USB reset if needed."""

    selector: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    settle: float | None = None
    name: str = "detach"
    backend_factory: Callable[[], Any] = usb_backend
    sleep: Callable[[float], None] = time.sleep

    def enter(self) -> UsbSeen:
        backend = self.backend_factory()
        rt = _one(
            find_runtime_dfu(backend, self.selector),
            "application with a DFU runtime interface (FE/01/01)",
            self.selector,
            lambda r: _seen(r.device).describe(),
        )
        old = _seen(rt.device)
        before = scan_usb(backend)
        _detach(rt)
        settle = self.settle if self.settle is not None else _default_settle()
        return wait_for_reenumeration(
            lambda: scan_usb(backend), old=old, before=before, timeout=self.timeout,
            settle=settle, how="DFU_DETACH", sleep=self.sleep,
        )


@dataclass
class TouchEntry:
    """``--enter 1200``: the 1200-baud touch, then wait for the ROM DFU device.

    On real hardware the touch goes through the serial driver (pyserial); on the virtual
    bus (``STMFLASH_USB_SIM``) the same two CDC class requests go straight to the device.
    """

    port: str | None = None  # serial port name, USB port path or VID:PID; None: the only one
    timeout: float = DEFAULT_TIMEOUT_S
    touch_wait: float = TOUCH_WAIT_S
    settle: float | None = None
    name: str = "1200"
    backend_factory: Callable[[], Any] = usb_backend
    sleep: Callable[[float], None] = time.sleep

    def enter(self) -> UsbSeen:
        backend = self.backend_factory()
        if usb_sim_active():
            old = self._touch_usb(backend)
            touch_wait = 0.0
        else:
            old = self._touch_serial()
            touch_wait = self.touch_wait
        before = scan_usb(backend)
        if touch_wait > 0:
            self.sleep(touch_wait)
        settle = self.settle if self.settle is not None else _default_settle()
        return wait_for_reenumeration(
            lambda: scan_usb(backend), old=old, before=before, timeout=self.timeout,
            settle=settle, how="the 1200-baud touch", sleep=self.sleep,
        )

    def _touch_usb(self, backend: Any) -> UsbSeen:
        dev, intf = _one(
            find_cdc_devices(backend, self.port),
            "USB CDC application",
            self.port,
            lambda d: _seen(d[0]).describe(),
        )
        old = _seen(dev)
        coding = struct.pack("<IBBB", TOUCH_BAUD, 0, 0, 8)  # 1200 bps, 1 stop, no parity, 8 bits
        _tolerant(lambda: dev.ctrl_transfer(0x21, CDC_SET_LINE_CODING, 0, intf, coding))
        _tolerant(lambda: dev.ctrl_transfer(0x21, CDC_SET_CONTROL_LINE_STATE, 0, intf, None))
        import usb.util

        _tolerant(lambda: usb.util.dispose_resources(dev))
        return old

    def _touch_serial(self) -> UsbSeen:
        import serial
        from serial.tools import list_ports

        ports = [p for p in list_ports.comports() if p.vid is not None]
        if self.port:
            chosen = [p for p in ports if self.port in (p.device, p.name, location_path(p.location))]
            if not chosen:
                raise LinkError(f"serial port {self.port} is not a USB serial port (or does not exist)")
        else:
            # Prefer ST's VID: touching an unrelated adapter at 1200 baud drops its DTR,
            # which resets boards wired for auto-reset.
            st_ports = [p for p in ports if p.vid == 0x0483]
            chosen = st_ports if len(st_ports) == 1 else ports
        info = _one(chosen, "USB serial port", self.port, lambda p: p.device)
        old = UsbSeen(int(info.vid), int(info.pid), location_path(info.location), info.device)
        try:
            ser = serial.Serial(info.device, TOUCH_BAUD)
            ser.dtr = False
            ser.close()
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"cannot do the 1200-baud touch on {info.device}: {exc}") from None
        return old


def _default_settle() -> float:
    return 0.0 if usb_sim_active() else DEFAULT_SETTLE_S


# ---- ``--enter`` strategies (registered with stmflash.uart.entry) ---------------------------


def parse_args(arg: str, allowed: Iterable[str], what: str) -> dict[str, str]:
    """``k=v,k=v`` after ``NAME:`` in an ``--enter`` chain (a bare value is the first key)."""
    out: dict[str, str] = {}
    keys = list(allowed)
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        k, sep, v = item.partition("=")
        if not sep:
            k, v = keys[0], item
        k = k.strip().lower().replace("-", "_")
        if k not in keys:
            raise UsageError(f"--enter {what}: unknown setting {k!r} (known: {', '.join(keys)})")
        out[k] = v.strip()
    return out


def _float(text: str, what: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"bad {what} {text!r} (seconds)") from None
    if not math.isfinite(value) or value > 600:
        raise UsageError(f"bad {what} {text!r} (seconds, at most 600)")
    if value < 0:
        raise UsageError(f"bad {what} {text!r} (seconds, >= 0)")
    return value


def trigger_options_from(arg: str, base: TriggerOptions | None = None) -> TriggerOptions:
    """``command:baud=N,key=HEX,timeout=S,settle=S`` on top of the command-line defaults."""
    opts = dataclasses.replace(base) if base is not None else TriggerOptions()
    for k, v in parse_args(arg, ("baud", "key", "timeout", "settle"), "command").items():
        if k == "baud":
            try:
                opts.app_baud = int(v, 0)
            except ValueError:
                raise UsageError(f"--enter command: bad baud {v!r}") from None
            if opts.app_baud <= 0:
                raise UsageError(f"--enter command: bad baud {v!r}")
        elif k == "key":
            opts.key = parse_key(v)
        elif k == "timeout":
            opts.timeout = _float(v, "trigger timeout") or DEFAULT_ACK_TIMEOUT_S
        else:
            opts.settle = _float(v, "settle time")
    return opts


#: What ``--app-baud``, ``--trigger-key`` and ``--trigger-timeout`` set for this process.
DEFAULTS = TriggerOptions()


def set_defaults(*, app_baud: int | None = None, key: str | bytes | None = None,
                 timeout: float | None = None, device: Any = None) -> TriggerOptions:
    """Command-line options shared by every ``command`` strategy parsed afterwards."""
    global DEFAULTS
    opts = TriggerOptions(device=device)
    if app_baud is not None:
        if app_baud <= 0:
            raise UsageError(f"bad --app-baud {app_baud}")
        opts.app_baud = app_baud
    if key is not None:
        opts.key = parse_key(key)
    if timeout is not None:
        if timeout <= 0:
            raise UsageError(f"bad --trigger-timeout {timeout:g} (seconds, > 0)")
        opts.timeout = timeout
    DEFAULTS = opts
    return opts


class CommandStrategy(EntryStrategy):
    """``--enter command``: the trigger at the application's settings on the same port.

    The port is switched to the application's baud and 8N1 for the trigger and back to the
    bootloader's settings afterwards (the same as closing and reopening it, without losing
    the port to another process in between); the caller then waits ``settle_s`` and syncs.
    """

    name = "command"

    def __init__(self, options: TriggerOptions) -> None:
        self.options = options
        self.settle_s = options.settle_for(None)
        self.ack: TriggerAck | None = None

    def enter(self, ser: Any) -> None:
        saved = {"baudrate": ser.baudrate, "parity": ser.parity, "timeout": ser.timeout}
        _configure(ser, {"baudrate": self.options.app_baud, "parity": frame.DEFAULT_APP_PARITY, "timeout": 0.02})
        try:
            self.ack = send_trigger(
                ser, app_baud=self.options.app_baud, key=self.options.key,
                timeout=self.options.timeout,
            )
        finally:
            try:
                _configure(ser, saved)
            except LinkError:
                if self.ack is not None and _port_gone(ser):
                    raise LinkError(_gone_message(ser, self.options.device)) from None
                raise
            _drain(ser)

    def explain_failure(self, ser: Any) -> LinkError | None:
        """After the sync failed: when the application took the trigger and its port then
        vanished, the port was the chip's own USB; say so (and where the ROM listens)."""
        if self.ack is not None and _port_gone(ser):
            return LinkError(_gone_message(ser, self.options.device))
        return None

    def describe(self) -> str:
        return f"command (trigger at {self.options.app_baud} 8N1)"


def _configure(ser: Any, settings: dict[str, Any]) -> None:
    """Switch an open port's settings in place, else by closing and reopening it.

    In place first: reopening a USB-serial adapter pulses DTR/RTS, which resets boards
    with auto-reset wiring. Some ports refuse the change while open (a Linux pty rejects
    parity changes with EINVAL), and for those a reopen is harmless.
    """
    try:
        ser.apply_settings(settings)
        return
    except Exception:  # termios.error, SerialException, ValueError: driver-specific
        pass
    from stmflash.ports import is_pty

    name = str(getattr(ser, "name", None) or getattr(ser, "port", None) or "the port")
    try:
        _reopen(ser, settings)
        return
    except Exception as exc:
        error: Exception = exc
    if settings.get("parity", "N") != "N" and is_pty(name):
        # a Linux pseudo-terminal refuses PARENB after its first client and ignores parity
        # anyway: 8N1 there, as stmflash.ports.open_port does when it opens one
        try:
            _reopen(ser, {**settings, "parity": "N"})
            return
        except Exception as exc:
            error = exc
    raise LinkError(f"cannot switch {name} to {_describe_settings(settings)}: {error}") from None


def _port_name(ser: Any) -> str:
    return str(getattr(ser, "name", None) or getattr(ser, "port", None) or "the port")


def _port_gone(ser: Any) -> bool:
    """The port's device node vanished: it was the chip's own USB (a CDC application), which
    left the bus when the chip reset into its ROM; a USB-serial bridge stays."""
    name = _port_name(ser)
    return name.startswith("/dev/") and not os.path.exists(name)


def _gone_message(ser: Any, device: Any) -> str:
    """Why syncing on a vanished USB CDC port cannot work, and where the ROM listens."""
    name = _port_name(ser)
    head = (f"the application on {name} acknowledged the trigger and {name} went away with it: "
            "it was the chip's own USB CDC port, and the ROM bootloader offers no serial port on USB")
    if device is None:
        return head + ("; 'stmflash devices NAME' shows where the part's ROM listens (USART pins, "
                       "or USB DFU: stmflash dfu)")
    from stmflash.rom_interfaces import no_usb_reason, usb_dfu

    reason = no_usb_reason(device)
    if reason:
        return f"{head}; {reason}: wire a USB-serial adapter to one of those and sync there"
    if usb_dfu(device):
        return f"{head}; the {device.name} ROM is a USB DFU device now: stmflash dfu (--enter none)"
    return head + f"; where the {device.name} ROM listens is not recorded (AN2606)"


def _reopen(ser: Any, settings: dict[str, Any]) -> None:
    if getattr(ser, "is_open", False):
        ser.close()
    for key, value in settings.items():
        setattr(ser, key, value)
    ser.open()


def _describe_settings(settings: dict[str, Any]) -> str:
    """``{'baudrate': 115200, 'parity': 'E', ...}`` as a user reads it: ``115200 8E1``."""
    return f"{settings.get('baudrate', '?')} 8{settings.get('parity', 'N')}1"


class TouchStrategy(EntryStrategy):
    """``--enter 1200[:PORT]`` for ``stmflash uart``: touch the application's CDC port.

    For boards whose application talks USB CDC while the ROM is reached on a USART: the
    touch resets the chip into its ROM, then the caller syncs on the UART port.
    """

    name = "1200"

    def __init__(self, port: str | None) -> None:
        self.port = port or None
        self.settle_s = TOUCH_WAIT_S

    def enter(self, ser: Any) -> None:
        if self.port is None:
            saved = ser.baudrate
            ser.baudrate = TOUCH_BAUD
            ser.dtr = False
            ser.baudrate = saved
            return
        TouchEntry(self.port, settle=0.0)._touch_serial()

    def describe(self) -> str:
        return "1200" + (f":{self.port}" if self.port else "")


class DetachStrategy(EntryStrategy):
    """``--enter detach[:SELECTOR]`` for ``stmflash uart``: DFU_DETACH, then sync on the UART."""

    name = "detach"

    def __init__(self, selector: str | None) -> None:
        self.selector = selector or None
        self.settle_s = DEFAULT_RESET_SETTLE_S

    def enter(self, ser: Any) -> None:
        backend = usb_backend()
        rt = _one(
            find_runtime_dfu(backend, self.selector),
            "application with a DFU runtime interface (FE/01/01)",
            self.selector,
            lambda r: _seen(r.device).describe(),
        )
        _detach(rt)

    def describe(self) -> str:
        return "detach" + (f":{self.selector}" if self.selector else "")


def _detach(rt: RuntimeDfu) -> None:
    import usb.util

    wvalue = min(DETACH_TIMEOUT_MS, rt.detach_timeout_ms or DETACH_TIMEOUT_MS)
    _tolerant(lambda: rt.device.ctrl_transfer(0x21, DFU_DETACH, wvalue, rt.interface, None))
    if not rt.will_detach:
        # DFU 1.1 §5.1: the bus reset within wDetachTimeOut is what starts DFU mode.
        _tolerant(rt.device.reset)
    _tolerant(lambda: usb.util.dispose_resources(rt.device))


_registry.register("command", serial=lambda arg, inv: CommandStrategy(trigger_options_from(arg, DEFAULTS)))
_registry.register(
    "1200",
    serial=lambda arg, inv: TouchStrategy(arg.strip()),
    usb=lambda arg, timeout: TouchEntry(arg.strip() or None, timeout=timeout),
)
_registry.register(
    "detach",
    serial=lambda arg, inv: DetachStrategy(arg.strip()),
    usb=lambda arg, timeout: DetachEntry(arg.strip() or None, timeout=timeout),
)


# ---- DFU: ``stmflash dfu --enter CHAIN`` -----------------------------------------------------


def enter_dfu(spec: str | None, *, timeout: float = DEFAULT_TIMEOUT_S,
              log: Callable[[str], None] | None = None) -> UsbSeen | None:
    """Run a DFU ``--enter`` chain (``none``, ``1200[:PORT]``, ``detach[:SELECTOR]``).

    Strategies are tried in order until one brings up the ROM DFU device; returns the
    device that appeared (open it by its ``path``), or None for ``none`` (the chip is
    expected to be in DFU mode already). When all fail, every strategy's failure is named.
    """
    if not spec:
        return None
    chain = _registry.usb_chain(spec, timeout)
    failures: list[tuple[str, LinkError]] = []
    for n, (what, strategy) in enumerate(chain):
        try:
            return strategy.enter()
        except LinkError as exc:
            failures.append((what, exc))
            if log and n + 1 < len(chain):
                log(f"entry {what} failed ({exc}); trying {chain[n + 1][0]}")
    raise type(failures[-1][1])(_registry.failure_summary(list(failures)))
