"""Loaders and writers: format detection, round trips, and one-line errors with a location."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stmflash.errors import ImageError, UsageError
from stmflash.image import load, save
from stmflash.image.dfuse_file import build_dfuse, dfu_crc, make_suffix, parse_dfuse
from stmflash.image.loaders import load_bytes, sniff
from stmflash.image.model import Image
from stmflash.image.writers import render

F4_BASE = 0x08000000


def sample() -> Image:
    img = Image.from_segments([(F4_BASE, bytes(range(256)) * 4), (F4_BASE + 0x4000, b"\xde\xad\xbe\xef" * 9)])
    return img


def seg_list(img: Image) -> list[tuple[int, bytes]]:
    return [(s.address, s.data) for s in img.segments]


# ---- sparse images for property tests ----------------------------------------------------
@st.composite
def sparse_images(draw: st.DrawFn) -> Image:
    base = draw(st.sampled_from([0x0, 0x08000000, 0x0000FF00, 0x00FFFF00, 0x1FFFC000, 0xFFFF0000]))
    pieces = draw(
        st.lists(st.tuples(st.integers(1, 0x300), st.binary(min_size=1, max_size=200)), min_size=1, max_size=5)
    )
    img = Image()
    addr = base
    for gap, data in pieces:
        if addr + len(data) > 1 << 32:
            break
        img.add(addr, data)
        addr += len(data) + gap
    if not img.segments:
        img.add(base, b"\x00")
    return img


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sparse_images(), st.sampled_from([0xFF, 0x00, 0xA5]))
def test_round_trip_hex_bin_srec_dfu_hex(tmp_path: Path, img: Image, fill: int) -> None:
    hex1 = tmp_path / "a.hex"
    save(img, hex1)
    a = load(hex1)
    assert seg_list(a) == seg_list(img) and a.format == "hex"

    # bin: one block from the first address; every segment is in place, gaps are `fill`
    binf = tmp_path / "a.bin"
    save(a, binf, fill=fill)
    b = load(binf, address=img.start)
    assert b.start == img.start and b.end == img.end
    for s in img.segments:
        assert b.read(s.address, len(s)) == s.data
    for (_, e), (n, _) in zip(img.ranges(), img.ranges()[1:], strict=False):
        assert b.read(e, n - e) == bytes([fill]) * (n - e)

    srec = tmp_path / "a.srec"
    save(a, srec)
    c = load(srec)
    assert seg_list(c) == seg_list(img) and c.format == "srec"

    dfu = tmp_path / "a.dfu"
    save(c, dfu)
    d = load(dfu)
    assert seg_list(d) == seg_list(img) and d.format == "dfu"

    hex2 = tmp_path / "b.hex"
    save(d, hex2)
    assert seg_list(load(hex2)) == seg_list(img)


def test_srec_uses_smallest_record_type(tmp_path: Path) -> None:
    for addr, rec in ((0x100, "S1"), (0x12000, "S2"), (F4_BASE, "S3")):
        text = render(Image.from_bytes(b"abc", addr), "srec").decode()
        data_types = {line[:2] for line in text.splitlines() if line[:2] in ("S1", "S2", "S3")}
        assert data_types == {rec}
    forced = render(Image.from_bytes(b"abc", 0x100), "srec", srec_bits=32).decode()
    assert any(line.startswith("S3") for line in forced.splitlines())
    with pytest.raises(ImageError, match="does not fit 16-bit"):
        render(Image.from_bytes(b"abc", F4_BASE), "srec", srec_bits=16)


def test_entry_address_survives_hex_and_srec(tmp_path: Path) -> None:
    img = sample()
    img.entry = 0x08000189
    save(img, tmp_path / "e.hex")
    h = load(tmp_path / "e.hex")
    assert h.entry == 0x08000189
    save(h, tmp_path / "e.s37")
    assert load(tmp_path / "e.s37").entry == 0x08000189


def hex_rec(addr: int, rtype: int, data: bytes) -> str:
    body = bytes([len(data), addr >> 8, addr & 0xFF, rtype]) + data
    return ":" + (body + bytes([-sum(body) & 0xFF])).hex().upper()


def test_hex_extended_segment_and_start_segment_records(tmp_path: Path) -> None:
    rec = hex_rec
    lines = [
        rec(0, 2, b"\x10\x00"),  # segment 0x1000 -> base 0x10000
        rec(0x0010, 0, b"\x01\x02\x03\x04"),
        rec(0, 4, b"\x08\x00"),  # linear 0x0800 -> base 0x08000000
        rec(0x0000, 0, b"\xaa\xbb"),
        rec(0, 3, b"\x12\x34\x00\x10"),  # CS:IP start
        rec(0, 1, b""),
    ]
    p = tmp_path / "seg.hex"
    p.write_text("\n".join(lines) + "\n")
    img = load(p)
    assert seg_list(img) == [(0x10010, b"\x01\x02\x03\x04"), (F4_BASE, b"\xaa\xbb")]
    assert img.entry == 0x1234 * 16 + 0x10


def test_sniff_by_content_not_extension(tmp_path: Path) -> None:
    img = sample()
    for fmt, name in (("hex", "x.bin"), ("srec", "x.hex"), ("dfu", "x.srec")):
        tmp = tmp_path / f"real.{fmt}"
        save(img, tmp)
        wrong = tmp_path / f"{fmt}-{name}"
        wrong.write_bytes(tmp.read_bytes())
        got = load(wrong)
        assert got.format == fmt and seg_list(got) == seg_list(img)
    assert sniff(b"\x7fELF\x01\x01\x01" + bytes(45)) == "elf"
    assert sniff(b"\x7fELF\x01\x01") is None  # the magic alone is not an ELF header
    assert sniff(b"\x00\x10\x00\x20\x01\x01\x00\x08") is None


def test_forced_format(tmp_path: Path) -> None:
    p = tmp_path / "fw.hex"
    save(sample(), p)
    raw = load(p, fmt="bin", address=0x1000)
    assert raw.format == "bin" and raw.segments[0].data == p.read_bytes()
    with pytest.raises(UsageError, match="unknown image format"):
        load(p, fmt="pdf")


def test_bin_needs_an_address(tmp_path: Path) -> None:
    p = tmp_path / "fw.bin"
    p.write_bytes(b"\x00" * 16)
    with pytest.raises(UsageError, match="--address"):
        load(p)
    assert load(p, address=0x08004000).start == 0x08004000

    class Dev:
        flash_start = 0x08000000

    assert load(p, device=Dev()).start == 0x08000000  # type: ignore[arg-type]


def test_address_is_refused_for_formats_with_addresses(tmp_path: Path) -> None:
    p = tmp_path / "fw.hex"
    save(sample(), p)
    with pytest.raises(UsageError, match="only to raw binaries"):
        load(p, address=0x08000000)


def test_dfuse_targets_alts_names_and_ids(tmp_path: Path) -> None:
    img = Image()
    img.add(F4_BASE, b"\x01" * 100, alt=0)
    img.add(F4_BASE + 0x100, b"\x02" * 10, alt=0)
    img.add(0x1FFFC000, b"\xaa\xbb" * 8, alt=1)
    img.alt_names = {0: "Internal Flash", 1: "Option Bytes"}
    blob = build_dfuse(img, vid_pid=(0x1234, 0x5678), bcd_device=0x2200)
    assert blob[-8:-5] == b"UFD"
    assert int.from_bytes(blob[-4:], "little") == dfu_crc(blob[:-4])
    assert blob[:5] == b"DfuSe" and blob[10] == 2  # two targets
    back = parse_dfuse(blob, "t.dfu")
    assert seg_list(back) == seg_list(img)
    assert back.alts == {F4_BASE: 0, F4_BASE + 0x100: 0, 0x1FFFC000: 1}
    assert back.alt_names == {0: "Internal Flash", 1: "Option Bytes"}
    assert back.dfu_ids == (0x1234, 0x5678, 0x2200)


def test_plain_dfu_suffixed_binary(tmp_path: Path) -> None:
    body = bytes(range(64))
    p = tmp_path / "app.bin"
    p.write_bytes(body + make_suffix(body, vid=0x0483, pid=0xDF11, bcd_device=0x0200, bcd_dfu=0x0100))
    img = load(p, address=F4_BASE)
    assert img.format == "dfu-bin" and seg_list(img) == [(F4_BASE, body)]
    assert img.dfu_ids == (0x0483, 0xDF11, 0x0200)
    damaged = bytearray(p.read_bytes())
    damaged[3] ^= 0xFF
    p.write_bytes(bytes(damaged))
    with pytest.raises(ImageError, match=r"app\.bin: bad DFU suffix CRC at offset 0x4C"):
        load(p, address=F4_BASE)


# ---- errors: one line, file and location ----------------------------------------------
def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_hex_bad_checksum_names_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.hex"
    save(sample(), p)
    lines = p.read_text().splitlines()
    lines[3] = lines[3][:-2] + ("00" if lines[3][-2:] != "00" else "01")
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImageError) as exc:
        load(p)
    assert _one_line(exc) == f"{p}: line 4: bad record checksum"


def test_hex_garbage_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.hex"
    save(sample(), p)
    lines = p.read_text().splitlines()
    lines.insert(2, "hello")
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImageError, match=r"bad\.hex: line 3: not an Intel HEX record"):
        load(p)
    p.write_bytes(b":020000040800F2\n\xff\xfe\n")
    with pytest.raises(ImageError, match=r"line 2: not Intel HEX text"):
        load(p)


def test_hex_overlap_names_line_and_address(tmp_path: Path) -> None:
    p = tmp_path / "ov.hex"
    p.write_text("\n".join([hex_rec(0, 0, b"\x01\x02\x03\x04"), hex_rec(2, 0, b"\x05\x06"), hex_rec(0, 1, b"")]) + "\n")
    with pytest.raises(ImageError, match=r"ov\.hex: line 2: data overlaps earlier data at 0x00000002"):
        load(p)


def test_srec_bad_checksum_names_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.s37"
    save(sample(), p)
    lines = p.read_text().splitlines()
    lines[2] = lines[2][:-2] + ("00" if lines[2][-2:] != "00" else "01")
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImageError) as exc:
        load(p)
    assert _one_line(exc) == f"{p}: line 3: bad record checksum"


def test_truncated_dfu(tmp_path: Path) -> None:
    p = tmp_path / "t.dfu"
    save(sample(), p)
    full = p.read_bytes()
    p.write_bytes(full[:300])
    with pytest.raises(ImageError, match=r"t\.dfu: no DFU suffix .*truncated.*offset 0x124"):
        load(p)
    # a suffix that is valid but whose body lost bytes: element runs past the end
    body = full[:-16][:-20]
    p.write_bytes(body + make_suffix(body, vid=0x0483, pid=0xDF11))
    with pytest.raises(ImageError, match=r"truncated DfuSe file: element 1 of target 0 at offset 0x"):
        load(p)


def test_dfu_bad_suffix_crc(tmp_path: Path) -> None:
    p = tmp_path / "c.dfu"
    save(sample(), p)
    blob = bytearray(p.read_bytes())
    blob[400] ^= 0x5A
    p.write_bytes(bytes(blob))
    with pytest.raises(ImageError, match=r"c\.dfu: bad DFU suffix CRC at offset 0x"):
        load(p)


def test_dfu_bad_target_signature(tmp_path: Path) -> None:
    img = sample()
    blob = bytearray(build_dfuse(img)[:-16])
    blob[11:17] = b"Tarxet"
    body = bytes(blob)
    p = tmp_path / "s.dfu"
    p.write_bytes(body + make_suffix(body, vid=0x0483, pid=0xDF11))
    with pytest.raises(ImageError, match=r"s\.dfu: no 'Target' signature at offset 0xB"):
        load(p)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nope\.hex: cannot read"):
        load(tmp_path / "nope.hex")
    with pytest.raises(ImageError, match="cannot read"):
        load(tmp_path)


def test_elf_without_loadable_segment(tmp_path: Path) -> None:
    # a minimal 32-bit ELF header with no program headers (like a relocatable .o)
    hdr = b"\x7fELF\x01\x01\x01" + bytes(9) + struct.pack("<HHIIIIIHHHHHH", 1, 40, 1, 0, 0, 0, 0, 52, 0, 0, 40, 0, 0)
    p = tmp_path / "obj.elf"
    p.write_bytes(hdr)
    with pytest.raises(ImageError, match=r"obj\.elf: ELF file has no loadable segment"):
        load(p)
    q = tmp_path / "fake.elf"
    q.write_bytes(b"not an elf at all")
    with pytest.raises(ImageError, match=r"fake\.elf: not an ELF file"):
        load(q)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.hex"
    p.write_text(":00000001FF\n")
    with pytest.raises(ImageError, match=r"empty\.hex: no data"):
        load(p)


def test_writer_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="output format"):
        save(sample(), tmp_path / "x.pdf")
    with pytest.raises(ImageError, match="cannot write"):
        save(sample(), tmp_path / "no" / "such" / "dir.hex")
    with pytest.raises(ImageError, match="empty"):
        save(Image(), tmp_path / "e.hex")
    huge = Image.from_segments([(F4_BASE, b"\x00"), (0x1FFFC000, b"\x01")])
    with pytest.raises(ImageError, match="mostly fill"):
        save(huge, tmp_path / "huge.bin")
    assert not (tmp_path / "huge.bin").exists()


def test_bin_fill_and_start(tmp_path: Path) -> None:
    img = Image.from_segments([(0x100, b"\x01\x02"), (0x104, b"\x03")])
    assert render(img, "bin", fill=0x00) == b"\x01\x02\x00\x00\x03"
    assert render(img, "bin", start=0xFE) == b"\xff\xff\x01\x02\xff\xff\x03"


def test_load_bytes_uses_source_in_messages() -> None:
    with pytest.raises(ImageError, match="^mem.hex: line 1"):
        load_bytes(b":zz\n", "mem.hex")


def test_srec_overlap_names_line_and_address(tmp_path: Path) -> None:
    p = tmp_path / "ov.s19"
    p.write_text("S107000001020304EE\nS107000205060708DC\n")
    with pytest.raises(ImageError, match=r"ov\.s19: line 2: data overlaps earlier data at 0x00000002"):
        load(p)


def test_merge_overlap_names_both_sources() -> None:
    a = Image.from_bytes(b"\x00" * 16, 0x100, source="a.hex")
    b = Image.from_bytes(b"\x00" * 16, 0x108, source="b.hex")
    with pytest.raises(ImageError, match=r"a\.hex and b\.hex overlap at 0x00000108"):
        a.merge(b)


def test_crlf_lowercase_and_trailing_blanks(tmp_path: Path) -> None:
    img = sample()
    for ext in ("hex", "srec"):
        text = render(img, ext).decode()
        p = tmp_path / f"dos.{ext}"
        p.write_bytes(("\r\n".join(line[:2] + line[2:].lower() + "  " for line in text.splitlines()) + "\r\n").encode())
        got = load(p)
        assert got.format == ext and seg_list(got) == seg_list(img)
