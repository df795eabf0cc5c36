"""Helpers for cross-checks against programs none of us wrote.

A peer that is not installed skips the test with a reason; ``.ci/run`` installs the peers,
so in CI these tests run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


def require(program: str) -> str:
    """Path of ``program`` or skip the calling test, naming the Debian/PyPI package.

    Python peers (stm32loader, pyfu-usb) are test extras: they sit beside the interpreter
    running the tests, which need not be on PATH (a venv used without activating it)."""
    path = shutil.which(program) or shutil.which(program, path=os.path.dirname(sys.executable))
    if path is None:
        pytest.skip(f"peer program {program!r} is not installed (.ci/run installs it)")
    return path


def run(args: list[str], *, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a peer with a timeout; on failure the assertion shows its output."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc
