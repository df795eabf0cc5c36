"""Per-run report files (CSV for the spreadsheet, JSON for the MES), one row per board.

Rewritten after every board so that a run killed halfway still leaves a report of the
boards it finished; the write goes through a temporary file and ``os.replace`` so a
reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

COLUMNS = (
    "target", "port", "attempts", "uid", "device", "image_crc", "serial", "serial_number",
    "duration_s", "result", "error", "exit_code", "protection", "started", "finished", "station",
)


@dataclass
class BoardResult:
    target: str
    port: str = ""
    attempts: int = 0
    uid: str = ""
    device: str = ""
    image_crc: str = ""
    serial: str = ""
    serial_number: int | None = None
    duration_s: float = 0.0
    result: str = "pending"  # "passed" | "failed"
    error: str = ""
    exit_code: int = 0
    protection: str = ""
    started: str = ""
    finished: str = ""
    station: str = ""

    @property
    def passed(self) -> bool:
        return self.result == "passed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunReport:
    """All boards of one ``stmflash batch`` run, and where the files go."""

    directory: str
    run_id: str
    image: str = ""
    image_crc: str = ""
    job: str = ""
    boards: list[BoardResult] = field(default_factory=list)
    interrupted_serials: list[dict[str, Any]] = field(default_factory=list)
    started: str = ""
    finished: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def csv_path(self) -> str:
        return os.path.join(self.directory, f"batch-{self.run_id}.csv")

    @property
    def json_path(self) -> str:
        return os.path.join(self.directory, f"batch-{self.run_id}.json")

    @property
    def passed(self) -> int:
        return sum(1 for b in self.boards if b.passed)

    @property
    def failed(self) -> int:
        return sum(1 for b in self.boards if not b.passed)

    def add(self, board: BoardResult) -> None:
        with self._lock:
            self.boards.append(board)
            self._write_locked()

    def write(self) -> None:
        with self._lock:
            self._write_locked()

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "job": self.job,
            "image": self.image,
            "image_crc": self.image_crc,
            "started": self.started,
            "finished": self.finished,
            "boards": len(self.boards),
            "passed": self.passed,
            "failed": self.failed,
            "interrupted_serials": self.interrupted_serials,
            "results": [b.to_dict() for b in self.boards],
        }

    def _write_locked(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for b in self.boards:
            row = b.to_dict()
            row["serial_number"] = "" if row["serial_number"] is None else row["serial_number"]
            row["duration_s"] = f"{b.duration_s:.3f}"
            w.writerow({k: row[k] for k in COLUMNS})
        _atomic_write(self.csv_path, buf.getvalue())
        _atomic_write(self.json_path, json.dumps(self.to_dict(), indent=2) + "\n")


def _now_iso() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
