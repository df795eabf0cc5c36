"""UartLink: the Link protocol on top of an AN3155 session, plus opening and entering.

Erase lists are split as the ROM requires (255 pages per legacy 0x43 command, 511 per
0x44), whole banks use the bank-erase codes, and every erase waits as long as the device
table's worst case says (with a margin) rather than a fixed 5 s/35 s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from stmflash.devices import Device, EraseUnit
from stmflash.errors import LinkError, ProtectionError, UsageError
from stmflash.uart.entry import EntryStrategy, NoEntry, parse_entry
from stmflash.uart.protocol import (
    EXT_ERASE,
    GET_CHECKSUM,
    MAX_BLOCK,
    MAX_PAGES_EXTENDED,
    MAX_PAGES_LEGACY,
    Bootloader,
    ChipInfo,
)

ERASE_MARGIN = 1.5


class UartLink:
    """A connected, identified AN3155 session presented as a :class:`~stmflash.link.Link`."""

    max_read = MAX_BLOCK
    max_write = MAX_BLOCK

    def __init__(self, bootloader: Bootloader, *, entry: EntryStrategy | None = None) -> None:
        if bootloader.device is None or bootloader.info is None:
            raise ValueError("identify the chip first")
        self.bl = bootloader
        self.info: ChipInfo = bootloader.info
        self.device: Device = bootloader.device
        self.entry = entry or NoEntry()
        self.uid = self.info.uid

    # ---- Link ---------------------------------------------------------------------------
    def read(self, address: int, length: int, progress: Callable[[int], None] | None = None) -> bytes:
        return self.bl.read(address, length, progress)

    def write(self, address: int, data: bytes) -> None:
        if len(data) > self.max_write:
            raise ValueError(f"write of {len(data)} bytes exceeds {self.max_write}")
        from stmflash.errors import NackError

        align = max(self.device.write_align, 4)
        off = 0
        while off < len(data):
            # the session shortens its frames while the line garbles them
            step = max(self.bl.block, align)
            chunk = data[off : off + step]
            try:
                self.bl.write_memory(address + off, chunk)
            except NackError:
                # every retry of this frame had its data refused (checksum): try shorter
                # frames, which noise hits less often; the ROM programmed none of it
                if len(chunk) <= max(32, align):
                    raise
                self.bl.block = max(32, align, min(self.bl.block, len(chunk) // 2))
                continue
            off += len(chunk)

    def erase(self, units: Sequence[EraseUnit]) -> None:
        if not units:
            return
        dev = self.device
        extended = self.bl.erase_code == EXT_ERASE
        indices = sorted({u.index for u in units})
        # whole banks: one bank-erase command each (Extended Erase, dual-bank parts)
        if extended and dev.banks >= 2 and dev.mass_erase:
            chosen = set(indices)
            for bank in range(1, dev.banks + 1):
                bank_idx = {u.index for u in dev.bank_units(bank)}
                if bank_idx and bank_idx <= chosen and bank <= 2:
                    t = sum(dev.unit_erase_ms(u)[1] for u in dev.bank_units(bank)) / 1000.0
                    self.bl.erase_special(f"bank{bank}", timeout_s=t * ERASE_MARGIN + 1.0)
                    chosen -= bank_idx
            indices = sorted(chosen)
        limit = MAX_PAGES_EXTENDED if extended else MAX_PAGES_LEGACY
        by_index = {u.index: u for u in dev.erase_units}
        for i in range(0, len(indices), limit):
            group = indices[i : i + limit]
            t = sum(dev.unit_erase_ms(by_index[p])[1] for p in group if p in by_index) / 1000.0
            self.bl.erase_pages(group, timeout_s=t * ERASE_MARGIN + 0.5)

    def mass_erase(self) -> None:
        dev = self.device
        if not dev.mass_erase:
            self.erase(dev.erase_units)
            return
        t = dev.mass_erase_time_ms()[1] / 1000.0
        self.bl.erase_special("mass", timeout_s=t * ERASE_MARGIN + 2.0)

    def checksum(self, address: int, length: int) -> int | None:
        if GET_CHECKSUM not in self.bl.commands or length % 4 or address % 4:
            return None
        return self.bl.get_checksum(address, length)

    def start(self, address: int) -> None:
        self.bl.go(address)

    def resync(self) -> None:
        """Drain and resynchronise (before a diagnosis is confirmed by a second look)."""
        self.bl.recover("while resynchronising")

    def reset(self) -> None:
        """Reset through the entry strategy's exit pins, else a tiny SYSRESETREQ stub in RAM.

        The stub (as stm32flash ``-R`` does) is 8 bytes of vector table plus four Thumb
        instructions writing AIRCR; Go starts it. With BOOT0 still high the chip comes
        back into its bootloader, which is why pins are preferred when they are wired.
        """
        if self.entry.can_reset():
            self.entry.reset(self.bl.ser)
            return
        dev = self.device
        ram = dev.ram_usable or (dev.ram[0] if dev.ram else None)
        if ram is None:
            raise UsageError(f"cannot reset {dev.name}: no RAM known for the reset stub; use --after go")
        base = (ram.start + 3) & ~3
        code = base + 8
        sp = ram.end & ~7
        stub = (
            sp.to_bytes(4, "little")
            + (code | 1).to_bytes(4, "little")
            + bytes.fromhex("0148 0249 0160 fee7".replace(" ", ""))
            + (0xE000ED0C).to_bytes(4, "little")
            + (0x05FA0004).to_bytes(4, "little")
        )
        self.bl.write_memory(base, stub)
        self.bl.go(base)

    # ---- protection and option bytes -------------------------------------------------------
    def _ob_region(self) -> Any:
        region = self.device.option_bytes
        if region is None:
            raise UsageError(f"no option-byte address known for {self.device.short_name}")
        return region

    def read_option_bytes(self) -> bytes:
        """The whole option-byte area (Read Memory; refused by the ROM under RDP level 1)."""
        region = self._ob_region()
        return self.bl.read(region.start, region.size)

    def check_option_bytes(self, data: bytes, *, confirm_permanent: bool = False) -> Any:
        """Everything about an option-byte write that can be refused before it starts: the
        area exists, the size fits, and the RDP-2 gate (:mod:`stmflash.safety`)."""
        from stmflash.safety import check_option_bytes_write

        region = self._ob_region()
        if not data or len(data) > region.size or len(data) % 4:
            raise UsageError(
                f"option bytes: {len(data)} bytes given; {self.device.short_name} takes up to "
                f"{region.size}, a multiple of 4"
            )
        check_option_bytes_write(
            self.device, data, rdp2_confirmed=confirm_permanent, where=f"option bytes of {self.device.short_name}"
        )
        return region

    def write_option_bytes(self, data: bytes, *, confirm_permanent: bool = False) -> bool:
        """Write Memory at the option-bytes address (the chip reloads them and resets).

        ``data`` covers the area from its start (usually all of it). Complement bytes are
        rewritten by the chip, so the read-back is compared with the family encoding of
        ``data``. Data that sets RDP level 2 needs ``confirm_permanent``; data that sets
        level 1 cannot be read back (the ROM refuses reads then): that the ROM now refuses
        Read Memory is checked instead.
        """
        from stmflash import option_bytes as obl
        from stmflash.errors import VerifyError

        region = self.check_option_bytes(data, confirm_permanent=confirm_permanent)
        expect: bytes | None = None
        current = b""
        level = 0
        if obl.supported(self.device):
            current = self.read_option_bytes()
            expect = obl.as_stored(self.device, data + current[len(data) :])
            level = obl.rdp_level(self.device, expect)
        else:
            level = -1  # layout unknown (written only when confirmed): may be silent afterwards
        self._write_ob_chunks(
            region.start, data, current=current if expect is not None else None, final_silent=level in (2, -1)
        )
        if level == 1:
            # the bytes cannot be read back at level 1, but level 1 itself can be checked: the
            # ROM refuses Read Memory now (AN3155 3.7)
            if not self.bl.probe_read_protected():
                raise ProtectionError(
                    f"after writing option bytes that set RDP level 1 the chip on {self.bl.name} still "
                    "answers Read Memory: they did not take"
                )
            return True
        if level != 0:
            return False  # silent now (level 2, or a layout nobody can decode)
        back = self.bl.read(region.start, len(data))
        want = expect[: len(data)] if expect is not None else data
        if back != want:
            raise VerifyError(f"option bytes read back as {back.hex()} after writing {data.hex()}")
        return True

    def _write_ob_chunks(
        self, start: int, data: bytes, *, current: bytes | None = None, final_silent: bool = False
    ) -> None:
        """Each Write Memory to the option bytes reloads them and resets the chip: resync
        after every block, except after the last one when the chip will not answer again.

        With ``current``, blocks that would not change are skipped and the block holding the
        RDP byte goes last (after it, a level-2 chip is silent)."""
        from stmflash import option_bytes as obl

        step = self.max_write
        blocks = list(range(0, len(data), step))
        if current is not None:
            blocks = [o for o in blocks if data[o : o + step] != current[o : o + step]] or blocks[:1]
            rdp = int(obl.layout_of(self.device)["rdp"]) if obl.supported(self.device) else 0
            blocks.sort(key=lambda o: o <= rdp < o + step)
        for i, off in enumerate(blocks):
            self.bl.write_memory(start + off, data[off : off + step])
            if not (i == len(blocks) - 1 and final_silent):
                self.bl._after_reset("the option-byte write")

    def ob_area_read(self) -> bytes:
        """The whole option-byte area (for :mod:`stmflash.ob_ops`), followed by the second
        block where the part has one (F42x bank 2: Read Memory at 0x1FFEC000)."""
        area = self.read_option_bytes()
        second = self.device.option_bytes2
        if second is not None:
            area += self.bl.read(second.start, second.size)
        return area

    def ob_area_write(self, new: bytes, current: bytes, *, silent: bool = False) -> None:
        """Write the whole area (changed blocks, the RDP block last) and resync after the
        chip's reload; ``silent``: it will not answer after the last block (RDP level 2).
        A second block (F42x bank 2) is written first, at its own address, when it changed:
        each Write Memory there reloads the option bytes too."""
        size = self._ob_region().size
        second = self.device.option_bytes2
        if second is not None and new[size:] != current[size:]:
            self._write_ob_chunks(second.start, new[size:], current=current[size:])
        if new[:size] != current[:size] or second is None:
            self._write_ob_chunks(self._ob_region().start, new[:size], current=current[:size], final_silent=silent)

    def readout_protect(self, level: int = 1, *, confirm_permanent: bool = False) -> None:
        """Level 1: AN3155 Readout Protect. Level 2: the option bytes rewritten with the
        family's level-2 RDP value (Write Memory at the option bytes; the chip resets and
        its bootloader never answers again), only with ``confirm_permanent``."""
        from stmflash import option_bytes as obl

        if level == 1:
            self.bl.readout_protect()
            # the ACKs say the ROM took the command, not that level 1 loaded: after the reset a
            # level-1 ROM refuses Read Memory (AN3155 3.7; probed six times, not once)
            if not self.bl.probe_read_protected():
                raise ProtectionError(
                    f"after Readout Protect the chip on {self.bl.name} still answers Read Memory: "
                    "RDP level 1 did not take"
                )
            return
        if level != 2:
            raise UsageError(f"RDP level {level}: only 1 or 2 can be set")
        if not confirm_permanent:
            raise UsageError(
                "RDP level 2 is permanent (no bootloader, no debug, ever); pass "
                "--i-understand-rdp2-is-permanent to really do it"
            )
        current = self.read_option_bytes()
        new = obl.set_rdp(self.device, current, 2)
        self._write_ob_chunks(self._ob_region().start, new, current=current, final_silent=True)

    def write_protect(self, units: Sequence[int]) -> None:
        """Write-protect the groups holding these erase units (AN3155 Write Protect).

        Units whose bits lie in the second option-byte block (F42x sectors 12-23: nWRP at
        0x1FFEC008, RM0090 3.7.1) are protected by Write Memory of that block (which AN3155
        documents for option bytes), since which Write Protect codes the ROM takes for them
        is in neither AN3155 nor AN2606; each bank's set is replaced only when units of it
        are named."""
        from stmflash import option_bytes as obl

        self._refuse_in_pcrop_mode()
        first, second = obl.split_wrp(self.device, units)
        if second:
            block2 = self.device.option_bytes2
            current = self.bl.read(block2.start, block2.size)
            new = obl.set_wrp2(self.device, current, second)
            if new != current:
                self._write_ob_chunks(block2.start, new, current=current)
            back = self.bl.read(block2.start, block2.size)
            missing = set(second) - obl.wrp2_units(self.device, back)
            if missing:
                raise ProtectionError(f"units {sorted(missing)} are not write-protected after writing")
        if first or not second:
            codes = obl.wrp_codes(self.device, first)
            self.bl.write_protect(codes)
            # read back: every asked unit (its whole WRP group) is protected; whether a ROM keeps
            # or drops what was protected before is not documented (AN3155), so that is not judged
            got = self._protected_after(bank=1)
            missing = obl.units_for_codes(self.device, codes) - got if got is not None else set()
            if missing:
                raise ProtectionError(f"after Write Protect units {_units(missing)} are not write-protected")

    def write_unprotect(self) -> None:
        """AN3155 Write Unprotect, then the option bytes read back: an ACK alone does not say
        the protection went (an L0 in PcROP mode keeps it, RM0367 3.4.4). In that mode it is not
        sent at all: what the ROM writes then (WRPROT zeros would read-protect every L0 sector)
        is not documented."""
        self._refuse_in_pcrop_mode()
        self.bl.write_unprotect()
        got = self._protected_after()
        if got:
            raise ProtectionError(f"after Write Unprotect units {_units(got)} are still write-protected")

    def _protected_after(self, *, bank: int | None = None) -> set[int] | None:
        """The erase units the option bytes protect, read back after a protection command and
        the ROM's reset (``bank`` 1: the first block's only); None where the table has no
        layout to decode them with."""
        from stmflash import option_bytes as obl

        dev = self.device
        if not obl.supported(dev) or dev.option_bytes is None:
            return None
        area = self.read_option_bytes()
        block2 = None
        if bank is None and dev.option_bytes2 is not None and dev.ob_wrp2:
            block2 = self.bl.read(dev.option_bytes2.start, dev.option_bytes2.size)
        return obl.loaded_protection(dev, area, block2)[1]  # what the chip runs with

    def _refuse_in_pcrop_mode(self) -> None:
        """Write protection is not changed while the option bytes select proprietary-code
        protection (L0 WPRMOD, F42x SPRMOD): the read happens before anything is written."""
        from stmflash import option_bytes as obl

        dev = self.device
        if not obl.supported(dev) or dev.option_bytes is None or not (dev.ob_layout.get("wrp") or {}).get("pcrop_mode"):
            return
        why = obl.pcrop_mode_error(dev, self.read_option_bytes())
        if why:
            raise ProtectionError(why)

    # ---- extras used by the uart command --------------------------------------------------
    @property
    def port_name(self) -> str:
        return self.bl.name

    def close(self) -> None:
        try:
            self.entry.exit(self.bl.ser)
        finally:
            self.bl.ser.close()

    def __enter__(self) -> UartLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    port: str,
    *,
    baud: int = 115200,
    parity: str = "even",
    enter: str | None = None,
    invert: Sequence[str] = (),
    timeout: float = 0.3,
    retries: int = 6,
    log: Callable[[str], None] | None = None,
    ser: Any = None,
    pipeline: bool = True,
) -> UartLink:
    """Open ``port``, bring the chip into its bootloader (``--enter`` chain), sync, identify."""
    from stmflash.ports import open_port

    chain = parse_entry(enter, invert)
    if ser is None:
        ser = open_port(port, baud=baud, parity=parity, timeout=timeout)
    try:
        failures: list[tuple[str, LinkError]] = []
        for strategy in chain:
            bl = Bootloader(ser, name=port, timeout=timeout, retries=retries, log=log, pipeline=pipeline)
            try:
                strategy.enter(ser)
                if strategy.settle_s:
                    import time

                    time.sleep(strategy.settle_s)
                bl.sync()
            except LinkError as exc:
                explain = getattr(strategy, "explain_failure", None)  # --enter command, a gone USB port
                exc = (explain(ser) if explain else None) or exc
                failures.append((strategy.describe(), exc))
                if log:
                    log(f"entry {strategy.describe()}: {exc}")
                continue
            bl.identify()
            return UartLink(bl, entry=strategy)
        from stmflash.enter import failure_summary

        distinct = [f for i, f in enumerate(failures) if all(str(f[1]) != str(g[1]) for g in failures[:i])]
        raise type(failures[-1][1])(failure_summary(distinct))
    except BaseException:
        ser.close()
        raise


def _units(units: set[int]) -> str:
    return ",".join(map(str, sorted(units))) or "none"
