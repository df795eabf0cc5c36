"""The virtual STM32 running its *application*: what a board looks like before a pin-less entry.

With the ``app`` option the virtual chip boots its flash when the flash holds a plausible
vector table (initial SP inside RAM, reset vector odd and inside flash), exactly when a
real part with BOOT0 low would run user code. The application behaves like a typical
firmware carrying the stmflash companion (``firmware/stmflash_boot``):

* on the UART, at its own settings (115200 8N1 by default), it prints a banner line and
  answers each typed line (``echo: ...``), like a console;
* its receive path goes through :class:`stmflash.trigger.frame.Matcher` — the twin of the
  C matcher — so only a valid trigger (sync, command, check value with the right key)
  makes it acknowledge, set the boot request and reset into the ROM. Noise, a terminal
  typing, or a frame with a wrong check value never reach the ROM;
* after a reset (``--after reset``) or the ROM's Go it runs again.

:class:`UsbApp` is the same application on USB: a CDC-ACM device (ST's VCP, 0483:5740)
with a DFU 1.1 runtime interface (FE/01/01). A 1200-baud touch or DFU_DETACH reboots it
into the ROM, which then enumerates as 0483:df11 on the same port.

Transport-free like :class:`~stmflash.sim.an3155.An3155Rom` (``feed``/``take_output``);
:class:`UartFrontEnd` puts both on one UART so every transport drives one object.
"""

from __future__ import annotations

import struct
import time
from typing import Any

from stmflash.sim.cdc import CdcAcmFace, UsbStall
from stmflash.sim.chip import AccessError, VirtualChip
from stmflash.trigger.frame import DEFAULT_APP_BAUD, Matcher, encode_ack

APP_PARITY = "N"
APP_VID_PID = (0x0483, 0x5740)  # ST's virtual COM port: what CubeMX CDC applications ship
DETACH_TIMEOUT_MS = 1000
BITS_PER_APP_BYTE = 10  # 8N1

# DFU runtime requests the application answers (the CDC ones: stmflash.sim.cdc)
DFU_DETACH, DFU_GETSTATUS, DFU_GETSTATE = 0x00, 0x03, 0x05
APP_IDLE, APP_DETACH = 0, 1


def vector_table(chip: VirtualChip) -> tuple[int, int] | None:
    """``(initial SP, reset vector)`` at the start of flash (None when unreadable)."""
    try:
        return struct.unpack("<II", chip.read(chip.device.flash_start, 8))
    except (AccessError, struct.error):
        return None


def has_valid_app(chip: VirtualChip) -> bool:
    """Would a real part boot this flash? SP in RAM (word aligned), reset vector Thumb in flash."""
    vt = vector_table(chip)
    if vt is None:
        return False
    sp, reset = vt
    dev = chip.device
    sp_ok = sp % 4 == 0 and any(r.start < sp <= r.end for r in dev.ram)
    return sp_ok and bool(reset & 1) and (reset & ~1) in dev.flash


def demo_vector_table(chip: VirtualChip, entry_offset: int = 0x101) -> bytes:
    """A minimal valid vector table for ``chip``'s device (tests, examples)."""
    dev = chip.device
    ram = max(dev.ram, key=lambda r: r.size)
    return struct.pack("<II", ram.end, dev.flash_start + entry_offset)


class VirtualApp:
    """The application's behaviour on the UART, attached to one :class:`VirtualChip`.

    Attaching registers a reset hook: after every reset the chip boots the application
    unless a boot request is pending (the companion's "flag + software reset") or the
    flash holds no valid vector table (then it stays in the ROM, as the real part does).
    """

    def __init__(
        self,
        chip: VirtualChip,
        *,
        baud: int = DEFAULT_APP_BAUD,
        parity: str = APP_PARITY,
        key: bytes | str = b"",
        banner: bool = True,
        companion: bool = True,
    ) -> None:
        self.chip = chip
        self.companion = companion  # False: a firmware built without firmware/stmflash_boot
        self.baud = baud
        self.parity = parity.upper()[:1]
        self.key = key.encode() if isinstance(key, str) else bytes(key)
        self.banner = banner
        self.matcher = Matcher(self.key)
        self.boot_request = False
        self.triggers = 0  # requests honoured (acked + reset into the ROM)
        self.lines: list[str] = []  # lines typed at the application (tests look)
        self._line = bytearray()
        self._out: list[tuple[float, bytes]] = []
        self._epoch: tuple[int, int | None] | None = None
        self._host_settings: tuple[int, str] | None = None
        self._tx_end = 0.0
        chip.reset_hooks.append(self._after_reset)
        self.chip.app = self  # let other front-ends (USB) find the application
        self._boot()

    # ---- boot decision -----------------------------------------------------------------------
    def _boot(self) -> None:
        """Power-on: BOOT0 low, so the flash runs when it holds an application (and, on
        G0/C0, when the option bytes' boot table says flash)."""
        self.chip.boot_mode = "app"
        if self.chip.powered and self.chip.mode == "bootloader":
            self.chip.boot_at_power_on("app")
            if self.chip.mode == "app" and not has_valid_app(self.chip):
                self.chip.mode = "bootloader"

    def _after_reset(self, chip: VirtualChip) -> None:
        if chip.mode != "app":
            return  # BOOT0 held high (pin entry) or an explicit reset into the ROM
        if self.boot_request:
            chip.mode = "bootloader"  # the companion's early check found its one-shot flag
        elif not has_valid_app(chip):
            chip.mode = "bootloader"  # nothing to run: the part stays in its ROM
        self.boot_request = False

    @property
    def running(self) -> bool:
        chip = self.chip
        return chip.powered and chip.mode == "app" and has_valid_app(chip)

    def _check_started(self, now: float) -> None:
        """Print the banner once per application start (power-on, reset or Go)."""
        epoch = (self.chip.reset_count, self.chip.go_address)
        if self._epoch == epoch or not self.running:
            return
        self._epoch = epoch
        self.matcher.reset()
        self._line.clear()
        if self.banner:
            self._emit(f"{self.chip.device.short_name} application running "
                       "(stmflash virtual STM32)\r\n".encode(), now)

    # ---- line settings -------------------------------------------------------------------------
    def line_settings(self, baud: int | None, parity: str | None) -> None:
        """The host's settings; bytes sent at other settings arrive as garbage."""
        if baud is None:
            self._host_settings = None
        else:
            self._host_settings = (int(baud), (parity or "N").upper()[:1])

    def _settings_match(self) -> bool:
        return self._host_settings is None or self._host_settings == (self.baud, self.parity)

    # ---- driving ---------------------------------------------------------------------------------
    def feed(self, data: bytes, now: float = 0.0) -> None:
        """Bytes from the host while the application runs."""
        self._check_started(now)
        if not self.running or not self._settings_match():
            return  # wrong baud/parity: framing errors, nothing the app understands
        for b in bytes(data):
            if self.companion and self.matcher.feed(b):
                self._honour(self.matcher.nonce or 0, now)
                return  # what follows arrives while the chip resets: lost
            self._typed(b, now)

    def _typed(self, b: int, now: float) -> None:
        if b in (0x0D, 0x0A):
            if self._line:
                text = self._line.decode("ascii", "replace")
                self._line.clear()
                self.lines.append(text)
                self._emit(f"echo: {text}\r\n".encode(), now)
        elif 0x20 <= b < 0x7F:
            if len(self._line) < 256:
                self._line.append(b)
        elif b in (0x08, 0x7F):
            if self._line:
                self._line.pop()

    def _honour(self, nonce: int, now: float) -> None:
        """The companion: ack (and wait for it to leave), set the flag, software reset."""
        self._emit(encode_ack(nonce, self.key), now)
        self.request_bootloader()

    def request_bootloader(self) -> None:
        """Reboot into the ROM bootloader (the trigger's effect; the USB paths use it too)."""
        self.triggers += 1
        self.boot_request = True
        self.chip.reset()

    def _wire(self, n: int) -> float:
        return n * BITS_PER_APP_BYTE / self.baud if self.chip.timing.realistic else 0.0

    def _emit(self, data: bytes, now: float) -> None:
        start = max(now, self._tx_end)
        self._tx_end = start + self._wire(len(data))
        self._out.append((self._tx_end, data))

    def take_output(self, now: float | None = None) -> bytes:
        """Bytes whose last bit left the chip by ``now`` (everything when None)."""
        self._check_started(now or 0.0)
        out = bytearray()
        keep = []
        for t, data in self._out:
            if now is None or t <= now:
                out += data
            else:
                keep.append((t, data))
        self._out = keep
        if not self._settings_match():
            return b""  # the host's UART sees framing errors, not our text
        return bytes(out)

    def next_output_time(self) -> float | None:
        return min((t for t, _ in self._out), default=None)

    def pending(self) -> int:
        return sum(len(d) for _, d in self._out)


class UsbApp(CdcAcmFace):
    """The application's USB face: CDC-ACM (ST VCP) plus a DFU 1.1 runtime interface.

    Interfaces: 0 CDC communication (02/02/01, notification endpoint 0x82), 1 CDC data
    (0A/00/00, bulk 0x01 OUT / 0x81 IN: the application's console), 2 DFU runtime
    (FE/01/01, functional descriptor after it), laid out like a CubeMX CDC device (IAD,
    CDC functional descriptors: :class:`stmflash.sim.cdc.CdcAcmFace`), so the Linux
    ``cdc_acm`` driver binds it as it binds a board. Bytes written to the data endpoint
    reach the application only at its own line settings (SET_LINE_CODING), as on a UART
    bridge; the control requests that matter for entry:

    * the 1200-baud touch: SET_LINE_CODING 1200 then SET_CONTROL_LINE_STATE with DTR=0;
    * DFU_DETACH: with bitWillDetach the application reboots into the ROM at once;
      without it, it waits for the host's USB reset (DFU 1.1 §5.1).

    Either way the chip resets into its ROM, which enumerates as 0483:df11 on the same
    port; after the ROM's "leave" (or a reset) the application enumerates again.
    """

    INTERFACES = (*CdcAcmFace.INTERFACES, (0xFE, 0x01, 0x01, "DFU runtime (stmflash companion)"))
    ENDPOINTS = (*CdcAcmFace.ENDPOINTS, ())
    DEVICE_CLASS = (0xEF, 0x02, 0x01)  # miscellaneous / IAD
    IAD = True

    def __init__(self, app: VirtualApp, *, vid_pid: tuple[int, int] = APP_VID_PID,
                 will_detach: bool = True, detach_timeout_ms: int = DETACH_TIMEOUT_MS) -> None:
        super().__init__()
        self.app = app
        self.vid, self.pid = vid_pid
        self.will_detach = will_detach
        self.detach_timeout_ms = detach_timeout_ms
        self.line_coding = struct.pack("<IBBB", DEFAULT_APP_BAUD, 0, 0, 8)
        self.dfu_state = APP_IDLE
        self.touches = 0
        self.detaches = 0
        app.chip.usb_app = self  # the USB backend shows this face while the chip runs the app
        app.chip.reset_hooks.append(self._after_reset)

    def _after_reset(self, chip: VirtualChip) -> None:
        self.dtr = self.rts = False
        self.dfu_state = APP_IDLE
        self.line_coding = struct.pack("<IBBB", DEFAULT_APP_BAUD, 0, 0, 8)

    # ---- descriptors ------------------------------------------------------------------------
    def functional_descriptor(self) -> bytes:
        attrs = 0x03 | (0x08 if self.will_detach else 0)  # download, upload, (will detach)
        return struct.pack("<BBBHHH", 9, 0x21, attrs, self.detach_timeout_ms, 2048, 0x011A)

    def extra_descriptor(self, intf: int) -> bytes:
        return self.functional_descriptor() if self.INTERFACES[intf][0] == 0xFE else b""

    def strings(self, serial: str) -> dict[int, str]:
        out = {
            self.S_MANUFACTURER: "STMicroelectronics",
            self.S_PRODUCT: f"{self.app.chip.device.short_name} application (stmflash virtual STM32)",
            self.S_SERIAL: serial,
            self.S_CONFIG: "CDC + DFU runtime",
        }
        for i, (_, _, _, name) in enumerate(self.INTERFACES):
            out[self.S_INTF0 + i] = name
        return out

    # ---- data: the application's console -------------------------------------------------------
    def receive(self, data: bytes) -> None:
        baud, _bits, parity, _stop = self.line()
        self.app.line_settings(baud, parity)
        self.app.feed(data, time.perf_counter())

    def transmit(self) -> bytes:
        baud, _bits, parity, _stop = self.line()
        self.app.line_settings(baud, parity)
        return self.app.take_output(time.perf_counter())

    # ---- class requests -----------------------------------------------------------------------
    def control_lines(self, old: tuple[bool, bool], new: tuple[bool, bool]) -> None:
        if self.baud == 1200 and not self.dtr:
            self.touches += 1
            self.app.request_bootloader()  # the 1200-baud touch

    def control(self, rtype: int, req: int, value: int, index: int, data: bytes | None,
                length: int) -> bytes | int:
        """One class request; bytes for IN requests, the count for OUT ones."""
        out = self.cdc_request(rtype, req, value, index, data, length)
        if out is not None:
            return out
        if index == 2 and rtype == 0x21 and req == DFU_DETACH:
            self.detaches += 1
            if self.will_detach:
                self.app.request_bootloader()
            else:
                self.dfu_state = APP_DETACH
                self.app.boot_request = True  # the host's USB reset finishes it
            return 0
        if index == 2 and rtype == 0xA1 and req == DFU_GETSTATUS:
            return bytes([0, 0, 0, 0, self.dfu_state, 0])[:length]
        if index == 2 and rtype == 0xA1 and req == DFU_GETSTATE:
            return bytes([self.dfu_state])[:length]
        raise UsbStall(f"request 0x{req:02X} type 0x{rtype:02X} to interface {index}")


def install_usb(chip: VirtualChip, options: dict[str, str] | None = None) -> UsbApp | None:
    """The application with its USB face (``STMFLASH_USB_SIM`` entry option ``app=1``).

    ``app=nodetach`` builds a runtime interface without bitWillDetach (the host must
    reset the bus after DFU_DETACH).
    """
    opts = dict(options or {"app": "1"})
    existing = getattr(chip, "usb_app", None)
    if isinstance(existing, UsbApp):
        return existing
    value = (opts.get("app") or "1").strip().lower()
    app = install(chip, {**opts, "app": "1" if value == "nodetach" else value})
    if app is None:
        return None
    return UsbApp(app, will_detach=value != "nodetach")


class UartFrontEnd:
    """ROM bootloader and application sharing one UART, switched by ``chip.mode``.

    Has the :class:`~stmflash.sim.an3155.An3155Rom` driving interface, so a transport
    (pty server, ``sim://`` port) that held a ROM can hold this instead.
    """

    def __init__(self, rom: Any, app: VirtualApp | None) -> None:
        self.rom = rom
        self.app = app
        self.chip = rom.chip

    def feed(self, data: bytes, now: float = 0.0) -> None:
        if self.app is not None and self.chip.mode == "app":
            self.app.feed(data, now)
        else:
            self.rom.feed(data, now)

    def take_output(self, now: float | None = None) -> bytes:
        # The ROM first: its last ACK (Go) leaves before the application it starts can talk;
        # while the application talks the ROM is not running, so nothing else can interleave.
        rom = self.rom.take_output(now)
        return rom + (self.app.take_output(now) if self.app is not None else b"")

    def next_output_time(self) -> float | None:
        times = [self.rom.next_output_time()]
        if self.app is not None:
            times.append(self.app.next_output_time())
        present = [t for t in times if t is not None]
        return min(present) if present else None

    def pending(self) -> int:
        return self.rom.pending() + (self.app.pending() if self.app is not None else 0)

    def line_settings(self, baud: int | None, parity: str | None) -> None:
        if self.app is not None:
            self.app.line_settings(baud, parity)
        setter = getattr(self.rom, "line_settings", None)
        if callable(setter):
            setter(baud, parity)

    def __getattr__(self, name: str) -> Any:
        # everything else (synced, log, external_reset, listening...) is the ROM's
        return getattr(self.rom, name)


def with_app(rom: Any) -> Any:
    """``rom`` itself, or a :class:`UartFrontEnd` when its chip runs an application."""
    app = getattr(rom.chip, "app", None)
    return UartFrontEnd(rom, app) if isinstance(app, VirtualApp) else rom


def install(chip: VirtualChip, options: dict[str, str]) -> VirtualApp | None:
    """Attach the application as URL/environment options ask (``app``, ``app_baud``,
    ``app_key``); reuses the one already attached. None when ``app`` is off;
    ``app=plain`` is an application without the trigger companion (it never answers)."""
    existing = getattr(chip, "app", None)
    if isinstance(existing, VirtualApp):
        return existing
    if "app" not in options or not truthy(options["app"] or "1"):  # "?app" alone means on
        return None
    plain = options["app"].strip().lower() == "plain"
    try:
        baud = int(options.get("app_baud", str(DEFAULT_APP_BAUD)), 0)
        key = bytes.fromhex(options.get("app_key", ""))
    except ValueError as exc:
        raise ValueError(f"bad app option: {exc}") from None
    if baud <= 0:
        raise ValueError(f"bad app_baud {baud}")
    return VirtualApp(chip, baud=baud, key=key, companion=not plain)


def truthy(value: Any) -> bool:
    """URL / environment option spelling: ``app``, ``app=1``, ``app=yes``..."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() not in ("", "0", "no", "false", "off")


def tty_settings(fd: int) -> tuple[int, str] | None:
    """``(baud, parity)`` a client set on a pseudo-terminal (ptys keep but ignore them)."""
    import termios

    try:
        attrs = termios.tcgetattr(fd)
    except (termios.error, OSError):
        return None
    cflag, speed = attrs[2], attrs[5]
    baud = next((int(n[1:]) for n in dir(termios)
                 if n.startswith("B") and n[1:].isdigit() and getattr(termios, n) == speed), None)
    if baud is None:
        return None
    parity = "N"
    if cflag & termios.PARENB:
        parity = "O" if cflag & termios.PARODD else "E"
    return baud, parity
