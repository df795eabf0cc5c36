"""Write an :class:`~stmflash.image.model.Image` as bin, Intel HEX, S-record or DfuSe.

Only the raw binary fills gaps (it has no addresses); every other format keeps the gaps so
that flashing the converted file erases and writes exactly what the original did. The whole
file is built in memory before anything is written, so a failure never leaves half a file.
"""

from __future__ import annotations

import io
import os

from stmflash.errors import ImageError, UsageError
from stmflash.image import dfuse_file
from stmflash.image.loaders import normalize_format
from stmflash.image.model import Image

OUTPUT_EXTENSIONS = {
    ".bin": "bin", ".img": "bin", ".raw": "bin",
    ".hex": "hex", ".ihex": "hex", ".ihx": "hex",
    ".srec": "srec", ".s19": "srec", ".s28": "srec", ".s37": "srec", ".mot": "srec", ".sx": "srec",
    ".dfu": "dfu",
}  # fmt: skip

# A raw binary spanning flash and, say, option bytes at 0x1FFF_C000 would be hundreds of MiB
# of fill: refuse instead of silently writing it.
MAX_BIN_SPAN = 256 << 20


def output_format(path: str, fmt: str | None = None) -> str:
    if fmt:
        kind = normalize_format(fmt)
        if kind in ("elf", "dfu-bin"):
            raise UsageError(f"cannot write {kind} files (choose bin, hex, srec or dfu)")
        return kind
    kind = OUTPUT_EXTENSIONS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise UsageError(f"cannot tell the output format from {path!r}; pass --format bin|hex|srec|dfu")
    return kind


def render(
    image: Image,
    fmt: str,
    *,
    fill: int = 0xFF,
    dfu_vid_pid: tuple[int, int] = dfuse_file.DEFAULT_VID_PID,
    bcd_device: int = 0xFFFF,
    srec_bits: int | None = None,
    start: int | None = None,
) -> bytes:
    """The bytes of ``image`` in ``fmt`` (already normalised)."""
    if not image.segments:
        raise ImageError(f"{image.source or 'image'}: nothing to write: the image is empty")
    if fmt == "bin":
        return _bin(image, fill, start)
    if fmt == "hex":
        return _hex(image)
    if fmt == "srec":
        return _srec(image, srec_bits)
    if fmt == "dfu":
        return dfuse_file.build_dfuse(image, vid_pid=dfu_vid_pid, bcd_device=bcd_device)
    raise UsageError(f"cannot write {fmt} files (choose bin, hex, srec or dfu)")


def save(
    image: Image,
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    fill: int = 0xFF,
    dfu_vid_pid: tuple[int, int] = dfuse_file.DEFAULT_VID_PID,
    bcd_device: int = 0xFFFF,
    srec_bits: int | None = None,
    start: int | None = None,
) -> None:
    """Write ``image`` to ``path``; the format comes from ``fmt`` or the extension.

    ``fill`` fills gaps in a raw binary (which starts at ``start``, default the first
    address); ``srec_bits`` forces 16/24/32-bit S-records (default: the smallest that fits).
    """
    name = os.fspath(path)
    kind = output_format(name, fmt)
    if not 0 <= fill <= 0xFF:
        raise UsageError(f"fill value 0x{fill:X} is not a byte")
    blob = render(
        image, kind, fill=fill, dfu_vid_pid=dfu_vid_pid, bcd_device=bcd_device, srec_bits=srec_bits, start=start
    )
    try:
        with open(name, "wb") as f:
            f.write(blob)
    except OSError as exc:
        raise ImageError(f"{name}: cannot write: {exc.strerror or exc}") from None


def _bin(image: Image, fill: int, start: int | None) -> bytes:
    base = image.start if start is None else start
    if base > image.start:
        raise ImageError(f"{image.source or 'image'}: data at 0x{image.start:08X} lies before the binary's start 0x{base:08X}")
    span = image.end - base
    if span > MAX_BIN_SPAN:
        raise ImageError(
            f"{image.source or 'image'}: a raw binary from 0x{base:08X} to 0x{image.end:08X} would be "
            f"{span} bytes of mostly fill; write hex, srec or dfu instead"
        )
    return image.to_bin(fill, base)


def _hex(image: Image) -> bytes:
    import intelhex

    ih = intelhex.IntelHex()
    for seg in image.segments:
        ih.frombytes(seg.data, offset=seg.address)
    if image.entry is not None:
        ih.start_addr = {"EIP": image.entry & 0xFFFFFFFF}
    out = io.StringIO()
    ih.write_hex_file(out, byte_count=16)
    return out.getvalue().encode("ascii")


def _srec(image: Image, bits: int | None) -> bytes:
    import bincopy

    top = image.end - 1
    if image.entry is not None:
        top = max(top, image.entry)
    need = 16 if top < 1 << 16 else 24 if top < 1 << 24 else 32
    if bits is None:
        bits = need
    elif bits not in (16, 24, 32):
        raise UsageError(f"S-record address width must be 16, 24 or 32 bits, not {bits}")
    elif bits < need:
        raise ImageError(
            f"{image.source or 'image'}: address 0x{top:X} does not fit {bits}-bit S-records (S{bits // 8 - 1})"
        )
    bf = bincopy.BinFile()
    for seg in image.segments:
        bf.add_binary(seg.data, address=seg.address)
    # the termination record (S7/S8/S9) is not optional: readers take a file without one
    # for a truncated download; address 0 when the image names no entry point
    bf.execution_start_address = image.entry if image.entry is not None else 0
    return bf.as_srec(number_of_data_bytes=32, address_length_bits=bits).encode("ascii")
