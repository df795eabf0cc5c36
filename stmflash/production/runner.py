"""The batch runner: one thread per target, each running the same pipeline as
``stmflash uart``/``stmflash dfu``, with serials, retries, protection and the station loop.

Per board, in this order (the order is the safety argument):

1. connect and identify (entry strategy, sync, Get ID, flash size, UID);
2. read the serial field the chip already holds: a number the ledger never issued means
   the ledger went backwards, and the station stops issuing numbers;
3. reserve the serial number in the ledger (committed) — only then is it used;
4. mark it ``written``, merge the serial into the image, erase/write/verify everything in
   one pipeline run;
5. option bytes, then write protection, then readout protection — only after the flash
   verified, since RDP blocks reading it back and RDP2 is forever;
6. record the attempt's run row and ``done`` (or ``failed`` with the error) in the ledger
   in one transaction, then the report.

Threads are enough: the work is waiting on serial ports and USB, and each worker owns
its link, so workers share only the ledger, the report and the event sink (all locked).
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from stmflash.errors import (
    LinkError,
    ProtectionError,
    StmflashError,
    UsageError,
)
from stmflash.image.model import Image
from stmflash.production.job import JobConfig
from stmflash.production.live import Events
from stmflash.production.report import BoardResult, RunReport
from stmflash.production.serials import check_serial_address, merge_serial
from stmflash.production.store import LedgerError, RunRecord, Store
from stmflash.production.targets import Target

#: errors that a retry on the same board will not fix
_FATAL = (UsageError, LedgerError)


class Connector(Protocol):
    """How a worker reaches a board. The default one uses the uart/dfu command code."""

    def connect(self, target: Target, job: JobConfig, reporter: Any) -> Any:
        """An identified Link (entry strategy applied); LinkError when nothing answers."""
        ...

    def close(self, link: Any) -> None: ...

    def present(self, target: Target, job: JobConfig) -> bool:
        """Cheap check that something is plugged in (port exists / DFU device listed)."""
        ...


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def link_uid(link: Any) -> str | None:
    """The chip's 96-bit unique ID as upper-case hex.

    Read from the UID register when the link did not already read it: a DFU serial
    string is derived from only part of the UID and collides between boards.
    """
    uid = getattr(link, "uid", None)
    if isinstance(uid, (bytes, bytearray)) and uid:
        return bytes(uid).hex().upper()
    reg = getattr(link.device, "uid_reg", None)
    if reg is not None:
        try:
            return bytes(link.read(reg, 12)).hex().upper()
        except StmflashError:
            pass
    if isinstance(uid, str) and uid:
        return uid.upper()
    return None


def image_units(image: Image, device: Any) -> list[int]:
    units: set[int] = set()
    for s in image.segments:
        for u in device.units_covering(s.address, s.end):
            units.add(u.index)
    return sorted(units)


def apply_protection(link: Any, job: JobConfig, image: Image, reporter: Any) -> str:
    """Option bytes, WRP, then RDP — after verification only (see module docstring)."""
    done: list[str] = []
    if job.option_bytes is not None:
        fn = getattr(link, "write_option_bytes", None)
        if fn is None:
            raise StmflashError("writing option bytes is not supported over this link")
        reporter.phase("option-bytes")
        answers = fn(job.option_bytes, confirm_permanent=job.rdp2_confirmed)  # gated again inside
        done.append("option-bytes")
        if answers is False:  # RDP level 2 (confirmed): the chip never answers again
            return "+".join(done + ["silent"])
    req = job.ob_request
    if req is not None:
        from stmflash.ob_ops import apply_request

        if not hasattr(link, "ob_area_write"):
            raise StmflashError("option fields are not supported over this link")
        apply_request(link, req, rdp2_confirmed=job.rdp2_confirmed, reporter=reporter)
        done.append("option-fields")
    p = job.protect
    if p.wrp:
        units = list(p.wrp_units) if p.wrp_units else image_units(image, link.device)
        fn = getattr(link, "write_protect", None)
        if fn is None:
            raise ProtectionError("write protection is not supported over this link")
        reporter.phase("wrp")
        fn(units)
        done.append("wrp:" + ",".join(map(str, units)))
    if p.rdp:
        fn = getattr(link, "readout_protect", None)
        if fn is None:
            raise ProtectionError("readout protection is not supported over this link")
        reporter.phase(f"rdp{p.rdp}")
        if p.rdp == 2:
            fn(level=2, confirm_permanent=True)  # the job checked the confirmation flag
        else:
            fn()
        done.append(f"rdp{p.rdp}")
    return "+".join(done)


@dataclass
class BoardOutcome:
    result: BoardResult
    uid: str | None


class BatchRunner:
    """Runs every target once (or in a loop) and fills ``report``."""

    def __init__(
        self,
        job: JobConfig,
        image: Image,
        targets: list[Target],
        *,
        events: Events,
        report: RunReport,
        connector: Connector,
        ledger: Store | None = None,
        stop: threading.Event | None = None,
        poll_s: float = 0.25,
        station: str = "",
        operator: str = "",
        trace: Any = None,
    ) -> None:
        if job.serial is not None and ledger is None:
            raise UsageError("serial numbers need a ledger")
        if job.serial is not None:
            probe = job.serial.encode(job.serial.first)
            check_serial_address(image, job.serial.address, len(probe))
        self.job = job
        self.image = image
        self.targets = targets
        self.events = events
        self.report = report
        self.connector = connector
        self.ledger = ledger
        self.stop = stop or threading.Event()
        self.poll_s = poll_s
        self.station = station or (ledger.station if ledger is not None else "")
        self.operator = operator
        self.trace = trace  # stmflash.trace.BatchTrace: each worker traces its own board
        self._count_lock = threading.Lock()
        self._boards_started = 0
        self._boards_finished = 0
        self.interrupted = False
        self.image_crc = f"0x{image.crc32():08X}"

    # ---- orchestration ---------------------------------------------------------------
    def run(self) -> RunReport:
        threads = [
            threading.Thread(target=self._worker, args=(t,), name=f"batch:{t.label}", daemon=True)
            for t in self.targets
        ]
        for th in threads:
            th.start()
        try:
            for th in threads:
                while th.is_alive():
                    th.join(0.2)
        except KeyboardInterrupt:
            self.interrupted = True
            self.stop.set()
            self.events.emit("warning", message="interrupted: finishing boards in progress")
            for th in threads:
                th.join(30)
        return self.report

    def _take_slot(self) -> bool:
        """Loop mode: claim one of ``max_boards`` (shared by all targets)."""
        with self._count_lock:
            if self.job.max_boards is not None and self._boards_started >= self.job.max_boards:
                return False
            self._boards_started += 1
            return True

    def _quota_reached(self) -> bool:
        with self._count_lock:
            return self.job.max_boards is not None and self._boards_started >= self.job.max_boards

    def _worker(self, target: Target) -> None:
        from stmflash import trace

        tracer = None
        if self.trace is not None:
            tracer = self.trace.board(target.label, max(len(t.label) for t in self.targets))
        with trace.for_thread(tracer):
            self._work(target)

    def _work(self, target: Target) -> None:
        try:
            if not self.job.loop:
                self.report.add(self.board(target).result)
                return
            self._station(target)
        except Exception as exc:  # a bug must not kill the run silently
            self.events.emit("error", target.label, message=f"internal error: {exc!r}")
            self.report.add(BoardResult(target.label, port=target.spec, result="failed",
                                        error=f"internal error: {exc!r}", exit_code=1))

    def _station(self, target: Target) -> None:
        """Wait for a board, program it, wait for it to go; repeat until stopped.

        "Present" means the port/device exists *and* a bootloader answers on it; "gone"
        means it stopped answering or a different chip (UID) answers. A board that comes
        back into its bootloader after the reset (BOOT0 still high) is therefore not
        programmed twice.
        """
        last_uid: str | None = None
        while not self.stop.is_set():
            self.events.emit("waiting", target.label, message="waiting for a board")
            if not self._wait(lambda: self._answering(target) is not None):
                return
            if not self._take_slot():
                return
            outcome = self.board(target, skip_uid=last_uid)
            if outcome.result.result == "skipped":
                with self._count_lock:
                    self._boards_started -= 1
            else:
                self.report.add(outcome.result)
                last_uid = outcome.uid or last_uid
                self.events.emit("remove", target.label, message="board done: remove it",
                                 passed=self.events.passed, failed=self.events.failed)
                with self._count_lock:
                    self._boards_finished += 1
                    if self.job.max_boards is not None and self._boards_finished >= self.job.max_boards:
                        self.stop.set()  # the quota is done: release the workers still waiting
                if self._quota_reached():
                    return
            self._wait(lambda u=last_uid: not self._still_there(target, u))

    def _answering(self, target: Target) -> str | None:
        """UID (or "?") of the chip answering on ``target`` now, None when nothing answers."""
        if not self.connector.present(target, self.job):
            return None
        probe = getattr(self.connector, "probe_uid", None)
        if probe is None:
            return "?"
        try:
            return probe(target, self.job)
        except Exception:  # noqa: BLE001 - whatever a probe hits, nothing usable answers
            return None

    def _still_there(self, target: Target, uid: str | None) -> bool:
        now = self._answering(target)
        if now is None:
            return False
        return now == "?" or uid is None or now == uid

    def _wait(self, cond: Callable[[], bool], timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.stop.is_set():
            try:
                if cond():
                    return True
            except StmflashError:
                pass
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self.stop.wait(self.poll_s)
        return False

    # ---- one board ---------------------------------------------------------------------
    def board(self, target: Target, *, skip_uid: str | None = None) -> BoardOutcome:
        job = self.job
        rep = self.events.reporter(target.label)
        res = BoardResult(target.label, port=target.spec, image_crc=self.image_crc, started=_now(),
                          station=self.station)
        t0 = time.monotonic()
        reservation = None
        stamp = datetime.datetime.now(datetime.timezone.utc)
        uid: str | None = None
        last_exc: StmflashError | None = None
        for attempt in range(1, job.retries + 2):
            res.attempts = attempt
            if attempt > 1:
                self.events.emit("attempt", target.label, attempt=attempt, error=str(last_exc))
            link = None
            attempt_started, attempt_t0 = _now(), time.monotonic()
            try:
                rep.phase("connect")
                link = self.connector.connect(target, job, rep)
                device = link.device
                res.device = device.short_name
                uid = link_uid(link)
                res.uid = uid or ""
                if skip_uid is not None and uid == skip_uid:
                    res.result = "skipped"
                    return BoardOutcome(res, uid)
                self._check_device(device)
                self._check_protection(device, link)
                image = self.image
                if job.serial is not None:
                    assert self.ledger is not None
                    fmt = job.serial.fmt
                    if reservation is None or (uid is not None and reservation.uid != uid):
                        if reservation is not None:
                            self.ledger.failed(reservation.n, "board changed during retries", uid=reservation.uid)
                        self._check_chip_serial(link, uid)
                        stamp = datetime.datetime.now(datetime.timezone.utc)  # one date for ledger and flash
                        reservation = self.ledger.reserve(
                            uid, target=target.label, serial_of=lambda n, u=uid, t=stamp, f=fmt: f.text(n, uid=u, now=t)
                        )
                    n = reservation.n
                    res.serial_number = n
                    res.serial = fmt.text(n, uid=uid, now=stamp)
                    image = merge_serial(image, job.serial.address, fmt.encode(n, uid=uid, now=stamp), device)
                    self.ledger.written(n)
                self.events.emit("identified", target.label, device=res.device, uid=uid, serial=res.serial or None,
                                 attempt=attempt)
                from stmflash.pipeline import program

                after = "stay" if (job.protect.any or job.writes_option_bytes) else job.after
                program(link, image, erase=job.erase, verify=job.verify, after=after, reporter=rep)
                if job.protect.any or job.writes_option_bytes:
                    res.protection = apply_protection(link, job, image, rep)
                    silent = job.protect.rdp == 2 or res.protection.endswith("+silent")
                    if job.after != "stay" and not silent:  # level 2: silent for good
                        # the ROM re-entered itself after the option change; Go is refused
                        # under RDP, so a reset (best effort) is how the board starts its app
                        rep.phase("reset")
                        _safe(link.reset)
                rep.close()
                res.result = "passed"
                res.error = ""
                res.exit_code = 0
                break
            except StmflashError as exc:
                last_exc = exc
                res.result = "failed"
                res.error = str(exc)
                res.exit_code = exc.exit_code
                if isinstance(exc, _FATAL) or self.stop.is_set():
                    break
            except Exception as exc:  # noqa: BLE001 - a driver error on one board must not stop the line
                last_exc = StmflashError(f"unexpected error on {target.label}: {exc!r}")
                res.result = "failed"
                res.error = str(last_exc)
                res.exit_code = 1
                if self.stop.is_set():
                    break
            finally:
                if link is not None:
                    _safe(lambda lk=link: self.connector.close(lk))
            if attempt <= job.retries:  # a failed attempt that will be retried: its own run row
                self._record(res, attempt_started, attempt_t0, rep.take_durations(), None)
        res.duration_s = time.monotonic() - t0
        res.finished = _now()
        outcome = None
        if reservation is not None:
            outcome = "done" if res.passed else "failed"
        self._record(res, attempt_started, attempt_t0, rep.take_durations(), outcome)
        fields = {k: v for k, v in res.to_dict().items() if k not in ("target",)}
        self.events.emit("board", target.label, **fields)
        return BoardOutcome(res, uid)

    def _record(self, res: BoardResult, started: str, t0: float, phases: dict[str, float],
                outcome: str | None) -> None:
        """The attempt's run row (and the number's outcome) in the ledger, in one transaction.

        If the ledger cannot take it (the database stayed down), the board is failed safe:
        it is not counted as passed, and its number stays reserved (interrupted), never reused.
        """
        if self.ledger is None:
            return
        rec = RunRecord(**{**res.to_dict(), "duration_s": round(time.monotonic() - t0, 3), "started": started,
                           "finished": _now()},
                        image=self.image.source or "", phases=phases, run=self.report.run_id, job=self.job.source,
                        operator=self.operator)
        try:
            self.ledger.record(rec, outcome)
        except (LedgerError, OSError) as exc:
            if outcome is None:
                return  # an intermediate attempt: the final row says how the board ended
            serial = f"; serial #{res.serial_number} stays reserved, never reused" if res.serial_number else ""
            res.result, res.exit_code = "failed", 1
            res.error = f"ledger write failed, board not counted: {exc}{serial}"

    def _check_chip_serial(self, link: Any, uid: str | None) -> None:
        """Refuse (for the rest of the run) a chip carrying a number the ledger never issued."""
        assert self.job.serial is not None and self.ledger is not None
        sc = self.job.serial
        length = sc.fmt.size or len(sc.fmt.encode(sc.first))
        try:
            held = sc.fmt.decode(bytes(link.read(sc.address, length)))
        except (ProtectionError, LinkError):
            return  # unreadable (RDP): the pipeline reports the protection on its own
        if held is not None:
            self.ledger.check_chip(held, uid)

    def _check_protection(self, device: Any, link: Any) -> None:
        """Refuse (before flashing) a protection this board's option-byte layout cannot encode."""
        req = self.job.ob_request
        if req is not None:  # the board's field table: exit 2 before flashing
            from stmflash.ob_ops import values_for

            values = values_for(device, req, rdp2_confirmed=self.job.rdp2_confirmed)
            reach = getattr(link, "check_ob_fields", None)  # DFU: fields outside its alt
            if reach is not None:
                reach(values)
        p = self.job.protect
        if self.job.option_bytes is not None:
            check = getattr(link, "check_option_bytes", None)
            if check is None:
                raise UsageError("writing option bytes is not supported over this link")
            check(self.job.option_bytes, confirm_permanent=self.job.rdp2_confirmed)
        if not (p.wrp or p.rdp == 2):
            return
        from stmflash import option_bytes as obl

        if p.rdp == 2:
            obl.set_rdp(device, obl.default_ob(device), 2)  # UsageError: unknown layout / no level 2
        if p.wrp:
            units = set(p.wrp_units or image_units(self.image, device))
            if self.job.serial is not None and not p.wrp_units:
                unit = device.unit_at(self.job.serial.address)
                units |= {unit.index} if unit is not None else set()
            obl.check_wrp_units(device, sorted(units))
            link_check = getattr(link, "check_protection", None)  # DFU: bank-2 units outside its alt
            if link_check is not None:
                link_check(sorted(units), 0)

    def _check_device(self, device: Any) -> None:
        want = self.job.device
        if not want:
            return
        from stmflash.devices import find

        try:
            expected = find(want)
        except KeyError as exc:
            raise UsageError(str(exc).strip("'\"")) from None
        if expected.pid != device.pid:
            raise UsageError(f"board is a {device.short_name}, the job expects {expected.short_name}")


class LinkConnector:
    """Reaches boards with the same code as ``stmflash uart`` / ``stmflash dfu``."""

    def __init__(self, *, timeout: float = 0.3, retries: int = 4) -> None:
        self.timeout = timeout
        self.retries = retries

    def connect(self, target: Target, job: JobConfig, reporter: Any) -> Any:
        if target.is_dfu:
            return self._connect_dfu(target, job)
        return _uart_connect(target, job, timeout=self.timeout, retries=self.retries)

    def _connect_dfu(self, target: Target, job: JobConfig) -> Any:
        from stmflash.dfu import link as dfu_link  # type: ignore[attr-defined]

        sel = target.spec
        kw: dict[str, Any] = {}
        if sel.startswith("path="):
            kw["path"] = sel[5:]
        elif sel.startswith("serial="):
            kw["serial"] = sel[7:]
        return dfu_link.connect(**kw)

    def close(self, link: Any) -> None:
        close = getattr(link, "close", None)
        if close is not None:
            close()

    def present(self, target: Target, job: JobConfig) -> bool:
        if target.is_dfu:
            from stmflash.dfu.usb import find_devices

            for dev in find_devices():
                path, serial = getattr(dev, "path", ""), getattr(dev, "serial", "")
                if target.spec == "*" or target.spec in (f"path={path}", f"serial={serial}"):
                    return True
            return False
        if "://" in target.spec:
            return True  # network/sim ports: presence is "answers", checked by connecting
        import os

        return os.path.exists(target.spec)

    def probe_uid(self, target: Target, job: JobConfig) -> str | None:
        """UID of whatever bootloader answers now ("?" when it hides it); LinkError: nothing."""
        if target.is_dfu:
            if not self.present(target, job):
                return None
            link = self._connect_dfu(target, job)
        else:
            link = _uart_connect(target, job, timeout=0.2, retries=1)
        try:
            return link_uid(link) or "?"
        finally:
            self.close(link)


def _uart_connect(target: Target, job: JobConfig, *, timeout: float, retries: int) -> Any:
    """``stmflash.uart.link.connect``, through a traced port when this thread traces."""
    from stmflash import trace
    from stmflash.uart.link import connect

    ser = None
    if trace.current() is not None:
        from stmflash.ports import open_port

        ser = trace.wrap(open_port(target.spec, baud=job.baud, parity=job.parity, timeout=timeout))
    return connect(target.spec, ser=ser, baud=job.baud, parity=job.parity, enter=job.entry,
                   invert=job.invert, timeout=timeout, retries=retries, log=None)


def _safe(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except (StmflashError, OSError):
        pass


__all__ = ["BatchRunner", "Connector", "LinkError", "apply_protection", "link_uid"]
