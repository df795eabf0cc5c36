"""The RAM flasher stub: prebuilt binaries, which devices can run one, how it is set up.

The binaries (``stmflash/data/stub/stub-<group>.bin``, built from ``firmware/stub`` by
``make -C firmware/stub install``) are position-dependent, linked at one load address per
family group; ``manifest.json`` records load address, size and CRC-32 of each, and a test
rebuilds them and compares byte for byte. Before Go the host fills in the binary's first
words: the initial stack pointer (end of the device's usable RAM) and the parameter block
(FLASH controller, USART candidates, ROM baud, RAM for buffers, bank layout), all from the
device table's ``stub`` entry. Nothing is written to flash or option bytes to run it: the
stub lives in RAM until the chip resets.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from stmflash.devices import Device

MAGIC = 0x53544231
IWDG_KR = 0x40003000  # same address on every family with a stub (RM0090/RM0444/RM0351/RM0008; CMSIS stm32l0xx.h/stm32l1xx.h IWDG_BASE)
STACK_AND_STATE = 768 + 640  # stub stack reserve + its state structure (firmware/stub/stub.c)
CRC_TABLE = 1024
SLOT = 1048  # one frame buffer (struct slot)
MIN_SLOTS = 2
GROUP_IDS = {"f4": 1, "g0l4": 2, "f1": 3, "f7": 4, "l0l1": 5}
GROUP_FAMILIES = {"f4": "F2, F4", "f7": "F7", "g0l4": "G0, G4, L4, L4+, WB, WL", "f1": "F0, F1, F3",
                  "l0l1": "L0, L1"}


@dataclass(frozen=True)
class StubImage:
    group: str
    load: int
    data: bytes
    cpu: str

    @property
    def end(self) -> int:
        return self.load + len(self.data)


@lru_cache(maxsize=1)
def manifest() -> dict[str, Any]:
    text = resources.files("stmflash").joinpath("data/stub/manifest.json").read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=8)
def stub_image(group: str) -> StubImage:
    """The shipped binary of ``group``, checked against the manifest's CRC."""
    entry = manifest()[group]
    data = resources.files("stmflash").joinpath(f"data/stub/{entry['file']}").read_bytes()
    if f"0x{zlib.crc32(data):08X}" != entry["crc32"] or len(data) != entry["size"]:
        raise RuntimeError(f"stub binary {entry['file']} does not match its manifest (damaged install)")
    return StubImage(group, int(entry["load"], 0), data, entry["cpu"])


def support(device: Device) -> tuple[bool, str]:
    """(True, group) when the stub runs on ``device``; else (False, why not)."""
    facts = device.stub
    if not facts:
        return False, f"no stub for the {device.family} family"
    group = facts.get("group", "")
    if group not in manifest():
        return False, f"no stub binary for group {group!r}"
    img = stub_image(group)
    ram = device.ram_usable
    if ram is None:
        return False, "usable RAM unknown"
    need = CRC_TABLE + MIN_SLOTS * SLOT + STACK_AND_STATE + 8
    if img.load < ram.start or img.end + need > ram.end:
        return False, (
            f"not enough usable RAM (stub at 0x{img.load:08X}, {len(img.data)} bytes + "
            f"{need} for buffers; usable 0x{ram.start:08X}-0x{ram.end - 1:08X})"
        )
    return True, group


def bank_units(device: Device) -> int:
    """Erase units in bank 1 when the controller numbers bank 2 separately (else 0)."""
    if device.bank_count < 2:
        return 0
    return len(device.bank_units(1))


def patched(device: Device, rom_baud: int, binary: bytes | None = None) -> StubImage:
    """The stub for ``device`` with its stack pointer and parameter block filled in.

    ``binary``: another build of the group's stub (tests load deliberately broken ones)."""
    ok, why = support(device)
    if not ok:
        raise ValueError(why)
    facts = device.stub
    img = stub_image(why)
    if binary is not None:
        img = StubImage(img.group, img.load, bytes(binary), img.cpu)
    assert device.ram_usable is not None
    usarts = list(facts.get("usarts", []))[:4]
    usarts += [0] * (4 - len(usarts))
    sysmem = device.system_memory.start if device.system_memory else 0
    params = struct.pack(
        "<16I",
        device.ram_usable.end & ~7,  # initial SP
        int.from_bytes(img.data[4:8], "little"),  # entry (as linked)
        MAGIC,
        int(facts["flash_regs"]),
        *usarts,
        rom_baud,
        (img.end + 7) & ~7,
        device.ram_usable.end,
        bank_units(device),
        int(facts.get("half_page", facts.get("bank_code", 0))),  # L0/L1: half-page bytes there
        sysmem,
        IWDG_KR,
        1 if facts.get("usart_v2") else 0,
    )
    return StubImage(img.group, img.load, params + img.data[len(params):], img.cpu)
