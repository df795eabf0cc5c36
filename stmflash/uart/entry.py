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
making users rewrite it. Other strategies (the trigger helper's ``command:...`` and
``1200``) register themselves with :func:`register_strategy`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stmflash.errors import UsageError

SIGNALS = ("dtr", "rts", "brk")
STEP_DELAY_S = 0.1


class EntryStrategy:
    """One way into the bootloader. ``enter`` acts on the open port; the caller then syncs."""

    name = "none"
    #: seconds to wait after ``enter`` before the first 0x7F (ROM start-up)
    settle_s = 0.0

    def enter(self, ser: Any) -> None:
        """Put the chip into its bootloader (nothing: it is assumed to be there)."""

    def exit(self, ser: Any) -> None:
        """Undo/finish at the end of the session (e.g. BOOT0 low + reset)."""

    def can_reset(self) -> bool:
        return False

    def reset(self, ser: Any) -> None:
        raise UsageError(f"entry strategy {self.name!r} cannot reset the chip")

    def describe(self) -> str:
        return self.name


class NoEntry(EntryStrategy):
    """The chip is already in its bootloader (BOOT0 strap, jumper, or a previous session)."""


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
_FACTORIES: dict[str, StrategyFactory] = {
    "none": lambda arg, inv: NoEntry(),
    "pins": lambda arg, inv: PinsEntry.parse(arg, inv),
}


def register_strategy(name: str, factory: StrategyFactory) -> None:
    """Add a strategy (``command``, ``1200``...) usable in ``--enter NAME[:ARG]``."""
    _FACTORIES[name] = factory


_plugins_loaded = False


def _load_plugins() -> None:
    """Strategies living elsewhere (``command``, ``1200``, ``detach``) register on import."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import importlib

    try:
        importlib.import_module("stmflash.trigger.host")
    except ImportError:
        pass


MAX_REPEAT = 20


def split_repeat(item: str) -> tuple[str, int]:
    """``"pins:rts,-rts*3"`` -> (``"pins:rts,-rts"``, 3): a strategy tried N times before the
    chain falls back (auto-baud misses and slow resets are often cured by trying again)."""
    text = item.rstrip()
    head, star, count = text.rpartition("*")
    if not star or not count.isdigit():
        return item, 1
    n = int(count)
    if not 1 <= n <= MAX_REPEAT:
        raise UsageError(f"--enter {item!r}: repeat count must be 1..{MAX_REPEAT}")
    return head, n


def _is_head(token: str) -> bool:
    token = split_repeat(token)[0]
    name = token.split(":", 1)[0].strip().lower()
    return name in _FACTORIES and (":" in token or token.strip().lower() == name)


def parse_entry(spec: str | None, invert: Iterable[str] = ()) -> list[EntryStrategy]:
    """``--enter`` text into the chain of strategies to try, in order."""
    if not spec:
        return [NoEntry()]
    inv = frozenset(s.lower() for s in invert)
    _load_plugins()
    parts = spec.split(",")
    groups: list[str] = []
    for part in parts:
        if not groups or _is_head(part):
            groups.append(part)
        else:
            groups[-1] += "," + part
    chain: list[EntryStrategy] = []
    for group in groups:
        g, times = split_repeat(group)
        name, _, arg = g.partition(":")
        key = name.strip().lower()
        if key not in _FACTORIES:
            _load_plugins()
        if key not in _FACTORIES:
            raise UsageError(
                f"unknown --enter strategy {name!r} (known: {', '.join(sorted(_FACTORIES))})"
            )
        chain.extend([_FACTORIES[key](arg, inv)] * times)
    return chain


# The pin-less strategies (command, 1200, detach) live with the trigger and register here.
from stmflash.trigger import host as _trigger_host  # noqa: E402,F401
