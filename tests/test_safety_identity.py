"""Identity is confirmed before anything is erased.

PID, bootloader ID and version, the Get command list, the flash-size register and the UID
carry no checksum in AN3155: each is read until two answers agree, and the flash size must
be plausible for the PID (device table). A chip whose identity cannot be confirmed is never
erased. Under noise one chip therefore keeps one serial number.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stmflash import devices
from stmflash.errors import EXIT_NO_ANSWER, IdentityError
from stmflash.sim import registry
from stmflash.sim.chip import VirtualChip
from stmflash.uart.protocol import Bootloader, plausible_flash_size
from tests.clirun import run_cli

ROOT = Path(__file__).resolve().parents[1]
HEX = str(ROOT / "examples" / "blinky-f407.hex")
F4 = devices.find("F407")



def test_flash_size_plausible_for_the_pid() -> None:
    assert plausible_flash_size(F4, 1024 * 1024) and plausible_flash_size(F4, 512 * 1024)
    assert plausible_flash_size(F4, 16 * 1024)
    assert not plausible_flash_size(F4, 1025 * 1024)  # one flipped bit of 0x0400
    assert not plausible_flash_size(F4, 2 * 1024 * 1024)  # more than any F405/407
    assert not plausible_flash_size(F4, 40 * 1024)  # not on a sector boundary
    assert not plausible_flash_size(F4, 0)


class _Flaky:
    """A bootloader answer that differs on every reading (what a very noisy line gives)."""

    def __init__(self, values: list[int]) -> None:
        self.values = list(values)

    def __call__(self) -> int:
        return self.values.pop(0)


def test_answers_believed_only_when_two_agree() -> None:
    bl = Bootloader(object(), name="test")
    assert bl._confirmed("Get ID", _Flaky([0x417, 0x413, 0x413])) == 0x413
    assert bl._confirmed("Get ID", _Flaky([0x413, 0x417, 0x413])) == 0x413
    with pytest.raises(IdentityError, match="Get ID"):
        bl._confirmed("Get ID", _Flaky([1, 2, 3, 4, 5, 6]))


@pytest.mark.parametrize("kib", [0x0500, 1000])
def test_implausible_flash_size_register_is_never_erased(capsys, kib: int) -> None:
    chip = registry.register("id-size", VirtualChip(F4))
    try:
        # the register of a broken (or misread) part: two reads agree, the table does not
        chip._register_bytes = lambda: [(F4.flash_size_reg, kib.to_bytes(2, "little")),  # type: ignore[method-assign]
                                        (F4.uid_reg, chip.uid)]
        chip.preload(0x08000000, b"\x5a" * 0x4000)
        code, _, err = run_cli(["uart", "sim://F407?chip=id-size", HEX, "-q"], capsys)
        assert code == EXIT_NO_ANSWER and "flash-size register" in err and "nothing was erased" in err
        assert bytes(chip.flash[:0x4000]) == b"\x5a" * 0x4000
    finally:
        registry.unregister("id-size")


def test_identity_under_noise_is_the_real_one(capsys) -> None:
    """Many noisy connects: never another part, never another UID."""
    for seed in range(40):
        name = f"id-noise-{seed}"
        chip = registry.register(name, VirtualChip(F4, faults="corrupt=0.006", seed=seed))
        try:
            code, out, err = run_cli(["uart", f"sim://F407?chip={name}", "--json", "--timeout", "0.05"], capsys)
            if code == 0:
                result = json.loads(out.strip().splitlines()[-1])
                assert result["chip"]["pid"] == "0x413", (seed, result)
                assert result["chip"]["uid"] == chip.uid.hex().upper(), (seed, result)
                assert result["chip"]["flash_size"] == F4.flash_size
            else:
                assert code == EXIT_NO_ANSWER, err
        finally:
            registry.unregister(name)


def test_noisy_uid_one_chip_one_serial(tmp_path, capsys) -> None:
    """12 noisy batch runs on one chip: one serial number, never a new one per run."""
    chip = registry.register("id-uid", VirtualChip(F4, faults="corrupt=0.006", seed=3))
    ledger = tmp_path / "serials.jsonl"
    serials, uids = set(), set()
    try:
        for run in range(12):
            code, out, err = run_cli(
                ["batch", HEX, "sim://F407?chip=id-uid", "--serial-address", "0x08003F00",
                 "--serial-format", "u32", "--ledger", str(ledger), "--report-dir", str(tmp_path / f"r{run}"),
                 "--after", "stay", "--retries", "2", "--json", "-q"], capsys)
            summary = [json.loads(line) for line in out.splitlines() if '"summary"' in line][-1]
            with open(summary["report_json"]) as fh:
                (board,) = json.load(fh)["results"]
            if board["serial_number"] not in (None, ""):
                serials.add(int(board["serial_number"]))
            if board["uid"]:
                uids.add(board["uid"])
            assert code in (0, 6), err
    finally:
        registry.unregister("id-uid")
    assert uids == {chip.uid.hex().upper()}
    assert serials == {1}
    assert int.from_bytes(chip.flash[0x3F00:0x3F04], "little") == 1


def test_dfu_descriptors_read_until_two_readings_agree(monkeypatch) -> None:
    """The alt strings decide the memory layout: one garbled reading is not believed."""
    from stmflash.dfu.usb import find_devices
    from stmflash.errors import LinkError
    from stmflash.sim import usb_backend

    bus = usb_backend.VirtualBus()
    dev = bus.attach(VirtualChip(F4))
    real = usb_backend.VirtualUsbDevice.strings
    assert "16Kg" in real(dev)[usb_backend.S_ALT0]  # so the glitch below changes the layout
    readings = {"n": 0}

    def glitchy(self):  # the first reading of the flash alt string is garbled
        s = real(self)
        readings["n"] += 1
        if readings["n"] <= 1:
            s = dict(s)
            s[usb_backend.S_ALT0] = s[usb_backend.S_ALT0].replace("16Kg", "64Kg")
        return s

    monkeypatch.setattr(usb_backend.VirtualUsbDevice, "strings", glitchy)
    (info,) = find_devices(backend=bus.backend)
    assert info.alts[0].layout.text == real(dev)[usb_backend.S_ALT0]

    def always_different(self):
        s = dict(real(self))
        readings["n"] += 1
        s[usb_backend.S_ALT0] += "," * readings["n"]
        return s

    monkeypatch.setattr(usb_backend.VirtualUsbDevice, "strings", always_different)
    with pytest.raises(LinkError, match="different descriptors"):
        find_devices(backend=bus.backend)
