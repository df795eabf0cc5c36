"""What every ledger engine shares: the records, the errors, and the rules.

A serial number goes through ``reserved`` (durably, before it is merged into an image)
-> ``written`` (the image holding it is being written to a chip) -> ``done`` (verified)
or ``failed`` (the board failed; the chip keeps its number for a retry). A reservation
whose owner is gone (process killed, station's database connection dropped) reads as
``interrupted``: kept aside, never handed to another chip; only the same chip (by its
96-bit UID) gets it back. ``void`` numbers are retired by hand and never issued again.

The rules live here once; :mod:`.sql` holds the one SQL implementation (with the
consistency and going-backwards checks of :mod:`.audit`) and the engine modules
(:mod:`.sqlite`, :mod:`.postgres`) only say how to connect, lock and tell whether an owner
is alive.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from stmflash.errors import EXIT_NO_ANSWER, StmflashError, UsageError
from stmflash.production.report import BoardResult

#: states stored in the ``serials`` table (``interrupted`` is also derived, see above)
STATES = ("reserved", "written", "done", "failed", "interrupted", "void")


class LedgerError(StmflashError):
    """The ledger cannot give out a number (range exhausted, chip busy elsewhere)."""


class LedgerUnavailable(LedgerError):
    """The database cannot be reached (after reconnecting with backoff)."""

    exit_code = EXIT_NO_ANSWER


class LedgerRefused(UsageError):
    """The ledger is damaged or went backwards: refused before any board is touched (exit 2)."""


@dataclass
class Entry:
    """The state of one serial number as seen now."""

    n: int
    uid: str | None
    status: str
    serial: str = ""
    station: str = ""
    target: str = ""
    run: str = ""
    error: str = ""
    reason: str = ""
    source: str = ""
    created: str = ""
    updated: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Reservation:
    n: int
    uid: str | None
    reclaimed: bool  # True when the chip got back the number it already had


#: run-record columns, in report order (the per-run CSV and ``ledger export`` share them)
RUN_COLUMNS = (
    "target", "port", "attempts", "uid", "device", "image", "image_crc", "serial", "serial_number",
    "duration_s", "phases", "result", "error", "exit_code", "protection", "station", "run", "job",
    "operator", "started", "finished",
)


@dataclass
class RunRecord(BoardResult):
    """One board, one attempt: the report's row plus what the line's MES asks about."""

    image: str = ""
    phases: dict[str, float] = field(default_factory=dict)
    run: str = ""
    job: str = ""
    operator: str = ""
    rid: str = field(default_factory=lambda: uuid.uuid4().hex)  # idempotent insert key

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("rid")
        return d


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
