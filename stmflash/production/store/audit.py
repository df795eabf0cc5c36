"""Consistency and going-backwards checks over a ledger (mixed into the SQL store).

``check`` is what ``stmflash ledger check`` prints; ``guard`` runs when a batch starts and
refuses a ledger behind this station's evidence; ``check_chip`` runs when a chip arrives
already carrying a serial. They only read the ledger (through the store's public reads)
and, once a chip has proved the ledger went backwards, stop it from issuing numbers.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

from stmflash.production.store.base import LedgerRefused


class Audits:
    """Needs ``entry()``, ``entries()``, ``runs()``, ``gaps()``, ``next_number()``, ``first``/``last``,
    ``where``, ``db_id`` and the ``_refusal``/``_mark`` slots of the store."""

    first: int
    last: int | None
    where: str
    db_id: str
    _refusal: LedgerRefused | None
    _mark: Any

    def check(self) -> list[str]:
        """Consistency problems (empty when all is well): see ``stmflash ledger check``."""
        entries = self.entries()
        runs = self.runs()
        problems: list[str] = []
        passed: dict[int, set[str]] = {}
        for r in runs:
            if r["serial_number"] is not None and r["result"] == "passed":
                passed.setdefault(int(r["serial_number"]), set()).add(r["uid"])
        by_n = {e.n: e for e in entries}
        for e in entries:
            if e.status == "done" and e.n not in passed and not e.source.startswith("import"):
                problems.append(f"serial #{e.n} is done but has no passed run row")
        for n, uids in sorted(passed.items()):
            if len(uids) > 1:
                problems.append(f"serial #{n} passed on {len(uids)} different chips: {', '.join(sorted(uids))}")
            e = by_n.get(n)
            if e is None:
                problems.append(f"serial #{n} is in the run table but not in the ledger (it went backwards)")
            elif e.uid and uids - {e.uid, ""}:
                problems.append(f"serial #{n} belongs to chip {e.uid} but passed on {', '.join(sorted(uids - {e.uid}))}")
        seen_uid: dict[str, int] = {}
        for e in entries:
            if e.uid and e.status != "void":
                if e.uid in seen_uid:
                    problems.append(f"chip {e.uid} holds two numbers: #{seen_uid[e.uid]} and #{e.n}")
                seen_uid[e.uid] = e.n
        if entries:
            covered = set(by_n)
            for lo, hi, _reason in self.gaps():
                covered.update(range(lo, hi + 1))
            lo = min(by_n)
            nxt = self.next_number()
            missing = [n for n in range(lo, max(nxt, max(by_n) + 1)) if n not in covered and n < nxt]
            if missing:
                problems.append(f"{len(missing)} number(s) missing without a reason: "
                                + ", ".join(f"#{n}" for n in missing[:10]) + (" ..." if len(missing) > 10 else ""))
            issued = [n for n, e in by_n.items() if e.source != "void"]
            if issued and nxt <= max(issued):
                problems.append(f"the pool's next number #{nxt} is not above every issued number")
        return problems

    # ---- going backwards -------------------------------------------------------------------
    def guard(self, evidence_dir: str) -> None:
        """Refuse a ledger that is behind what this station recorded; keep recording from now on.

        Evidence: the run reports in ``evidence_dir`` (every serial in them must be in the
        ledger, for the same chip) and this station's high-water mark for this database
        (the highest number it was ever given, written right after each allocation).
        """
        from stmflash.production.store.marks import HighWaterMark

        entries = {e.n: e for e in self.entries()}
        missing: list[str] = []
        for path in sorted(glob.glob(os.path.join(glob.escape(evidence_dir), "batch-*.json"))):
            try:
                with open(path, encoding="utf-8") as fh:
                    results = json.load(fh).get("results", [])
            except (OSError, ValueError, AttributeError):
                continue  # not ours to judge here; the report is rewritten by its own run
            for r in results if isinstance(results, list) else []:
                n = r.get("serial_number") if isinstance(r, dict) else None
                if not isinstance(n, int):
                    continue
                e = entries.get(n)
                if e is None or (e.uid and r.get("uid") and e.uid != r.get("uid") and e.status != "void"):
                    missing.append(f"#{n} (chip {r.get('uid') or '?'}, {os.path.basename(path)})")
        mark = HighWaterMark(evidence_dir, self.db_id, self.where)
        high = mark.read()
        if high is not None and high not in entries:
            missing.append(f"#{high} (this station's high-water mark {mark.path})")
        if missing:
            raise LedgerRefused(
                f"ledger {self.where} went backwards: {len(missing)} serial number(s) were issued but are "
                f"not in it: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; it is an older copy "
                "or a new database. Restore the newest copy, or retire each number by hand with "
                "'stmflash ledger void N --reason ...' (README: Serial-number ledger)")
        self._mark = mark

    def check_chip(self, n: int, uid: str | None) -> None:
        """A chip arrived holding serial ``n``: refuse (for the rest of the run) if the ledger
        never issued it — the ledger is behind what is out in the world."""
        if self.entry(n) is not None or n < self.first or (self.last is not None and n > self.last):
            return
        if n < self.next_number():
            gaps = self.gaps()
            if any(lo <= n <= hi for lo, hi, _ in gaps):
                return
        self._refusal = LedgerRefused(
            f"ledger {self.where} went backwards: chip {uid or '?'} already holds serial #{n}, which the ledger "
            "never issued (an older copy or another database); no more numbers are issued from it. Restore the "
            f"newest copy, or retire the number with 'stmflash ledger void {n} --reason ...'")
        raise self._refusal

