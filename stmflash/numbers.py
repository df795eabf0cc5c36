"""How every address, size and range on the command line (and in job files) is spelled.

One parser for all of them, so that ``--address``, ``--range``, ``image merge f.bin@ADDR``,
``image stamp --at``, ``batch --serial-address`` and the job file accept the same forms and
refuse the same mistakes with one line (a :class:`~stmflash.errors.UsageError`, exit 2):

- ``0x08000000`` (hex), ``0b1010`` (binary), ``134217728`` (decimal), ``_`` between digits;
- a ``K`` or ``M`` suffix (binary multiples, an optional ``B``/``iB``): ``16K``, ``1M``;
- a decimal number with a leading zero (``08000000``, ``007``) is **refused**: people type
  ``08000000`` meaning 0x08000000, C and Python 2 read ``010`` as octal 8, and decimal would
  make it 8000000. A flasher must not guess an address, so the message shows both readings.

Import-light on purpose (used while click builds ``--help``).
"""

from __future__ import annotations

import re

_NUM_RE = re.compile(
    r"^\s*(?P<num>0[xX](?:_?[0-9a-fA-F])+|0[bB](?:_?[01])+|\d(?:_?\d)*)\s*(?P<mult>[kKmM]?)(?:[iI]?[bB])?\s*$"
)
_MULT = {"": 1, "K": 1024, "M": 1024 * 1024}

NUMBER_HELP = (
    "Numbers: 0x08000000 (hex), 4096 (decimal), 16K/1M (x1024); a leading zero (08000000) is "
    "refused as ambiguous: write 0x08000000."
)


def _usage(msg: str) -> Exception:
    from stmflash.errors import UsageError

    return UsageError(msg)


def parse_int(text: str | int, what: str = "number") -> int:
    """``0x08000000``, ``4096``, ``16K``, ``1M`` -> int; anything else is a UsageError naming ``what``."""
    if isinstance(text, bool):
        raise _usage(f"bad {what} {text!r} (e.g. 0x08000000, 4096, 16K)")
    if isinstance(text, int):
        return text
    m = _NUM_RE.match(str(text))
    if not m:
        raise _usage(f"bad {what} {text!r} (e.g. 0x08000000, 4096, 16K)")
    num = m.group("num")
    digits = num.replace("_", "")
    if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
        hexed = f"0x{digits}"
        raise _usage(
            f"bad {what} {text!r}: a leading zero is ambiguous; write {hexed} for hex "
            f"or {int(digits, 10)} for decimal"
        )
    return int(digits, 0) * _MULT[m.group("mult").upper()]


def parse_range(text: str, default_start: int | None = None) -> tuple[int, int]:
    """``START:LENGTH``, ``START+LENGTH`` or ``START..END`` (END exclusive) -> (start, length)."""
    t = text.strip()
    for sep in ("..", ":", "+"):
        if sep in t:
            a, b = t.split(sep, 1)
            start = parse_int(a, "start address") if a.strip() else default_start
            if start is None:
                raise _usage(f"range {text!r} needs a start address")
            if sep == "..":
                end = parse_int(b, "end address")
                if end <= start:
                    raise _usage(f"range {text!r} is empty (end must be above start)")
                return start, end - start
            length = parse_int(b, "length")
            if length <= 0:
                raise _usage(f"range {text!r} has no length")
            return start, length
    raise _usage(f"bad range {text!r} (use START:LENGTH, START+LENGTH or START..END)")


def check_u32(value: int, what: str) -> int:
    """An address must fit the 32-bit address space."""
    if not 0 <= value <= 0xFFFFFFFF:
        raise _usage(f"{what} 0x{value:X} is outside the 32-bit address space")
    return value


__all__ = ["NUMBER_HELP", "check_u32", "parse_int", "parse_range"]
