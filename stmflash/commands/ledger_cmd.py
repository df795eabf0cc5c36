"""``stmflash ledger``: look into and look after the serial-number ledger.

The same commands work on both engines (an SQLite file or a PostgreSQL URL). Reading
commands never create a ledger; ``void`` and ``import`` are the only ones that change
it, and both are recorded in it (who, when, why).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from typing import Any

import click

LEDGER_HELP = "The ledger: an SQLite file (sqlite:///FILE) or postgresql://USER@HOST/DB [stmflash-serials.db]."


def _ledger_option(fn: Any) -> Any:
    return click.option("--ledger", "spec", default=None, metavar="FILE|URL", help=LEDGER_HELP)(fn)


def _open(spec: str | None, *, create: bool = False, station: str | None = None) -> Any:
    from stmflash.errors import UsageError
    from stmflash.production.store import DEFAULT_LEDGER, check_spec, open_ledger, sqlite_path

    spec = spec or DEFAULT_LEDGER
    check_spec(spec)
    path = sqlite_path(spec)
    if path is not None and not create and not os.path.exists(os.path.expanduser(path)):
        raise UsageError(f"ledger {path} does not exist")
    return open_ledger(spec, station=station)


def _emit(obj: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(obj, indent=2, default=str) if as_json else text)


@click.group("ledger")
def ledger() -> None:
    """Serial numbers and run records: show, find, export, void, check, import.

    \b
    Examples:
      stmflash ledger show --ledger line3.db
      stmflash ledger find SN-2026000042 --ledger postgresql://station@mes/line3
      stmflash ledger export --csv --since 2026-11-01 > november.csv
      stmflash ledger void 57 --reason "label printed twice, board scrapped"
      stmflash ledger import stmflash-serials.jsonl --ledger stmflash-serials.db
    """


@ledger.command("show")
@_ledger_option
@click.option("--last", "last", type=int, default=10, show_default=True, help="How many recent boards to list.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(spec: str | None, last: int, as_json: bool) -> None:
    """Next number, counts by state, and the last boards."""
    with _open(spec) as st:
        entries = st.entries()
        counts = Counter(e.status for e in entries)
        runs = st.runs(last=last) if last > 0 else []
        obj = {"ledger": st.where, "engine": st.engine, "next": st.next_number(), "counts": dict(counts),
               "last_boards": runs}
    lines = [f"ledger {obj['ledger']} ({obj['engine']}): next number #{obj['next']}",
             "numbers: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none issued")]
    for r in runs:
        lines.append(f"  {r['finished']}  {r['station']:<12} {r['target']:<24} {r['result']:<7} "
                     f"#{r['serial_number'] if r['serial_number'] is not None else '-'} {r['serial']} {r['uid']}"
                     + (f"  {r['error']}" if r["error"] else ""))
    _emit(obj, as_json, "\n".join(lines))


@ledger.command("find")
@click.argument("what")
@_ledger_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def find(what: str, spec: str | None, as_json: bool) -> None:
    """The number and run rows of a serial (text or number) or a chip UID. Exit 1: not found."""
    from stmflash.errors import StmflashError

    with _open(spec) as st:
        key = what.strip()
        hits = [e for e in st.entries()
                if e.serial == key or (e.uid or "").upper() == key.upper() or (key.isdigit() and e.n == int(key))]
        out = []
        for e in hits:
            out.append({**e.to_dict(), "runs": st.runs(serial_number=e.n)})
        if not hits:
            rows = st.runs(uid=key.upper())
            if rows:
                out.append({"uid": key.upper(), "runs": rows})
    if not out:
        raise StmflashError(f"{what}: no such serial number or chip in the ledger")
    lines = []
    for h in out:
        if "n" in h:
            lines.append(f"#{h['n']} {h['serial']} chip {h['uid'] or '?'}: {h['status']}"
                         + (f" ({h['reason'] or h['error']})" if h["reason"] or h["error"] else "")
                         + f", station {h['station'] or '?'}, target {h['target'] or '?'}, run {h['run']}")
        else:
            lines.append(f"chip {h['uid']}: no serial number")
        for r in h["runs"]:
            lines.append(f"  {r['finished']}  {r['station']}  {r['target']}  attempt {r['attempts']}  "
                         f"{r['result']}  {r['image']} {r['image_crc']}" + (f"  {r['error']}" if r["error"] else ""))
    _emit(out, as_json, "\n".join(lines))


@ledger.command("export")
@_ledger_option
@click.option("--csv", "fmt", flag_value="csv", default=True, help="CSV, one row per board per attempt [default].")
@click.option("--json", "fmt", flag_value="json", help="JSON list of run rows.")
@click.option("--since", default=None, metavar="ISO-DATE", help="Only rows finished at or after this (UTC).")
@click.option("--run", "run", default=None, help="Only one batch run (its run id).")
def export(spec: str | None, fmt: str, since: str | None, run: str | None) -> None:
    """The run table, as the per-run reports have it (plus station, run, job, operator)."""
    from stmflash.production.store import RUN_COLUMNS

    since = _iso(since) if since else None
    with _open(spec) as st:
        rows = st.runs(since=since, run=run)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    w = csv.DictWriter(sys.stdout, fieldnames=RUN_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "phases": json.dumps(r["phases"], sort_keys=True),
                    "serial_number": "" if r["serial_number"] is None else r["serial_number"],
                    "duration_s": f"{r['duration_s']:.3f}"})


def _iso(text: str) -> str:
    """``--since`` as the ledger's timestamp form (``2026-11-01`` or ``2026-11-01T08:00``)."""
    import datetime as dt

    from stmflash.errors import UsageError

    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {text!r}: not a date (e.g. 2026-11-01 or 2026-11-01T08:00)") from None
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@ledger.command("void")
@click.argument("number", type=int)
@click.option("--reason", required=True, help="Why (recorded with the number).")
@_ledger_option
@click.option("--station", default=None, help="Who voids it [host name].")
def void(number: int, reason: str, spec: str | None, station: str | None) -> None:
    """Retire NUMBER by hand: recorded, never issued again (also a number not yet issued)."""
    with _open(spec, station=station) as st:
        e = st.void(number, reason)
    click.echo(f"serial #{e.n} voided: {e.reason}")


@ledger.command("check")
@_ledger_option
def check(spec: str | None) -> None:
    """Consistency: every done number has a passed run row, no number on two chips, no
    chip with two numbers, no gap without a reason. Exit 1 when something is wrong."""
    from stmflash.errors import StmflashError

    with _open(spec) as st:
        problems = st.check()
        where, count = st.where, len(st.entries())
    if problems:
        for p in problems:
            click.echo(f"{where}: {p}", err=True)
        raise StmflashError(f"ledger {where}: {len(problems)} problem(s)")
    click.echo(f"ledger {where}: consistent ({count} numbers)")


@ledger.command("import")
@click.argument("journal", type=click.Path(dir_okay=False))
@_ledger_option
def import_(journal: str, spec: str | None) -> None:
    """Bring an old JSON-lines journal into an empty ledger (this database).

    A damaged journal is refused with its file and line, and nothing is imported.
    """
    from stmflash.production.store.journal import import_journal, read_journal

    parsed = read_journal(journal)  # before the database is created: nothing half-done
    if parsed.torn_tail:
        click.echo(f"{journal}: the last line was cut mid-write (never fsynced, its number never used): "
                   "skipped", err=True)
    with _open(spec, create=True) as st:
        n = import_journal(st, parsed)
        where = st.where
    click.echo(f"imported {n} serial numbers from {journal} into {where}")
