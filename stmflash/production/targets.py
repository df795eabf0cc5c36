"""Turn the operator's target arguments into one concrete target per worker.

A target is named the way the operator sees the station: a port path, a glob of ports,
a pyserial URL (``rfc2217://host:port`` for a network serial server, ``sim://...``) or a
DFU selector (``dfu:SERIAL``, ``dfu:path=1-1.2``, ``dfu:*``). Globs and ``dfu:*`` are
expanded once, at start, so that each worker owns one fixed slot of the fixture.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from typing import Any

from stmflash.errors import UsageError

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Target:
    kind: str  # "uart" | "dfu"
    spec: str  # port path/URL for uart; selector for dfu ("serial=...", "path=...", "")
    label: str  # what reports and the live view show

    @property
    def is_dfu(self) -> bool:
        return self.kind == "dfu"


def _dfu_devices() -> list[Any]:
    from stmflash.dfu.usb import find_devices  # imported late: pyusb is heavy

    return list(find_devices())


def _dfu_key(dev: Any) -> tuple[str, str]:
    """(selector, label) for a found DFU device: by port path when known, else serial."""
    path = getattr(dev, "path", None) or getattr(dev, "port_path", None)
    serial = getattr(dev, "serial", None) or getattr(dev, "serial_number", None)
    if path:
        return f"path={path}", f"dfu:path={path}"
    if serial:
        return f"serial={serial}", f"dfu:{serial}"
    raise UsageError(f"DFU device {dev!r} has neither a port path nor a serial number")


def parse_dfu(spec: str) -> tuple[str, str]:
    """``dfu:X`` -> (selector, label); selector is ``serial=X``, ``path=P`` or ``*``."""
    rest = spec[4:]
    if rest in ("", "*"):
        return "*", "dfu:*"
    if rest.startswith("path="):
        if not rest[5:]:
            raise UsageError(f"target {spec!r}: empty USB port path")
        return rest, spec
    if rest.startswith("serial="):
        rest = rest[7:]
    if not rest:
        raise UsageError(f"target {spec!r}: empty DFU serial number")
    return f"serial={rest}", f"dfu:{rest}"


def expand_targets(specs: list[str] | tuple[str, ...], *, loop: bool = False) -> list[Target]:
    """Concrete targets, de-duplicated, in the order given (globs sorted).

    Raises UsageError when nothing is given or a pattern matches nothing (outside loop
    mode, where a literal port may legitimately not exist yet).
    """
    if not specs:
        raise UsageError("no targets: give ports, URLs or dfu: selectors (or targets = [...] in the job file)")
    out: list[Target] = []
    seen: set[tuple[str, str]] = set()

    def add(t: Target) -> None:
        key = (t.kind, t.spec)
        if key not in seen:
            seen.add(key)
            out.append(t)

    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        if spec.lower().startswith("dfu:"):
            selector, label = parse_dfu(spec)
            if selector == "*":
                devices = _dfu_devices()
                if not devices and not loop:
                    raise UsageError("target dfu:*: no DFU device found")
                for dev in devices:
                    sel, lab = _dfu_key(dev)
                    add(Target("dfu", sel, lab))
                if not devices:
                    add(Target("dfu", "*", "dfu:*"))
            else:
                add(Target("dfu", selector, label))
        elif "://" in spec:
            add(Target("uart", spec, spec))
        elif _GLOB_CHARS & set(spec):
            matches = sorted(glob.glob(spec))
            if not matches:
                raise UsageError(f"target {spec}: no serial port matches")
            for m in matches:
                add(Target("uart", m, m))
        else:
            add(Target("uart", spec, spec))
    if not out:
        raise UsageError("no targets")
    return out
