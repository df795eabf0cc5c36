"""The property a production line relies on, over seeded noise on both links.

The whole flash is filled with a pattern first; then a small image is flashed through a
noisy UART (``corrupt``, ``drop``, ``nack``, ``silent``, ``stray_zero`` and mixes) or a
faulty USB bus (stalls, timeouts, disconnects). Whatever happens:

* exit 0 => the flash holds the image inside it, 0xFF in the rest of the erase units the
  image covers, and the pattern everywhere else (nothing outside the plan was erased);
* a non-zero exit never reports a protection (exit 4) on a chip without one, a usage error
  (exit 2: e.g. a misidentified part whose flash "ends" too early), or a verify mismatch
  (exit 5) when the flash does hold the image;
* a fault-free re-run completes.

Everything runs in-process (``sim://`` with a registered chip, the virtual USB bus) with
instant timing, so several hundred runs take well under a minute.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from stmflash import devices
from stmflash.devices import Device
from stmflash.dfu.link import DfuLink
from stmflash.dfu.usb import find_devices
from stmflash.errors import StmflashError
from stmflash.image import load, save
from stmflash.image.model import Image
from stmflash.pipeline import program
from stmflash.sim import registry
from stmflash.sim.chip import VirtualChip
from stmflash.sim.faults import FaultPlan
from stmflash.sim.usb_backend import UsbFault, VirtualBus
from tests.clirun import exit_code

PATTERN = 0x5A
UART_PARTS = ("F407", "G071", "L053", "F103")
DFU_PARTS = ("F407", "L476", "G474")


def filled_chip(dev: Device, *, faults: str = "", seed: int = 0) -> VirtualChip:
    chip = VirtualChip(dev, faults=faults or None, seed=seed)
    chip.preload(dev.flash_start, bytes([PATTERN]) * dev.flash_size)
    return chip


def small_image(dev: Device, rng: random.Random) -> Image:
    """1-2 KiB of random data somewhere in the first 64 KiB, at a write-aligned address."""
    size = rng.randrange(256, 2048) // 8 * 8
    offset = rng.randrange(0, min(dev.flash_size, 0x10000) - size) // 8 * 8
    return Image.from_bytes(rng.randbytes(size), dev.flash_start + offset)


def expected_flash(dev: Device, img: Image) -> bytes:
    """The pattern, erased (0xFF; 0x00 on L0/L1) over every erase unit the image touches, the image inside."""
    want = bytearray([PATTERN]) * dev.flash_size
    for seg in img.segments:
        for unit in dev.units_covering(seg.address, seg.end):
            lo = unit.address - dev.flash_start
            want[lo : lo + unit.size] = dev.erased_bytes * unit.size
    for seg in img.segments:
        lo = seg.address - dev.flash_start
        want[lo : lo + len(seg.data)] = seg.data
    return bytes(want)


def holds_image(chip: VirtualChip, img: Image) -> bool:
    base = chip.device.flash_start
    return all(bytes(chip.flash[s.address - base : s.end - base]) == s.data for s in img.segments)


def check_outcome(rc: int, chip: VirtualChip, img: Image, what: str) -> None:
    dev = chip.device
    if rc == 0:
        assert bytes(chip.flash) == expected_flash(dev, img), f"exit 0 but the flash is wrong ({what})"
        return
    assert rc in (1, 3, 5), f"exit {rc} reports something that is not there ({what})"
    if rc == 5:
        assert not holds_image(chip, img), f"exit 5 (mismatch) but the flash holds the image ({what})"
    # nothing outside the erase plan was touched, even by a failed run
    want = expected_flash(dev, img)
    planned = set()
    for seg in img.segments:
        for unit in dev.units_covering(seg.address, seg.end):
            planned.update(range(unit.address - dev.flash_start, unit.end - dev.flash_start))
    outside = [i for i in range(0, dev.flash_size, 4096) if i not in planned]
    assert all(chip.flash[i] == want[i] for i in outside), f"flash outside the image changed ({what})"


# ---- UART --------------------------------------------------------------------------------
UART_FAULTS = (
    ["corrupt=0.002", "corrupt=0.005", "corrupt=0.008"]
    + ["drop=0.002", "drop=0.005"]
    + ["nack=0.1", "nack=0.3"]
    + ["stray_zero", "silent"]
    + ["corrupt=0.003,drop=0.002,nack=0.05", "corrupt=0.005,nack=0.1,stray_zero", "drop=0.003,corrupt=0.002"]
)


def uart_run(tmp_path, part: str, fault: str, seed: int) -> int:
    """One noisy run and its fault-free re-run; the noisy run's exit code."""
    dev = devices.find(part)
    rng = random.Random(f"{part}/{fault}/{seed}")
    img = small_image(dev, rng)
    path = tmp_path / f"fw-{part}-{seed}.hex"
    save(img, str(path))
    name = f"noise-{part}-{seed}"
    chip = registry.register(name, filled_chip(dev, faults=fault, seed=seed))
    try:
        rc = exit_code("uart", f"sim://{part}?chip={name}", str(path), "--no-image-check", "--after", "stay", "-q",
                     "--timeout", "0.05", "--retries", "4")
        what = f"{part}, {fault}, seed {seed}, exit {rc}"
        check_outcome(rc, chip, img, what)
        if fault == "silent":
            assert rc == 3, what
        if fault in ("stray_zero", "nack=0.1"):
            assert rc == 0, what
        chip.faults = FaultPlan()  # the line is clean again: a re-run completes
        noisy = rc
        rc = exit_code("uart", f"sim://{part}?chip={name}", str(path), "--no-image-check", "--after", "stay", "-q")
        assert rc == 0, f"fault-free re-run failed ({what})"
        check_outcome(rc, chip, img, f"re-run after {what}")
        return noisy
    finally:
        registry.unregister(name)


@pytest.mark.parametrize("fault", UART_FAULTS)
@pytest.mark.parametrize("part", UART_PARTS)
def test_uart_noise_never_lies(tmp_path, capsys, part: str, fault: str) -> None:
    passed = 0
    for seed in range(5):  # 12 specs x 4 parts x 5 seeds = 240 noisy runs
        passed += uart_run(tmp_path, part, fault, seed) == 0
        err = capsys.readouterr().err
        assert "Traceback" not in err
    if fault != "silent":  # the client recovers from noise, it does not just give up
        assert passed >= 3, f"{part} {fault}: only {passed} of 5 noisy runs completed"


def test_issue_reproducer_f407_corrupt_0_005_seed_2422(tmp_path, capsys) -> None:
    """fill.bin (64 KiB of 0x5A), then blinky over a line flipping 0.5 % of the bytes: one
    flipped bit in Get ID once made this an L053 whose pages 0-9 were erased as F4 sectors
    0-9, exit 0."""
    from stmflash.sim import flash_bytes

    image = tmp_path / "x.img"
    fill = tmp_path / "fill.bin"
    fill.write_bytes(bytes([PATTERN]) * 0x10000)
    blinky = Path(__file__).resolve().parents[1] / "examples" / "blinky-f407.hex"
    assert exit_code("uart", f"sim://F407?image={image}", str(fill), "--no-image-check", "-q") == 0
    rc = exit_code("uart", f"sim://F407?image={image}&seed=2422&fault=corrupt=0.005", str(blinky), "--json")
    out = capsys.readouterr().out
    img = load(str(blinky))
    flash = flash_bytes(image)
    want = bytearray(b"\xff" * len(flash))
    want[:0x10000] = bytes([PATTERN]) * 0x10000
    want[:0x4000] = b"\xff" * 0x4000  # sector 0 (16 KiB) is what blinky needs erased
    for s in img.segments:
        want[s.address - 0x08000000 : s.end - 0x08000000] = s.data
    assert rc == 0, out
    assert '"device": "STM32F405xx/07xx/15xx/17xx"' in out and "L05" not in out
    assert flash == bytes(want)


# ---- USB DFU -----------------------------------------------------------------------------
DFU_FAULTS = ("stall=0.02", "timeout=0.01", "disconnect=0.01", "stall=0.01+timeout=0.005+disconnect=0.005")


def usb_faults(spec: str) -> list[UsbFault]:
    out = []
    for item in spec.split("+"):
        kind, _, p = item.partition("=")
        out.append(UsbFault(kind, None, 0, p=float(p)))
    return out


def dfu_program(bus: VirtualBus, img: Image) -> int:
    try:
        (info,) = find_devices(backend=bus.backend)
        link = DfuLink(info).open()
        try:
            program(link, img, after="stay")
        finally:
            link.close()
    except StmflashError as exc:
        return exc.exit_code
    return 0


@pytest.mark.parametrize("fault", DFU_FAULTS)
@pytest.mark.parametrize("part", DFU_PARTS)
def test_dfu_faults_never_lie(part: str, fault: str) -> None:
    dev = devices.find(part)
    passed = 0
    for seed in range(6):  # 4 specs x 3 parts x 6 seeds = 72 faulty runs
        rng = random.Random(f"{part}/{fault}/{seed}")
        img = small_image(dev, rng)
        chip = filled_chip(dev, seed=seed)
        bus = VirtualBus()
        device = bus.attach(chip, usb_faults=usb_faults(fault))
        rc = dfu_program(bus, img)
        what = f"{part}, {fault}, seed {seed}, exit {rc}"
        check_outcome(rc, chip, img, what)
        passed += rc == 0
        device.usb_faults = []  # the hub is fine again: a re-run completes
        rc = dfu_program(bus, img)
        assert rc == 0, f"fault-free re-run failed ({what})"
        check_outcome(rc, chip, img, f"re-run after {what}")
    assert passed >= 5, f"{part} {fault}: only {passed} of 6 runs recovered (the client should retry)"


def test_dfu_leave_is_retried_after_a_stall() -> None:
    """A stall on the request that leaves DFU must not leave the board in its ROM while
    the run reports the application started."""
    dev = devices.find("F407")
    img = load(str(Path(__file__).resolve().parents[1] / "examples" / "blinky-f407.hex"))  # a real app
    clean = VirtualBus()
    probe = clean.attach(VirtualChip(dev))
    (info,) = find_devices(backend=clean.backend)
    link = DfuLink(info).open()
    program(link, img, after="stay")
    before_leave = probe.requests
    link.start(dev.flash_start)
    leave_requests = range(before_leave + 1, probe.requests + 1)
    assert probe.chip.mode == "app"
    for n in leave_requests:  # a stall on each request of the leave sequence in turn
        bus = VirtualBus()
        usb_dev = bus.attach(VirtualChip(dev), usb_faults=[UsbFault("stall", None, n)])
        (info,) = find_devices(backend=bus.backend)
        link = DfuLink(info).open()
        result = program(link, img, after="go")
        assert result.started == "go" and usb_dev.usb_faults[0].fired
        assert usb_dev.chip.mode == "app", f"stall on request {n} left the chip in its ROM"
