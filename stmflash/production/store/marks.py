"""A station's high-water mark: the highest serial a ledger ever gave this station.

Kept next to the station's reports (one small file per database id), raised right after
each allocation and fsynced. If the ledger is later replaced by an older copy (same
database id, fewer numbers), the mark names a number the ledger no longer has, and the
station refuses to start instead of handing that number out again.
"""

from __future__ import annotations

import fcntl
import json
import os


class HighWaterMark:
    def __init__(self, directory: str, db_id: str, where: str) -> None:
        self.directory = directory
        self.db_id = db_id
        self.where = where
        self.path = os.path.join(directory, f".ledger-{db_id[:16]}.mark")

    def read(self) -> int | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a torn mark is only weaker evidence, never a reason to reissue
        high = data.get("high") if isinstance(data, dict) else None
        return high if isinstance(high, int) and data.get("db_id") == self.db_id else None

    def raise_to(self, n: int) -> None:
        """Record ``n`` if it is above the mark (several processes may share the file)."""
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 4096, 0)
            try:
                old = json.loads(raw).get("high") if raw else None
            except (ValueError, AttributeError):
                old = None
            if isinstance(old, int) and old >= n:
                return
            data = json.dumps({"db_id": self.db_id, "ledger": self.where, "high": n}).encode() + b"\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
