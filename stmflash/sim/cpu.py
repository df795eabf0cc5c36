"""Code in RAM really runs: Go to a RAM address starts an emulated Cortex-M core (unicorn).

The ROM's Go into RAM hands the UART to a :class:`Cpu` running the RAM contents (the
stmflash flasher stub, or any program a host uploads). Memory map: the chip's RAM (copied
in, copied back when the program ends), the flash as MMIO served from and programmed into
the :class:`~stmflash.sim.chip.VirtualChip`'s one flash array through the family's flash
controller model (:mod:`stmflash.sim.periph`), system memory read-only, the USART
candidates of the device table, the IWDG page (plain memory: refresh writes need no model)
and the SCB (AIRCR reset). Any other peripheral access faults, as does executing outside RAM: a jump into system memory is the ROM
starting again (``--after stay``), a jump into flash starts the application, AIRCR
SYSRESETREQ resets the chip, anything else leaves a dead CPU (silent until a reset).

Virtual time, so that waiting, busy flags and overruns behave as on the part:

* each peripheral access costs ``ACCESS_CYCLES`` of the clock the ROM left (the stub's
  main loop is a handful of accesses per turn), a received byte ``DATA_CYCLES`` more,
  a word read from flash ``FLASH_READ_CYCLES`` (and waits while the flash is busy);
* when the program reads a status register and finds the value it found last time, with no
  activity in between (no data, flash access or configuration write since that read), it
  has gone round a polling loop for nothing: it is waiting, and time jumps to the next
  event (a byte arriving, the shift register emptying, the flash finishing). With nothing
  pending at all the CPU sleeps until the host sends -- once two such stops in a row find
  the same registers and stack (a loop that computes in RAM between its polls, a CRC over
  RAM, is not waiting).
* realistic timing keeps the CPU at most ``LOOKAHEAD`` ahead of the wall clock; instant
  timing runs it as far as it goes (busy times are zero there, the wire is not: bytes
  still arrive one byte time apart at the rate BRR gives).

The memory callbacks are the simulator's hot path (the stub polls the USART several times
per byte: about a million accesses per 256 KiB), so they are registered with unicorn's C API
directly where the binding allows it (one Python frame per access instead of three) and
keep their common case -- a status read with nothing changed -- to a few attribute lookups.

Unicorn is a dependency of the ``sim`` and ``test`` extras only; without it a Go into RAM
behaves as before (the chip leaves the ROM and is silent).
"""

from __future__ import annotations

import importlib.util
import struct
from typing import Any

from stmflash.sim.chip import PowerLoss, VirtualChip
from stmflash.sim.periph import BusFault, FlashController, FlashF1XL, Usart, controllers_for

# the flash register sets a peripheral page can hold (built once: checked on every access)
_FLASH_TYPES = (FlashController, FlashF1XL)
# what a 1 KiB block of a peripheral page holds
_NONE, _USART, _FLASH, _SCB = 0, 1, 2, 3

ACCESS_CYCLES = 25
DATA_CYCLES = 40
FLASH_READ_CYCLES = 12
CHUNK = 200_000
LOOKAHEAD = 0.002
MAX_SILENT_CHUNKS = 100  # chunks without any peripheral access: a hung CPU
IWDG_KR = 0x40003000
SCB_PAGE = 0xE000E000
AIRCR = 0xE000ED0C
PAGE = 0x1000

RUN, WAIT, DONE = "run", "wait", "done"


def available() -> bool:
    return importlib.util.find_spec("unicorn") is not None


def _page(a: int) -> int:
    return a & ~(PAGE - 1)


def _round_up(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


class Cpu:
    """One run of RAM code on one chip (see module docstring)."""

    def __init__(self, chip: VirtualChip, address: int, start: float, host_baud: int | None) -> None:
        import unicorn

        self.uc_mod = unicorn
        self.chip = chip
        dev = chip.device
        facts = dev.stub
        self.realistic = chip.timing.realistic
        self.clock = int(facts.get("rom_clock_hz", 16_000_000))
        rom_baud = chip.timing.baud
        brr = max(16, round(self.clock / rom_baud))
        bases = [int(b) for b in facts.get("usarts", [])]
        v2 = bool(facts.get("usart_v2"))
        self.usarts = [Usart(b, v2, self.clock, brr if i == 0 else 0, enabled=i == 0) for i, b in enumerate(bases)]
        self.usart = self.usarts[0]
        self._host_ref = (host_baud, self.usart.baud)
        self.set_host_baud(host_baud)
        self.flash_ctl: list[Any] = controllers_for(chip)
        self.t = start
        self.state = RUN
        self.wake: float | None = None
        self.result = ""  # how the run ended
        self._epoch = 0  # counts activity (data, flash access, configuration write)
        self._last_status: dict[int, tuple[int, int]] = {}  # address: (value, epoch) of its last read
        self._stop: str | None = None
        self._replay: tuple[tuple, int] | None = None
        self._idle_snap: tuple | None = None
        arm = unicorn.arm_const
        self._snap_regs = [getattr(arm, f"UC_ARM_REG_R{i}") for i in range(13)] + [arm.UC_ARM_REG_SP]
        self._target: float | None = None
        self._accesses = 0
        self._silent = 0
        self._access_s = ACCESS_CYCLES / self.clock
        self._data_s = DATA_CYCLES / self.clock
        self._flash_read_s = FLASH_READ_CYCLES / self.clock
        self._read_hooks = [h for h in (getattr(c, "on_flash_read", None) for c in self.flash_ctl) if h]
        self._flash_size = dev.flash.size
        self._status_offs = {id(c): frozenset(getattr(c, "STATUS", (c.SR,))) for c in self.flash_ctl}

        uc = unicorn.Uc(unicorn.UC_ARCH_ARM, unicorn.UC_MODE_THUMB | unicorn.UC_MODE_MCLASS)
        self.uc = uc
        self._ram = []
        for region, buf in chip.ram:
            lo, hi = _page(region.start), _round_up(region.end)
            uc.mem_map(lo, hi - lo, unicorn.UC_PROT_ALL)
            uc.mem_write(region.start, bytes(buf))
            self._ram.append((region, buf))
        flash = dev.flash
        self._callbacks: list[Any] = []  # ctypes callbacks must outlive the mapping
        self._mmio(flash.start, _round_up(flash.size), self._flash_read, None, self._flash_write, None)
        if dev.system_memory is not None:
            lo, hi = _page(dev.system_memory.start), _round_up(dev.system_memory.end)
            uc.mem_map(lo, hi - lo, unicorn.UC_PROT_READ)
            uc.mem_write(dev.system_memory.start, bytes(chip.sysmem))
        pages: dict[int, list[tuple[int, int, Any]]] = {}
        for u in self.usarts:
            pages.setdefault(_page(u.base), []).append((u.base, 0x400, u))
        for c in self.flash_ctl:
            pages.setdefault(_page(c.base), []).append((c.base, 0x400, c))
        pages.setdefault(SCB_PAGE, []).append((SCB_PAGE, PAGE, "scb"))
        for page, devs in pages.items():
            # one entry per 1 KiB block of the page: (device, offset of the block in it, kind,
            # the device's status registers)
            table: list[tuple[Any, int, int, frozenset]] = [(None, 0, _NONE, frozenset())] * 4
            for base, size, dev in devs:
                if isinstance(dev, Usart):
                    kind, status = _USART, frozenset((dev.sr_off,))
                elif isinstance(dev, _FLASH_TYPES):
                    kind, status = _FLASH, self._status_offs[id(dev)]
                else:
                    kind, status = _SCB, frozenset()
                for k in range(size // 0x400):
                    blk = (base - page) // 0x400 + k
                    table[blk] = (dev, k * 0x400, kind, status)
            self._mmio(page, PAGE, self._periph_read, (page, table), self._periph_write, (page, table))
        # the IWDG key register: refresh writes land in plain memory (nothing to model)
        uc.mem_map(_page(IWDG_KR), PAGE, unicorn.UC_PROT_READ | unicorn.UC_PROT_WRITE)
        sp, pc = struct.unpack("<II", bytes(uc.mem_read(address, 8)))
        uc.reg_write(unicorn.arm_const.UC_ARM_REG_SP, sp)
        self.pc = pc

    def _mmio(self, address: int, size: int, read: Any, rdata: Any, write: Any, wdata: Any) -> None:
        """``uc.mmio_map`` without the binding's per-access wrapper layers where possible.

        The callbacks keep the binding's contract: an exception is recorded on the Uc object
        (``emu_start`` raises it) and stops the emulation.
        """
        uc = self.uc
        try:
            from unicorn.unicorn_py3.unicorn import MMIO_READ_CFUNC, MMIO_WRITE_CFUNC, uclib

            handle = uc._uch
            uc._hook_exception  # noqa: B018 - the binding's record of a callback's exception
        except (ImportError, AttributeError):  # another binding layout: its own mmio_map
            uc.mmio_map(address, size, read, rdata, write, wdata)
            return

        def on_read(handle: int, offset: int, size: int, key: int) -> int:
            try:
                return read(uc, offset, size, rdata)
            except BaseException as exc:
                if uc._hook_exception is None:
                    uc._hook_exception = exc
                uc.emu_stop()
                return 0

        def on_write(handle: int, offset: int, size: int, value: int, key: int) -> None:
            try:
                write(uc, offset, size, value, wdata)
            except BaseException as exc:
                if uc._hook_exception is None:
                    uc._hook_exception = exc
                uc.emu_stop()

        rfn, wfn = MMIO_READ_CFUNC(on_read), MMIO_WRITE_CFUNC(on_write)
        self._callbacks += [rfn, wfn]
        status = uclib.uc_mmio_map(handle, address, size, rfn, 0, wfn, 0)
        if status != self.uc_mod.UC_ERR_OK:
            raise self.uc_mod.UcError(status)

    # ---- host side ----------------------------------------------------------------------
    def set_host_baud(self, baud: int | None) -> None:
        ref_host, ref_usart = self._host_ref
        for u in self.usarts:
            u.host_baud = None
            if baud is not None and ref_host:
                # what the chip's USART would have to run at to match the host's port
                u.host_baud = int(baud * ref_usart / ref_host)

    def feed(self, data: bytes, now: float) -> None:
        if self.state == DONE:
            return
        data = self.chip.faults.mangle(bytes(data))
        self.usart.receive(data, max(now, self.t) if self.realistic else self.t)
        if self.state == WAIT:
            self.state = RUN
        self.run(now)

    def take_output(self, now: float | None) -> bytes:
        if self.state != DONE and (now is not None or not self.realistic):
            self.run(now if now is not None else self.t)
        out = self.usart.take(now if self.realistic else None)
        return self.chip.faults.mangle(out) if out else out

    def next_output_time(self) -> float | None:
        times = [t for t in (self.usart.next_output_time(), self.wake if self.state == RUN else None)
                 if t is not None]
        return min(times) if times else None

    def pending(self) -> int:
        return len(self.usart.out) + (1 if self.state == RUN else 0)

    # ---- running ---------------------------------------------------------------------------
    def run(self, now: float) -> None:
        """Run until the program waits for the host (or, realistic, reaches ``now``)."""
        uc_mod = self.uc_mod
        target = now + LOOKAHEAD if self.realistic else None
        while self.state == RUN:
            if target is not None and self.t >= target:
                self.wake = self.t
                return
            self._stop = None
            self._target = target
            before = self._accesses
            try:
                self.uc.emu_start(self.pc | 1, 0xFFFFFFFF, count=CHUNK)
            except uc_mod.UcError as exc:
                self._fault(str(exc))
                return
            except PowerLoss:
                self._end("power loss")
                return
            if self.state != RUN:
                return
            self.pc = self.uc.reg_read(uc_mod.arm_const.UC_ARM_REG_PC)
            if self._stop == "fault":
                return
            if self._accesses == before:
                # a whole chunk without touching a peripheral: computing, or hung for good
                self._silent += 1
                self.t += CHUNK / self.clock
                if self._silent > MAX_SILENT_CHUNKS:
                    self._end("hung (a loop without peripheral access)", dead=True)
                continue
            self._silent = 0
            if self._stop == "idle":
                ev = self._next_event()
                if ev is None:
                    # nothing will change the peripherals: waiting for the host, unless the
                    # program is computing in RAM between its polls (its registers or its
                    # stack differ from the last time it looked idle)
                    snap = self._snapshot()
                    if snap != self._idle_snap:
                        self._idle_snap = snap
                        continue
                    self.state = WAIT
                    self.wake = None
                    return
                if target is not None and ev > target:
                    self.t = max(self.t, target)
                    self.wake = ev
                    return
                self.t = max(self.t, ev)

    def _snapshot(self) -> tuple:
        regs = self.uc.reg_read_batch(self._snap_regs)
        sp = regs[-1]
        region = next((r for r, _ in self._ram if sp in r), None)
        stack = bytes(self.uc.mem_read(sp, min(region.end - sp, 4096))) if region is not None else b""
        return (*regs, stack)

    def _next_event(self) -> float | None:
        times = [u.next_event(self.t) for u in self.usarts]
        times += [c.busy_until for c in self.flash_ctl if c.busy_until > self.t]
        present = [x for x in times if x is not None]
        return min(present) if present else None

    # emu_stop() from a memory callback makes unicorn execute the accessing instruction
    # again when the run resumes: the callback that stops remembers its access, and the
    # repeat is answered from that record without a second side effect (see _replayed).
    def _cost(self, seconds: float) -> None:
        self.t += seconds
        self._accesses += 1
        if self._target is not None and self.t > self._target and self._stop is None:
            self._stop = "ahead"

    def _status(self, addr: int, value: int) -> None:
        now = (value, self._epoch)
        if self._last_status.get(addr) == now and self._stop is None:
            # the same value as last time, nothing done since: waiting. Jump to the next
            # event right here, or stop when there is none (or, realistic, when it lies
            # beyond the wall clock)
            ev = self._next_event()
            if ev is not None and (self._target is None or ev <= self._target):
                self.t = max(self.t, ev)
                self._epoch += 1  # time moved: the next read is a fresh look
            else:
                self._stop = "idle"
        self._last_status[addr] = (value, self._epoch)

    def _maybe_halt(self, key: tuple, value: int = 0) -> None:
        if self._stop is not None and self._replay is None and self.state == RUN:
            self._replay = (key, value)
            self.uc.emu_stop()

    def _replayed(self, key: tuple) -> tuple[bool, int]:
        if self._replay is not None and self._replay[0] == key:
            value = self._replay[1]
            self._replay = None
            return True, value
        return False, 0

    # ---- memory callbacks ----------------------------------------------------------------
    def _flash_read(self, uc: Any, offset: int, size: int, user: Any) -> int:
        if self._replay is not None:
            again, value = self._replayed(("fr", offset, size))
            if again:
                return value
        self._epoch += 1
        for c in self.flash_ctl:
            if c.busy_until > self.t:
                self.t = c.busy_until  # a flash read waits while the flash is busy
        for hook in self._read_hooks:
            hook()  # L0/L1: a read in the middle of a half-page write aborts it
        self._cost(self._flash_read_s)
        if offset + size <= self._flash_size:
            value = int.from_bytes(self.chip.flash[offset : offset + size], "little")
        else:
            value = (1 << (8 * size)) - 1
        if self._stop is not None:
            self._maybe_halt(("fr", offset, size), value)
        return value

    def _flash_write(self, uc: Any, offset: int, size: int, value: int, user: Any) -> None:
        key = ("fw", offset, size)
        if self._replay is not None and self._replayed(key)[0]:
            return
        self._epoch += 1
        self._cost(self._access_s)
        addr = self.chip.device.flash_start + offset
        ctl = self.flash_ctl[0]
        if ctl.busy_until > self.t:
            self.t = ctl.busy_until  # a write while BSY stalls the bus until it is done
        try:
            ctl.flash_write(addr, size, value & ((1 << (8 * size)) - 1), self.t)
        except BusFault as exc:
            self._fault(str(exc))
        except PowerLoss:
            self._end("power loss")
            uc.emu_stop()
            return
        self._maybe_halt(key)

    def _periph_read(self, uc: Any, offset: int, size: int, user: tuple) -> int:
        page, table = user
        if self._replay is not None:
            again, value = self._replayed(("pr", page + offset, size))
            if again:
                return value
        dev, boff, kind, status = table[offset >> 10]
        off = boff + (offset & 0x3FF)
        t = self.t = self.t + self._access_s
        self._accesses += 1
        if self._target is not None and t > self._target and self._stop is None:
            self._stop = "ahead"
        if kind == _USART:
            value, data = dev.read(off, t)
            if data:
                self._epoch += 1
                self._cost(self._data_s)
            elif off in status:
                self._status(dev.base + off, value)
        elif kind == _FLASH:
            value = dev.read(off, t)
            if off in status:
                self._status(dev.base + off, value)
        elif kind == _NONE:
            self._fault(f"read of unmapped peripheral 0x{page + offset:08X}")
            return 0
        else:
            value = 0
        if self._stop is not None:
            self._maybe_halt(("pr", page + offset, size), value)
        return value

    def _periph_write(self, uc: Any, offset: int, size: int, value: int, user: tuple) -> None:
        page, table = user
        key = ("pw", page + offset, size)
        if self._replay is not None and self._replayed(key)[0]:
            return
        dev, boff, kind, _ = table[offset >> 10]
        off = boff + (offset & 0x3FF)
        self._cost(self._access_s)
        if kind == _USART:
            if dev.write(off, value, self.t):
                self._epoch += 1
        elif kind == _FLASH:
            self._epoch += 1
            dev.write(off, value, self.t)
        elif kind == _SCB:
            if page + offset == AIRCR and (value >> 16) == 0x05FA and value & 0x4:
                self._end("reset")
                self.chip.reset()
                uc.emu_stop()
        else:
            self._fault(f"write to unmapped peripheral 0x{page + offset:08X}")
            return
        self._maybe_halt(key)

    # ---- ending ----------------------------------------------------------------------------
    def _fault(self, why: str) -> None:
        """The program left RAM or touched what it must not: decide by where the PC is."""
        if self.state == DONE:
            return
        try:
            pc = self.uc.reg_read(self.uc_mod.arm_const.UC_ARM_REG_PC)
        except Exception:
            pc = 0
        dev = self.chip.device
        if dev.system_memory is not None and pc in dev.system_memory:
            self._end("back into the ROM")
            self.chip.reset("bootloader")
        elif pc in dev.flash and "unmapped" not in why and "flash 0x" not in why:
            self._end(f"started the application at 0x{pc:08X}")
            self.chip.go(pc)
        else:
            self._end(f"CPU fault at 0x{pc:08X}: {why}", dead=True)
        self._stop = "fault"
        try:
            self.uc.emu_stop()
        except Exception:
            pass

    def _end(self, why: str, *, dead: bool = False) -> None:
        if self.state == DONE:
            return
        self.state = DONE
        self.wake = None
        self.result = why
        for region, buf in self._ram:
            buf[:] = bytes(self.uc.mem_read(region.start, region.size))
        if dead:
            self.chip.mode = "dead"


def install(chip: VirtualChip) -> None:
    """Let Go into RAM start the CPU on this chip (once per chip)."""
    if getattr(chip, "_cpu_installed", False) or not available() or not chip.device.stub:
        return
    chip._cpu_installed = True  # type: ignore[attr-defined]
    chip.cpu = None  # type: ignore[attr-defined]

    def on_reset(c: VirtualChip) -> None:
        cpu = c.__dict__.get("cpu")
        if cpu is not None:
            cpu._end("the chip was reset")

    chip.reset_hooks.append(on_reset)


class CpuFrontEnd:
    """A ROM front-end (optionally with an application) plus the CPU, on one UART."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.chip: VirtualChip = inner.chip
        self._host_baud: int | None = None
        install(self.chip)
        if getattr(self.chip, "_cpu_installed", False):
            self.chip.go_hooks[:] = [self._go]

    def _go(self, chip: VirtualChip, address: int) -> bool:
        start = float(getattr(self.inner, "_tx_end", 0.0)) if chip.timing.realistic else 0.0
        try:
            cpu = Cpu(chip, address, start, self._host_baud)
        except Exception:  # unmappable vectors and the like: the core faults at once
            chip.mode = "dead"
            return True
        chip.cpu = cpu  # type: ignore[attr-defined]
        chip.mode = "cpu"
        return True

    @property
    def cpu(self) -> Cpu | None:
        """The chip's CPU run (a finished one still hands over its last bytes)."""
        cpu = self.chip.__dict__.get("cpu")
        return cpu if isinstance(cpu, Cpu) else None

    def feed(self, data: bytes, now: float = 0.0) -> None:
        cpu = self.cpu
        if cpu is not None and cpu.state != DONE:
            cpu.feed(data, now)
        elif self.chip.mode not in ("cpu", "dead"):
            self.inner.feed(data, now)

    def take_output(self, now: float | None = None) -> bytes:
        out = self.inner.take_output(now)
        cpu = self.cpu
        if cpu is not None:
            out += cpu.take_output(now)
        return out

    def next_output_time(self) -> float | None:
        times = [self.inner.next_output_time()]
        cpu = self.cpu
        if cpu is not None:
            times.append(cpu.next_output_time())
        present = [t for t in times if t is not None]
        return min(present) if present else None

    def pending(self) -> int:
        cpu = self.cpu
        return self.inner.pending() + (cpu.pending() if cpu is not None else 0)

    def line_settings(self, baud: int | None, parity: str | None) -> None:
        self._host_baud = baud
        cpu = self.cpu
        if cpu is not None and cpu.state != DONE:
            cpu.set_host_baud(baud)
        setter = getattr(self.inner, "line_settings", None)
        if callable(setter):
            setter(baud, parity)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def with_cpu(front: Any) -> Any:
    """``front`` wrapped so that Go into RAM runs the code (when unicorn is installed)."""
    if not available() or not front.chip.device.stub:
        return front
    return CpuFrontEnd(front)
