"""Running the CLI in-process from tests: exit code and captured output."""

from __future__ import annotations

import json

import pytest

from stmflash.cli import main


def exit_code(*args: str) -> int:
    """The exit code of ``stmflash ARGS`` (0 when main returns)."""
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``stmflash ARGS``."""
    code = exit_code(*args)
    out = capsys.readouterr()
    return code, out.out, out.err


def result(out: str) -> dict:
    """The last ``"event": "result"`` line of a ``--json`` run's stdout."""
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    return next(e for e in reversed(lines) if e.get("event") == "result")
