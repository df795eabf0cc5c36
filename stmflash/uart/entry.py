"""How the chip gets into its ROM bootloader before we sync: strategies, chained.

``--enter`` takes a comma-separated chain tried in order until one syncs, e.g.
``pins:rts,dtr,-dtr:-rts,dtr,-dtr,none``. A ``pins:`` sequence uses stm32flash's ``-i``
grammar so existing wiring notes carry over:

* ``entry[:exit]``; the exit sequence runs when the session ends (e.g. BOOT0 low + reset);
* signals ``dtr``, ``rts``, ``brk``; a leading ``-`` drives the line low (de-asserted:
  pyserial ``dtr=False``), without it the line is asserted;
* ``,`` waits 100 ms after a step (repeat it for longer), ``&`` goes on at once.

A ``*N`` suffix tries one strategy N times before the chain falls back:
``pins:rts,-rts*3,none``.

Adapters differ in how DTR/RTS reach NRST/BOOT0 (inverting transistors or not), so
``--invert dtr`` / ``--invert rts`` flips a line everywhere in the sequence instead of
making users rewrite it. The chain grammar and the registry every link uses (``command``,
``1200`` and ``detach`` live in :mod:`stmflash.trigger.host`) are :mod:`stmflash.enter`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stmflash import enter as _registry
from stmflash.enter import MAX_REPEAT, EntryStrategy, NoEntry, split_repeat  # noqa: F401  (re-exported)
from stmflash.errors import UsageError

SIGNALS = ("dtr", "rts", "brk")
STEP_DELAY_S = 0.1


@dataclass
class Step:
    signal: str  # dtr | rts | brk
    level: bool  # True = asserted
    delay_s: float = 0.0  # wait after this step


def _apply(ser: Any, step: Step, invert: frozenset[str]) -> None:
    from stmflash.errors import LinkError

    level = step.level != (step.signal in invert)
    try:
        if step.signal == "dtr":
            ser.dtr = level
        elif step.signal == "rts":
            ser.rts = level
        else:
            ser.break_condition = level
    except Exception as exc:  # OSError ENOTTY on a pty, SerialException on a URL port
        name = getattr(ser, "name", None) or getattr(ser, "port", "the port")
        raise LinkError(f"cannot drive {step.signal.upper()} on {name}: {exc}") from None


def parse_sequence(text: str) -> list[Step]:
    """One stm32flash ``-i`` half (entry or exit) into steps."""
    steps: list[Step] = []
    i, n = 0, len(text)
    token = ""
    while i <= n:
        ch = text[i] if i < n else None
        if ch in (",", "&", None):
            tok = token.strip().lower()
            if tok:
                level = not tok.startswith("-")
                sig = tok.lstrip("-")
                if sig not in SIGNALS:
                    if sig.isdigit():
                        raise UsageError(
                            f"GPIO {sig} in pin sequence {text!r}: only dtr, rts and brk are supported"
                        )
                    raise UsageError(f"unknown signal {sig!r} in pin sequence {text!r} (use dtr, rts, brk)")
                steps.append(Step(sig, level))
            if ch == ",":
                if steps:
                    steps[-1].delay_s += STEP_DELAY_S
                else:
                    steps.append(Step("wait", False, STEP_DELAY_S))
            token = ""
        else:
            token += ch
        i += 1
    return steps


@dataclass
class PinsEntry(EntryStrategy):
    """Drive BOOT0/NRST through DTR/RTS/break with an stm32flash-style sequence."""

    entry: list[Step] = field(default_factory=list)
    exit_steps: list[Step] = field(default_factory=list)
    invert: frozenset[str] = frozenset()
    spec: str = ""
    name: str = "pins"
    settle_s: float = 0.05

    @classmethod
    def parse(cls, spec: str, invert: Iterable[str] = ()) -> PinsEntry:
        inv = frozenset(s.lower() for s in invert)
        bad = inv - {"dtr", "rts"}
        if bad:
            raise UsageError(f"--invert takes dtr or rts, not {', '.join(sorted(bad))}")
        entry_text, _, exit_text = spec.partition(":")
        entry = parse_sequence(entry_text)
        if not entry:
            raise UsageError(f"empty pin sequence in 'pins:{spec}'")
        return cls(entry, parse_sequence(exit_text), inv, spec)

    def _run(self, ser: Any, steps: Sequence[Step]) -> None:
        for step in steps:
            if step.signal != "wait":
                _apply(ser, step, self.invert)
            if step.delay_s:
                time.sleep(step.delay_s)

    def enter(self, ser: Any) -> None:
        self._run(ser, self.entry)

    def exit(self, ser: Any) -> None:
        self._run(ser, self.exit_steps)

    def can_reset(self) -> bool:
        return bool(self.exit_steps)

    def reset(self, ser: Any) -> None:
        self._run(ser, self.exit_steps)

    def describe(self) -> str:
        inv = f" (inverted: {', '.join(sorted(self.invert))})" if self.invert else ""
        return f"pins:{self.spec}{inv}"


StrategyFactory = Callable[[str, frozenset[str]], EntryStrategy]
#: the serial strategies of the one registry (stmflash.enter), by name
_FACTORIES = _registry.SERIAL


def register_strategy(name: str, factory: StrategyFactory) -> None:
    """Add a serial strategy usable in ``--enter NAME[:ARG]`` (see :mod:`stmflash.enter`)."""
    _registry.register(name, serial=factory)


def parse_entry(spec: str | None, invert: Iterable[str] = ()) -> list[EntryStrategy]:
    """``--enter`` text into the chain of strategies to try, in order."""
    inv = frozenset(s.lower() for s in invert)
    bad = inv - {"dtr", "rts"}
    if bad:
        raise UsageError(f"--invert takes dtr or rts, not {', '.join(sorted(bad))}")
    return _registry.serial_chain(spec, inv)


_registry.register("pins", serial=lambda arg, inv: PinsEntry.parse(arg, inv))
