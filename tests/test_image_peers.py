"""Cross-checks of the image formats against programs none of us wrote.

srec_cat (HEX/S-record writer and reader), dfuse-pack and dfu-suffix (dfu-util's .dfu
tools), and arm-none-eabi-gcc/objcopy (a real ELF with .data whose LMA != VMA).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stmflash.image import load, save
from stmflash.image.model import Image
from tests.peers import require, run

pytestmark = pytest.mark.peer

BASE = 0x08000000


def seg_list(img: Image) -> list[tuple[int, bytes]]:
    return [(s.address, s.data) for s in img.segments]


@pytest.fixture()
def two_bins(tmp_path: Path) -> tuple[Path, bytes, Path, bytes]:
    a, b = os.urandom(3000), os.urandom(517)
    pa, pb = tmp_path / "a.bin", tmp_path / "b.bin"
    pa.write_bytes(a)
    pb.write_bytes(b)
    return pa, a, pb, b


# ---- srec_cat ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt_args", "ext"),
    [(["-intel"], "hex"), (["-motorola", "-address-length=4"], "s37"), (["-motorola", "-address-length=3"], "s28")],
)
def test_srec_cat_output_loads_to_same_bytes(tmp_path: Path, two_bins, fmt_args: list[str], ext: str) -> None:
    srec_cat = require("srec_cat")
    pa, a, pb, b = two_bins
    out = tmp_path / f"out.{ext}"
    run([
        srec_cat, str(pa), "-binary", "-offset", hex(BASE),
        str(pb), "-binary", "-offset", hex(BASE + 0x10000),
        "-o", str(out), *fmt_args,
    ])  # fmt: skip
    img = load(out)
    assert seg_list(img) == [(BASE, a), (BASE + 0x10000, b)]


def test_srec_cat_reads_what_we_write(tmp_path: Path, two_bins) -> None:
    srec_cat = require("srec_cat")
    _, a, _, b = two_bins
    img = Image.from_segments([(BASE, a), (BASE + 0x10000, b)])
    for ext, flag in (("hex", "-intel"), ("srec", "-motorola")):
        ours = tmp_path / f"ours.{ext}"
        save(img, ours)
        back = tmp_path / f"back-{ext}.bin"
        run([
            srec_cat, str(ours), flag, "-offset", hex(-BASE & 0xFFFFFFFF),
            "-fill", "0xFF", "0", hex(0x10000 + len(b)),
            "-o", str(back), "-binary",
        ])  # fmt: skip
        assert back.read_bytes() == img.to_bin(0xFF)


# ---- dfuse-pack / dfu-suffix --------------------------------------------------------------
def test_dfuse_pack_files_load(tmp_path: Path, two_bins) -> None:
    pack = require("dfuse-pack")
    pa, a, pb, b = two_bins
    out = tmp_path / "pack.dfu"
    run([pack, "-b", f"{BASE:#x}:{pa}", "-b", f"{BASE + 0x10000:#x}:{pb}", "-D", "0x0483:0xdf11", str(out)])
    img = load(out)
    assert img.format == "dfu"
    assert seg_list(img) == [(BASE, a), (BASE + 0x10000, b)]
    assert img.dfu_ids is not None and img.dfu_ids[:2] == (0x0483, 0xDF11)
    assert set(img.alts.values()) == {0}


def test_dfuse_pack_multi_alt(tmp_path: Path, two_bins) -> None:
    pack = require("dfuse-pack")
    pa, a, pb, b = two_bins
    out = tmp_path / "alts.dfu"
    run([pack, "-b", f"{BASE:#x}:{pa}", "-b", f"0x1FFFC000@1:{pb}", "-D", "0x1234:0x5678", str(out)])
    img = load(out)
    assert seg_list(img) == [(BASE, a), (0x1FFFC000, b)]
    assert img.alts == {BASE: 0, 0x1FFFC000: 1}
    assert img.dfu_ids is not None and img.dfu_ids[:2] == (0x1234, 0x5678)
    out2 = tmp_path / "alt2.dfu"
    run([pack, "-a", "2", "-b", f"{BASE:#x}:{pa}", str(out2)])
    assert load(out2).alts == {BASE: 2}


def test_our_dfu_passes_dfu_suffix_and_dfuse_pack_dump(tmp_path: Path, two_bins) -> None:
    suffix_tool = require("dfu-suffix")
    pack = require("dfuse-pack")
    _, a, _, b = two_bins
    img = Image()
    img.add(BASE, a, alt=0)
    img.add(0x1FFFC000, b, alt=1)
    img.alt_names = {0: "Internal Flash", 1: "Option Bytes"}
    ours = tmp_path / "ours.dfu"
    save(img, ours, dfu_vid_pid=(0x0483, 0xDF11), bcd_device=0x2200)
    check = run([suffix_tool, "--check", str(ours)])
    text = check.stdout + check.stderr
    assert "0x0483" in text and "0xDF11" in text and "0x2200" in text and "0x011A" in text
    dump = run([pack, "-d", str(ours)], cwd=tmp_path)
    assert "CRC ERROR" not in dump.stdout
    assert "Internal Flash" in dump.stdout and "Option Bytes" in dump.stdout
    assert (tmp_path / "ours.dfu.target0.image0.bin").read_bytes() == a
    assert (tmp_path / "ours.dfu.target1.image0.bin").read_bytes() == b
    # and dfu-suffix notices when we break the file
    blob = bytearray(ours.read_bytes())
    blob[300] ^= 0xFF
    ours.write_bytes(bytes(blob))
    assert run([suffix_tool, "--check", str(ours)], check=False).returncode != 0


def test_dfu_suffix_added_binary_loads(tmp_path: Path, two_bins) -> None:
    suffix_tool = require("dfu-suffix")
    pa, a, _, _ = two_bins
    run([suffix_tool, "-a", str(pa), "-v", "0483", "-p", "df11", "-d", "0x2200"])
    img = load(pa, address=BASE)
    assert img.format == "dfu-bin"
    assert seg_list(img) == [(BASE, a)]
    assert img.dfu_ids == (0x0483, 0xDF11, 0x2200)


# ---- arm-none-eabi-gcc ----------------------------------------------------------------------
APP_C = r"""
#include <stdint.h>
extern uint32_t _estack, _sidata, _sdata, _edata, _sbss, _ebss;
int counter = 0x12345678;
uint8_t table[37] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
uint32_t zeroed[64]; /* .bss: memsz > filesz, nothing to flash */
void Reset_Handler(void);
void Default_Handler(void) { for (;;) {} }
__attribute__((section(".isr_vector"), used))
const void *vectors[] = {&_estack, (void *)Reset_Handler, (void *)Default_Handler, (void *)Default_Handler};
int main(void) { for (;;) { counter += table[counter & 7] + zeroed[counter & 63]; } }
void Reset_Handler(void) {
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
    main();
}
"""

APP_LD = """
MEMORY { FLASH (rx) : ORIGIN = 0x08000000, LENGTH = 64K
         RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 20K }
_estack = ORIGIN(RAM) + LENGTH(RAM);
ENTRY(Reset_Handler)
SECTIONS {
  .isr_vector : { KEEP(*(.isr_vector)) } > FLASH
  .text : { *(.text*) *(.rodata*) . = ALIGN(4); } > FLASH
  _sidata = LOADADDR(.data);
  .data : { _sdata = .; *(.data*) . = ALIGN(4); _edata = .; } > RAM AT > FLASH
  .bss : { _sbss = .; *(.bss*) *(COMMON) . = ALIGN(4); _ebss = .; } > RAM
}
"""


def test_gcc_elf_matches_objcopy_binary(tmp_path: Path) -> None:
    gcc = require("arm-none-eabi-gcc")
    objcopy = require("arm-none-eabi-objcopy")
    (tmp_path / "app.c").write_text(APP_C)
    (tmp_path / "app.ld").write_text(APP_LD)
    elf = tmp_path / "app.elf"
    run([
        gcc, "-mcpu=cortex-m3", "-mthumb", "-Os", "-fno-builtin", "-fno-tree-loop-distribute-patterns",
        "-nostdlib", "-nostartfiles", "-T", str(tmp_path / "app.ld"), "-o", str(elf), str(tmp_path / "app.c"),
    ])  # fmt: skip
    binf = tmp_path / "app.bin"
    run([objcopy, "-O", "binary", str(elf), str(binf)])
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        loads = [s.header for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD"]
    assert any(h.p_vaddr != h.p_paddr for h in loads)  # .data: LMA != VMA
    assert any(h.p_memsz > h.p_filesz for h in loads)  # .bss: not in the file
    img = load(elf)
    assert img.format == "elf"
    # objcopy's binary starts at the lowest load address: the flash start here
    assert img.start == BASE
    assert img.to_bin(0x00) == binf.read_bytes()  # objcopy pads gaps with zeros
    # .data sits in flash (LMA) right after .text, not at its RAM address; .bss is absent
    assert all(BASE <= s.address < BASE + 0x10000 for s in img.segments)
    assert (0x12345678).to_bytes(4, "little") in img.to_bin()
    assert img.entry is not None and img.entry & 1
    from stmflash.image.vectors import check_vector_table

    assert check_vector_table(img) == []

    obj = tmp_path / "app.o"
    run([gcc, "-mcpu=cortex-m3", "-mthumb", "-c", "-o", str(obj), str(tmp_path / "app.c")])
    from stmflash.errors import ImageError

    with pytest.raises(ImageError, match="no loadable segment"):
        load(obj)
