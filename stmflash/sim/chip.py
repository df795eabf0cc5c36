"""The memory model of a virtual STM32, shared by every ROM front-end (AN3155, DfuSe).

One :class:`VirtualChip` owns flash (real page/sector layout and banks), RAM (with the
bootloader's reserved area), system memory (holding the bootloader ID byte), option
bytes (RDP level and write protection), OTP and the flash-size / unique-ID registers.
Everything comes from the :class:`~stmflash.devices.Device` record: no family names.

Rules the chip enforces (the same for every device, so clients meet one behaviour):

* flash and OTP program in units of ``device.write_align`` (the flash's programming
  width, from the reference manuals): a write ending inside a unit has the rest of that
  unit filled with 0xFF and programmed (what ST's OpenBootloader does with a remainder);
  a write starting inside a unit is refused (:class:`ProgramError`, NACK) or, where the
  table says ``write_misaligned = "drop"``, accepted and ignored (the flash interface
  raises PGAERR and the ROM's write routine reports nothing, as field reports on G0
  show; ``dropped_writes`` counts them) — the host's verify is what catches it;
* erased flash reads ``device.erased`` (0xFF; 0x00 on L0/L1, whose program flash erases to
  zeros: RM0377/RM0367 3.3, RM0038 3.3) -- erase, mass erase, blank checks and a fresh chip
  all use it;
* a unit that is neither erased (all ``erased``) nor already equal to the new data makes the
  whole write fail (:class:`ProgramError`, ROM answers NACK) and nothing is written — the
  PROGERR behaviour of newer parts, applied universally;
* units under write protection are silently left unchanged (the ROM still ACKs, AN3155);
* a mass erase is ignored as a whole (no change) while any unit is write protected;
* capabilities the table denies are refused here, not in a front-end, so AN3155 and
  DfuSe refuse them alike (:class:`Refused`: mass and bank erase on ``mass_erase =
  false`` parts such as L0, L1, WB; bank erase on single-bank parts);
* RAM below ``device.ram_usable`` belongs to the bootloader: writes there fail.

Option bytes: the family's real layout from the device table (``ob_layout``, decoded by
:mod:`stmflash.option_bytes`; field names and factory values from
``stmflash/data/option_bytes.toml``), so Read Memory at the option-bytes address shows what
the chip stores, and a write there changes the chip as on silicon: complements recomputed by
the "flash interface", H7-style _PRG registers copied into _CUR at the reload, only the
registers the family's ROM programs (``writes``: ST's OpenBootloader on U5 stores OPTR,
NSBOOTADDx and WRPxy, not the secure registers), level 1 -> 0 mass-erases, then a reset. The option-byte loader's complement check is applied to what is
stored (a value byte with a wrong complement loads as 0xFF: on F1 that is readout
protection). Every change goes through :meth:`VirtualChip._store_option_bytes`, the one
place a protection-state cache would be invalidated. Families whose boot table is in the
field table (G0, C0, F7, U5, ...) boot what that table says after each reset (``chip.boots``: "flash",
"system", "sram" or "none"; the empty check uses the EMPTY flag latched at power-on and at each
option-byte load). Parts whose layout is not in the table refuse option-byte writes and
Write Protect exactly as the clients do; their readout level (AN3155 Readout
Protect/Unprotect, which need no layout, and test fixtures) is internal to this model.
Parts with a second option-byte block (``option_bytes2``: F42x/F43x/F469 bank 2 at 0x1FFEC000,
RM0090 3.7.1) store it apart (:meth:`VirtualChip.option_bytes2`, changed only through
``_store_option_bytes2``): Read/Write Memory there, and the DfuSe alt region naming it, reach
it; its nWRP bits (``ob_wrp2``) protect sectors 12-23, and AN3155 Write Unprotect clears them.
L47x/L49x (0x1FFFF800, RM0351 3.4.1), L4+ (0x1FF01000, RM0432 3.4.1) and G47x (0x1FFFF800,
RM0440 3.4.1) bank 2 is the same kind
of block with L4's value + complement slots: the complements are written by the flash interface
(``normalize2``), loaded through the complement check (``loaded_view2``), and its WRP2A/WRP2B
areas protect pages of bank 2.

Image file (``image_path``): one JSON header line, then the raw regions back to back in
the order the header lists them (``flash``, ``option_bytes``, ``otp`` and ``option_bytes2``
when present; an image without ``option_bytes2`` loads that block at its factory state)::

    {"format": "stmflash-sim", "version": 2, "pid": 1043, "bl_id": 49, "uid": "<24 hex>",
     "regions": [{"name": "flash", "address": 134217728, "size": 1048576}, ...]}\\n
    <flash bytes><option bytes><otp bytes>

:func:`load_image_file` / :func:`flash_bytes` read it back for tests. Version 1 files held
the option bytes in the old one-for-all simulator convention: they are migrated on load
(RDP level and protected units carried over); an option-byte region of the wrong size in a
version 2 file is refused with a message naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from stmflash import ob_fields
from stmflash import option_bytes as obl
from stmflash.devices import Device, EraseUnit, Region
from stmflash.errors import StmflashError, UsageError
from stmflash.sim.faults import FaultPlan
from stmflash.sim.timing import SimStats, TimingModel, resolve_latency_ms

IMAGE_FORMAT = "stmflash-sim"
IMAGE_VERSION = 2

# The version-1 image convention (kept to migrate old image files).
RDP_LEVEL0 = 0xAA
RDP_LEVEL2 = 0xCC
OB_MIN_SIZE = 16


class AccessError(StmflashError):
    """An address the chip cannot read or write (unmapped, reserved, out of range)."""


class ProgramError(AccessError):
    """Programming failed as the flash controller fails it (misaligned, not erased)."""


class Refused(AccessError):
    """An operation the device table says the ROM does not offer (e.g. mass erase)."""


class PowerLoss(StmflashError):
    """The injected power loss happened: the chip is dead until :meth:`power_on`."""


def rdp_level_of(value: int) -> int:
    """RDP level of a version-1 image's byte 0 (old simulator convention)."""
    return 0 if value == RDP_LEVEL0 else 2 if value == RDP_LEVEL2 else 1


def _uid_for(device: Device, seed: int, image_path: Path | None) -> bytes:
    key = f"{device.pid:03x}:{seed}:{image_path.resolve() if image_path else ''}"
    return hashlib.sha256(key.encode()).digest()[:12]


class VirtualChip:
    """One virtual STM32: memories, protection, persistence, mode and timing model."""

    def __init__(
        self,
        device: Device,
        *,
        image_path: str | os.PathLike[str] | None = None,
        timing: str | TimingModel = "instant",
        faults: FaultPlan | str | None = None,
        seed: int = 0,
        baud: int = 115200,
        latency_ms: float | None = None,
        adapter: str | None = None,
        rdp_double_nack: bool | None = None,
    ) -> None:
        self.device = device
        self.seed = seed
        # save() may be called from several threads (a batch worker, the USB bus, atexit):
        # one writer at a time, or two os.replace of one tmp file race (ENOENT)
        self._save_lock = threading.Lock()
        self.image_path = Path(image_path) if image_path is not None else None
        self.timing = (
            timing
            if isinstance(timing, TimingModel)
            else TimingModel(device, timing, baud=baud, latency_ms=resolve_latency_ms(adapter, latency_ms))
        )
        # The simulator's own cost (CPU, answers late on their modelled deadline): every
        # front-end of this chip adds to it, benchmarks print it.
        self.stats = SimStats()
        if faults is None or isinstance(faults, str):
            faults = FaultPlan.parse(faults, seed=seed)
        self.faults: FaultPlan = faults
        # Some parts answer Read/Write/Go with two NACKs under RDP level 1 (AN2606).
        if rdp_double_nack is None:
            rdp_double_nack = bool(getattr(device, "rdp_double_nack", False)) or faults.double_nack
        self.rdp_double_nack = rdp_double_nack

        self.flash = bytearray(device.erased_bytes * device.flash_size)
        self.ram: list[tuple[Region, bytearray]] = [(r, bytearray(r.size)) for r in device.ram]
        self.sysmem = bytearray(device.system_memory.size) if device.system_memory else bytearray()
        # the option-byte area as stored (what Read Memory shows); unknown layouts: the field
        # table's production-value words where it has some, else erased
        size = device.option_bytes.size if device.option_bytes is not None else 16
        factory = None if obl.supported(device) else ob_fields.factory_area(device)
        self._ob = bytearray(obl.default_ob(device) if obl.supported(device) else factory or b"\xff" * size)
        if not obl.supported(device):
            self._show_level0_rdp()
        # the second option-byte block (F42x/F469 bank 2 at 0x1FFEC000), stored as Read Memory
        # shows it; empty on parts without one
        self._ob2 = bytearray(obl.default_ob2(device))
        self._fixture_rdp = 0  # readout level of parts without a known layout (fixtures only)
        # Protection decoded from the option bytes, cached: the front-ends ask for it on
        # every received byte and every programmed unit, and it only changes when the option
        # bytes do (every change goes through _store_option_bytes) or a fixture sets it.
        self._rdp_cache: int | None = None
        self._wrp_cache: frozenset[int] | None = None
        self.otp = bytearray(b"\xff" * device.otp.size) if device.otp else bytearray()
        self.uid = _uid_for(device, seed, self.image_path)

        self.mode = "bootloader"
        # What a plain reset boots (the BOOT0 strapping): stmflash.sim.app sets "app".
        self.boot_mode = "bootloader"
        # what the last reset booted ("system", "flash", "sram") and the EMPTY flag the boot
        # table's empty check reads (latched at power-on and at each option-byte load)
        self.boots = "system"
        self.flash_empty_flag = True
        self.reset_count = 0
        self.go_address: int | None = None
        self.powered = True
        self.programmed_bytes = 0
        self.dropped_writes = 0  # writes the ROM accepted and ignored (misaligned start)
        self._power_loss_fired = False
        self.last_reset_time = time.perf_counter()
        # Called as hook(chip, signal, level) by sim:// ports when DTR/RTS/break change.
        self.on_line_change: Callable[[VirtualChip, str, bool], None] | None = None
        self.reset_hooks: list[Callable[[VirtualChip], None]] = []
        # Go into RAM: hook(chip, address) -> True when it runs the code (stmflash.sim.cpu)
        self.go_hooks: list[Callable[[VirtualChip, int], bool]] = []
        self.line_events: list[tuple[str, bool]] = []  # DTR/RTS/break changes seen by ports

        if self.image_path is not None and self.image_path.exists():
            self._load(self.image_path)
        self._fill_sysmem()
        self._latch_empty()
        self._boot(self.boot_mode)  # power-on: boot as the option bytes and pins say

    # ---- construction helpers -------------------------------------------------------
    def _fill_sysmem(self) -> None:
        """The ROM as far as it is modelled: the bootloader ID where AN2606 puts it, zeros
        elsewhere. ST's ROM code is not modelled; zeros keep a host that reads an ID
        register at an address where this part has ROM (H74x UID/flash-size addresses on
        H7R/S) from seeing plausible values."""
        dev = self.device
        if not self.sysmem:
            return
        self.sysmem[:] = bytes(len(self.sysmem))
        # a ROM starts with its vector table: initial SP in RAM, reset handler in the ROM
        ram = dev.ram_usable or (dev.ram[0] if dev.ram else None)
        if ram is not None and dev.system_memory is not None and len(self.sysmem) >= 0x200:
            self.sysmem[0:8] = (ram.end & ~7).to_bytes(4, "little") + (
                (dev.system_memory.start + 0x101).to_bytes(4, "little"))
        if dev.bl_id_address is not None and dev.bl_ids and dev.system_memory:
            if dev.bl_id_address in dev.system_memory:
                self.sysmem[dev.bl_id_address - dev.system_memory.start] = dev.bl_ids[0]

    # ---- memory map -------------------------------------------------------------------
    def _register_bytes(self) -> list[tuple[int, bytes]]:
        regs: list[tuple[int, bytes]] = []
        if self.device.flash_size_reg is not None:
            regs.append((self.device.flash_size_reg, (self.device.flash_size // 1024).to_bytes(2, "little")))
        if self.device.uid_reg is not None:
            regs.append((self.device.uid_reg, self.uid))
        return regs

    def _segment(self, addr: int) -> tuple[str, int, int, bytearray | bytes]:
        """``(kind, offset, available, buffer)`` for the storage holding ``addr``.

        Registers overlay whatever region they sit in (on several parts they lie inside
        system memory), so they are checked first and cut the other regions.
        """
        dev = self.device
        regs = self._register_bytes()
        for start, data in regs:
            if start <= addr < start + len(data):
                return "register", addr - start, start + len(data) - addr, data

        def limit(end: int) -> int:
            for start, _ in regs:
                if addr < start < end:
                    end = start
            return end - addr

        if addr in dev.flash:
            return "flash", addr - dev.flash_start, limit(dev.flash.end), self.flash
        for region, buf in self.ram:
            if addr in region:
                return "ram", addr - region.start, limit(region.end), buf
        if dev.option_bytes and addr in dev.option_bytes:
            return "ob", addr - dev.option_bytes.start, limit(dev.option_bytes.end), self._ob
        if dev.option_bytes2 and self._ob2 and addr in dev.option_bytes2:
            return "ob2", addr - dev.option_bytes2.start, limit(dev.option_bytes2.end), self._ob2
        if dev.otp and addr in dev.otp:
            return "otp", addr - dev.otp.start, limit(dev.otp.end), self.otp
        if dev.system_memory and addr in dev.system_memory:
            return "sysmem", addr - dev.system_memory.start, limit(dev.system_memory.end), self.sysmem
        for block in self._info_blocks():
            if addr in block:
                # Factory/engineering bytes around the ID registers: readable, 0xFF.
                end = block.end
                for r in (dev.option_bytes, dev.otp, dev.system_memory):
                    if r is not None and addr < r.start < end:
                        end = r.start
                end = addr + limit(end)
                return "info", 0, end - addr, b"\xff" * (end - addr)
        raise AccessError(f"address 0x{addr:08X} is not mapped on {dev.name}")

    def _info_blocks(self) -> list[Region]:
        blocks = []
        for reg in (self.device.uid_reg, self.device.flash_size_reg):
            if reg is not None:
                start = reg & ~0xFF
                blocks.append(Region(start, start + 0x100))
        return blocks

    def region_kind(self, addr: int) -> str | None:
        """``flash``/``ram``/``ob``/``otp``/``sysmem``/``register`` or None when unmapped."""
        try:
            return self._segment(addr)[0]
        except AccessError:
            return None

    def readable(self, addr: int, n: int) -> bool:
        try:
            self.read(addr, n)
        except AccessError:
            return False
        return True

    def read(self, addr: int, n: int) -> bytes:
        """Raw memory read (no protection check: the front-ends apply RDP)."""
        if n < 0:
            raise AccessError(f"negative read length {n}")
        out = bytearray()
        a = addr
        while len(out) < n:
            _, off, avail, buf = self._segment(a)
            take = min(avail, n - len(out))
            out += buf[off : off + take]
            a += take
        return bytes(out)

    # ---- programming ------------------------------------------------------------------
    def program(self, addr: int, data: bytes) -> None:
        """Write as the chip's write path does; raises :class:`ProgramError`/AccessError.

        Flash/OTP: in units of ``device.write_align`` (a short last unit is completed
        with 0xFF; a misaligned start is refused, or silently dropped),
        only erased or identical units, write-protected units unchanged. RAM: usable area
        only. Option bytes: rewrites them (see :meth:`write_option_bytes`, which resets
        the chip).
        """
        if not data:
            return
        kind, off, avail, _buf = self._segment(addr)
        if len(data) > avail:
            raise AccessError(f"write of {len(data)} bytes at 0x{addr:08X} crosses the end of its region")
        if kind == "ram":
            usable = self.device.ram_usable
            if usable is not None and not usable.contains_range(addr, len(data)):
                raise AccessError(f"0x{addr:08X}: RAM reserved by the bootloader")
            _buf[off : off + len(data)] = data
        elif kind == "ob":
            ob = bytearray(self._ob)
            ob[off : off + len(data)] = data
            self.write_option_bytes(bytes(ob))
        elif kind == "ob2":
            ob2 = bytearray(self._ob2)
            ob2[off : off + len(data)] = data
            self.write_option_bytes2(bytes(ob2))
        elif kind in ("flash", "otp"):
            self._program_cells(kind, addr, off, bytes(data))
        else:
            raise AccessError(f"0x{addr:08X} is read-only ({kind})")

    def _program_cells(self, kind: str, addr: int, off: int, data: bytes) -> None:
        align = max(self.device.write_align, 1)
        if addr % align:
            if self.device.write_misaligned == "drop" and addr % 4 == 0:
                self.dropped_writes += 1  # ACKed, nothing programmed
                return
            raise ProgramError(f"write at 0x{addr:08X} is not aligned to {align} bytes")
        buf = self.flash if kind == "flash" else self.otp
        if len(data) % align:
            # the ROM completes the last unit with 0xFF (it is programmed as such)
            data = data + b"\xff" * (align - len(data) % align)
            if off + len(data) > len(buf):
                raise AccessError(f"write at 0x{addr:08X} crosses the end of its region")
        erased = self.device.erased_bytes if kind == "flash" else b"\xff"
        blank = erased * align
        protected = kind == "flash" and bool(self.wrp)
        end = off + len(data)
        if (not protected and self.faults.power_loss_after is None and end <= len(buf)
                and buf[off:end] == erased * len(data)):
            # The common case (erased, unprotected, no power-loss budget) in one slice: the
            # simulator's CPU must not stand in for the flash's programming time.
            buf[off:end] = data
            if kind == "flash":
                self.programmed_bytes += align * sum(
                    data[i : i + align] != blank for i in range(0, len(data), align)
                )
            return
        writable: list[int] = []
        for i in range(0, len(data), align):
            if protected and self._unit_protected(addr + i):
                continue
            old = buf[off + i : off + i + align]
            new = data[i : i + align]
            if old == new:
                continue
            if old != blank:
                raise ProgramError(
                    f"0x{addr + i:08X} is not erased (programming error, nothing written)"
                )
            writable.append(i)
        for i in writable:
            if kind == "flash" and self._power_budget_exhausted(align):
                half = align // 2 or 1
                # Power fails mid-word: half of the unit made it (programming only moves
                # bits away from the erased value: clears them, or sets them on L0/L1).
                old_half = buf[off + i : off + i + half]
                new_half = data[i : i + half]
                buf[off + i : off + i + half] = bytes(
                    (o & n) if self.device.erased else (o | n) for o, n in zip(old_half, new_half, strict=True)
                )
                self._die()
            buf[off + i : off + i + align] = data[i : i + align]
            if kind == "flash":
                self.programmed_bytes += align

    def _power_budget_exhausted(self, align: int) -> bool:
        limit = self.faults.power_loss_after
        if limit is None or self._power_loss_fired:
            return False
        return self.programmed_bytes + align > limit

    def _die(self) -> None:
        self._power_loss_fired = True
        self.powered = False
        if self.image_path is not None:
            self.save()
        raise PowerLoss(f"virtual {self.device.short_name} lost power after {self.programmed_bytes} programmed bytes")

    def power_on(self) -> None:
        """Power back on after a power loss (state as saved at the loss)."""
        self.powered = True
        self.reset()

    def preload(self, addr: int, data: bytes) -> None:
        """Put bytes anywhere (flash, RAM, OB, OTP) bypassing every rule: test fixtures."""
        a, view = addr, memoryview(bytes(data))
        while view:
            kind, off, avail, buf = self._segment(a)
            take = min(avail, len(view))
            if isinstance(buf, bytes):
                raise AccessError(f"0x{a:08X} is a read-only register")
            if kind == "ob":
                ob = bytearray(self._ob)
                ob[off : off + take] = view[:take]
                self._store_option_bytes(bytes(ob), reload=False)
            elif kind == "ob2":
                ob2 = bytearray(self._ob2)
                ob2[off : off + take] = view[:take]
                self._store_option_bytes2(bytes(ob2), reload=False)
            else:
                buf[off : off + take] = view[:take]
            view, a = view[take:], a + take

    # ---- erase --------------------------------------------------------------------------
    def _unit_protected(self, addr: int) -> bool:
        unit = self.device.unit_at(addr)
        return unit is not None and unit.index in self.wrp

    def _erase(self, unit: EraseUnit) -> None:
        off = unit.address - self.device.flash_start
        self.flash[off : off + unit.size] = self.device.erased_bytes * unit.size

    def erase_units(self, indices: Iterable[int]) -> None:
        """Erase pages/sectors by index; protected ones stay; bad index -> AccessError."""
        units = self.device.erase_units
        idx = list(indices)
        for i in idx:
            if not 0 <= i < len(units):
                raise AccessError(f"erase unit {i} does not exist on {self.device.name} ({len(units)} units)")
        protected = self.wrp
        for i in idx:
            if i not in protected:
                self._erase(units[i])

    def mass_erase(self) -> None:
        """Erase all flash; :class:`Refused` on parts without mass erase (``mass_erase =
        false`` in the table: every front-end refuses it alike); ignored as a whole (no
        change) while any unit is protected."""
        if not self.device.mass_erase:
            raise Refused(f"{self.device.name}: mass erase is not available from the ROM")
        if self.wrp:
            return
        self.flash[:] = self.device.erased_bytes * len(self.flash)

    def erase_bank(self, bank: int) -> None:
        """Bank erase (AN3155 0xFFFE/0xFFFD): a mass erase of one bank, so only on parts
        with mass erase and that bank."""
        units = self.device.bank_units(bank)
        if not units or bank > max(self.device.banks, 1) or self.device.banks < 2:
            raise Refused(f"{self.device.name} has no flash bank {bank} to erase")
        if not self.device.mass_erase:
            raise Refused(f"{self.device.name}: bank erase is not available from the ROM")
        self.erase_units(u.index for u in units)

    # ---- option bytes and protection ----------------------------------------------------
    def option_bytes(self) -> bytes:
        """The option-byte area as Read Memory shows it (what is stored, family layout)."""
        return bytes(self._ob)

    def loaded_option_bytes(self) -> bytes:
        """The option bytes as the loader took them (complement check applied)."""
        return obl.loaded_view(self.device, bytes(self._ob))

    @property
    def layout_known(self) -> bool:
        return obl.supported(self.device)

    def _refuse_unknown(self, what: str) -> None:
        if not self.layout_known:
            raise AccessError(
                f"{what}: the option-byte layout of {self.device.short_name} is not in the table "
                "(refused, as the clients refuse it)"
            )

    def _store_option_bytes(self, stored: bytes, *, reload: bool) -> None:
        """THE one place option-byte state changes (caches of protection state are
        invalidated here). ``reload``: an option-byte load follows (H7 _CUR <- _PRG, the
        EMPTY flag re-latched, a system reset)."""
        self._ob[:] = stored
        self._invalidate_protection()
        if reload:
            self._ob[:] = obl.reload_registers(self.device, bytes(self._ob))
            self._invalidate_protection()
            self._latch_empty()
            self.reset()

    def ob_view(self) -> bytes:
        """The option-field view (:func:`stmflash.ob_fields.view_size`): the area, then the
        second block where the part has one."""
        return bytes(self._ob) + bytes(self._ob2)

    def loaded_ob_view(self) -> bytes:
        """:meth:`ob_view` as the option-byte loader took it (complement check applied)."""
        return self.loaded_option_bytes() + obl.loaded_view2(self.device, bytes(self._ob2))

    def _show_level0_rdp(self) -> None:
        """Unknown layouts: this model runs at readout level 0 (``_fixture_rdp``); where the
        field table places RDP in a word it has no production value for, the stored area
        shows the table's level-0 value there, so that a decode agrees with the behaviour
        (an erased 0xFF would read as level 1 while the chip acts unprotected)."""
        t = ob_fields.table_of(self.device)
        f = t.find("RDP") if t is not None else None
        if f is None or f.offset + 4 > len(self._ob) or t.claims_default(f):
            return
        level0 = next((v for v, name, _ in f.values if name == "level0"), None)
        if level0 is not None:
            f.put(self._ob, level0)

    def option_bytes2(self) -> bytes:
        """The second option-byte block as Read Memory shows it (F42x bank 2; b"" elsewhere)."""
        return bytes(self._ob2)

    def _store_option_bytes2(self, stored: bytes, *, reload: bool) -> None:
        """The one place the second block changes (bank-2 write protection follows it)."""
        self._ob2[:] = stored
        self._invalidate_protection()
        if reload:
            self._latch_empty()
            self.reset()

    def write_option_bytes2(self, data: bytes) -> None:
        """Program the second option-byte block (F42x bank 2, Write Memory at 0x1FFEC000) and
        reload the option bytes (reset), as the ROM does for the first block; frozen at RDP
        level 2 like every option byte."""
        self._refuse_unknown("option-byte write")
        if not self._ob2:
            raise AccessError(f"{self.device.short_name} has no second option-byte block")
        if len(data) > len(self._ob2):
            raise AccessError(f"{len(data)} option bytes do not fit in {len(self._ob2)}")
        if self.rdp_level == 2:
            raise AccessError("option bytes are frozen at RDP level 2")
        new = bytearray(self._ob2)
        new[: len(data)] = data
        # the flash interface writes the complement words itself (L4: RM0351 3.4.1)
        self._store_option_bytes2(obl.normalize2(self.device, bytes(new)), reload=True)

    def store_raw_option_bytes(self, stored: bytes) -> None:
        """Put bytes in the option-byte area exactly as given, complements included (a test
        fixture for what an interrupted programming leaves); takes effect at the next reset."""
        if len(stored) != len(self._ob):
            raise AccessError(f"{len(stored)} option bytes given, the area is {len(self._ob)}")
        self._store_option_bytes(bytes(stored), reload=False)

    def write_option_bytes(self, data: bytes) -> None:
        """Program the option bytes and reset (option-byte loading), as the ROM does.

        ``data`` replaces the start of the area (the whole area when as long). Complements
        are written by the flash interface, whatever the host sent; leaving RDP level 1 for
        level 0 mass-erases the flash first; at level 2 nothing changes any more.
        """
        self._refuse_unknown("option-byte write")
        if len(data) > len(self._ob):
            raise AccessError(f"{len(data)} option bytes do not fit in {len(self._ob)}")
        if self.rdp_level == 2:
            raise AccessError("option bytes are frozen at RDP level 2")
        was = self.rdp_level
        new = bytearray(self._ob)
        new[: len(data)] = data
        # the ROM programs only the registers its option-byte write knows (layout `writes`)
        new = bytearray(obl.rom_written(self.device, bytes(new), bytes(self._ob)))
        for cur, _prg in self.device.ob_layout.get("mirror", []):
            # _CUR registers are read-only: what the host put there is ignored
            new[int(cur) : int(cur) + 4] = self._ob[int(cur) : int(cur) + 4]
        stored = obl.with_complements(self.device, bytes(new))
        if was >= 1 and obl.rdp_level(self.device, obl.loaded_view(self.device, obl.reload_registers(self.device, stored))) == 0:
            self._wipe()
        self._store_option_bytes(stored, reload=True)

    def _invalidate_protection(self) -> None:
        """Drop the cached protection state: the next question decodes the option bytes."""
        self._rdp_cache = None
        self._wrp_cache = None

    def _set_fixture_rdp(self, level: int) -> None:
        self._fixture_rdp = level
        self._invalidate_protection()

    @property
    def rdp_level(self) -> int:
        if self._rdp_cache is None:
            if not self.layout_known:
                self._rdp_cache = self._fixture_rdp
            else:
                self._rdp_cache = obl.rdp_level(self.device, self.loaded_option_bytes())
        return self._rdp_cache

    def set_rdp(self, level: int) -> None:
        """Set the RDP level directly (fixtures; no mass erase, no reset)."""
        if not self.layout_known:
            if level not in (0, 1, 2):
                raise AccessError(f"RDP level {level} does not exist")
            self._set_fixture_rdp(level)
            return
        self._store_option_bytes(obl.set_rdp(self.device, bytes(self._ob), level), reload=False)

    def readout_protect(self) -> None:
        """AN3155 Readout Protect: the ROM knows its own layout, and so does this model for
        the level alone (the clients send this command without decoding any byte)."""
        if not self.layout_known:
            self._set_fixture_rdp(1)
            self.reset()
            return
        self._store_option_bytes(obl.set_rdp(self.device, bytes(self._ob), 1), reload=True)

    def _wipe(self) -> None:
        self.flash[:] = self.device.erased_bytes * len(self.flash)
        for _, buf in self.ram:
            buf[:] = bytes(len(buf))

    def readout_unprotect(self) -> None:
        """Level 1 -> 0: mass erase (ignoring WRP), RAM cleared, reset (AN3155)."""
        self._wipe()
        if not self.layout_known:
            self._set_fixture_rdp(0)
            self.reset()
            return
        self._store_option_bytes(obl.rdp_regressed(self.device, bytes(self._ob)), reload=True)

    @property
    def wrp(self) -> frozenset[int]:
        """Indices of write-protected erase units (cached until the option bytes change)."""
        if self._wrp_cache is None:
            if not self.layout_known or not self.device.ob_layout.get("wrp"):
                self._wrp_cache = frozenset()
            else:
                loaded = self.loaded_option_bytes()
                self._wrp_cache = frozenset(obl.wrp_units(self.device, loaded))
                if self._ob2:  # bank 2, its bits read in the first block's protection mode
                    self._wrp_cache |= obl.wrp2_units(self.device, bytes(self._ob2), loaded)
        return self._wrp_cache

    @property
    def wrp_groups(self) -> int:
        """How many AN3155 Write Protect codes exist (0..wrp_groups-1)."""
        return obl.wrp_code_count(self.device) if self.layout_known else 0

    def group_of(self, unit_index: int) -> int:
        """The Write Protect code covering one erase unit."""
        self._refuse_unknown("write protect")
        try:
            return obl.wrp_codes(self.device, [unit_index])[0]
        except UsageError as exc:
            raise AccessError(str(exc)) from None

    def write_protect_groups(self, groups: Iterable[int], *, reset: bool = True) -> None:
        """Replace the protected set with these AN3155 Write Protect codes."""
        self._refuse_unknown("write protect")
        gs = sorted(set(groups))
        for g in gs:
            if not 0 <= g < self.wrp_groups:
                raise AccessError(f"write-protect code {g} does not exist ({self.wrp_groups} codes)")
        try:
            new = obl.set_codes(self.device, bytes(self._ob), gs)
        except UsageError as exc:
            raise AccessError(str(exc)) from None
        self._store_option_bytes(new, reload=reset)

    def write_protect(self, units: Iterable[int], *, reset: bool = True) -> None:
        """Protect the WRP groups holding these unit indices (replaces the previous set)."""
        self._refuse_unknown("write protect")
        try:
            codes = obl.wrp_codes(self.device, list(units))
        except UsageError as exc:
            raise AccessError(str(exc)) from None
        self.write_protect_groups(codes, reset=reset)

    def write_unprotect(self, *, reset: bool = True) -> None:
        """AN3155 Write Unprotect: write protection off for every sector (bank 2's block too)."""
        if not self.layout_known:  # AN3155 Write Unprotect: nothing this model protects
            if reset:
                self.reset()
            return
        if self._ob2:
            self._store_option_bytes2(obl.clear_wrp2(self.device, bytes(self._ob2)), reload=False)
        try:
            self.write_protect_groups([], reset=reset)
        except AccessError:
            # proprietary-code mode (L0 WPRMOD, F42x SPRMOD): protection cannot be removed
            # (RM0367 3.4.4, RM0090 3.7.5); what the ROM's Write Unprotect then does is not
            # documented - modelled as changing nothing (stmflash does not send it then)
            if reset:
                self.reset()

    # ---- what a reset boots ------------------------------------------------------------
    def _latch_empty(self) -> None:
        """FLASH_ACR.EMPTY: sampled at power-on and option-byte load (RM0444 / RM0490 3.1.4)."""
        self.flash_empty_flag = self.flash[:4] == self.device.erased_bytes * 4

    def boot_at_power_on(self, want: str) -> None:
        """Decide what a power-on boots with the pins strapped as ``want`` ("bootloader" =
        BOOT0 high, "app" = low): EMPTY sampled, then the boot table (no reset counted)."""
        self._latch_empty()
        self._boot(want)

    def power_cycle(self) -> None:
        """Power-on reset: the EMPTY flag is sampled again, then the chip boots."""
        self._latch_empty()
        self.reset()

    # ---- mode -----------------------------------------------------------------------------
    def reset(self, mode: str | None = None) -> None:
        """System reset: into the ROM bootloader (which must be synced again) or, with
        ``mode="app"`` (BOOT0 low at reset), straight into the application. ``None``:
        as the pins are strapped (``boot_mode``; the ROM unless an application is set up)."""
        self._boot(mode or self.boot_mode)
        self.go_address = None
        self.reset_count += 1
        self.last_reset_time = time.perf_counter()
        for hook in list(self.reset_hooks):
            hook(self)

    def _boot(self, want: str) -> None:
        boots = None
        if self.layout_known:
            # the reference manual's boot table (G0/C0: nBOOT_SEL, nBOOT0, nBOOT1, BOOT0
            # pin, empty check; F7: BOOT_ADD0/BOOT_ADD1 by the BOOT0 pin); the pin is high
            # when the strapping says "bootloader"
            boots = ob_fields.boot_source(
                self.device,
                self.loaded_option_bytes(),
                boot0_pin=want != "app",
                flash_empty=self.flash_empty_flag,
                banks_valid=self._banks_valid(),
            )
        if boots is None:
            self.mode = want
            self.boots = "system" if want == "bootloader" else "flash"
        else:
            self.boots = boots
            # "none": the boot address holds nothing the part can run (F7 BOOT_ADDx);
            # "flash-bank2": the dual-bank boot jumped to bank 2 (BFB2)
            self.mode = {"system": "bootloader", "flash": "app", "flash-bank2": "app", "sram": "sram",
                         "none": "none"}[boots]

    def _banks_valid(self) -> tuple[bool, ...]:
        """Per flash bank: does its first word hold a stack pointer in RAM? What the dual-bank
        boot of the ROM checks before jumping there (AN2606 "dual bank boot")."""
        out = []
        for bank in range(1, max(self.device.banks, 1) + 1):
            units = self.device.bank_units(bank)
            if not units:
                out.append(False)
                continue
            off = units[0].address - self.device.flash_start
            sp = int.from_bytes(self.flash[off : off + 4], "little")
            out.append(sp % 4 == 0 and any(r.start < sp <= r.end for r in self.device.ram))
        return tuple(out)

    def go(self, address: int) -> None:
        """The ROM jumps to the application: the bootloader stops answering.

        There is no CPU here, but one program in RAM is understood: the SYSRESETREQ stub that
        hosts (stm32flash ``-R``, ``stmflash --after reset``) load to reset a chip without
        pins. Its code stores 0x05FA0004 to AIRCR (0xE000ED0C); running it is a system reset.
        """
        if self._is_reset_stub(address):
            self.reset()
            return
        if self.region_kind(address) == "ram":
            for hook in list(self.go_hooks):
                if hook(self, address):
                    return
        self.mode = "app"
        self.go_address = address

    def _is_reset_stub(self, address: int) -> bool:
        if self.region_kind(address) != "ram":
            return False
        try:
            entry = int.from_bytes(self.read(address + 4, 4), "little") & ~1
            code = self.read(entry, 32)
        except AccessError:
            return False
        words = {int.from_bytes(code[i : i + 4], "little") for i in range(0, 29, 2)}
        return 0xE000ED0C in words and 0x05FA0004 in words

    # ---- persistence --------------------------------------------------------------------
    def _header(self) -> dict[str, Any]:
        dev = self.device
        regions = [{"name": "flash", "address": dev.flash_start, "size": len(self.flash)}]
        ob_addr = dev.option_bytes.start if dev.option_bytes else None
        regions.append({"name": "option_bytes", "address": ob_addr, "size": len(self._ob)})
        if self.otp:
            regions.append({"name": "otp", "address": dev.otp.start if dev.otp else None, "size": len(self.otp)})
        if self._ob2 and dev.option_bytes2 is not None:
            regions.append({"name": "option_bytes2", "address": dev.option_bytes2.start, "size": len(self._ob2)})
        return {
            "format": IMAGE_FORMAT,
            "version": IMAGE_VERSION,
            "pid": dev.pid,
            "bl_id": dev.bl_ids[0] if dev.bl_ids else None,
            "device": dev.name,
            "uid": self.uid.hex(),
            "regions": regions,
        }

    def save(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Write flash, option bytes and OTP to the image file (atomically)."""
        target = Path(path) if path is not None else self.image_path
        if target is None:
            return None
        header = json.dumps(self._header(), separators=(",", ":")).encode() + b"\n"
        # the tmp name is per process and thread: other processes may share the image file
        tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with self._save_lock:
            try:
                with open(tmp, "wb") as fh:
                    fh.write(header)
                    fh.write(self.flash)
                    fh.write(self._ob)
                    fh.write(self.otp)
                    if self._ob2 and self.device.option_bytes2 is not None:
                        fh.write(self._ob2)
                os.replace(tmp, target)
            except OSError as exc:
                try:
                    tmp.unlink()
                except OSError:
                    pass
                raise StmflashError(f"{target}: cannot save simulator image: {exc.strerror}") from None
        return target

    def _load(self, path: Path) -> None:
        header, regions = load_image_file(path)
        if header.get("pid") != self.device.pid:
            raise UsageError(
                f"{path}: image belongs to PID 0x{header.get('pid', 0):03X}, not {self.device.name} "
                f"(0x{self.device.pid:03X})"
            )
        if "uid" in header:
            self.uid = bytes.fromhex(header["uid"])
        flash = regions.get("flash", b"")
        self.flash[: min(len(flash), len(self.flash))] = flash[: len(self.flash)]
        ob = regions.get("option_bytes", b"")
        if int(header.get("version", 1)) < 2:
            self._migrate_v1_option_bytes(ob)
        elif len(ob) != len(self._ob):
            raise UsageError(
                f"{path}: option-byte region is {len(ob)} bytes, {self.device.short_name} has "
                f"{len(self._ob)} (image made by another stmflash version; delete it to start afresh)"
            )
        else:
            self._store_option_bytes(bytes(ob), reload=False)
        otp = regions.get("otp", b"")
        self.otp[: min(len(otp), len(self.otp))] = otp[: len(self.otp)]
        ob2 = regions.get("option_bytes2", b"")
        if self._ob2 and len(ob2) == len(self._ob2):  # older images have none: factory state
            self._store_option_bytes2(bytes(ob2), reload=False)

    def _migrate_v1_option_bytes(self, ob: bytes) -> None:
        """Carry RDP level and protected units over from the version-1 convention."""
        if len(ob) < OB_MIN_SIZE:
            return
        level = rdp_level_of(ob[0])
        bits = 0
        for i in range(4):
            bits |= ob[8 + 2 * i] << (8 * i)
        n = len(self.device.erase_units)
        per = max(1, -(-n // 32))
        units = [u for u in range(n) if not bits >> (u // per) & 1]
        if units:
            try:
                self.write_protect(units, reset=False)
            except AccessError:
                pass  # not expressible in the real layout: left unprotected
        self.set_rdp(level)

    @classmethod
    def load_image_file(cls, path: str | os.PathLike[str]) -> bytes:
        """The flash bytes held by an image file (what tests compare with firmware)."""
        return flash_bytes(path)

    def __repr__(self) -> str:
        return (
            f"<VirtualChip {self.device.short_name} pid=0x{self.device.pid:03X} mode={self.mode} "
            f"rdp={self.rdp_level} image={self.image_path}>"
        )


def load_image_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``(header, {region name: bytes})`` of a simulator image file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise UsageError(f"{p}: cannot read simulator image: {exc.strerror}") from None
    line, sep, body = raw.partition(b"\n")
    try:
        header = json.loads(line) if sep else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != IMAGE_FORMAT:
        raise UsageError(f"{p}: not a stmflash simulator image (bad header line)")
    regions: dict[str, bytes] = {}
    pos = 0
    for reg in header.get("regions", []):
        size = int(reg["size"])
        chunk = body[pos : pos + size]
        if len(chunk) != size:
            raise UsageError(f"{p}: truncated simulator image (region {reg['name']})")
        regions[reg["name"]] = chunk
        pos += size
    return header, regions


def flash_bytes(path: str | os.PathLike[str]) -> bytes:
    """The flash content of a simulator image file."""
    return load_image_file(path)[1]["flash"]
