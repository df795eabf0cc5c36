"""Read any firmware file into an :class:`~stmflash.image.model.Image`.

The format comes from the *content* (ELF magic, "DfuSe" prefix, DFU suffix, ':' or 'Sn'
record lines): users rename files, and a ``.hex`` that is really an ELF must not be
flashed as text. The extension only decides when the content is ambiguous, so that a
damaged ``.hex`` still gets an Intel HEX error with its line number. Every library error
(intelhex, bincopy, pyelftools, struct) becomes an :class:`ImageError` naming the file and
the line or offset, because the CLI shows one line and never a traceback.
"""

from __future__ import annotations

import io
import os
import re
from typing import TYPE_CHECKING

from stmflash.errors import ImageError, UsageError
from stmflash.image import dfuse_file
from stmflash.image.model import Image

if TYPE_CHECKING:
    from stmflash.devices import Device

FORMATS = ("bin", "hex", "srec", "elf", "dfu", "dfu-bin")

_ALIASES = {
    "bin": "bin", "binary": "bin", "raw": "bin", "img": "bin",
    "hex": "hex", "ihex": "hex", "ihx": "hex", "intelhex": "hex", "intel-hex": "hex",
    "srec": "srec", "s19": "srec", "s28": "srec", "s37": "srec", "mot": "srec", "s-record": "srec",
    "elf": "elf", "axf": "elf",
    "dfu": "dfu", "dfuse": "dfu",
    "dfu-bin": "dfu-bin", "dfubin": "dfu-bin",
}  # fmt: skip

EXTENSIONS = {
    ".bin": "bin", ".img": "bin", ".raw": "bin",
    ".hex": "hex", ".ihex": "hex", ".ihx": "hex",
    ".srec": "srec", ".s19": "srec", ".s28": "srec", ".s37": "srec", ".mot": "srec", ".sx": "srec",
    ".elf": "elf", ".axf": "elf", ".out": "elf",
    ".dfu": "dfu",
}  # fmt: skip

_HEX_LINE = re.compile(rb"^:[0-9A-Fa-f]{10,}$")
_SREC_LINE = re.compile(rb"^S[0-9][0-9A-Fa-f]{6,}$")


def normalize_format(fmt: str) -> str:
    """Canonical format name for a user's spelling; a :class:`UsageError` lists the choices."""
    key = fmt.strip().lower().lstrip(".")
    if key not in _ALIASES:
        raise UsageError(f"unknown image format {fmt!r} (choose from {', '.join(FORMATS)})")
    return _ALIASES[key]


def format_from_extension(path: str) -> str | None:
    return EXTENSIONS.get(os.path.splitext(path)[1].lower())


def _first_line(data: bytes) -> bytes:
    text = data[:4096].lstrip(b"\xef\xbb\xbf").lstrip()
    return text.split(b"\n", 1)[0].strip()


def sniff(data: bytes) -> str | None:
    """The format the bytes themselves announce, or ``None`` when they could be anything."""
    # a real ELF header: class 32/64, endianness LE/BE, version 1 (not just the magic)
    if data[:4] == b"\x7fELF" and len(data) >= 52 and data[4] in (1, 2) and data[5] in (1, 2) and data[6] == 1:
        return "elf"
    if dfuse_file.is_dfuse(data):
        return "dfu"
    if dfuse_file.has_suffix_signature(data):
        return "dfu-bin"
    line = _first_line(data)
    if _HEX_LINE.match(line):
        return "hex"
    if _SREC_LINE.match(line):
        return "srec"
    return None


def load(
    path: str | os.PathLike[str],
    *,
    address: int | None = None,
    fmt: str | None = None,
    device: Device | str | None = None,
    require_end: bool = True,
) -> Image:
    """Load ``path``; ``address`` (or ``device.flash_start``) places a raw binary.

    ``require_end``: an Intel HEX must end with its end-of-file record (type 01) and an
    S-record file with its termination record (S7/S8/S9), with nothing but blank lines
    after it, and an S5/S6 count must match: a truncated download is a wrong image.
    ``False`` accepts a missing end record (the rare tool that omits it); data after an
    end record is refused either way.

    Raises :class:`ImageError` (exit code 2) for anything wrong with the file.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ImageError(f"{name}: cannot read: {exc.strerror or exc}") from None
    return load_bytes(data, name, address=address, fmt=fmt, device=device, require_end=require_end)


def load_bytes(
    data: bytes,
    source: str,
    *,
    address: int | None = None,
    fmt: str | None = None,
    device: Device | str | None = None,
    require_end: bool = True,
) -> Image:
    """:func:`load` for bytes already in memory; ``source`` names them in messages."""
    kind = normalize_format(fmt) if fmt else (sniff(data) or format_from_extension(source) or "bin")
    if not fmt and address is not None and kind not in ("bin", "dfu-bin") and format_from_extension(source) == "bin":
        # "app.bin --address X": the user said it is a raw binary; its bytes may look like
        # anything (a binary can start with ':' or even the ELF magic)
        kind = "bin"
    if address is not None and kind not in ("bin", "dfu-bin"):
        raise UsageError(
            f"{source}: --address applies only to raw binaries; this {kind} file carries its own addresses"
        )
    try:
        if kind == "bin":
            img = Image.from_bytes(data, _base_address(source, address, device), source, "bin")
        elif kind == "dfu-bin":
            img = _load_dfu_bin(data, source, _base_address(source, address, device))
        elif kind == "dfu":
            if dfuse_file.is_dfuse(data) or not dfuse_file.has_suffix_signature(data):
                img = dfuse_file.parse_dfuse(data, source)
            else:  # forced "dfu" on a plain suffixed binary
                img = _load_dfu_bin(data, source, _base_address(source, address, device))
        elif kind == "hex":
            img = _load_hex(data, source)
            _check_hex_end(data, source, require_end)
        elif kind == "srec":
            img = _load_srec(data, source)
            _check_srec_end(data, source, require_end)
        else:
            img = _load_elf(data, source)
    except UsageError:
        raise
    except Exception as exc:  # a library failure we did not anticipate: still one line
        raise ImageError(f"{source}: not a valid {kind} file: {type(exc).__name__}: {exc}") from None
    if not img.segments:
        raise ImageError(f"{source}: no data in this {kind} file")
    return img


def _base_address(source: str, address: int | None, device: Device | str | None) -> int:
    if address is not None:
        if not 0 <= address < 1 << 32:
            raise UsageError(f"{source}: address 0x{address:X} is outside the 32-bit address space")
        return address
    if device is not None:
        if isinstance(device, str):
            from stmflash.devices import find

            try:
                device = find(device)
            except KeyError as exc:
                raise UsageError(str(exc.args[0])) from None
        return device.flash_start
    raise ImageError(
        f"{source}: a raw binary has no address; pass --address (e.g. --address 0x08000000) or --device"
    )


def _load_dfu_bin(data: bytes, source: str, address: int) -> Image:
    suffix = dfuse_file.read_suffix(data, source)
    img = Image.from_bytes(data[: -dfuse_file.SUFFIX_LEN], address, source, "dfu-bin")
    img.dfu_ids = (suffix.vid, suffix.pid, suffix.bcd_device)
    return img


def _decode_text(data: bytes, source: str, what: str) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ImageError(f"{source}: line {line}: not {what} text (byte 0x{data[exc.start]:02X})") from None


_END_HELP = "a truncated file? (--allow-missing-end for a tool that omits the record)"


def _records(data: bytes) -> list[tuple[int, str]]:
    """(line number, record) of every non-blank line."""
    text = data.decode("ascii", errors="replace").lstrip("\ufeff")
    return [(n, line.strip()) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def _check_hex_end(data: bytes, source: str, require_end: bool) -> None:
    """Intel HEX: the end-of-file record (type 01) is the last record (Intel HEX spec, rev. A)."""
    recs = _records(data)
    ends = [i for i, (_n, r) in enumerate(recs) if r[7:9] == "01"]
    if ends and ends[0] != len(recs) - 1:
        n = recs[ends[0] + 1][0]
        raise ImageError(f"{source}: line {n}: data after the end-of-file record (line {recs[ends[0]][0]})")
    if not ends and require_end:
        last = recs[-1][0] if recs else 0
        raise ImageError(f"{source}: no end-of-file record (type 01) after the last line {last}: {_END_HELP}")


def _check_srec_end(data: bytes, source: str, require_end: bool) -> None:
    """S-records: S5/S6 hold the number of S1/S2/S3 records before them, S7/S8/S9 ends the
    file (Motorola S-record format, as in srec_cat's srec_motorola(5)); a file without an
    entry point may end with its S5/S6 count instead (srec_cat writes that)."""
    recs = _records(data)
    count = 0
    end_at: int | None = None
    for i, (n, r) in enumerate(recs):
        kind = r[1:2]
        if end_at is not None:
            raise ImageError(f"{source}: line {n}: data after the end record (line {recs[end_at][0]})")
        if kind in ("1", "2", "3"):
            count += 1
        elif kind in ("5", "6"):
            width = 4 if kind == "5" else 6
            said = int(r[4 : 4 + width], 16)
            if said != count:
                raise ImageError(f"{source}: line {n}: S{kind} record counts {said} data records, "
                                 f"the file has {count} before it: records are missing or extra")
        elif kind in ("7", "8", "9"):
            end_at = i
    # srec_cat ends a file without an entry point with its S5 count record and no S7/S8/S9:
    # a matching count as the last record proves the file complete just as well
    counted = bool(recs) and recs[-1][1][1:2] in ("5", "6")
    if end_at is None and not counted and require_end:
        last = recs[-1][0] if recs else 0
        raise ImageError(f"{source}: no end record (S7/S8/S9, or a final S5 count) after the last line {last}: "
                         f"{_END_HELP}")


def _load_hex(data: bytes, source: str) -> Image:
    import intelhex

    text = _decode_text(data, source, "Intel HEX").lstrip("\ufeff")
    # intelhex rejects lines with trailing blanks; tolerate them (and CRLF) like most tools
    text = "\n".join(line.strip() for line in text.split("\n"))
    ih = intelhex.IntelHex()
    try:
        ih.loadhex(io.StringIO(text))
    except intelhex.HexRecordError as exc:
        line = getattr(exc, "line", None)
        reason = {
            "RecordChecksumError": "bad record checksum",
            "RecordLengthError": "record length does not match its byte count",
            "RecordTypeError": "unknown record type (only 00-05 exist)",
            "EOFRecordError": "bad end-of-file record",
            "HexRecordError": "not an Intel HEX record",
        }.get(type(exc).__name__, str(exc))
        where = f"line {line}" if line else "end-of-file record"
        raise ImageError(f"{source}: {where}: {reason}") from None
    except intelhex.AddressOverlapError as exc:
        raise ImageError(f"{source}: line {exc.line}: data overlaps earlier data at 0x{exc.address:08X}") from None
    except intelhex.IntelHexError as exc:
        raise ImageError(f"{source}: {exc}") from None
    img = Image(source=source, format="hex")
    for start, stop in ih.segments():
        img.add(start, ih.tobinarray(start=start, end=stop - 1).tobytes())
    sa = ih.start_addr or {}
    if "EIP" in sa:
        img.entry = sa["EIP"]
    elif "CS" in sa:
        img.entry = sa["CS"] * 16 + sa["IP"]
    return img


def _load_srec(data: bytes, source: str) -> Image:
    import bincopy

    text = _decode_text(data, source, "S-record")
    bf = bincopy.BinFile()
    try:
        bf.add_srec(text)
    except Exception as exc:
        # bincopy names the record but not the line: find the first record it rejects
        for n, line in enumerate(text.split("\n"), 1):  # as bincopy splits
            rec = line.strip()
            if not rec:
                continue
            try:
                bincopy.unpack_srec(rec)
            except Exception as line_exc:
                msg = str(line_exc)
                if "crc" in msg.lower():
                    msg = "bad record checksum"
                elif "type" in msg:
                    msg = "unknown record type (S0-S3, S5-S9 exist)"
                elif isinstance(line_exc, ValueError) or "size" in msg or "short" in msg or "'S'" in msg:
                    msg = "not an S-record"
                raise ImageError(f"{source}: line {n}: {msg}") from None
        # every record parses: then two data records overlap
        seen = Image(source=source)
        for n, line in enumerate(text.split("\n"), 1):
            rec = line.strip()
            if rec[1:2] not in ("1", "2", "3"):
                continue
            _type, addr, _size, payload = bincopy.unpack_srec(rec)
            try:
                seen.add(addr, bytes(payload))
            except ImageError:
                raise ImageError(f"{source}: line {n}: data overlaps earlier data at 0x{addr:08X}") from None
        raise ImageError(f"{source}: {exc}") from None
    img = Image(source=source, format="srec")
    for seg in bf.segments:
        img.add(seg.minimum_address, bytes(seg.data))
    if bf.execution_start_address:  # 0: the termination record names no entry point
        img.entry = bf.execution_start_address
    return img


def _load_elf(data: bytes, source: str) -> Image:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    if data[:4] != b"\x7fELF":
        raise ImageError(f"{source}: not an ELF file (no ELF magic at offset 0)")
    try:
        elf = ELFFile(io.BytesIO(data))
        machine = elf.header["e_machine"]
        if machine != "EM_ARM":
            raise ImageError(
                f"{source}: an ELF file for {str(machine).removeprefix('EM_')} (e_machine), not ARM: "
                "not STM32 firmware (wrong build output?)"
            )
        img = Image(source=source, format="elf")
        for i, seg in enumerate(elf.iter_segments()):
            if seg["p_type"] != "PT_LOAD" or seg["p_filesz"] == 0:
                continue  # .bss and friends: nothing to flash
            offset, filesz = seg["p_offset"], seg["p_filesz"]
            if offset + filesz > len(data):
                raise ImageError(
                    f"{source}: truncated ELF: segment {i} needs bytes up to offset 0x{offset + filesz:X}, "
                    f"file has 0x{len(data):X}"
                )
            # the load (physical) address: initialised .data is stored in flash, copied at boot
            img.add(seg["p_paddr"], data[offset : offset + filesz])
        entry = elf.header["e_entry"]
    except ELFError as exc:
        raise ImageError(f"{source}: damaged ELF file: {exc}") from None
    if not img.segments:
        raise ImageError(f"{source}: ELF file has no loadable segment (no PT_LOAD with file data)")
    img.entry = entry or None
    return img
