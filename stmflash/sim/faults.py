"""Seeded fault injection for the virtual STM32: the link and chip misbehaviours seen in
the field, reproducible from a short spec string.

Spec grammar (comma separated, as in ``--fault`` or the ``fault=`` URL option)::

    drop=P            drop each byte (both directions) with probability P
    corrupt=P         flip one random bit of each byte with probability P
    nack=P            answer a command with a spurious NACK with probability P
    silent            the chip never answers (wrong port, no power, BOOT0 low...)
    autobaud_fail=N   the first N 0x7F sync bytes go unanswered (software auto-baud miss)
    stray_zero        send a 0x00 before the first ACK after each reset (seen with adapters)
    double_nack       under RDP level 1, refuse Read/Write/Go... with two NACKs (AN2606
                      known limitation of some parts)
    power_loss=after:N   lose power once N bytes have been programmed into flash: the
                         write in progress is left partly done and the chip stays dead
                         until powered on again (reopen / restart)

The same seed gives the same faults, so a failing test can be replayed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from stmflash.errors import UsageError


@dataclass
class FaultPlan:
    drop: float = 0.0
    corrupt: float = 0.0
    nack: float = 0.0
    silent: bool = False
    autobaud_fail: int = 0
    stray_zero: bool = False
    double_nack: bool = False
    power_loss_after: int | None = None
    seed: int = 0
    rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @classmethod
    def parse(cls, spec: str | None, *, seed: int = 0) -> FaultPlan:
        """Parse a spec string (see module doc); an empty spec means no faults."""
        plan = cls(seed=seed)
        if not spec:
            return plan
        for raw in spec.split(","):
            item = raw.strip()
            if not item:
                continue
            key, _, value = item.partition("=")
            key = key.strip().replace("-", "_")
            value = value.strip()
            try:
                if key in ("drop", "corrupt", "nack"):
                    p = float(value)
                    if not 0.0 <= p <= 1.0:
                        raise ValueError
                    setattr(plan, key, p)
                elif key in ("silent", "stray_zero", "double_nack"):
                    setattr(plan, key, value.lower() not in ("0", "false", "no", "off"))
                elif key == "autobaud_fail":
                    plan.autobaud_fail = int(value) if value else 1
                    if plan.autobaud_fail < 0:
                        raise ValueError
                elif key == "power_loss":
                    what, _, n = value.partition(":")
                    if what != "after" or not n:
                        raise ValueError
                    plan.power_loss_after = int(n, 0)
                else:
                    raise UsageError(
                        f"unknown fault {key!r} in {spec!r} (known: drop, corrupt, nack, silent, "
                        "autobaud_fail, stray_zero, double_nack, power_loss)"
                    )
            except ValueError:
                raise UsageError(f"bad fault value {item!r} in {spec!r}") from None
        return plan

    @property
    def any(self) -> bool:
        return bool(
            self.drop or self.corrupt or self.nack or self.silent or self.autobaud_fail
            or self.stray_zero or self.double_nack or self.power_loss_after is not None
        )

    # ---- per-byte decisions (seeded) ---------------------------------------------------
    def mangle(self, data: bytes) -> bytes:
        """Apply drop/corrupt to bytes crossing the wire."""
        if not (self.drop or self.corrupt):
            return data
        out = bytearray()
        for b in data:
            if self.drop and self.rng.random() < self.drop:
                continue
            if self.corrupt and self.rng.random() < self.corrupt:
                b ^= 1 << self.rng.randrange(8)
            out.append(b)
        return bytes(out)

    def spurious_nack(self) -> bool:
        return bool(self.nack) and self.rng.random() < self.nack
