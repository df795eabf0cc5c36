"""The job file: everything a station needs, so an operator only types ``--job line3.toml``.

Validated up front (exit 2, one line naming the key) because a typo discovered on the
tenth board, or after protection was set on the first nine, costs real boards. Command
line options override the file key by key. Relative paths are relative to the job file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields, replace
from typing import Any

from stmflash.errors import UsageError
from stmflash.production.serials import SerialFormat

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PARITIES = ("none", "even", "odd")
ERASE_MODES = ("auto", "all", "none")
AFTER_MODES = ("go", "reset", "stay")
RDP2_CONFIRM = "i_understand_rdp2_is_permanent"


@dataclass(frozen=True)
class SerialConfig:
    address: int
    fmt: SerialFormat
    ledger: str = ""  # "" = the job's ledger, else the default file
    first: int = 1
    last: int | None = None

    def encode(self, n: int, uid: str | None = None) -> bytes:
        return self.fmt.encode(n, uid=uid)


@dataclass(frozen=True)
class Protection:
    """What to lock after verification: RDP level (0 = leave) and WRP units."""

    rdp: int = 0
    wrp: bool = False
    wrp_units: tuple[int, ...] | None = None  # None with wrp=True: units covered by the image

    @property
    def any(self) -> bool:
        return self.rdp > 0 or self.wrp

    def describe(self) -> str:
        parts = []
        if self.wrp:
            parts.append("wrp" + (":" + ",".join(map(str, self.wrp_units)) if self.wrp_units else ""))
        if self.rdp:
            parts.append(f"rdp{self.rdp}")
        return "+".join(parts) or "none"


@dataclass(frozen=True)
class JobConfig:
    image: str | None = None
    address: int | None = None
    device: str | None = None
    targets: tuple[str, ...] = ()
    baud: int = 115200
    parity: str = "even"
    entry: str | None = None  # the --enter chain, e.g. "pins:-rts,-dtr,dtr:rts,-dtr,dtr"
    invert: tuple[str, ...] = ()
    erase: str = "auto"
    verify: bool = True
    after: str = "reset"
    option_bytes: bytes | None = None
    # [option_bytes] fields = { nBOOT_SEL = 0, BOR_LEV = 3 } (stmflash.ob_fields), as (name, value)
    ob_fields: tuple[tuple[str, Any], ...] = ()
    ob_reset_defaults: bool = False
    protect: Protection = Protection()
    serial: SerialConfig | None = None
    retries: int = 1
    report_dir: str = "stmflash-reports"
    loop: bool = False
    max_boards: int | None = None
    image_check: bool = True
    # i_understand_rdp2_is_permanent (file) / the flag (command line): RDP level 2 and other
    # permanent option values (raw option bytes, --protect rdp2, [option_bytes] fields) allowed
    rdp2_confirmed: bool = False
    ledger: str | None = None  # file, sqlite:///FILE or postgresql://... (serials and run records)
    station: str | None = None  # name recorded with every row [host name]
    source: str = ""

    @property
    def ob_request(self) -> Any:
        """The option fields to set (stmflash.ob_ops.ObRequest), or None."""
        if not self.ob_fields and not self.ob_reset_defaults:
            return None
        from stmflash.ob_ops import ObRequest

        return ObRequest(assignments=dict(self.ob_fields), reset_defaults=self.ob_reset_defaults,
                         where=f"{self.source or 'job'}: option_bytes.fields")

    @property
    def writes_option_bytes(self) -> bool:
        return self.option_bytes is not None or self.ob_request is not None

    @property
    def ledger_spec(self) -> str | None:
        """The ledger this job uses: named, or the default file when serials are issued."""
        if self.ledger:
            return self.ledger
        if self.serial is not None:
            from stmflash.production.store import DEFAULT_LEDGER

            return self.serial.ledger or DEFAULT_LEDGER
        return None

    def with_overrides(self, **kw: Any) -> JobConfig:
        """Command-line values (``None`` = not given) over the file's."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in kw.items() if v is not None and k in known})


# ---- parsing helpers -------------------------------------------------------------------
class _Ctx:
    def __init__(self, source: str, base: str) -> None:
        self.source = source
        self.base = base

    def err(self, key: str, msg: str) -> UsageError:
        return UsageError(f"{self.source}: {key}: {msg}")

    def path(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise self.err(key, f"expected a file path, got {value!r}")
        return value if os.path.isabs(value) else os.path.join(self.base, value)

    def ledger(self, key: str, value: Any) -> str:
        """A ledger file (relative to the job file) or a database URL (taken as is)."""
        from stmflash.production.store import check_spec, is_url

        spec = self.path(key, value)
        if is_url(value):
            spec = value
        try:
            check_spec(spec)
        except UsageError as exc:
            raise self.err(key, str(exc)) from None
        return spec

    def int_(self, key: str, value: Any, *, minimum: int | None = None) -> int:
        if isinstance(value, str):
            try:
                value = int(value, 0)
            except ValueError:
                raise self.err(key, f"expected an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(key, f"expected an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.err(key, f"must be >= {minimum}, got {value}")
        return value

    def bool_(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.err(key, f"expected true or false, got {value!r}")
        return value

    def choice(self, key: str, value: Any, choices: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise self.err(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value.lower()

    def str_(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.err(key, f"expected a string, got {value!r}")
        return value

    def table(self, key: str, value: Any, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.err(key, f"expected a table, got {value!r}")
        for k in value:
            if k not in allowed:
                raise self.err(f"{key}.{k}", f"unknown key (known: {', '.join(sorted(allowed))})")
        return value


def parse_protect(items: list[str] | tuple[str, ...], *, confirmed: bool, where: str = "--protect") -> Protection:
    """``rdp1``, ``rdp2``, ``wrp`` (units of the image) or ``wrp:0,1,5`` into a Protection.

    RDP level 2 is irreversible (the bootloader is disabled for good), so it requires the
    confirmation option to be given explicitly: checked here, before any board is touched.
    """
    rdp, wrp, units = 0, False, None
    for raw in items:
        item = str(raw).strip().lower()
        if item in ("", "none"):
            continue
        if item in ("rdp1", "rdp2"):
            rdp = max(rdp, int(item[3]))
        elif item == "wrp":
            wrp = True
        elif item.startswith("wrp:"):
            wrp = True
            try:
                units = tuple(sorted({int(u, 0) for u in item[4:].split(",") if u.strip()}))
            except ValueError:
                raise UsageError(f"{where}: bad write-protection unit list {raw!r} (e.g. wrp:0,1,2)") from None
            if not units:
                raise UsageError(f"{where}: empty write-protection unit list in {raw!r}")
        else:
            raise UsageError(f"{where}: unknown protection {raw!r} (rdp1, rdp2, wrp, wrp:UNITS)")
    if rdp == 2 and not confirmed:
        raise UsageError(
            f"{where}: rdp2 makes the chip permanently unreadable and disables the bootloader for good; "
            "add --i-understand-rdp2-is-permanent to really do it"
        )
    return Protection(rdp=rdp, wrp=wrp, wrp_units=units)


TOP_KEYS = {
    "image", "address", "device", "targets", "retries", "report_dir", "protect", RDP2_CONFIRM,
    "image_check", "link", "entry", "program", "option_bytes", "serial", "loop", "ledger", "station",
}


def load_job(path: str) -> JobConfig:
    """Read and validate a job file; every problem is a UsageError naming file and key."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"job file {path} not found") from None
    except OSError as exc:
        raise UsageError(f"cannot read job file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8; tomllib decodes before parsing
        with open(path, "rb") as fh:
            line = fh.read()[: exc.start].count(b"\n") + 1
        raise UsageError(f"{path}: line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02X}); "
                         "TOML files are UTF-8") from None
    return parse_job(data, source=path)


def parse_job(data: dict[str, Any], *, source: str = "job", base: str | None = None) -> JobConfig:
    ctx = _Ctx(source, base if base is not None else os.path.dirname(os.path.abspath(source)))
    for k in data:
        if k not in TOP_KEYS:
            raise ctx.err(k, f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    kw: dict[str, Any] = {"source": source}
    if "image" in data:
        kw["image"] = ctx.path("image", data["image"])
    if "address" in data:
        kw["address"] = ctx.int_("address", data["address"], minimum=0)
    if "device" in data:
        kw["device"] = ctx.str_("device", data["device"])
    if "targets" in data:
        t = data["targets"]
        if isinstance(t, str):
            t = [t]
        if not isinstance(t, list) or not all(isinstance(x, str) and x for x in t):
            raise ctx.err("targets", f"expected a list of ports/URLs/dfu: targets, got {data['targets']!r}")
        kw["targets"] = tuple(t)
    if "retries" in data:
        kw["retries"] = ctx.int_("retries", data["retries"], minimum=0)
    if "report_dir" in data:
        kw["report_dir"] = ctx.path("report_dir", data["report_dir"])
    if "image_check" in data:
        kw["image_check"] = ctx.bool_("image_check", data["image_check"])
    if "ledger" in data:
        kw["ledger"] = ctx.ledger("ledger", data["ledger"])
    if "station" in data:
        kw["station"] = ctx.str_("station", data["station"]).strip() or None
        if kw["station"] is None:
            raise ctx.err("station", "empty station name")
    confirmed = ctx.bool_(RDP2_CONFIRM, data.get(RDP2_CONFIRM, False))
    kw["rdp2_confirmed"] = confirmed
    if "protect" in data:
        p = data["protect"]
        if isinstance(p, str):
            p = [p]
        if not isinstance(p, list):
            raise ctx.err("protect", f"expected a list like [\"wrp\", \"rdp1\"], got {p!r}")
        kw["protect"] = parse_protect(p, confirmed=confirmed, where=f"{source}: protect")
    if "link" in data:
        link = ctx.table("link", data["link"], {"baud", "parity"})
        if "baud" in link:
            kw["baud"] = ctx.int_("link.baud", link["baud"], minimum=1)
        if "parity" in link:
            kw["parity"] = ctx.choice("link.parity", link["parity"], PARITIES)
    if "entry" in data:
        e = data["entry"]
        if isinstance(e, str):
            kw["entry"] = e
        else:
            e = ctx.table("entry", e, {"enter", "invert"})
            if "enter" in e:
                kw["entry"] = ctx.str_("entry.enter", e["enter"])
            if "invert" in e:
                inv = e["invert"]
                inv = [inv] if isinstance(inv, str) else inv
                if not isinstance(inv, list) or not all(x in ("dtr", "rts") for x in inv):
                    raise ctx.err("entry.invert", f"expected a list of dtr/rts, got {e['invert']!r}")
                kw["invert"] = tuple(inv)
    if "program" in data:
        prog = ctx.table("program", data["program"], {"erase", "verify", "after"})
        if "erase" in prog:
            kw["erase"] = ctx.choice("program.erase", prog["erase"], ERASE_MODES)
        if "verify" in prog:
            kw["verify"] = ctx.bool_("program.verify", prog["verify"])
        if "after" in prog:
            kw["after"] = ctx.choice("program.after", prog["after"], AFTER_MODES)
    if "option_bytes" in data:
        ob = ctx.table("option_bytes", data["option_bytes"], {"file", "hex", "fields", "reset_defaults"})
        if "file" in ob and "hex" in ob:
            raise ctx.err("option_bytes", "give at most one of file or hex")
        if not ({"file", "hex", "fields"} & set(ob)) and not ob.get("reset_defaults"):
            raise ctx.err("option_bytes", "give file, hex, fields = { NAME = VALUE, ... } or reset_defaults = true")
        if "fields" in ob:
            from stmflash.ob_fields import parse_assignments

            if not isinstance(ob["fields"], dict) or not ob["fields"]:
                raise ctx.err("option_bytes.fields", f"expected a table like {{ nBOOT_SEL = 0 }}, got {ob['fields']!r}")
            kw["ob_fields"] = tuple(parse_assignments(ob["fields"], f"{source}: option_bytes.fields").items())
        if "reset_defaults" in ob:
            kw["ob_reset_defaults"] = ctx.bool_("option_bytes.reset_defaults", ob["reset_defaults"])
        if "file" in ob:
            p = ctx.path("option_bytes.file", ob["file"])
            try:
                with open(p, "rb") as fh:
                    kw["option_bytes"] = fh.read()
            except OSError as exc:
                raise ctx.err("option_bytes.file", f"cannot read {p}: {exc.strerror}") from None
        elif "hex" in ob:
            try:
                kw["option_bytes"] = bytes.fromhex(ctx.str_("option_bytes.hex", ob["hex"]))
            except ValueError:
                raise ctx.err("option_bytes.hex", f"not hex: {ob['hex']!r}") from None
    if "serial" in data:
        s = ctx.table("serial", data["serial"],
                      {"address", "format", "prefix", "width", "template", "size", "nul", "ledger", "first", "last"})
        if "address" not in s:
            raise ctx.err("serial.address", "missing (where the serial number goes in flash)")
        address = ctx.int_("serial.address", s["address"], minimum=0)
        fmt_d: dict[str, Any] = {}
        if "format" in s:
            fmt_d["format"] = ctx.choice("serial.format", s["format"], ("u32", "u64", "ascii", "template"))
        for key in ("prefix", "template"):
            if key in s:
                fmt_d[key] = ctx.str_(f"serial.{key}", s[key])
        for key in ("width", "size"):
            if key in s:
                fmt_d[key] = ctx.int_(f"serial.{key}", s[key], minimum=1)
        if "nul" in s:
            fmt_d["nul"] = ctx.bool_("serial.nul", s["nul"])
        try:
            fmt = SerialFormat.from_dict(fmt_d)
        except UsageError as exc:
            raise ctx.err("serial.format", str(exc)) from None
        first = ctx.int_("serial.first", s.get("first", 1), minimum=0)
        last = ctx.int_("serial.last", s["last"], minimum=first) if "last" in s else None
        if fmt.max_number is not None and (last or first) > fmt.max_number:
            raise ctx.err("serial.last", f"does not fit in {fmt.kind}")
        ledger = ctx.ledger("serial.ledger", s["ledger"]) if "ledger" in s else ""
        kw["serial"] = SerialConfig(address, fmt, ledger, first, last)
    if "loop" in data:
        lp = ctx.table("loop", data["loop"], {"enabled", "max_boards"})
        if "enabled" in lp:
            kw["loop"] = ctx.bool_("loop.enabled", lp["enabled"])
        if "max_boards" in lp:
            kw["max_boards"] = ctx.int_("loop.max_boards", lp["max_boards"], minimum=1)
    return JobConfig(**kw)
