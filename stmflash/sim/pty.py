"""Serve a virtual STM32's AN3155 bootloader on a pseudo-terminal.

Any serial program (stm32flash, stm32loader, stmflash itself) can open the slave side.
Linux ptys ignore parity and baud settings, so peers should keep the port as it is
(stm32flash ``-b 0``) or ask for 8N1; the modelled baud comes from ``--baud``.

The server keeps the slave open itself so the master never sees EOF/EIO between clients,
and paces output against absolute ``perf_counter`` deadlines in realistic mode.
"""

from __future__ import annotations

import os
import select
import signal
import termios
import time
import tty
from collections.abc import Callable
from pathlib import Path

from stmflash.sim.an3155 import An3155Rom
from stmflash.sim.app import tty_settings, with_app
from stmflash.sim.chip import VirtualChip
from stmflash.sim.cpu import with_cpu
from stmflash.sim.timing import sleep_until


class PtyServer:
    """One virtual chip on one pseudo-terminal."""

    def __init__(self, chip: VirtualChip, *, link: str | os.PathLike[str] | None = None) -> None:
        self.chip = chip
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        # Clients that keep the port settings (stm32flash -b 0) get reads that time out
        # after 0.5 s, like stm32flash's own settings, so its resync path works.
        attrs = termios.tcgetattr(self.slave)
        attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 0, 5
        termios.tcsetattr(self.slave, termios.TCSANOW, attrs)
        self.path = os.ttyname(self.slave)
        self.link = Path(link) if link is not None else None
        if self.link is not None:
            if self.link.is_symlink() or self.link.exists():
                self.link.unlink()
            self.link.symlink_to(self.path)
        self.realistic = chip.timing.realistic
        self.rom = with_cpu(with_app(An3155Rom(chip, now=self._clock())))  # + the application, if any
        self._stop = False
        self.bytes_in = 0
        self.bytes_out = 0

    def _clock(self) -> float:
        return time.perf_counter() if self.realistic else 0.0

    def stop(self) -> None:
        self._stop = True

    def serve(self, *, until: Callable[[], bool] | None = None) -> None:
        """Answer the host until :meth:`stop` (or a signal handler calling it)."""
        while not self._stop and not (until and until()):
            timeout = 0.1
            nxt = self.rom.next_output_time()
            if nxt is not None:
                timeout = max(0.0, min(timeout, nxt - time.perf_counter() - 0.001))
            try:
                ready, _, _ = select.select([self.master], [], [], timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries, but be safe
                continue
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    data = b""
                if data:
                    self.bytes_in += len(data)
                    if hasattr(self.rom, "line_settings"):  # the application hears only its own
                        self.rom.line_settings(*(tty_settings(self.slave) or (None, None)))
                    self.rom.feed(data, self._clock())
            self._flush_output()

    def _flush_output(self) -> None:
        if not self.rom.pending():
            return
        if self.realistic:
            nxt = self.rom.next_output_time()
            if nxt is not None and nxt - time.perf_counter() < 0.0015:
                sleep_until(nxt)  # short final stretch: spin for accuracy
            out = self.rom.take_output(time.perf_counter())
        else:
            out = self.rom.take_output()
        view = memoryview(out)
        while view:
            n = os.write(self.master, view)
            self.bytes_out += n
            view = view[n:]

    def close(self) -> None:
        """Save the chip and release the pty (and the symlink)."""
        try:
            self.chip.save()
        finally:
            for fd in (self.master, self.slave):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if self.link is not None and self.link.is_symlink():
                self.link.unlink()


def run_server(
    chip: VirtualChip, *, link: str | None = None, announce: Callable[[str], None] = print
) -> None:
    """Open the pty, announce its path, serve until SIGINT/SIGTERM, save the image."""
    server = PtyServer(chip, link=link)

    def _stop(signum: int, frame: object) -> None:
        server.stop()

    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        announce(server.path)
        server.serve()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        server.close()
