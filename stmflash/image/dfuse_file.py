"""The DFU file suffix (DFU 1.1) and ST's DfuSe container (UM0391), read and written.

Layout (all little-endian)::

    prefix   "DfuSe" u8 version=1, u32 DFUImageSize, u8 bTargets                 (11 bytes)
    target   "Target" u8 bAlternateSetting, u32 bTargetNamed, char[255] name,
             u32 dwTargetSize (elements incl. their 8-byte headers), u32 dwNbElements (274)
    element  u32 dwElementAddress, u32 dwElementSize, data
    suffix   u16 bcdDevice, u16 idProduct, u16 idVendor, u16 bcdDFU=0x011A, "UFD",
             u8 bLength=16, u32 dwCRC                                             (16 bytes)

dwCRC is the reflected CRC-32 of everything before it with no final XOR, i.e.
``~zlib.crc32`` — a file whose CRC does not match was damaged and is refused. DFUImageSize
is written as the whole file length (as dfuse-pack does since dfu-util 0.10) but not trusted
when reading: tools disagree on whether it counts the suffix.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from stmflash.errors import ImageError
from stmflash.image.model import Image

SUFFIX_LEN = 16
PREFIX = struct.Struct("<5sBIB")
TARGET = struct.Struct("<6sBI255sII")
ELEMENT = struct.Struct("<II")
SUFFIX = struct.Struct("<HHHH3sBI")
BCD_DFUSE = 0x011A
BCD_DFU = 0x0100
DEFAULT_VID_PID = (0x0483, 0xDF11)
DEFAULT_TARGET_NAME = "ST..."


@dataclass(frozen=True)
class Suffix:
    bcd_device: int
    pid: int
    vid: int
    bcd_dfu: int
    crc: int


def dfu_crc(data: bytes) -> int:
    """The suffix CRC: reflected CRC-32, initial 0xFFFFFFFF, no final XOR."""
    return ~zlib.crc32(data) & 0xFFFFFFFF


def has_suffix_signature(data: bytes) -> bool:
    """True when the last 16 bytes look like a DFU suffix ("UFD" and bLength 16)."""
    return len(data) >= SUFFIX_LEN and data[-8:-5] == b"UFD" and data[-5] == SUFFIX_LEN


def read_suffix(data: bytes, source: str) -> Suffix:
    """Parse and check the suffix; a CRC mismatch means the file was damaged."""
    if not has_suffix_signature(data):
        raise ImageError(
            f"{source}: no DFU suffix at the end of the file (truncated?): "
            f"no 'UFD' signature at offset 0x{max(len(data) - 8, 0):X}"
        )
    bcd_device, pid, vid, bcd_dfu, _sig, _len, crc = SUFFIX.unpack(data[-SUFFIX_LEN:])
    want = dfu_crc(data[:-4])
    if crc != want:
        raise ImageError(
            f"{source}: bad DFU suffix CRC at offset 0x{len(data) - 4:X}: file says 0x{crc:08X}, "
            f"contents give 0x{want:08X} (damaged file?)"
        )
    return Suffix(bcd_device, pid, vid, bcd_dfu, crc)


def make_suffix(body: bytes, *, vid: int, pid: int, bcd_device: int = 0xFFFF, bcd_dfu: int = BCD_DFUSE) -> bytes:
    """The 16-byte suffix for ``body`` (CRC covers body and the first 12 suffix bytes)."""
    head = struct.pack("<HHHH3sB", bcd_device & 0xFFFF, pid & 0xFFFF, vid & 0xFFFF, bcd_dfu, b"UFD", SUFFIX_LEN)
    return head + struct.pack("<I", dfu_crc(body + head))


def is_dfuse(data: bytes) -> bool:
    return data[:5] == b"DfuSe"


def parse_dfuse(data: bytes, source: str) -> Image:
    """Every target and element of a DfuSe file, with alt settings and names kept."""
    suffix = read_suffix(data, source)
    body_end = len(data) - SUFFIX_LEN
    if body_end < PREFIX.size:
        raise ImageError(f"{source}: truncated DfuSe file: {len(data)} bytes")
    sig, version, _image_size, n_targets = PREFIX.unpack_from(data, 0)
    if sig != b"DfuSe":
        raise ImageError(f"{source}: no 'DfuSe' prefix at offset 0")
    if version != 1:
        raise ImageError(f"{source}: unsupported DfuSe version {version} at offset 5")
    img = Image(source=source, format="dfu", dfu_ids=(suffix.vid, suffix.pid, suffix.bcd_device))
    pos = PREFIX.size
    for t in range(n_targets):
        if pos + TARGET.size > body_end:
            raise ImageError(f"{source}: truncated DfuSe file: target {t} prefix at offset 0x{pos:X} runs past the end")
        tsig, alt, named, raw_name, _tsize, n_elements = TARGET.unpack_from(data, pos)
        if tsig != b"Target":
            raise ImageError(f"{source}: no 'Target' signature at offset 0x{pos:X} (target {t})")
        if named:
            name = raw_name.split(b"\0", 1)[0].decode("latin-1")
            img.alt_names.setdefault(alt, name)
        pos += TARGET.size
        for e in range(n_elements):
            if pos + ELEMENT.size > body_end:
                raise ImageError(
                    f"{source}: truncated DfuSe file: element {e} of target {t} at offset 0x{pos:X} runs past the end"
                )
            address, size = ELEMENT.unpack_from(data, pos)
            pos += ELEMENT.size
            if pos + size > body_end:
                raise ImageError(
                    f"{source}: truncated DfuSe file: element {e} of target {t} at offset 0x{pos:X} "
                    f"needs {size} bytes, {body_end - pos} left"
                )
            try:
                img.add(address, data[pos : pos + size], alt=alt)
            except ImageError as exc:
                raise ImageError(f"{source}: element {e} of target {t} (alt {alt}) at offset 0x{pos:X}: {exc}") from None
            pos += size
    if pos != body_end:
        raise ImageError(f"{source}: {body_end - pos} unexpected bytes after the last target at offset 0x{pos:X}")
    return img


def build_dfuse(
    image: Image,
    *,
    vid_pid: tuple[int, int] = DEFAULT_VID_PID,
    bcd_device: int = 0xFFFF,
) -> bytes:
    """One target per alt setting (segments without an alt go to alt 0), named from
    ``image.alt_names``; one element per segment."""
    by_alt: dict[int, list[bytes]] = {}
    for seg in image.segments:
        alt = image.alts.get(seg.address)
        alt = 0 if alt is None else alt
        if not 0 <= alt <= 255:
            raise ImageError(f"{image.source or 'image'}: alt setting {alt} does not fit a DfuSe target")
        by_alt.setdefault(alt, []).append(ELEMENT.pack(seg.address, len(seg.data)) + seg.data)
    targets = bytearray()
    for alt in sorted(by_alt):
        elements = b"".join(by_alt[alt])
        name = image.alt_names.get(alt, DEFAULT_TARGET_NAME).encode("latin-1", "replace")[:254]
        targets += TARGET.pack(b"Target", alt, 1, name, len(elements), len(by_alt[alt])) + elements
    total = PREFIX.size + len(targets) + SUFFIX_LEN
    body = PREFIX.pack(b"DfuSe", 1, total, len(by_alt)) + bytes(targets)
    return body + make_suffix(body, vid=vid_pid[0], pid=vid_pid[1], bcd_device=bcd_device)
