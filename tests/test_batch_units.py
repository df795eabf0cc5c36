"""Link-independent parts of ``stmflash batch``: serial formats and injection, job file,
protection parsing, target expansion, reports and the event stream."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest

from stmflash.devices import find
from stmflash.errors import UsageError
from stmflash.image.model import Image
from stmflash.production.job import load_job, parse_job, parse_protect
from stmflash.production.live import Events
from stmflash.production.report import BoardResult, RunReport
from stmflash.production.serials import SerialFormat, merge_serial
from stmflash.production.targets import expand_targets

NOW = dt.datetime(2026, 11, 21, tzinfo=dt.timezone.utc)


# ---- serial formats ------------------------------------------------------------------
def test_integer_formats_little_endian():
    assert SerialFormat("u32").encode(0x01020304) == bytes([4, 3, 2, 1])
    assert SerialFormat("u64").encode(5) == b"\x05" + b"\0" * 7
    with pytest.raises(UsageError, match="u32"):
        SerialFormat("u32").encode(1 << 32)


def test_ascii_and_template_formats():
    assert SerialFormat("ascii", prefix="AB", width=6).encode(42) == b"AB000042"
    assert SerialFormat("ascii", prefix="AB", width=6, size=10).encode(42) == b"AB000042\0\0"
    fmt = SerialFormat("template", template="SN-{year}{n:06d}")
    assert fmt.text(7, now=NOW) == "SN-2026000007"
    assert fmt.encode(7, now=NOW, uid="ab") == b"SN-2026000007"
    assert SerialFormat("template", template="{date}-{n}", nul=True).encode(3, now=NOW) == b"20261121-3\0"
    with pytest.raises(UsageError, match="wider"):  # refused when the format is built
        SerialFormat("ascii", prefix="X", width=8, size=4).encode(1)
    with pytest.raises(UsageError, match="longer"):
        SerialFormat("ascii", prefix="XYZ", width=3, size=4).encode(1)


@pytest.mark.parametrize("bad", [dict(kind="hex"), dict(kind="template"), dict(kind="template", template="{nope}")])
def test_bad_formats(bad):
    with pytest.raises(UsageError):
        SerialFormat(**bad)


def test_merge_serial_into_gap_and_erased_area():
    img = Image.from_segments([(0x08000000, b"\x11" * 64 + b"\xff" * 16 + b"\x22" * 16)], source="fw.hex")
    out = merge_serial(img, 0x08000040, b"SN01")
    assert out.read(0x08000040, 4) == b"SN01"
    assert out.read(0x08000000, 64) == b"\x11" * 64
    assert out.read(0x08000050, 16) == b"\x22" * 16
    gap = merge_serial(img, 0x08001000, b"\x01\x00\x00\x00")
    assert gap.read(0x08001000, 4) == b"\x01\0\0\0" and gap.size == img.size + 4
    assert img.read(0x08000040, 4) == b"\xff" * 4  # original untouched


def test_merge_serial_refuses_image_data_and_outside_flash():
    img = Image.from_segments([(0x08000000, b"\x11" * 64)], source="fw.hex")
    with pytest.raises(UsageError, match=r"overlaps image data at 0x0800003E .*fw.hex"):
        merge_serial(img, 0x0800003E, b"ABCD")
    dev = find("F407")
    with pytest.raises(UsageError, match="outside the flash"):
        merge_serial(img, 0x20000000, b"ABCD", dev)


# ---- protection ----------------------------------------------------------------------
def test_parse_protect():
    p = parse_protect(["rdp1", "wrp"], confirmed=False)
    assert (p.rdp, p.wrp, p.wrp_units) == (1, True, None)
    assert parse_protect(["wrp:3,1,1"], confirmed=False).wrp_units == (1, 3)
    with pytest.raises(UsageError, match="i-understand-rdp2-is-permanent"):
        parse_protect(["rdp2"], confirmed=False)
    assert parse_protect(["rdp2"], confirmed=True).rdp == 2
    with pytest.raises(UsageError, match="unknown protection"):
        parse_protect(["rdp3"], confirmed=True)


# ---- job file ------------------------------------------------------------------------
JOB = """
image = "fw.hex"
targets = ["/dev/ttyUSB*", "dfu:*"]
retries = 2
report_dir = "reports"
protect = ["wrp", "rdp1"]

[link]
baud = 57600
parity = "even"

[entry]
enter = "pins:-rts,-dtr,dtr:rts,-dtr,dtr"
invert = ["rts"]

[program]
erase = "auto"
verify = true
after = "reset"

[serial]
address = 0x0800FF00
format = "template"
template = "SN-{year}{n:06d}"
size = 16
ledger = "serials.db"
first = 1000

[loop]
enabled = true
max_boards = 50
"""


def test_job_file_full(tmp_path):
    p = tmp_path / "line3.toml"
    p.write_text(JOB)
    job = load_job(str(p))
    assert job.image == str(tmp_path / "fw.hex")
    assert job.targets == ("/dev/ttyUSB*", "dfu:*")
    assert (job.baud, job.parity, job.retries, job.after) == (57600, "even", 2, "reset")
    assert job.entry == "pins:-rts,-dtr,dtr:rts,-dtr,dtr" and job.invert == ("rts",)
    assert job.protect.rdp == 1 and job.protect.wrp
    assert job.serial.address == 0x0800FF00 and job.serial.first == 1000
    assert job.serial.ledger == str(tmp_path / "serials.db")
    assert job.serial.fmt.size == 16
    assert job.loop and job.max_boards == 50
    over = job.with_overrides(baud=115200, retries=None, targets=("sim://F407",))
    assert over.baud == 115200 and over.retries == 2 and over.targets == ("sim://F407",)


@pytest.mark.parametrize(
    "text, key",
    [
        ("imgae = 'x'", "imgae"),
        ("[link]\nbaud = 'fast'", "link.baud"),
        ("[link]\nparity = 'mark'", "link.parity"),
        ("[link]\nstop = 2", "link.stop"),
        ("retries = -1", "retries"),
        ("[serial]\naddress = 1\nledger='l'\nformat='hex'", "serial.format"),
        ("[serial]\nledger='l'", "serial.address"),
        ("[serial]\naddress = 1\nledger = 'mysql://db/line3'", "serial.ledger"),
        ("ledger = 'mysql://db/line3'", "ledger: ledger mysql://db/line3: unknown engine"),
        ("station = ''", "station: empty station name"),
        ("[program]\nverify = 'yes'", "program.verify"),
        ("protect = ['rdp2']", "protect"),
        ("[option_bytes]\nhex = 'zz'", "option_bytes.hex"),
        ("targets = 5", "targets"),
        ("[entry]\ninvert = ['cts']", "entry.invert"),
        ("[entry]\nstrategy = 'pins'", "entry.strategy"),
    ],
)
def test_job_file_errors_name_the_key(tmp_path, text, key):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(UsageError) as ei:
        load_job(str(p))
    msg = str(ei.value)
    assert msg.startswith(f"{p}: {key}") and "\n" not in msg
    assert ei.value.exit_code == 2


def test_job_rdp2_confirmed_in_file():
    job = parse_job({"protect": ["rdp2"], "i_understand_rdp2_is_permanent": True}, source="j", base="/")
    assert job.protect.rdp == 2


def test_job_not_toml(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("image = ")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_job(str(p))
    with pytest.raises(UsageError, match="not found"):
        load_job(str(tmp_path / "missing.toml"))


# ---- targets -------------------------------------------------------------------------
def test_expand_targets(tmp_path):
    for name in ("ttyUSB1", "ttyUSB0", "other"):
        (tmp_path / name).write_text("")
    ts = expand_targets([str(tmp_path / "ttyUSB*"), "rfc2217://10.0.0.5:4001", "sim://F407?chip=a",
                         "dfu:0123ABCD", "dfu:path=1-1.2", str(tmp_path / "ttyUSB0")])
    assert [(t.kind, t.spec) for t in ts] == [
        ("uart", str(tmp_path / "ttyUSB0")),
        ("uart", str(tmp_path / "ttyUSB1")),
        ("uart", "rfc2217://10.0.0.5:4001"),
        ("uart", "sim://F407?chip=a"),
        ("dfu", "serial=0123ABCD"),
        ("dfu", "path=1-1.2"),
    ]
    with pytest.raises(UsageError, match="no serial port matches"):
        expand_targets([str(tmp_path / "ttyACM*")])
    with pytest.raises(UsageError, match="no targets"):
        expand_targets([])


# ---- report --------------------------------------------------------------------------
def test_report_files(tmp_path):
    rep = RunReport(str(tmp_path / "r"), "run1", image="fw.hex", image_crc="0x1234")
    rep.add(BoardResult("t0", port="t0", uid="aa", device="F407", serial="SN1", serial_number=1,
                        duration_s=1.5, result="passed"))
    rep.add(BoardResult("t1", result="failed", error="no answer on t1", exit_code=3))
    rows = list(csv.DictReader(open(rep.csv_path)))
    assert [r["result"] for r in rows] == ["passed", "failed"]
    assert rows[0]["serial"] == "SN1" and rows[1]["error"] == "no answer on t1"
    data = json.load(open(rep.json_path))
    assert data["passed"] == 1 and data["failed"] == 1 and len(data["results"]) == 2


# ---- events --------------------------------------------------------------------------
def test_events_json_and_plain():
    out, err = io.StringIO(), io.StringIO()
    ev = Events(json_out=True, stdout=out, stderr=err, live=False)
    rep = ev.reporter("t0")
    rep.phase("write", total=100)
    rep.advance(100)
    ev.emit("board", "t0", result="passed", uid="aa", serial="SN1", duration_s=1.0)
    ev.emit("board", "t1", result="failed", error="boom")
    ev.emit("summary", passed=1, failed=1, boards=2)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["event"] for x in lines] == ["phase", "progress", "board", "board", "summary"]
    assert lines[0]["target"] == "t0" and lines[1]["done"] == 100
    assert ev.passed == 1 and ev.failed == 1
    assert "summary: 1 passed, 1 failed" in err.getvalue()

    err2 = io.StringIO()
    plain = Events(stderr=err2, live=False)
    plain.emit("board", "t1", result="failed", error="no answer")
    assert "t1: FAILED: no answer" in err2.getvalue()


def test_events_live_table():
    err = io.StringIO()
    ev = Events(stderr=err, live=True)
    ev.emit("phase", "/dev/ttyUSB0", phase="write", total=200)
    ev.emit("progress", "/dev/ttyUSB0", phase="write", done=100, total=200)
    ev.emit("board", "/dev/ttyUSB1", result="failed", error="silent")
    ev.close()
    text = err.getvalue()
    assert "50.0%" in text and "FAILED" in text and "passed 0  failed 1" in text


def test_events_quiet_keeps_failures_and_summary():
    err = io.StringIO()
    ev = Events(stderr=err, live=False, quiet=True)
    ev.emit("phase", "t0", phase="write", total=10)
    ev.emit("board", "t0", result="passed", uid="aa", duration_s=1.0)
    ev.emit("board", "t1", result="failed", error="silent")
    ev.emit("summary", passed=1, failed=1, boards=2)
    lines = err.getvalue().splitlines()
    assert len(lines) == 2 and "t1: FAILED: silent" in lines[0] and "summary" in lines[1]
