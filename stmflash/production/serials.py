"""Serial-number formats and their injection into the image before flashing.

The serial is merged into the image (not written afterwards) so that it is erased,
written and verified with everything else: a board that passes carries exactly the
number the ledger recorded. It may only land where the image has no data (a gap or an
all-0xFF span), so a mistyped address cannot silently overwrite code.
"""

from __future__ import annotations

import datetime as _dt
import re
import string
from dataclasses import dataclass
from typing import Any

from stmflash.errors import UsageError
from stmflash.image.model import Image

KINDS = ("u32", "u64", "ascii", "template")
_TEMPLATE_FIELDS = {"n", "year", "yy", "month", "day", "uid", "date"}


@dataclass(frozen=True)
class SerialFormat:
    """How a number becomes bytes.

    - ``u32``/``u64``: little-endian integer (the number itself);
    - ``ascii``: ``prefix`` + number zero-padded to ``width`` digits;
    - ``template``: Python format string with ``{n}``, ``{year}``, ``{yy}``, ``{month}``,
      ``{day}``, ``{date}`` (YYYYMMDD) and ``{uid}``, e.g. ``"SN-{year}{n:06d}"``.

    Text serials are padded with NUL bytes to ``size`` when given (a fixed-size field
    in the firmware), else followed by one NUL when ``nul`` is set.
    """

    kind: str = "u32"
    prefix: str = ""
    width: int = 0
    template: str = ""
    size: int | None = None
    nul: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"serial format {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.width < 0 or (self.size is not None and self.size <= 0):
            raise UsageError("serial width/size must be positive")
        if self.width > (self.size if self.size is not None else MAX_TEXT):
            raise UsageError(f"serial width {self.width} is wider than the serial's "
                             f"{self.size if self.size is not None else MAX_TEXT} bytes")
        if self.kind == "template":
            if not self.template:
                raise UsageError("serial format 'template' needs serial.template")
            _check_template(self.template, self.size)
            try:
                self.text(1, uid="0" * 24)
            except (ValueError, IndexError, KeyError) as exc:
                raise UsageError(f"serial.template {self.template!r}: {exc}") from exc

    @property
    def max_number(self) -> int | None:
        if self.kind == "u32":
            return 0xFFFFFFFF
        if self.kind == "u64":
            return 0xFFFFFFFFFFFFFFFF
        return None

    def text(self, n: int, *, uid: str | None = None, now: _dt.datetime | None = None) -> str:
        """Human form recorded in the ledger and the report."""
        if self.kind in ("u32", "u64"):
            return str(n)
        if self.kind == "ascii":
            return f"{self.prefix}{n:0{self.width}d}" if self.width else f"{self.prefix}{n}"
        now = now or _dt.datetime.now(_dt.timezone.utc)
        return self.template.format(
            n=n,
            year=now.year,
            yy=now.year % 100,
            month=now.month,
            day=now.day,
            date=now.strftime("%Y%m%d"),
            uid=uid or "",
        )

    def encode(self, n: int, *, uid: str | None = None, now: _dt.datetime | None = None) -> bytes:
        """Bytes written to flash."""
        if self.kind in ("u32", "u64"):
            bits = 32 if self.kind == "u32" else 64
            if not 0 <= n < 1 << bits:
                raise UsageError(f"serial number {n} does not fit in {self.kind}")
            return n.to_bytes(bits // 8, "little")
        data = self.text(n, uid=uid, now=now).encode("ascii", errors="strict")
        if self.size is not None:
            if len(data) > self.size:
                raise UsageError(f"serial {data.decode()!r} is longer than serial.size={self.size}")
            return data + b"\0" * (self.size - len(data))
        return data + (b"\0" if self.nul else b"")

    def decode(self, data: bytes) -> int | None:
        """The number a chip's serial field already holds; None when it holds none.

        Used to notice a ledger that went backwards (a chip arrives carrying a number the
        ledger never issued). Erased (0xFF) or zeroed fields hold no number.
        """
        if not data or data.count(0xFF) == len(data) or data.count(0) == len(data):
            return None
        if self.kind in ("u32", "u64"):
            return int.from_bytes(data, "little")
        try:
            text = data.split(b"\0", 1)[0].rstrip(b"\xff").decode("ascii")
        except UnicodeDecodeError:
            return None
        if self.kind == "ascii":
            digits = text[len(self.prefix):] if text.startswith(self.prefix) else ""
            return int(digits) if digits.isdigit() else None
        pattern, seen_n = "", False
        for lit, name, spec, _conv in string.Formatter().parse(self.template):
            pattern += re.escape(lit)
            if name is None:
                continue
            width = re.match(r"0?(\d+)", spec or "")
            if name == "uid":
                field = "[0-9A-Fa-f]*"
            elif name in ("year", "date"):
                field = r"\d{4}" if name == "year" else r"\d{8}"
            elif name == "n":
                field = rf"\d{{{width.group(1)},}}" if width else r"\d+"
            else:  # yy, month, day
                field = rf"\d{{{width.group(1)}}}" if width else r"\d{1,2}"
            if name == "n" and not seen_n:
                pattern, seen_n = pattern + f"(?P<n>{field})", True
            else:
                pattern += f"(?:{field})"
        m = re.fullmatch(pattern, text) if seen_n else None
        return int(m.group("n")) if m else None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SerialFormat:
        return cls(
            kind=str(d.get("format", "u32")),
            prefix=str(d.get("prefix", "")),
            width=int(d.get("width", 0)),
            template=str(d.get("template", "")),
            size=int(d["size"]) if d.get("size") is not None else None,
            nul=bool(d.get("nul", False)),
        )


_WIDTH_RE = re.compile(r"^(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)")
MAX_TEXT = 256  # a serial-number field in flash; bounds a template's width without --serial-size


def _check_template(template: str, size: int | None) -> None:
    """Refuse a template that cannot be parsed, names unknown fields, nests fields in a format
    spec, or whose field widths alone exceed the serial's size: checked *before* formatting,
    so ``{n:>999999999}`` is refused instead of building a gigabyte string."""
    where = f"serial.template {template!r}"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:  # unbalanced braces: "Single '}' encountered in format string"
        raise UsageError(f"{where}: {exc} (write {{{{ and }}}} for literal braces)") from None
    limit = size if size is not None else MAX_TEXT
    total = 0
    for literal, name, spec, _conv in parts:
        total += len(literal)
        if name is None:
            continue
        if name not in _TEMPLATE_FIELDS:
            raise UsageError(f"{where}: unknown field {{{name}}} (known: {', '.join(sorted(_TEMPLATE_FIELDS))})")
        if spec and ("{" in spec or "}" in spec):
            raise UsageError(f"{where}: nested fields in a format spec are not supported")
        m = _WIDTH_RE.match(spec or "")
        width = m.group(1) if m else ""
        if width and (len(width) > 6 or int(width) > limit):
            raise UsageError(f"{where}: field {{{name}:{spec}}} is wider than the serial's {limit} bytes")
        total += int(width or 0)
    if total > limit:
        raise UsageError(f"{where}: text alone is longer than the serial's {limit} bytes")


def check_serial_address(image: Image, address: int, length: int, device: Any = None) -> None:
    """Raise UsageError when the serial field would overwrite image data or leave flash."""
    if device is not None:
        flash = device.flash
        otp = getattr(device, "otp", None)
        inside = flash.contains_range(address, length) or (otp is not None and otp.contains_range(address, length))
        if not inside:
            raise UsageError(
                f"serial address 0x{address:08X}+{length} is outside the flash of {device.short_name} "
                f"(0x{flash.start:08X}..0x{flash.end:08X})"
            )
    for seg in image.segments:
        lo, hi = max(seg.address, address), min(seg.end, address + length)
        if lo < hi:
            chunk = seg.data[lo - seg.address : hi - seg.address]
            if chunk.count(0xFF) != len(chunk):
                first = lo + next(i for i, b in enumerate(chunk) if b != 0xFF)
                raise UsageError(
                    f"serial address 0x{address:08X}+{length} overlaps image data at 0x{first:08X} "
                    f"({image.source or 'image'}); choose an erased area or a gap"
                )


def merge_serial(image: Image, address: int, data: bytes, device: Any = None) -> Image:
    """A copy of ``image`` with ``data`` at ``address`` (only over gaps or 0xFF bytes)."""
    check_serial_address(image, address, len(data), device)
    out = Image(source=image.source, format=image.format, alt_names=dict(image.alt_names), dfu_ids=image.dfu_ids)
    end = address + len(data)
    for seg in image.segments:
        alt = image.alts.get(seg.address)
        if seg.end <= address or seg.address >= end:
            out.add(seg.address, seg.data, alt=alt)
            continue
        # erased bytes under the serial: keep the parts on either side
        if seg.address < address:
            out.add(seg.address, seg.data[: address - seg.address], alt=alt)
        if seg.end > end:
            out.add(end, seg.data[end - seg.address :], alt=alt)
    out.add(address, data)
    return out
