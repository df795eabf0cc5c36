"""UartLink: the Link protocol on top of an AN3155 session, plus opening and entering.

Erase lists are split as the ROM requires (255 pages per legacy 0x43 command, 511 per
0x44), whole banks use the bank-erase codes, and every erase waits as long as the device
table's worst case says (with a margin) rather than a fixed 5 s/35 s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from stmflash.devices import Device, EraseUnit
from stmflash.errors import LinkError, UsageError
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
        step = max(self.bl.block, self.device.write_align)
        for off in range(0, len(data), step):
            self.bl.write_memory(address + off, data[off : off + step])

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
        last: LinkError | None = None
        for strategy in chain:
            bl = Bootloader(ser, name=port, timeout=timeout, retries=retries, log=log, pipeline=pipeline)
            try:
                strategy.enter(ser)
                if strategy.settle_s:
                    import time

                    time.sleep(strategy.settle_s)
                bl.sync()
            except LinkError as exc:
                last = exc
                if log:
                    log(f"entry {strategy.describe()}: {exc}")
                continue
            bl.identify()
            return UartLink(bl, entry=strategy)
        assert last is not None
        raise last
    except BaseException:
        ser.close()
        raise
