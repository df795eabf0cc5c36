"""DfuSe layout strings: lenient parsing, the table's strings under dfu-util's rules,
and recognising a device from what its ROM presents."""

from __future__ import annotations

import re

import pytest

from stmflash.devices import all_devices
from stmflash.dfu.facts import dfu_facts, find_alt, identify, uid_serial
from stmflash.dfu.layout import normalise_name, parse_alt, render_units, try_parse_alt

K = 1024


def test_f4_flash_string():
    lay = parse_alt("@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg")
    assert lay.name == "Internal Flash"
    assert [(s.count, s.size) for s in lay.sectors] == [(4, 16 * K), (1, 64 * K), (7, 128 * K)]
    assert lay.start == 0x08000000 and lay.size == 1024 * K
    assert all(s.readable and s.erasable and s.writable for s in lay.sectors)
    assert lay.sector_at(0x08010000).size == 64 * K
    assert lay.contains(0x0800FFF0, 0x20) and not lay.contains(0x080FFFF0, 0x20)


@pytest.mark.parametrize(
    "text, name, groups, kind",
    [
        ("@Option Bytes  /0x1FFFF800/01*016 e", "Option Bytes", [(0x1FFFF800, 1, 16)], 5),
        ("@Option Bytes /0x1FFFC000/01*016 g", "Option Bytes", [(0x1FFFC000, 1, 16)], 7),
        ("@Internal Flash  /0x08000000/0128*0002Kg", "Internal Flash", [(0x08000000, 128, 2 * K)], 7),
        ("@OTP Memory /0x1FFF7000/01*0001Ke", "OTP Memory", [(0x1FFF7000, 1, K)], 5),
        ("@Internal Flash   /0x08000000/16*128Kg", "Internal Flash", [(0x08000000, 16, 128 * K)], 7),
        ("@Internal Flash  /0x08000000/01*64Kg", "Internal Flash", [(0x08000000, 1, 64 * K)], 7),
        ("@Internal Flash/0x08000000/064*0002Kg", "Internal Flash", [(0x08000000, 64, 2 * K)], 7),
        ("@Device Feature/0xFFFF0000/01*004 g", "Device Feature", [(0xFFFF0000, 1, 4)], 7),
        ("@Option Bytes  /0x40022040/01*48 e", "Option Bytes", [(0x40022040, 1, 48)], 5),
        ("@SRAM /0x20000000/01*1Ma", "SRAM", [(0x20000000, 1, 1024 * K)], 1),
        ("@Flash /0x08000000/02*1024a", "Flash", [(0x08000000, 2, 1024)], 1),  # type letter as multiplier
    ],
)
def test_variants(text, name, groups, kind):
    lay = parse_alt(text)
    assert lay.name == name
    assert [(s.address, s.count, s.size) for s in lay.sectors] == groups
    assert {s.kind for s in lay.sectors} == {kind}


def test_several_regions_in_one_alt():
    lay = parse_alt("@Option Bytes  /0x1FFF7800/01*048 e/0x1FFFF800/01*048 e")
    assert lay.regions() == [(0x1FFF7800, 0x1FFF7830), (0x1FFFF800, 0x1FFFF830)]
    assert lay.contains(0x1FFFF800, 48) and not lay.contains(0x1FFF7830)


def test_type_bits():
    lay = parse_alt("@X /0x0/01*1Ka,01*1Kb,01*1Kc,01*1Kd")
    assert [(s.readable, s.erasable, s.writable) for s in lay.sectors] == [
        (True, False, False), (False, True, False), (True, True, False), (False, False, True)
    ]


def test_garbage_is_rejected_leniently():
    with pytest.raises(ValueError):
        parse_alt("Internal Flash")
    with pytest.raises(ValueError):
        parse_alt("@Flash/0xZZ/01*1Kg")
    assert try_parse_alt("DFU interface").sectors == ()


def test_render_matches_rom_style():
    units = [(0x08000000 + i * 16 * K, 16 * K) for i in range(4)] + [(0x08010000, 64 * K)]
    assert render_units(units) == "04*016Kg,01*064Kg"
    assert render_units([(0, 16)]) == "01*016 g"


# dfu-util 0.11 dfuse_mem.c: "/0x%x/" then segments "%d*%d%c%[^,/]"; the multiplier char is
# B/K/M, or a type letter a-g (bytes); anything else falls back to bytes with a warning.
_DFU_UTIL_SEG = re.compile(r"^(\d+)\*(\d+)(.)([^,/]*)$")


def _dfu_util_parse(text: str) -> list[tuple[int, int, int, int]]:
    assert text.startswith("@")
    fields = text[1:].split("/")
    out = []
    for i in range(1, len(fields) - 1, 2):
        address = int(fields[i], 16)
        assert fields[i].startswith("0x"), f"dfu-util needs 0x addresses: {text!r}"
        for seg in fields[i + 1].split(","):
            m = _DFU_UTIL_SEG.match(seg)
            assert m, f"dfu-util cannot scan segment {seg!r} of {text!r}"
            count, size, mult, rest = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
            if mult in "BKM":
                size *= {"B": 1, "K": 1024, "M": 1024 * 1024}[mult]
                typ = rest[:1]
            elif mult in "abcdefg":
                typ = mult
            else:
                assert mult == " ", f"unexpected multiplier {mult!r} in {text!r}"
                typ = rest[:1]
            assert typ and typ in "abcdefg", f"no type letter in {seg!r} of {text!r}"
            out.append((address, count, size, ord(typ) & 7))
            address += count * size
    return out


DFU_DEVICES = [d for d in all_devices() if "dfu" in d.interfaces]


@pytest.mark.parametrize("device", DFU_DEVICES, ids=lambda d: f"{d.short_name}-{d.pid:03x}")
def test_table_strings_parse_like_dfu_util(device):
    for text in dfu_facts(device).alts:
        ours = parse_alt(text)
        theirs = _dfu_util_parse(text)
        assert [(s.address, s.count, s.size, s.kind) for s in ours.sectors] == theirs


@pytest.mark.parametrize("device", DFU_DEVICES, ids=lambda d: f"{d.short_name}-{d.pid:03x}")
def test_flash_alt_matches_erase_units(device):
    flash = find_alt(dfu_facts(device).layouts(), "Internal Flash")
    assert flash is not None
    assert [(a, s) for a, s, _ in flash.pages()] == [(u.address, u.size) for u in device.erase_units]


@pytest.mark.parametrize("device", DFU_DEVICES, ids=lambda d: f"{d.short_name}-{d.pid:03x}")
def test_identify_from_descriptors(device):
    facts = dfu_facts(device)
    got = identify(facts.layouts(), facts.bcd_device, facts.product)
    # several parts may present identical descriptors; then any of them is a right answer
    def shown(d):
        return sorted((normalise_name(lay.name), lay.start, lay.size) for lay in dfu_facts(d).layouts())

    assert shown(got) == shown(device), f"{device.name} taken for {got.name}"
    assert got.flash_size == device.flash_size
    assert [(u.address, u.size) for u in got.erase_units] == [(u.address, u.size) for u in device.erase_units]
    assert dfu_facts(got).bcd_device == facts.bcd_device


def test_unknown_layout_gives_generic_device_from_descriptor():
    dev = identify([parse_alt("@Internal Flash  /0x08000000/03*100Kg")], 0x9999)
    assert dev.generic and dev.flash_size == 300 * K
    assert [u.size for u in dev.erase_units] == [100 * K] * 3


def test_uid_serial_follows_st_usb_library():
    uid = bytes.fromhex("3a0027000b51373336383735")
    w0, w1, w2 = 0x0027003A, 0x3337510B, 0x35373836
    assert uid_serial(uid) == f"{(w0 + w2) & 0xFFFFFFFF:08X}{w1 >> 16:04X}"
    assert len(uid_serial(uid)) == 12
