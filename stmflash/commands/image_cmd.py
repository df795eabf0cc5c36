"""``stmflash image``: inspect, convert, merge and stamp firmware files without a chip.

Kept import-light: the loaders (intelhex, bincopy, pyelftools) are imported on use.
"""

from __future__ import annotations

import json
import os
from typing import Any

import click

from stmflash.commands.common import (
    FILE,
    INT,
    allow_missing_end_option,
    complete_devices,
    parse_range,
)
from stmflash.errors import UsageError

FORMAT_HELP = "bin, hex, srec, elf, dfu (DfuSe) or dfu-bin (binary with a DFU suffix)"


def _device(name: str | None) -> Any:
    if name is None:
        return None
    from stmflash.devices import find

    try:
        return find(name)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None


def _fill(value: int) -> int:
    if not 0 <= value <= 0xFF:
        raise UsageError(f"--fill 0x{value:X} is not a byte value (0x00-0xFF)")
    return value


def _dfu_id(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        vid, pid = (int(p, 16) for p in text.split(":"))
    except ValueError:
        raise UsageError(f"--dfu-id {text!r}: expected VID:PID in hex, e.g. 0483:df11") from None
    if not (0 <= vid <= 0xFFFF and 0 <= pid <= 0xFFFF):
        raise UsageError(f"--dfu-id {text!r}: VID and PID are 16-bit values")
    return vid, pid


def _save(image: Any, out: str, fmt: str | None, fill: int, dfu_id: str | None, bcd_device: int | None) -> None:
    from stmflash.image.writers import save

    vid_pid = _dfu_id(dfu_id) or (image.dfu_ids[:2] if image.dfu_ids else (0x0483, 0xDF11))
    if bcd_device is None:
        bcd_device = image.dfu_ids[2] if image.dfu_ids else 0xFFFF
    if not 0 <= bcd_device <= 0xFFFF:
        raise UsageError(f"--bcd-device 0x{bcd_device:X} is not a 16-bit value")
    save(image, out, fmt=fmt, fill=fill, dfu_vid_pid=vid_pid, bcd_device=bcd_device)


def _split_at(arg: str) -> tuple[str, int | None]:
    """``file.bin@0x08000000`` -> (``file.bin``, 0x08000000); plain paths pass through."""
    if "@" in arg and not os.path.exists(arg):
        path, _, addr = arg.rpartition("@")
        from stmflash.commands.common import parse_int

        try:
            return path, parse_int(addr, "address")
        except UsageError as exc:
            raise UsageError(f"{arg}: {exc}") from None
    return arg, None


dfu_options = [
    click.option("--dfu-id", metavar="VID:PID", default=None, help="USB IDs in a .dfu suffix [default: the input's, else 0483:df11]."),
    click.option("--bcd-device", type=INT, default=None, metavar="BCD", help="bcdDevice in a .dfu suffix [default: the input's, else 0xFFFF]."),
]


def _with_dfu_options(f: Any) -> Any:
    for opt in reversed(dfu_options):
        f = opt(f)
    return f


@click.group("image")
def image() -> None:
    """Inspect, convert, merge and stamp firmware images (bin, Intel HEX, S-record, ELF, DfuSe)."""


@image.command("info", short_help="Show format, segments, CRCs; check the vector table.")
@click.argument("file", type=FILE)
@click.option("--address", "-a", type=INT, default=None, help="Load address of a raw .bin.")
@click.option("--device", "-d", "device_name", default=None, shell_complete=complete_devices, help="Check the vector table against this part (e.g. F407).")
@click.option("--format", "fmt", default=None, help=f"Input format, when not detected: {FORMAT_HELP}.")
@click.option("--json", "json_", is_flag=True, help="Print one JSON object.")
@click.option("--strict", is_flag=True, help="A failed vector-table check is an error (exit 2).")
@allow_missing_end_option
def info(file: str, address: int | None, device_name: str | None, fmt: str | None, json_: bool, strict: bool,
         allow_missing_end: bool = False) -> None:
    """Show the format, segments, size and CRCs of FILE and check its vector table."""
    from stmflash.image.crc import stm32_crc, zlib_crc
    from stmflash.image.loaders import load
    from stmflash.image.vectors import check_vector_table, vector_table_address

    device = _device(device_name)
    img = load(file, address=address, fmt=fmt, device=device, require_end=not allow_missing_end)
    stm32_all = stm32_crc(b"".join(s.data for s in img.segments))
    check = device is not None or img.start == 0x08000000
    problems = check_vector_table(img, device) if check else []
    segs = []
    for s in img.segments:
        d: dict[str, Any] = {
            "address": s.address,
            "size": len(s),
            "end": s.end,
            "crc32": zlib_crc(s.data),
            "stm32_crc": stm32_crc(s.data),
        }  # as numbers for the text output; the JSON output spells them in hex (jsonfmt)
        alt = img.alts.get(s.address)
        if alt is not None:
            d["alt"] = alt
            if alt in img.alt_names:
                d["alt_name"] = img.alt_names[alt]
        segs.append(d)
    report: dict[str, Any] = {
        "file": file,
        "format": img.format,
        "segments": segs,
        "size": img.size,
        "start": img.start,
        "end": img.end,
        "span": img.end - img.start,
        "crc32": img.crc32(),
        "stm32_crc": stm32_all,
        "entry": img.entry,
        "dfu_ids": list(img.dfu_ids) if img.dfu_ids else None,
        "vector_table": {
            "checked": check,
            "address": vector_table_address(img, device) if check else None,
            "against": (device.short_name if device is not None else "generic") if check else None,
            "problems": problems,
        },
    }
    if json_:
        click.echo(json.dumps(_info_json(report)))
    else:
        _print_info(report)
    for p in problems:
        if not strict:
            click.echo(f"stmflash: warning: {file}: {p}", err=True)
    if problems and strict:
        raise UsageError(f"{file}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


def _info_json(r: dict[str, Any]) -> dict[str, Any]:
    """The report in the JSON convention of :mod:`stmflash.jsonfmt`."""
    from stmflash.jsonfmt import addr, hexid

    out = dict(r)
    out["segments"] = [
        {**s, "address": addr(s["address"]), "end": addr(s["end"]), "crc32": hexid(s["crc32"], 8),
         "stm32_crc": hexid(s["stm32_crc"], 8)}
        for s in r["segments"]
    ]
    for key in ("start", "end", "entry"):
        out[key] = addr(r[key])
    out["crc32"] = hexid(r["crc32"], 8)
    out["stm32_crc"] = hexid(r["stm32_crc"], 8)
    if r["dfu_ids"]:
        out["dfu_ids"] = [hexid(v, 4) for v in r["dfu_ids"]]
    out["vector_table"] = {**r["vector_table"], "address": addr(r["vector_table"]["address"])}
    return out


def _print_info(r: dict[str, Any]) -> None:
    echo = click.echo
    echo(f"file:      {r['file']}")
    echo(f"format:    {r['format']}")
    if r["dfu_ids"]:
        vid, pid, bcd = r["dfu_ids"]
        echo(f"dfu ids:   {vid:04x}:{pid:04x} bcdDevice 0x{bcd:04X}")
    if r["entry"] is not None:
        echo(f"entry:     0x{r['entry']:08X}")
    echo(f"segments:  {len(r['segments'])}")
    for s in r["segments"]:
        alt = ""
        if "alt" in s:
            alt = f"  alt {s['alt']}" + (f" {s['alt_name']!r}" if "alt_name" in s else "")
        echo(
            f"  0x{s['address']:08X}..0x{s['end']:08X}  {s['size']:>9} bytes  "
            f"crc32 0x{s['crc32']:08X}  stm32 0x{s['stm32_crc']:08X}{alt}"
        )
    echo(f"size:      {r['size']} bytes of data, span {r['span']} bytes (0x{r['start']:08X}..0x{r['end']:08X})")
    echo(f"crc32:     0x{r['crc32']:08X}  (zlib, segment data in address order)")
    echo(f"stm32 crc: 0x{r['stm32_crc']:08X}  (CRC-32/MPEG-2 over LE words, segment data in address order)")
    vt = r["vector_table"]
    if vt["checked"]:
        verdict = "ok" if not vt["problems"] else f"{len(vt['problems'])} problem(s)"
        echo(f"vectors:   {verdict} (table at 0x{vt['address']:08X}, checked against {vt['against']})")


@image.command("convert", short_help="Convert between bin, hex, srec and dfu.")
@click.argument("infile", type=FILE)
@click.argument("outfile", type=FILE)
@click.option("--address", "-a", type=INT, default=None, help="Load address of a raw .bin input.")
@click.option("--device", "-d", "device_name", default=None, shell_complete=complete_devices, help="Part whose flash start places a raw .bin input.")
@click.option("--input-format", "in_fmt", default=None, help=f"Input format, when not detected: {FORMAT_HELP}.")
@click.option("--format", "-f", "fmt", default=None, help="Output format (bin, hex, srec, dfu) [default: from OUTFILE's extension].")
@click.option("--fill", type=INT, default=0xFF, metavar="BYTE", show_default=True, help="Byte that fills gaps in a raw .bin output.")
@_with_dfu_options
@allow_missing_end_option
def convert(
    infile: str,
    outfile: str,
    address: int | None,
    device_name: str | None,
    in_fmt: str | None,
    fmt: str | None,
    fill: int,
    dfu_id: str | None,
    bcd_device: int | None,
    allow_missing_end: bool = False,
) -> None:
    """Convert INFILE to OUTFILE (gaps stay gaps except in a raw .bin)."""
    from stmflash.image.loaders import load

    img = load(infile, address=address, fmt=in_fmt, device=_device(device_name), require_end=not allow_missing_end)
    _save(img, outfile, fmt, _fill(fill), dfu_id, bcd_device)
    click.echo(f"{outfile}: {img.size} bytes in {len(img.segments)} segment(s), crc32 0x{img.crc32():08X}", err=True)


@image.command("merge", short_help="Merge images (bootloader + application); overlaps are an error.")
@click.argument("inputs", nargs=-1, required=True, metavar="FILE[@ADDR]...")
@click.option("--output", "-o", required=True, help="Output file.")
@click.option("--format", "-f", "fmt", default=None, help="Output format (bin, hex, srec, dfu) [default: from the extension].")
@click.option("--fill", type=INT, default=0xFF, metavar="BYTE", show_default=True, help="Byte that fills gaps in a raw .bin output.")
@_with_dfu_options
@allow_missing_end_option
def merge(inputs: tuple[str, ...], output: str, fmt: str | None, fill: int, dfu_id: str | None, bcd_device: int | None,
          allow_missing_end: bool = False) -> None:
    """Merge several images (e.g. bootloader + application) into one; overlaps are an error.

    A raw binary takes its address after '@': boot.bin@0x08000000.
    """
    from stmflash.image.loaders import load

    merged = None
    for arg in inputs:
        path, addr = _split_at(arg)
        img = load(path, address=addr, require_end=not allow_missing_end)
        merged = img if merged is None else merged.merge(img)
    assert merged is not None
    _save(merged, output, fmt, _fill(fill), dfu_id, bcd_device)
    click.echo(f"{output}: {merged.size} bytes in {len(merged.segments)} segment(s), crc32 0x{merged.crc32():08X}", err=True)


@image.command("stamp", short_help="Write version, length and CRC into an application header.")
@click.argument("infile", type=FILE)
@click.option("--output", "-o", required=True, help="Output file.")
@click.option("--at", "at", type=INT, default=None,
              help="Address of stmflash's 16-byte header (multiple of 4); or use the custom fields below.")
@click.option("--version", "version", default="0", show_default=True, help="Firmware version: X.Y.Z or an integer.")
@click.option("--crc", type=click.Choice(["zlib", "stm32", "crc16-ccitt"]), default="zlib", show_default=True,
              help="CRC flavour the bootloader computes (crc16-ccitt only for --crc-at).")
@click.option("--crc-at", type=INT, default=None, help="Custom field: where the CRC goes (after --crc-over).")
@click.option("--crc-over", metavar="START:LENGTH", default=None,
              help="Custom field: the range the CRC covers (START:LENGTH or START..END), gaps filled with --fill.")
@click.option("--fill", type=INT, default=0xFF, metavar="BYTE", show_default=True,
              help="Custom fields: the byte that fills gaps and the unused rest of --crc-over.")
@click.option("--version-at", type=INT, default=None, help="Custom field: where the version goes.")
@click.option("--version-format", type=click.Choice(["u32", "u16x4", "semver"]), default="u32", show_default=True,
              help="Custom field: u32 (X<<24|Y<<16|Z), u16x4 (X,Y,Z,W as u16), semver (u8 X, u8 Y, u16 Z).")
@click.option("--length-at", type=INT, default=None, help="Custom field: where the length of --crc-over goes (u32).")
@click.option("--magic", type=INT, default=None, metavar="U32", help="Header magic [default: 0x464D5453, 'STMF'].")
@click.option("--address", "-a", type=INT, default=None, help="Load address of a raw .bin input.")
@click.option("--format", "-f", "fmt", default=None, help="Output format [default: from the extension].")
@click.option("--json", "json_", is_flag=True, help="Print the header as JSON.")
@_with_dfu_options
@allow_missing_end_option
def stamp_cmd(
    infile: str,
    output: str,
    at: int,
    version: str,
    crc: str,
    magic: int | None,
    address: int | None,
    fmt: str | None,
    json_: bool,
    dfu_id: str | None,
    bcd_device: int | None,
    allow_missing_end: bool = False,
    crc_at: int | None = None,
    crc_over: str | None = None,
    fill: int = 0xFF,
    version_at: int | None = None,
    version_format: str = "u32",
    length_at: int | None = None,
) -> None:
    """Write magic, version, length and CRC into an application header at --at, or the
    fields a custom bootloader expects where it expects them (--crc-at/--crc-over,
    --version-at, --length-at).

    The header's CRC covers the image from its first address to its end (rounded up to 4
    bytes), gaps filled with 0xFF, the header's CRC field read as zero. See the README.
    """
    from stmflash.image.fields import Fields, stamp_fields
    from stmflash.image.loaders import load
    from stmflash.image.stamp import MAGIC, parse_version, stamp

    custom = Fields(
        crc_at=crc_at, crc_over=parse_range(crc_over) if crc_over else None, crc=crc, fill=_fill(fill),
        version_at=version_at, version=version, version_format=version_format, length_at=length_at,
    )
    if at is None and not custom.any:
        raise UsageError("image stamp needs --at (stmflash's header) or custom fields (--crc-at, --version-at, --length-at)")
    if at is not None and custom.any:
        raise UsageError("use either --at (stmflash's 16-byte header) or custom fields, not both")
    if crc_over and crc_at is None:
        raise UsageError("--crc-over needs --crc-at (where the CRC goes)")
    img = load(infile, address=address, require_end=not allow_missing_end)
    if custom.any:
        out_img, written = stamp_fields(img, custom)
        _save(out_img, output, fmt, custom.fill, dfu_id, bcd_device)
        if json_:
            from stmflash.jsonfmt import addr

            for v in written.values():
                v["address"] = addr(v["address"])  # type: ignore[index]
                if "over" in v:  # type: ignore[operator]
                    v["over"]["start"] = addr(v["over"]["start"])  # type: ignore[index]
            click.echo(json.dumps({"output": output, **written}))
        else:
            click.echo(f"{output}: " + ", ".join(f"{k} at 0x{v['address']:08X} = {v['bytes']}"  # type: ignore[index]
                                                  for k, v in written.items()))
        return
    if crc == "crc16-ccitt":
        raise UsageError("--crc crc16-ccitt is for custom fields (--crc-at); the 16-byte header holds a CRC-32")
    out, header = stamp(img, at, version=parse_version(version), crc=crc, magic=MAGIC if magic is None else magic)
    _save(out, output, fmt, 0xFF, dfu_id, bcd_device)
    if json_:
        from stmflash.jsonfmt import addr, hexid

        h = header.to_dict()
        click.echo(json.dumps({
            **h, "address": addr(header.address), "magic": hexid(header.magic, 8),
            "version": hexid(header.version, 8), "crc": hexid(header.crc, 8),
            "crc_kind": crc, "start": addr(out.start), "output": output,
        }))
    else:
        click.echo(
            f"{output}: header at 0x{at:08X}: version {header.version_text} (0x{header.version:08X}), "
            f"length {header.length} from 0x{out.start:08X}, {crc} crc 0x{header.crc:08X}"
        )

