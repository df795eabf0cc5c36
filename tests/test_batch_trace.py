"""``stmflash batch --trace``: every board's traffic, without the boards' lines mixing.

Boards run in parallel threads; each thread traces its own board (stmflash.trace.BatchTrace):
one shared log with each line starting with the board's target, or one file per board.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

from stmflash import trace
from stmflash.sim import registry, usb_backend
from stmflash.sim.chip import flash_bytes
from tests.clirun import run_cli

ROOT = Path(__file__).resolve().parents[1]
HEX = str(ROOT / "examples" / "blinky-f407.hex")
LINE = re.compile(r"^(?P<who>\S+) +(?P<t>\d+\.\d{6})  (?P<link>uart|usb ) (?P<dir>[<> ]) +(?P<text>.*)$")


def two_sim_targets() -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"sim://F407?chip=trace-{tag}-a", f"sim://F407?chip=trace-{tag}-b"]


def test_two_board_uart_batch_traces_both_boards_with_a_prefix_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    targets = two_sim_targets()
    log = tmp_path / "batch.trace"
    code, _, err = run_cli(["batch", HEX, *targets, "--report-dir", str(tmp_path / "rep"),
                            "--trace", str(log), "-q"], capsys)
    assert code == 0, err
    lines = log.read_text().splitlines()
    assert lines
    per: dict[str, list[re.Match[str]]] = {t: [] for t in targets}
    for line in lines:
        m = LINE.match(line)
        assert m is not None, line  # every line is whole and names its board
        assert m["who"] in per, line
        per[m["who"]].append(m)
    for target, ms in per.items():
        sent = [m["text"] for m in ms if m["dir"] == ">"]
        got = [m["text"] for m in ms if m["dir"] == "<"]
        assert sent[0] == "7f" and got[0] == "79", target  # AN3155 sync and its ACK, per board
        assert any(t.startswith("31 ce") for t in sent), target  # Write Memory (0x31) went out
        times = [float(m["t"]) for m in ms]
        assert times == sorted(times), target  # one board's lines in order
    # the boards were really programmed (the trace is not a replacement for the work)
    for target in targets:
        chip = registry.get(target.split("chip=")[1])
        assert chip is not None and chip.flash[:4] != b"\xff\xff\xff\xff"
    assert trace.current() is None  # nothing left installed for the process


def test_trace_dir_gets_one_file_per_board(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    targets = two_sim_targets()
    tdir = tmp_path / "traces"
    tdir.mkdir()
    code, _, err = run_cli(["batch", HEX, *targets, "--report-dir", str(tmp_path / "rep"),
                            "--trace", str(tdir), "-q"], capsys)
    assert code == 0, err
    files = sorted(os.listdir(tdir))
    assert files == sorted(trace.BatchTrace(str(tdir)).file_for(t).rsplit("/", 1)[1] for t in targets)
    for name in files:
        text = (tdir / name).read_text().splitlines()
        assert text[0].split()[1:] == ["uart", ">", "7f"] and text[1].split()[1:] == ["uart", "<", "79"]
        assert not any(t in line for t in targets for line in text)  # no prefix in a board's own file


def test_two_board_dfu_batch_traces_both_boards_usb_transfers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    monkeypatch.setenv("STMFLASH_USB_SIM", f"F407={a},F407={b};port=1-2")
    usb_backend.forget()
    try:
        code, _, err = run_cli(["batch", HEX, "dfu:*", "--report-dir", str(tmp_path / "rep"),
                                "--trace", "-", "-q"], capsys)
    finally:
        usb_backend.forget()  # saves the images
    assert code == 0, err
    traced = [m for m in (LINE.match(line) for line in err.splitlines()) if m is not None]
    for path in ("dfu:path=1-1", "dfu:path=1-2"):
        mine = [m["text"] for m in traced if m["who"] == path]
        assert any("(DNLOAD)" in t for t in mine) and any("(GETSTATUS" in t for t in mine), path
    assert flash_bytes(a)[:4] != b"\xff" * 4 and flash_bytes(b)[:4] != b"\xff" * 4


def test_trace_path_is_checked_before_any_board(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    targets = two_sim_targets()
    code, _, err = run_cli(["batch", HEX, *targets, "--report-dir", str(tmp_path / "rep"),
                            "--trace", str(tmp_path / "no" / "such" / "x.trace")], capsys)
    assert code == 2 and "--trace" in err and "Traceback" not in err
    assert all(registry.get(t.split("chip=")[1]) is None for t in targets)  # no board touched


def test_batch_help_documents_trace(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["batch", "--help"], capsys)
    assert code == 0 and "--trace FILE|DIR|-" in out and "one file per board" in " ".join(out.split())


def test_targets_that_spell_alike_get_their_own_files(tmp_path: Path) -> None:
    bt = trace.BatchTrace(str(tmp_path))
    a, b = bt.board("/dev/ttyUSB0"), bt.board("dev:ttyUSB0")
    assert bt.board("/dev/ttyUSB0").out is a.out  # one file per target, however often asked
    a.line("uart", ">", "7f")
    b.line("uart", "<", "79")
    bt.close()
    assert sorted(os.listdir(tmp_path)) == ["dev_ttyUSB0-2.trace", "dev_ttyUSB0.trace"]
    assert (tmp_path / "dev_ttyUSB0.trace").read_text().split()[1:] == ["uart", ">", "7f"]
    assert (tmp_path / "dev_ttyUSB0-2.trace").read_text().split()[1:] == ["uart", "<", "79"]
