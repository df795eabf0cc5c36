"""``stmflash batch``: program many boards in parallel, as a production station does.

Everything that can be wrong with the request (job file, image, serial address, rdp2
without its confirmation) is checked before the first board is touched, and exits 2.
Afterwards every board gets a line in the report; the exit code is 0 only if all passed.
"""

from __future__ import annotations

import os
from typing import Any

import click

from stmflash.commands.common import INT, allow_missing_end_option


@click.command("batch")
@click.argument("args", nargs=-1, metavar="IMAGE TARGET...")
@click.option("--job", "job_file", type=click.Path(dir_okay=False), default=None,
              help="TOML job file with image, targets, link, entry, serials, protection, retries...")
@click.option("--address", "-a", type=INT, default=None, help="Load address for raw .bin images.")
@click.option("--device", "device", default=None, help="Refuse boards that are not this device (e.g. F407).")
@click.option("--baud", "-b", type=int, default=None, help="UART baud rate [115200].")
@click.option("--parity", type=click.Choice(["even", "none", "odd"]), default=None, help="UART parity [even].")
@click.option("--enter", "entry", default=None, metavar="CHAIN",
              help="Bootloader entry chain, as for 'stmflash uart' (e.g. pins:-rts,-dtr,dtr:rts,-dtr,dtr).")
@click.option("--invert", multiple=True, type=click.Choice(["dtr", "rts"]), help="Invert a control line.")
@click.option("--erase", type=click.Choice(["auto", "all", "none"]), default=None, help="Erase mode [auto].")
@click.option("--verify/--no-verify", default=None, help="Verify the flash [verify].")
@click.option("--after", type=click.Choice(["go", "reset", "stay"]), default=None,
              help="What each board does after programming [reset].")
@click.option("--protect", multiple=True, metavar="rdp1|rdp2|wrp|wrp:UNITS",
              help="Protect after verification: readout protection level, write protection "
              "(wrp = the units the image covers). Repeatable.")
@click.option("--i-understand-rdp2-is-permanent", "rdp2_ok", is_flag=True,
              help="Required with --protect rdp2: level 2 can never be undone.")
@click.option("--serial-address", type=INT, default=None, help="Flash address of the serial number.")
@click.option("--serial-format", type=click.Choice(["u32", "u64", "ascii", "template"]), default=None,
              help="How the number is stored [u32].")
@click.option("--serial-prefix", default=None, help="ascii format: text before the digits.")
@click.option("--serial-width", type=int, default=None, help="ascii format: zero-padded digit count.")
@click.option("--serial-template", default=None, help='template format, e.g. "SN-{year}{n:06d}".')
@click.option("--serial-size", type=int, default=None, help="Text formats: pad with NULs to this many bytes.")
@click.option("--serial-first", type=int, default=None, help="First number of the range [1].")
@click.option("--serial-last", type=int, default=None, help="Last number of the range.")
@click.option("--ledger", default=None, metavar="FILE|URL",
              help="Serial numbers and run records: an SQLite file (sqlite:///FILE) or "
              "postgresql://USER@HOST/DB for a line of stations [stmflash-serials.db].")
@click.option("--station", default=None, help="Station name recorded with every row [host name].")
@click.option("--operator", default=None, help="Operator recorded with every run row [$USER].")
@click.option("--retries", type=int, default=None, help="Extra attempts per board [1].")
@click.option("--report-dir", default=None, type=click.Path(file_okay=False),
              help="Where the CSV/JSON report goes [./stmflash-reports].")
@click.option("--loop", is_flag=True, default=None, help="Station mode: wait for boards, program, wait for removal.")
@click.option("--max-boards", type=int, default=None, help="Loop mode: stop after this many boards.")
@click.option("--image-check/--no-image-check", default=None,
              help="Refuse an image whose vector table looks wrong for the part [check].")
@click.option("--json", "json_", is_flag=True, help="One JSON event per line on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Only errors and the summary.")
@click.option("--trace", "trace_to", metavar="FILE|DIR|-", default=None,
              help="Log every board's bytes on the wire (UART) and USB control transfers (DFU) "
              "with timestamps: FILE or '-' (stderr) gets one log, each line starting with the "
              "board's target; an existing DIR gets one file per board (TARGET.trace).")
@allow_missing_end_option
def batch(args: tuple[str, ...], job_file: str | None, **opts: Any) -> None:
    """Program IMAGE into every TARGET in parallel (one worker per target).

    \b
    TARGET: a serial port (/dev/ttyUSB0), a glob (/dev/ttyUSB*), a pyserial URL
    (rfc2217://host:port, sim://F407?seed=3) or a DFU device (dfu:SERIAL, dfu:path=1-1.2,
    dfu:* for all). Exit status 0 only if every board passed, 6 otherwise, 2 for a bad
    request (nothing touched).
    \b
    Example:
      stmflash batch fw.hex /dev/ttyUSB* --serial-address 0x0800FC00 \\
          --serial-format template --serial-template "SN-{year}{n:06d}" --serial-size 16
      stmflash batch --job line3.toml
    """
    _run(args, job_file, opts)


def _looks_like_image(arg: str) -> bool:
    import stat

    if "://" in arg or arg.lower().startswith("dfu:"):
        return False
    try:
        return stat.S_ISREG(os.stat(arg).st_mode)
    except OSError:
        return os.path.splitext(arg)[1].lower() in (".hex", ".ihex", ".bin", ".elf", ".srec", ".s19", ".dfu")


def _job_device(job: Any) -> Any:
    """The part the job names (``device =`` / ``--device``), or None."""
    from stmflash.commands.common import find_device

    return find_device(job.device) if job.device else None


def _build_job(args: tuple[str, ...], job_file: str | None, o: dict[str, Any]) -> Any:
    """The job file (if any) with the command line on top; all checks that need no board."""
    from stmflash.errors import UsageError
    from stmflash.production.job import JobConfig, SerialConfig, load_job, parse_protect
    from stmflash.production.serials import SerialFormat

    job = load_job(job_file) if job_file else JobConfig()
    rest = list(args)
    image = None
    if rest and (job.image is None or _looks_like_image(rest[0])):
        image = rest.pop(0)
    targets = tuple(rest) or None
    protect = None
    if o["protect"]:
        protect = parse_protect(list(o["protect"]), confirmed=o["rdp2_ok"])
    elif o["rdp2_ok"] and job.protect.rdp != 2:
        pass  # harmless: nothing permanent requested
    job = job.with_overrides(
        image=image, targets=targets, address=o["address"], device=o["device"], baud=o["baud"],
        parity=o["parity"], entry=o["entry"], invert=tuple(o["invert"]) or None, erase=o["erase"],
        verify=o["verify"], after=o["after"], protect=protect, retries=o["retries"],
        report_dir=o["report_dir"], loop=o["loop"], max_boards=o["max_boards"], image_check=o["image_check"],
        rdp2_confirmed=True if o["rdp2_ok"] else None,
        ledger=o["ledger"], station=o["station"],
    )
    req = job.ob_request
    if req is not None:  # names and values, before any board is touched
        req.precheck(_job_device(job), rdp2_confirmed=job.rdp2_confirmed)
    if job.ledger is not None:
        from stmflash.production.store import check_spec

        check_spec(job.ledger)
    serial_opts = {k: o[k] for k in ("serial_address", "serial_format", "serial_prefix", "serial_width",
                                     "serial_template", "serial_size", "serial_first", "serial_last")}
    if any(v is not None for v in serial_opts.values()):
        base = job.serial
        address = o["serial_address"] if o["serial_address"] is not None else (base.address if base else None)
        if address is None:
            raise UsageError("--serial-address is required for serial numbers")
        f0 = base.fmt if base else SerialFormat()
        fmt = SerialFormat(
            kind=o["serial_format"] or f0.kind,
            prefix=o["serial_prefix"] if o["serial_prefix"] is not None else f0.prefix,
            width=o["serial_width"] if o["serial_width"] is not None else f0.width,
            template=o["serial_template"] if o["serial_template"] is not None else f0.template,
            size=o["serial_size"] if o["serial_size"] is not None else f0.size,
            nul=f0.nul,
        )
        first = o["serial_first"] if o["serial_first"] is not None else (base.first if base else 1)
        last = o["serial_last"] if o["serial_last"] is not None else (base.last if base else None)
        ledger = base.ledger if base else ""
        if first < 0 or (last is not None and last < first):
            raise UsageError(f"bad serial range {first}..{last}")
        job = job.with_overrides(serial=SerialConfig(address, fmt, ledger, first, last))
    if job.image is None:
        raise UsageError("no image: give IMAGE or image = ... in the job file")
    if not job.targets:
        raise UsageError("no targets: give TARGET... or targets = [...] in the job file")
    if job.retries < 0:
        raise UsageError("--retries must be >= 0")
    if job.max_boards is not None and job.max_boards < 1:
        raise UsageError("--max-boards must be >= 1")
    if (job.protect.any or job.option_bytes is not None) and not job.verify:
        raise UsageError("protection/option bytes are only applied after verification: drop --no-verify")
    return job


def _open_ledger(job: Any, run_id: str, events: Any, report: Any) -> Any:
    """The job's ledger, opened, migrated and checked against this station's evidence."""
    from stmflash.production.store import open_ledger

    spec = job.ledger_spec
    if spec is None:
        return None
    first, last = (job.serial.first, job.serial.last) if job.serial is not None else (1, None)
    # a --loop station waits for a database that is restarting, as it does between boards
    ledger = open_ledger(spec, first=first, last=last, run_id=run_id, station=job.station,
                         on_reconnect=lambda msg: events.emit("warning", message=msg),
                         connect_wait=60.0 if job.loop else 5.0)
    try:
        ledger.guard(job.report_dir)
        interrupted = ledger.interrupted()
    except BaseException:
        ledger.close()
        raise
    for e in interrupted:
        report.interrupted_serials.append(e.to_dict())
        events.emit("warning", message=f"serial #{e.n} ({e.serial}) was reserved for chip {e.uid} on "
                    f"{e.target} ({e.station}) by an interrupted run {e.run}: kept aside, never reused")
    return ledger


def _run(args: tuple[str, ...], job_file: str | None, o: dict[str, Any]) -> None:
    import threading

    from stmflash.commands.common import load_image
    from stmflash.errors import BatchError, UsageError
    from stmflash.production.live import Events
    from stmflash.production.report import RunReport, _now_iso
    from stmflash.production.runner import BatchRunner, LinkConnector
    from stmflash.production.store import new_run_id, redact
    from stmflash.production.targets import expand_targets

    job = _build_job(args, job_file, o)
    device = _job_device(job)
    image = load_image(job.image, address=job.address, device=device, require_end=not o.get("allow_missing_end"))
    if device is not None:
        from stmflash.pipeline import split_image

        split_image(image, device)  # data outside the part's flash/OTP/RAM: refused now, not per board
    if job.serial is not None:
        from stmflash.production.serials import check_serial_address

        check_serial_address(image, job.serial.address, len(job.serial.encode(job.serial.first)), device)
    if job.option_bytes is not None:
        # decided before any board is touched: a named part decodes the bytes, otherwise
        # only the confirmation lets them through (stmflash.safety)
        from stmflash.safety import check_option_bytes_early

        check_option_bytes_early(device, job.option_bytes, rdp2_confirmed=job.rdp2_confirmed,
                                 where=f"{job.source or 'job'}: option_bytes")
    from stmflash.paths import check_output_dir, check_output_file

    check_output_dir(job.report_dir, "--report-dir")  # before the first board, not after the last
    trace_to = o.get("trace_to")
    if trace_to and trace_to != "-" and not os.path.isdir(trace_to):
        check_output_file(trace_to, "--trace")
    spec = job.ledger_spec
    if spec is not None:
        from stmflash.production.store import check_spec, sqlite_path

        check_spec(spec)
        path = sqlite_path(spec)
        if path:  # a database file: its directory must take it (a server URL is tried when opened)
            check_output_file(os.path.expanduser(path), "--ledger")
    targets = expand_targets(job.targets, loop=job.loop)
    if job.protect.rdp == 2 and device is not None:
        # level 2 is written through the family's option-byte layout: refuse parts whose
        # layout the table does not hold before any board is touched
        from stmflash import option_bytes as obl

        obl.set_rdp(device, obl.default_ob(device), 2)
    dfu = [t.label for t in targets if t.is_dfu]
    if dfu and job.protect.any:
        from stmflash.dfu.link import DfuLink

        need = (["readout_protect"] if job.protect.rdp else []) + (["write_protect"] if job.protect.wrp else [])
        missing = [m for m in need if not hasattr(DfuLink, m)]
        if missing:
            raise UsageError(f"--protect {job.protect.describe()} is not supported over DFU yet ({', '.join(dfu)})")

    if job.image_check:
        from stmflash.image.vectors import check_vector_table

        problems = check_vector_table(image, device)
        if problems:
            raise UsageError(f"{job.image}: {problems[0]} (wrong file or part? --no-image-check to flash anyway)")

    events = Events(json_out=o["json_"], quiet=o["quiet"])
    run_id = new_run_id()
    report = RunReport(job.report_dir, run_id, image=job.image, image_crc=f"0x{image.crc32():08X}",
                       job=job.source, started=_now_iso())
    # the ledger is opened and checked (damage, went backwards) before any board is touched
    ledger = _open_ledger(job, run_id, events, report)
    events.emit("start", run=run_id, image=job.image, image_crc=report.image_crc,
                targets=[t.label for t in targets], loop=job.loop,
                station=ledger.station if ledger is not None else (job.station or ""),
                ledger=redact(job.ledger_spec) if job.ledger_spec else None)
    stop = threading.Event()
    from stmflash.trace import BatchTrace

    runner = BatchRunner(job, image, targets, events=events, report=report, connector=LinkConnector(),
                         ledger=ledger, stop=stop, station=job.station or "",
                         operator=o["operator"] if o["operator"] is not None else os.environ.get("USER", ""))
    runner.trace = tracing = BatchTrace(trace_to) if trace_to else None
    try:
        runner.run()
    finally:
        if tracing is not None:
            tracing.close()
        report.finished = _now_iso()
        report.write()
        if ledger is not None:
            ledger.close()
        events.emit("summary", run=run_id, boards=len(report.boards), passed=report.passed,
                    failed=report.failed, report=report.csv_path, report_json=report.json_path)
        events.close()
    if runner.interrupted and not job.loop:
        raise KeyboardInterrupt
    if report.failed or (not report.boards and not job.loop):
        failed = [b.target for b in report.boards if not b.passed]
        what = f"{report.failed} of {len(report.boards)} boards failed ({', '.join(failed[:8])}"
        what += ", ..." if len(failed) > 8 else ""
        raise BatchError((what + f"); see {report.csv_path}") if report.boards else "no board was programmed")
