"""Run the virtual STM32 in a child process, behind a pseudo-terminal.

For scripts that pit other flashers (stm32flash, stm32loader, CubeProgrammer) against the
virtual chip — our peer tests and benchmarks among them — without each one re-learning
how to start ``stmflash sim uart``, read its pty path and stop it so that it saves its image.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

# stm32loader drives DTR/RTS for BOOT0/NRST; a pty has no modem lines and answers ENOTTY
# (or EINVAL). This wrapper lets stm32loader run unchanged on a pty: its bytes on the wire
# are its own.
STM32LOADER_PTY_SHIM = """
import errno, sys
import serial.serialposix as sp
def quiet(orig):
    def f(self):
        try:
            orig(self)
        except OSError as exc:
            if exc.errno not in (errno.ENOTTY, errno.EINVAL):
                raise
    return f
sp.Serial._update_rts_state = quiet(sp.Serial._update_rts_state)
sp.Serial._update_dtr_state = quiet(sp.Serial._update_dtr_state)
from stm32loader.main import main
main(*sys.argv[1:])
"""


def stm32loader_command(*args: str) -> list[str]:
    """argv that runs stm32loader (from the current Python) on a pty."""
    return [sys.executable, "-c", STM32LOADER_PTY_SHIM, *args]


@contextlib.contextmanager
def pty_server(
    device: str,
    image: str | os.PathLike[str] | None = None,
    *args: str,
    stop_timeout: float = 30.0,
    check: bool = True,
) -> Iterator[str]:
    """Start ``stmflash sim uart --device DEVICE [--image IMAGE] ARGS...`` and yield its pty path.

    On exit the server gets SIGINT (it saves its image) and is waited for; with ``check`` a
    non-zero exit raises :class:`RuntimeError` carrying its stderr.
    """
    cmd = [sys.executable, "-m", "stmflash", "sim", "uart", "--device", device]
    if image is not None:
        cmd += ["--image", os.fspath(image)]
    proc = subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        if not path.startswith("/dev/"):
            proc.kill()
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"stmflash sim uart did not announce a pty ({path!r}): {err.strip()}")
        yield path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError("stmflash sim uart did not stop on SIGINT") from None
        if check and rc not in (0, -signal.SIGKILL):
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"stmflash sim uart exited {rc}: {err.strip()}")
