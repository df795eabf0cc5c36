"""pyserial URL handler ``sim://DEVICE?opt=val&...``: a virtual STM32 inside the process.

Registered by appending ``"stmflash.sim"`` to ``serial.protocol_handler_packages``
(:func:`stmflash.sim.register_url_handler` does it), after which every place that accepts
a serial port accepts ``sim://F407``. Options:

==============  =============================================================================
``chip``        registry name: reuse the :class:`VirtualChip` registered under it (created and
                registered on first use), so a test can inspect what the client did
``image``       image file (flash + option bytes + OTP persisted across opens)
``timing``      ``instant`` (default) or ``realistic``
``baud``        modelled line rate (default: the rate the port is opened with)
``adapter``     USB-serial adapter profile for the turnaround in realistic mode: ``ch340``
                (default) or ``cp210x`` ~1 ms, ``ftdi`` 16 ms (default latency timer),
                ``ideal`` 0 (see :data:`stmflash.sim.timing.ADAPTERS`)
``latency_ms``  explicit adapter turnaround in ms (overrides ``adapter``)
``fault``       fault spec, e.g. ``drop=0.01,stray_zero`` (see :mod:`stmflash.sim.faults`)
``seed``        seed for faults and the UID (default 0)
``app``         ``1``: the chip runs its flash application when the flash holds a valid vector
                table (:mod:`stmflash.sim.app`: banner, echo, answers the stmflash trigger);
                without ``chip`` the chip is kept per URL so a reopen finds it (entry by trigger)
``app_baud``    the application's baud rate (default 115200, 8N1)
``app_key``     hex key the application's trigger companion was built with (default none)
==============  =============================================================================

Instant mode never sleeps: a read returns as soon as the chip has nothing more to say
(the chip only talks in answer to writes, so waiting for the timeout would gain nothing).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from stmflash.sim import registry
from stmflash.sim.an3155 import An3155Rom
from stmflash.sim.app import install as app_install
from stmflash.sim.app import with_app
from stmflash.sim.chip import VirtualChip
from stmflash.sim.cpu import with_cpu
from stmflash.sim.timing import Pacer, sleep_until

OPTIONS = ("chip", "image", "timing", "baud", "adapter", "latency_ms", "fault", "seed", "app", "app_baud", "app_key")


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """``(device name, options)`` of a ``sim://`` URL; unknown options are an error."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "sim":
        raise SerialException(f"expected a sim:// URL, got {url!r}")
    name = urllib.parse.unquote(parts.netloc + parts.path).strip("/")
    if not name:
        raise SerialException(f"{url!r}: no device name (e.g. sim://F407)")
    opts = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise SerialException(f"{url!r}: unknown option(s) {', '.join(unknown)} (known: {', '.join(OPTIONS)})")
    return name, opts


def chip_for_url(url: str, *, baudrate: int = 115200) -> VirtualChip:
    """The chip a URL names: the registered one, or a new one (registered if named)."""
    from stmflash import devices

    name, opts = parse_url(url)
    reg_name = opts.get("chip")
    if not reg_name and "app" in opts:
        reg_name = "url:" + url  # the trigger resets the chip; the reopen must find it again
    if reg_name:
        chip = registry.get(reg_name)
        if chip is not None:
            if "app" in opts:
                try:
                    app_install(chip, opts)
                except ValueError as exc:
                    raise SerialException(f"{url!r}: {exc}") from None
            return chip
    try:
        device = devices.find(name)
    except KeyError as exc:
        raise SerialException(f"{url!r}: {exc.args[0]}") from None
    try:
        chip = VirtualChip(
            device,
            image_path=opts.get("image") or None,
            timing=opts.get("timing", "instant"),
            faults=opts.get("fault") or None,
            seed=int(opts.get("seed", "0"), 0),
            baud=int(opts.get("baud", str(baudrate)), 0),
            latency_ms=float(opts["latency_ms"]) if "latency_ms" in opts else None,
            adapter=opts.get("adapter") or None,
        )
    except ValueError as exc:
        raise SerialException(f"{url!r}: {exc}") from None
    try:
        app_install(chip, opts)
    except ValueError as exc:
        raise SerialException(f"{url!r}: {exc}") from None
    if reg_name:
        registry.register(reg_name, chip)
    return chip


class Serial(SerialBase):
    """A serial port whose far end is an :class:`An3155Rom` on a :class:`VirtualChip`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.chip: VirtualChip | None = None
        self.rom: An3155Rom | None = None
        self._rx = bytearray()
        self.lines: list[tuple[str, bool]] = []
        self.on_line_change: Callable[[Serial, str, bool], None] | None = None
        super().__init__(*args, **kwargs)

    # ---- SerialBase plumbing -------------------------------------------------------------
    def open(self) -> None:
        if self._port is None:
            raise SerialException("port must be configured before it can be used")
        if self.is_open:
            raise SerialException("port already open")
        chip = chip_for_url(self._port, baudrate=self._baudrate)
        if not chip.powered:
            chip.power_on()  # reopening after a power loss = powering the board again
        self.chip = chip
        self.rom = with_cpu(with_app(An3155Rom(chip, now=self._clock())))
        self.pacer = Pacer(chip.stats)
        self._reconfigure_port()
        self._rx.clear()
        self.is_open = True
        if not self._dsrdtr:
            self._update_dtr_state()
        if not self._rtscts:
            self._update_rts_state()

    def close(self) -> None:
        """Closing the port is the board losing its host: persist the chip like a power-off."""
        chip, self.chip = self.chip, None
        self.is_open = False
        self.rom = None
        if chip is not None and chip.image_path is not None:
            chip.save()

    def _reconfigure_port(self) -> None:
        """Nothing to configure: the modelled baud is fixed at open (URL option)."""
        if self.rom is not None and hasattr(self.rom, "line_settings"):
            self.rom.line_settings(self._baudrate, self._parity)  # the app hears only its own

    def from_url(self, url: str) -> str:
        parse_url(url)
        return url

    def _clock(self) -> float:
        assert self.chip is not None
        return time.perf_counter() if self.chip.timing.realistic else 0.0

    # ---- data ------------------------------------------------------------------------------
    def _pull(self) -> None:
        assert self.rom is not None and self.chip is not None
        now = time.perf_counter() if self.chip.timing.realistic else None
        self._rx += self.rom.take_output(now)

    @property
    def in_waiting(self) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        self._pull()
        return len(self._rx)

    def read(self, size: int = 1) -> bytes:
        if not self.is_open or self.rom is None or self.chip is None:
            raise PortNotOpenError()
        realistic = self.chip.timing.realistic
        deadline = None if self._timeout is None else time.perf_counter() + self._timeout
        while True:
            self._pull()
            if len(self._rx) >= size or not realistic:
                break
            nxt = self.rom.next_output_time()
            if nxt is None:
                # Nothing will come: honour the timeout as a real port would.
                if deadline is not None:
                    sleep_until(deadline)
                break
            if deadline is not None and nxt > deadline:
                sleep_until(deadline)
                self._pull()
                break
            sleep_until(nxt)
            self.pacer.sent(nxt, time.perf_counter())
        data = bytes(self._rx[:size])
        del self._rx[:size]
        return data

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if not self.is_open or self.rom is None:
            raise PortNotOpenError()
        payload = bytes(data)
        chip = self.chip
        assert chip is not None
        if chip.timing.realistic:
            # The answer is due at (arrival + modelled time): the simulator's CPU spent
            # feeding it runs before that deadline (read() sleeps to it, see Pacer).
            with chip.stats.work():
                self.rom.feed(payload, self.pacer.arrival(time.perf_counter()))
        else:
            self.rom.feed(payload, self._clock())
        return len(payload)

    def flush(self) -> None:
        """Writes are delivered at once; nothing to wait for."""

    def reset_input_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()
        self._pull()
        self._rx.clear()

    def reset_output_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()

    # ---- modem lines: recorded, and forwarded to hooks (pin-entry tests) ----------------------
    def _line(self, name: str, level: bool) -> None:
        self.lines.append((name, level))
        if self.chip is None:
            return
        self.chip.line_events.append((name, level))
        if self.on_line_change is not None:
            self.on_line_change(self, name, level)
        if self.chip.on_line_change is not None:
            self.chip.on_line_change(self.chip, name, level)

    def _update_dtr_state(self) -> None:
        self._line("dtr", bool(self._dtr_state))

    def _update_rts_state(self) -> None:
        self._line("rts", bool(self._rts_state))

    def _update_break_state(self) -> None:
        self._line("break", bool(self._break_state))

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True


class PinWiring:
    """NRST and BOOT0 driven by modem lines, as on USB-serial boards with auto-reset.

    ``reset``/``boot0`` name the line ("dtr" or "rts") that drives each pin; an asserted
    line pulls NRST low / drives BOOT0 high unless the matching ``*_inverted`` is set.
    Releasing NRST restarts the chip: into the ROM bootloader when BOOT0 is high, into the
    application otherwise. Install with ``chip.on_line_change = PinWiring(...)``.
    """

    def __init__(
        self,
        reset: str = "dtr",
        boot0: str = "rts",
        *,
        reset_inverted: bool = False,
        boot0_inverted: bool = False,
    ) -> None:
        self.reset_line, self.boot0_line = reset, boot0
        self.reset_inverted, self.boot0_inverted = reset_inverted, boot0_inverted
        self.nrst_low = False
        self.boot0_high = False
        self.boots: list[str] = []

    def __call__(self, chip: VirtualChip, name: str, level: bool) -> None:
        if name == self.boot0_line:
            self.boot0_high = level != self.boot0_inverted
        if name == self.reset_line:
            low = level != self.reset_inverted
            if self.nrst_low and not low:
                mode = "bootloader" if self.boot0_high else "app"
                chip.reset(mode)
                self.boots.append(mode)
            self.nrst_low = low
