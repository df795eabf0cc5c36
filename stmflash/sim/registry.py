"""In-process named virtual chips, so a test can reach the chip behind a ``sim://`` URL.

``sim://F407?chip=a`` uses the chip registered as ``a`` (creating and registering it on
first use), so the test that opened the port — or the code under test that opened it —
and the test's assertions see the same :class:`~stmflash.sim.chip.VirtualChip`.
"""

from __future__ import annotations

import threading

from stmflash.sim.chip import VirtualChip

_lock = threading.Lock()
_chips: dict[str, VirtualChip] = {}


def register(name: str, chip: VirtualChip) -> VirtualChip:
    """Make ``chip`` reachable as ``sim://...?chip=name`` (replaces an older one)."""
    with _lock:
        _chips[name] = chip
    return chip


def get(name: str) -> VirtualChip | None:
    with _lock:
        return _chips.get(name)


def unregister(name: str) -> None:
    with _lock:
        _chips.pop(name, None)


def clear() -> None:
    with _lock:
        _chips.clear()


def names() -> list[str]:
    with _lock:
        return sorted(_chips)
