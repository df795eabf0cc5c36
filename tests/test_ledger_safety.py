"""The ledger refuses to guess (issue: a serial number never issued twice): a damaged
journal stops its import at the line, a ledger that went backwards (older copy) is
refused before any board is touched or as soon as a chip proves it, on both engines.
Plus the ``stmflash ledger`` commands and credentials that never reach any output."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest

from stmflash.cli import main
from stmflash.devices import find
from stmflash.errors import EXIT_BATCH, EXIT_USAGE
from stmflash.production.store import open_ledger
from stmflash.sim import registry
from stmflash.sim.chip import VirtualChip
from tests.test_batch_line import HEX, SERIAL_AT

FLASH = 0x08000000


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as ei:
        main(args)
    out = capsys.readouterr()
    return ei.value.code, out.out, out.err


def _chip(name: str, seed: int) -> str:
    registry.register(name, VirtualChip(find("F407"), seed=seed))
    return f"sim://F407?chip={name}"


def _batch(capsys, spec, report_dir, *targets, extra=()):
    return run_cli(["batch", HEX, *targets, "--serial-address", hex(SERIAL_AT), "--serial-format", "u32",
                    "--ledger", spec, "--report-dir", str(report_dir), "--after", "stay", "--json", *extra],
                   capsys)


def _serial_on(name: str) -> int:
    return int.from_bytes(registry.get(name).flash[SERIAL_AT - FLASH:][:4], "little")


def _blank(name: str) -> bool:
    return bytes(registry.get(name).flash[:64]) == b"\xff" * 64


# ---- a damaged journal -------------------------------------------------------------------
def _journal(tmp_path, lines: list[str], tail: str = "") -> str:
    p = tmp_path / "old.jsonl"
    p.write_text("".join(line + "\n" for line in lines) + tail)
    return str(p)


GOOD = [
    '{"v":1,"op":"reserve","n":1,"uid":"AA","serial":"1","target":"t0","run":"r1","pid":1,"host":"h","t":"x"}',
    '{"v":1,"op":"done","n":1,"uid":"AA","run":"r1","t":"x"}',
    '{"v":1,"op":"reserve","n":2,"uid":"BB","serial":"2","target":"t1","run":"r1","pid":1,"host":"h","t":"x"}',
    '{"v":1,"op":"failed","n":2,"uid":"BB","error":"no answer","run":"r1","t":"x"}',
    '{"v":1,"op":"reserve","n":3,"uid":"CC","serial":"3","target":"t2","run":"r1","pid":1,"host":"h","t":"x"}',
]


def test_import_refuses_a_damaged_line_naming_file_and_line(tmp_path, capsys):
    lines = list(GOOD)
    lines[2] = lines[2].replace('"n":2,', '"n":2,,')  # one stray comma in the record of #2
    path = _journal(tmp_path, lines)
    db = tmp_path / "l.db"
    code, out, err = run_cli(["ledger", "import", path, "--ledger", str(db)], capsys)
    assert code == EXIT_USAGE and f"{path}:3: not a JSON record" in err and "Traceback" not in err
    assert "nothing was imported" in err and "ledger void" in err  # the documented repair path
    assert not db.exists()
    # the batch refuses the journal itself as a ledger, pointing at the import
    code, out, err = _batch(capsys, path, tmp_path / "r", _chip("dmg-a", 1))
    assert code == EXIT_USAGE and "stmflash ledger import" in err and _blank("dmg-a")


def test_import_refuses_an_all_damaged_file(tmp_path, capsys):
    path = _journal(tmp_path, ["#garbage", "{{{", "not json"])
    code, out, err = run_cli(["ledger", "import", path, "--ledger", str(tmp_path / "l.db")], capsys)
    assert code == EXIT_USAGE and f"{path}:1:" in err


@pytest.mark.parametrize("bad, why", [
    ('{"v":1,"op":"reserve","n":5,"uid":"AA"}', "chip AA reserved #5 but it already holds #1"),
    ('{"v":1,"op":"reserve","n":1,"uid":"ZZ"}', "serial #1 reserved for chip ZZ but it belongs to chip AA"),
    ('{"v":1,"op":"done","n":9}', "done for serial #9, which was never reserved"),
    ('{"v":2,"op":"done","n":1}', "unknown record version 2"),
    ('{"v":1,"op":"reserve","n":-4}', "bad serial number -4"),
])
def test_import_refuses_contradictions(tmp_path, capsys, bad, why):
    path = _journal(tmp_path, [*GOOD, bad])
    code, out, err = run_cli(["ledger", "import", path, "--ledger", str(tmp_path / "l.db")], capsys)
    assert code == EXIT_USAGE and f"{path}:6: {why}" in err


@pytest.fixture(params=["sqlite", "postgresql"])
def spec(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "l.db")
    return request.getfixturevalue("pg_url")


def test_import_then_batch_continues_without_reuse(tmp_path, capsys, spec):
    path = _journal(tmp_path, GOOD, tail='{"v":1,"op":"reserve","n":4,"ui')  # torn by a power loss
    db = spec
    tag = "pg" if "://" in spec else "sq"
    code, out, err = run_cli(["ledger", "import", path, "--ledger", db], capsys)
    assert code == 0 and "imported 3 serial numbers" in out and "cut mid-write" in err
    with open_ledger(db) as led:
        assert {e.n: e.status for e in led.entries()} == {1: "done", 2: "failed", 3: "interrupted"}
        assert led.check() == []  # imported numbers need no run rows
    code, out, err = run_cli(["ledger", "import", path, "--ledger", db], capsys)
    assert code == EXIT_USAGE and "already holds serial numbers" in err
    code, out, err = _batch(capsys, db, tmp_path / "r", _chip(f"imp-{tag}-a", 11), _chip(f"imp-{tag}-b", 12))
    assert code == 0, err
    assert sorted([_serial_on(f"imp-{tag}-a"), _serial_on(f"imp-{tag}-b")]) == [4, 5]  # 1..3 never again


# ---- a ledger that went backwards --------------------------------------------------------
def _copy_sqlite(src, dst):
    with open_ledger(str(src)):
        pass  # checkpoint happens on close: copy a whole database, as a backup would
    shutil.copy(src, dst)


def test_sqlite_rolled_back_copy_is_refused(tmp_path, capsys):
    db, old = tmp_path / "line.db", tmp_path / "backup.db"
    rep = tmp_path / "reports"
    assert _batch(capsys, str(db), rep, _chip("rb-a", 21), _chip("rb-b", 22))[0] == 0
    _copy_sqlite(db, old)
    assert _batch(capsys, str(db), rep, _chip("rb-c", 23))[0] == 0
    shutil.copy(old, db)  # someone restores last week's copy
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"line.db{suffix}").unlink(missing_ok=True)
    code, out, err = _batch(capsys, str(db), rep, _chip("rb-d", 24))
    assert code == EXIT_USAGE and "went backwards" in err and "#3" in err and "ledger void" in err
    assert _blank("rb-d")  # refused before any board was touched
    # another station (no reports of its own) meets the chip that carries #3: refused, and
    # no number is issued from this ledger for the rest of the run
    code, out, err = _batch(capsys, str(db), tmp_path / "other", "sim://F407?chip=rb-c", extra=["--retries", "0"])
    assert code == EXIT_BATCH and "already holds serial #3, which the ledger never issued" in out
    with open_ledger(str(db)) as led:
        assert 3 not in {e.n for e in led.entries()}
    # the documented repair: retire the number, then the line goes on with fresh numbers
    assert run_cli(["ledger", "void", "3", "--reason", "issued before the restore", "--ledger", str(db)],
                   capsys)[0] == 0
    code, out, err = _batch(capsys, str(db), rep, _chip("rb-e", 25))
    assert code == 0, err
    assert _serial_on("rb-e") == 4


def test_postgresql_rolled_back_copy_is_refused(tmp_path, capsys, pg_server):
    db = pg_server.new_database()
    rep = tmp_path / "reports"
    assert _batch(capsys, pg_server.url(db), rep, _chip("pgrb-a", 31), _chip("pgrb-b", 32))[0] == 0
    snapshot = pg_server.new_database(template=db)  # the backup
    assert _batch(capsys, pg_server.url(db), rep, _chip("pgrb-c", 33))[0] == 0
    code, out, err = _batch(capsys, pg_server.url(snapshot), rep, _chip("pgrb-d", 34))
    assert code == EXIT_USAGE and "went backwards" in err and "#3" in err
    assert pg_server.password not in out + err
    assert _blank("pgrb-d")


def test_high_water_mark_catches_a_rollback_without_reports(tmp_path, capsys):
    db, old = tmp_path / "line.db", tmp_path / "backup.db"
    rep = tmp_path / "reports"
    assert _batch(capsys, str(db), rep, _chip("hw-a", 41))[0] == 0
    _copy_sqlite(db, old)
    assert _batch(capsys, str(db), rep, _chip("hw-b", 42))[0] == 0
    for p in rep.glob("batch-*"):
        p.unlink()  # reports cleaned up by someone; the station's mark stays
    shutil.copy(old, db)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"line.db{suffix}").unlink(missing_ok=True)
    code, out, err = _batch(capsys, str(db), rep, _chip("hw-c", 43))
    assert code == EXIT_USAGE and "high-water mark" in err and _blank("hw-c")


# ---- the ledger commands and credentials -------------------------------------------------
def test_ledger_commands(tmp_path, capsys):
    db = str(tmp_path / "l.db")
    rep = tmp_path / "r"
    code, out, err = run_cli(["ledger", "show", "--ledger", db], capsys)
    assert code == EXIT_USAGE and "does not exist" in err
    code, out, err = _batch(capsys, db, rep, _chip("cmd-a", 51), _chip("cmd-b", 52), extra=["--station", "st7"])
    assert code == 0, err
    code, out, err = run_cli(["ledger", "show", "--ledger", db, "--json"], capsys)
    shown = json.loads(out)
    assert shown["next"] == 3 and shown["counts"] == {"done": 2} and len(shown["last_boards"]) == 2
    uid_a = registry.get("cmd-a").uid.hex().upper()
    code, out, err = run_cli(["ledger", "find", uid_a, "--ledger", db, "--json"], capsys)
    found = json.loads(out)
    assert code == 0 and found[0]["n"] == _serial_on("cmd-a") and found[0]["runs"][0]["station"] == "st7"
    assert run_cli(["ledger", "find", "999", "--ledger", db], capsys)[0] == 1
    code, out, err = run_cli(["ledger", "export", "--csv", "--ledger", db], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(int(r["serial_number"]) for r in rows) == [1, 2]
    assert {r["station"] for r in rows} == {"st7"} and all(r["result"] == "passed" for r in rows)
    # the per-run report and the database agree, row for row
    report = json.loads(next(rep.glob("batch-*.json")).read_text())
    assert {(r["uid"], r["serial_number"]) for r in report["results"]} == {(r["uid"], int(r["serial_number"]))
                                                                            for r in rows}
    code, out, err = run_cli(["ledger", "export", "--json", "--since", "2999-01-01", "--ledger", db], capsys)
    assert json.loads(out) == []
    assert run_cli(["ledger", "check", "--ledger", db], capsys)[0] == 0
    code, out, err = run_cli(["ledger", "void", "2", "--reason", "board scrapped", "--ledger", db], capsys)
    assert code == 0 and "voided" in out
    code, out, err = run_cli(["ledger", "show", "--ledger", db], capsys)
    assert "void 1" in out and "done 1" in out


def test_job_file_ledger_and_station_with_postgresql(tmp_path, capsys, pg_server):
    url = pg_server.url(pg_server.new_database())
    job = tmp_path / "line3.toml"
    job.write_text(f"""
image = "{HEX}"
targets = ["{_chip('job-pg-a', 61)}", "{_chip('job-pg-b', 62)}"]
report_dir = "rep"
ledger = "{url}"
station = "line3-station2"
[serial]
address = {SERIAL_AT}
format = "u32"
""")
    code, out, err = run_cli(["batch", "--job", str(job), "--json", "--after", "stay"], capsys)
    assert code == 0, err
    assert pg_server.password not in out + err
    for p in (tmp_path / "rep").iterdir():
        assert pg_server.password not in p.read_text()
    start = [json.loads(x) for x in out.splitlines() if '"start"' in x][0]
    assert start["station"] == "line3-station2" and "***" in start["ledger"]
    with open_ledger(url) as led:
        assert {e.station for e in led.entries()} == {"line3-station2"}
        assert {r["station"] for r in led.runs()} == {"line3-station2"}
    code, out, err = run_cli(["ledger", "show", "--ledger", url], capsys)
    assert code == 0 and pg_server.password not in out + err and "***" in out


def test_board_is_failed_safe_when_the_database_stays_down(tmp_path, pg_server, pg_url):
    """The server goes away while a board is being written and does not come back in time:
    the board is not counted (failed, exit 1), its number stays aside (interrupted)."""
    from stmflash.production.job import JobConfig, SerialConfig
    from stmflash.production.live import Events
    from stmflash.production.report import RunReport
    from stmflash.production.runner import BatchRunner
    from stmflash.production.serials import SerialFormat
    from stmflash.production.targets import Target
    from tests.test_batch_runner import DEV, IMAGE, ChipLink, FakeConnector
    from tests.test_batch_runner import SERIAL_AT as AT

    class DyingLink(ChipLink):
        def write(self, address, data):
            if not stopped:
                stopped.append(True)
                pg_server.stop()  # mid-board: the image is being written
            super().write(address, data)

    stopped: list[bool] = []
    chip = VirtualChip(DEV, seed=5)
    conn = FakeConnector({"t0": chip})
    conn.connect = lambda target, job, reporter: DyingLink(chip)
    led = open_ledger(pg_url, station="s1")
    led.reconnect_s = 1.0
    job = JobConfig(serial=SerialConfig(AT, SerialFormat("u32"), pg_url), retries=0, after="go")
    report = RunReport(str(tmp_path / "rep"), "run1")
    try:
        BatchRunner(job, IMAGE, [Target("uart", "t0", "t0")], events=Events(live=False, stderr=io.StringIO()),
                    report=report, connector=conn, ledger=led).run()
    finally:
        pg_server.start()
    led.close()
    (board,) = report.boards
    assert stopped and board.result == "failed" and board.exit_code == 1
    assert "board not counted" in board.error and f"serial #{board.serial_number} stays reserved" in board.error
    with open_ledger(pg_url) as again:
        assert {e.n: e.status for e in again.entries()} == {board.serial_number: "interrupted"}
        assert [r["result"] for r in again.runs()] == []  # nothing counted
        assert again.reserve(chip.uid.hex().upper()).n == board.serial_number  # its chip gets it back
