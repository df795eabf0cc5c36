"""A whole production run: 16 virtual boards over three transports (pty servers in
subprocesses, in-process sim://, the virtual USB bus), some with injected faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from stmflash.cli import main
from stmflash.errors import EXIT_BATCH, EXIT_USAGE
from stmflash.image import load
from stmflash.production.serials import SerialFormat
from stmflash.production.store import open_ledger
from stmflash.sim import registry
from stmflash.sim.chip import flash_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEX = os.path.join(ROOT, "examples", "blinky-f407.hex")
SERIAL_AT = 0x08003F00
FLASH = 0x08000000
FMT = SerialFormat("ascii", prefix="LN", width=8)


def start_pty(tmp_path, i, fault=None):
    img = tmp_path / f"pty{i}.img"
    cmd = [sys.executable, "-m", "stmflash", "sim", "uart", "-d", "F407", "--image", str(img), "--seed", str(100 + i)]
    if fault:
        cmd += ["--fault", fault]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    path = proc.stdout.readline().strip()
    assert path.startswith("/dev/"), f"sim uart printed {path!r}"
    return proc, path, img


def stop_pty(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as ei:
        main(args)
    out = capsys.readouterr()
    return ei.value.code, out.out, out.err


@pytest.fixture
def usb_sim(tmp_path, monkeypatch):
    from stmflash.sim import usb_backend

    entries = [f"F407={tmp_path / f'dfu{i}.img'};seed={300 + i}" for i in range(3)]
    # a disconnect in mid-DNLOAD on one USB board: only that board may fail (or pass on retry)
    entries.append(f"F407={tmp_path / 'dfu3.img'};seed=303;fault=disconnect@dnload:3")
    monkeypatch.setenv("STMFLASH_USB_SIM", ",".join(entries))
    usb_backend.forget()
    yield [tmp_path / f"dfu{i}.img" for i in range(4)]
    usb_backend.forget()


def test_sixteen_mixed_boards(tmp_path, capsys, usb_sim):
    image = load(HEX)
    data = image.segments[0].data
    ptys = [start_pty(tmp_path, i, fault={4: "drop=0.002", 5: "nack=0.3"}.get(i)) for i in range(6)]
    sims = []
    for i in range(6):
        fault = {3: "&fault=power_loss=after:512", 4: "&fault=nack=1.0", 5: "&fault=silent"}.get(i, "")
        sims.append((f"line-s{i}", f"sim://F407?chip=line-s{i}&seed={200 + i}{fault}"))
    try:
        targets = [p for _, p, _ in ptys] + [u for _, u in sims] + ["dfu:*"]
        code, out, err = run_cli(
            ["batch", HEX, *targets, "--serial-address", hex(SERIAL_AT), "--serial-format", "ascii",
             "--serial-prefix", "LN", "--serial-width", "8", "--ledger", str(tmp_path / "serials.db"),
             "--report-dir", str(tmp_path / "reports"), "--retries", "1", "--json", "--after", "stay",
             "--parity", "none"],  # Linux ptys refuse PARENB (tcsetattr EINVAL); the sims ignore parity
            capsys,
        )
    finally:
        for proc, _, _ in ptys:
            stop_pty(proc)
    from stmflash.sim import usb_backend

    usb_backend.forget()  # saves the USB chips' image files
    assert code == EXIT_BATCH, err
    events = [json.loads(line) for line in out.splitlines()]
    summary = [e for e in events if e["event"] == "summary"][-1]
    report = json.load(open(summary["report_json"]))
    results = {r["target"]: r for r in report["results"]}
    assert len(results) == 16 and report["boards"] == 16

    flash_of = {}
    for (_, path, img), i in zip(ptys, range(6), strict=True):
        flash_of[path] = (lambda p=img: flash_bytes(p), i in (4, 5))
    for name, url in sims:
        flash_of[url] = (lambda n=name: bytes(registry.get(n).flash), "fault=" in url)
    dfu_targets = [t for t in results if t.startswith("dfu:")]
    assert len(dfu_targets) == 4
    for t, img in zip(sorted(dfu_targets), usb_sim, strict=True):
        flash_of[t] = (lambda p=img: flash_bytes(p), str(img).endswith("dfu3.img"))

    serials = []
    for target, r in results.items():
        read, faulty = flash_of[target]
        if r["result"] == "passed":
            flash = read()
            assert flash[: len(data)] == data, target
            off = SERIAL_AT - FLASH
            assert flash[off : off + 10] == FMT.encode(r["serial_number"]), target
            serials.append(r["serial_number"])
        else:
            assert r["error"], target
            assert faulty, f"{target} had no fault but failed: {r['error']}"
    assert len(serials) == len(set(serials))
    for t, r in results.items():
        if "silent" in t or "nack=1.0" in t:
            assert r["result"] == "failed" and r["error"]
    assert sum(1 for r in results.values() if r["result"] == "passed") >= 11
    # the ledger agrees with the report: every number handed out has an outcome
    with open_ledger(str(tmp_path / "serials.db")) as led:
        entries = {e.n: e for e in led.entries()}
    assert {e.status for e in entries.values()} <= {"done", "failed"}
    assert sorted(n for n, e in entries.items() if e.status == "done") == sorted(serials)


def test_rdp2_needs_confirmation_before_any_board(tmp_path, capsys):
    registry.register("rdp2-guard", __import__("stmflash.sim.chip", fromlist=["VirtualChip"]).VirtualChip(
        __import__("stmflash.devices", fromlist=["find"]).find("F407")))
    code, out, err = run_cli(["batch", HEX, "sim://F407?chip=rdp2-guard", "--protect", "rdp2",
                              "--report-dir", str(tmp_path)], capsys)
    assert code == EXIT_USAGE and "i-understand-rdp2-is-permanent" in err
    assert registry.get("rdp2-guard").reset_count == 0
    assert bytes(registry.get("rdp2-guard").flash[:16]) == b"\xff" * 16
    assert not any(tmp_path.iterdir())


def test_job_file_run_and_rdp1(tmp_path, capsys):
    job = tmp_path / "line.toml"
    job.write_text(f"""
image = "{HEX}"
targets = ["sim://F407?chip=job-a&seed=1", "sim://F407?chip=job-b&seed=2"]
protect = ["wrp", "rdp1"]
report_dir = "rep"
[serial]
address = {SERIAL_AT}
format = "u32"
ledger = "serials.db"
first = 5000
""")
    code, out, err = run_cli(["batch", "--job", str(job)], capsys)
    assert code == 0, err
    for name in ("job-a", "job-b"):
        chip = registry.get(name)
        assert chip.rdp_level == 1
        assert chip.wrp == {0}  # the one sector the image and the serial cover
    nums = sorted(int.from_bytes(registry.get(n).flash[SERIAL_AT - FLASH:][:4], "little") for n in ("job-a", "job-b"))
    assert nums == [5000, 5001]
    assert len(list((tmp_path / "rep").glob("batch-*.csv"))) == 1
    with open_ledger(str(tmp_path / "serials.db")) as led:
        assert sorted(e.n for e in led.entries() if e.status == "done") == [5000, 5001]
        runs = led.runs()
    assert sorted(r["serial_number"] for r in runs if r["result"] == "passed") == [5000, 5001]


def test_serial_over_code_is_a_usage_error(tmp_path, capsys):
    code, out, err = run_cli(["batch", HEX, "sim://F407", "--serial-address", "0x08000010",
                              "--ledger", str(tmp_path / "l.db"), "--report-dir", str(tmp_path / "r")], capsys)
    assert code == EXIT_USAGE and "overlaps image data at 0x08000010" in err


def _start_linked(tmp_path, link, seed):
    img = tmp_path / f"station-{seed}.img"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stmflash", "sim", "uart", "-d", "F407", "--image", str(img), "--seed", str(seed),
         "--link", str(link)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    assert proc.stdout.readline().startswith("/dev/")
    return proc, img


@pytest.mark.timeout(90)
def test_station_loop_swaps_boards(tmp_path):
    """--loop: program the board on the slot, wait for it to go, program the next one."""
    link = tmp_path / "slot0"
    servers = [_start_linked(tmp_path, link, 11)]
    batch = subprocess.Popen(
        [sys.executable, "-m", "stmflash", "batch", HEX, str(link), "--loop", "--max-boards", "2", "--json",
         "--parity", "none", "--serial-address", hex(SERIAL_AT), "--serial-format", "ascii", "--serial-prefix",
         "LN", "--serial-width", "8", "--ledger", str(tmp_path / "l.db"), "--report-dir", str(tmp_path / "r")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    events = []
    try:
        for line in batch.stdout:
            ev = json.loads(line)
            events.append(ev)
            if ev["event"] == "remove" and len(servers) == 1:
                # the board reset back into its ROM (BOOT0 high): it must not be flashed again
                # until it is gone; the operator swaps it for a new one
                stop_pty(servers[0][0])
                servers.append(_start_linked(tmp_path, link, 12))
        assert batch.wait(60) == 0, batch.stderr.read()
    finally:
        if batch.poll() is None:
            batch.kill()
        for proc, _ in servers:
            if proc.poll() is None:
                stop_pty(proc)
    boards = [e for e in events if e["event"] == "board"]
    assert [b["result"] for b in boards] == ["passed", "passed"]
    assert boards[0]["uid"] != boards[1]["uid"]
    for (_, img), n in zip(servers, (1, 2), strict=True):
        assert flash_bytes(img)[SERIAL_AT - FLASH :][:10] == FMT.encode(n)
    summary = [e for e in events if e["event"] == "summary"][-1]
    assert summary["passed"] == 2 and summary["failed"] == 0


@pytest.mark.parametrize(
    "args, msg",
    [
        (["batch", HEX], "no targets"),
        (["batch", HEX, "sim://F407", "--protect", "rdp1", "--no-verify"], "only applied after verification"),
        (["batch", HEX, "sim://F407", "--protect", "wrp:x"], "bad write-protection unit list"),
        (["batch", "missing.hex", "sim://F407"], "missing.hex"),
        (["batch", "--job", "nope.toml"], "job file nope.toml not found"),
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, args, msg):
    code, out, err = run_cli(args + ["--report-dir", str(tmp_path / "r")], capsys)
    assert code == EXIT_USAGE and msg in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_command_line_overrides_job(tmp_path, capsys):
    job = tmp_path / "j.toml"
    job.write_text(f'image = "{HEX}"\ntargets = ["sim://F407?chip=ovr-a&seed=1"]\nreport_dir = "rep"\n'
                   '[program]\nafter = "go"\n')
    code, out, err = run_cli(["batch", "--job", str(job), "sim://F407?chip=ovr-b&seed=2", "--after", "stay",
                              "--json"], capsys)
    assert code == 0, err
    assert registry.get("ovr-a") is None  # the job's target was replaced by the command line's
    chip = registry.get("ovr-b")
    assert chip.mode == "bootloader" and chip.reset_count == 0  # --after stay beat after = "go"
    start = [json.loads(x) for x in out.splitlines() if '"start"' in x][0]
    assert start["targets"] == ["sim://F407?chip=ovr-b&seed=2"]


def test_rdp2_confirmed_is_set_through_the_option_bytes(tmp_path, capsys):
    code, out, err = run_cli(["batch", HEX, "sim://F407?chip=rdp2-conf", "--protect", "rdp2",
                              "--i-understand-rdp2-is-permanent", "--report-dir", str(tmp_path / "r")], capsys)
    assert code == 0, err
    chip = registry.get("rdp2-conf")
    assert chip.rdp_level == 2 and chip.option_bytes()[1] == 0xCC  # F4: RDP is byte 1
    image = load(HEX)
    seg = image.segments[0]
    assert bytes(chip.flash[seg.address - FLASH:][: len(seg.data)]) == bytes(seg.data)  # verified first
    assert run_cli(["uart", "sim://F407?chip=rdp2-conf", "--timeout", "0.05", "--retries", "1"], capsys)[0] == 3


def test_rdp2_refused_where_the_layout_is_unknown(tmp_path, capsys):
    code, out, err = run_cli(["batch", HEX, "sim://H7A3?chip=rdp2-h7a", "--device", "H7A3", "--protect", "rdp2",
                              "--i-understand-rdp2-is-permanent", "--report-dir", str(tmp_path / "r")], capsys)
    assert code == EXIT_USAGE and "option-byte layout of H7A3 is not in the table" in err
    assert registry.get("rdp2-h7a") is None  # refused before any board was opened
    code, out, err = run_cli(["batch", HEX, "sim://H7A3?chip=rdp2-h7b", "--protect", "rdp2",
                              "--i-understand-rdp2-is-permanent", "--report-dir", str(tmp_path / "r2")], capsys)
    assert code == EXIT_BATCH
    chip = registry.get("rdp2-h7b")
    assert chip.rdp_level == 0 and bytes(chip.flash[:64]) == b"\xff" * 64  # refused before flashing
