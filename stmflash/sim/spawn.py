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
import time
from collections.abc import Callable, Iterator

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
    stderr: list[str] | None = None,
) -> Iterator[str]:
    """Start ``stmflash sim uart --device DEVICE [--image IMAGE] ARGS...`` and yield its pty path.

    On exit the server gets SIGINT (it saves its image) and is waited for; with ``check`` a
    non-zero exit raises :class:`RuntimeError` carrying its stderr. ``stderr``, when given,
    receives what the server wrote there (with realistic timing, its ``sim-stats`` line:
    what the simulator itself cost, for benchmarks).
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
        err = proc.stderr.read() if proc.stderr else ""
        if stderr is not None:
            stderr.append(err)
        if check and rc not in (0, -signal.SIGKILL):
            raise RuntimeError(f"stmflash sim uart exited {rc}: {err.strip()}")


def timed_flash(
    device: str,
    image: str | os.PathLike[str],
    data: bytes,
    command: Callable[[str], list[str] | None],
    *server_args: str,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 900.0,
    server_stderr: list[str] | None = None,
) -> tuple[float | None, str]:
    """Time one flasher run against a pty server: ``(seconds, "ok")`` when the image file
    the server saved holds ``data`` at the flash start, else ``(None, why)``.

    ``command(pty)`` gives the argv (None: the tool is not installed). Benchmarks use this
    so that a tool leaving the wrong flash is reported as failed, never timed.
    ``server_stderr`` receives the server's stderr (see :func:`pty_server`).
    """
    from stmflash.sim.chip import flash_bytes

    with pty_server(device, image, *server_args, check=False, stderr=server_stderr) as pty:
        time.sleep(0.2)
        cmd = command(pty)
        if cmd is None:
            return None, "not installed"
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout)
        elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return None, f"exit {proc.returncode}: {tail[0][:80]}"
    if flash_bytes(image)[: len(data)] != data:
        return None, "WRONG FLASH CONTENT"
    return elapsed, "ok"
