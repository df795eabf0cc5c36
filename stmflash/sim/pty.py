"""Serve a virtual STM32's AN3155 bootloader on a pseudo-terminal.

Any serial program (stm32flash, stm32loader, stmflash itself) can open the slave side.
Linux ptys ignore parity and baud settings, so peers should keep the port as it is
(stm32flash ``-b 0``) or ask for 8N1; the modelled baud comes from ``--baud``.

The server keeps the slave open itself so the master never sees EOF/EIO between clients,
and paces output against absolute ``perf_counter`` deadlines in realistic mode: a request
is stamped when it is read, each answer is due at that stamp plus its modelled duration,
and the server waits in ``select`` until just before the deadline (spinning only the last
:data:`~stmflash.sim.timing.SPIN_S`), so its own CPU work before the deadline costs the
host nothing; an answer handed over late does not delay the later deadlines
(:class:`~stmflash.sim.timing.Pacer`). ``chip.stats`` counts its CPU and any answer that
still left late; with realistic timing :func:`run_server` prints that (and the process's
CPU) on stderr at exit.
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
from stmflash.sim.timing import SPIN_S, Pacer, sleep_until


def make_link(link: Path, target: str) -> None:
    """``--link``: a stable symlink to the pty; replaces an old symlink, never a file."""
    from stmflash.errors import UsageError

    if link.exists() and not link.is_symlink():
        raise UsageError(f"--link {link}: exists and is not a symlink (not replaced)")
    try:
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target)
    except OSError as exc:
        raise UsageError(f"--link {link}: cannot create the symlink: {exc.strerror}") from None


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
            try:
                make_link(self.link, self.path)
            except BaseException:
                os.close(self.master)
                os.close(self.slave)
                raise
        self.realistic = chip.timing.realistic
        self.rom = with_cpu(with_app(An3155Rom(chip, now=self._clock())))  # + the application, if any
        self.pacer = Pacer(chip.stats)
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
                timeout = max(0.0, min(timeout, nxt - time.perf_counter() - SPIN_S))
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
                    if self.realistic:
                        with self.chip.stats.work():
                            self.rom.feed(data, self.pacer.arrival(time.perf_counter()))
                    else:
                        self.rom.feed(data, self._clock())
            self._flush_output()

    def _flush_output(self) -> None:
        if not self.rom.pending():
            return
        if self.realistic:
            nxt = self.rom.next_output_time()
            if nxt is None:
                return
            if nxt - time.perf_counter() > SPIN_S:
                return  # not due yet: select() waits for it (and for more input)
            sleep_until(nxt)  # the short final stretch
            now = time.perf_counter()
            self.pacer.sent(nxt, now)
            out = self.rom.take_output(now)
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
    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        announce(server.path)
        server.serve()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        server.close()
        if chip.timing.realistic:
            import sys

            # for benchmarks: the simulator's own cost (see stmflash.sim.timing.SimStats)
            print(f"{chip.stats.summary()} process_cpu_s={time.process_time() - cpu0:.6f} "
                  f"wall_s={time.perf_counter() - wall0:.6f}", file=sys.stderr, flush=True)
