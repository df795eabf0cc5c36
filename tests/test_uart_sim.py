"""``stmflash uart`` end to end against the in-process virtual STM32 (``sim://``).

One device per erase style (G0 pages + Extended Erase, F4 sectors, F1 legacy 0x43, L0
without mass erase) and every input format. The result is checked on the simulator's own
flash and on its saved image file, never only through our own verify.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from stmflash import devices, ob_fields
from stmflash.image import load, save
from stmflash.image.model import Image
from stmflash.sim import registry
from stmflash.sim.chip import VirtualChip, flash_bytes
from tests.clirun import exit_code as run_cli

DEVICES = ["0x460", "0x413", "0x410", "0x417"]
FORMATS = ["bin", "hex", "srec", "elf", "dfu"]


def make_image(dev: devices.Device, seed: int, sparse: bool) -> Image:
    rng = random.Random(seed)
    img = Image()
    img.add(dev.flash_start, rng.randbytes(rng.randrange(3000, 9000)))
    if sparse:  # a second, unaligned segment further up
        img.add(dev.flash_start + 0x3000 + 5, rng.randbytes(777))
    return img


def write_elf(img: Image, path: Path) -> None:
    """An ELF with one PT_LOAD per segment, linked by the ARM toolchain."""
    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc is None:
        pytest.skip("arm-none-eabi-gcc is not installed (.ci/run installs it)")
    parts, sections = [], []
    for i, seg in enumerate(img.segments):
        blob = path.parent / f"seg{i}.bin"
        blob.write_bytes(seg.data)
        parts.append(f'.section .s{i}, "a"\n.incbin "{blob}"\n')
        sections.append(f"  .s{i} 0x{seg.address:08X} : {{ KEEP(*(.s{i})) }}")
    src = path.parent / "img.S"
    src.write_text("".join(parts))
    ld = path.parent / "img.ld"
    ld.write_text("SECTIONS\n{\n" + "\n".join(sections) + "\n}\n")
    subprocess.run(
        [gcc, "-nostdlib", "-nostartfiles", "-Wl,--build-id=none", "-T", str(ld), str(src), "-o", str(path)],
        check=True,
        capture_output=True,
    )


def expected_flash(img: Image, dev: devices.Device) -> bytes:
    return img.read(dev.flash_start, img.end - dev.flash_start, fill=dev.erased)  # gaps read erased


@pytest.mark.parametrize("pid", DEVICES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_flash_every_format_on_every_erase_style(tmp_path: Path, pid: str, fmt: str) -> None:
    dev = devices.find(pid)
    # raw binaries have no gaps; a linker fills gaps inside one PT_LOAD with zeros
    img = make_image(dev, seed=DEVICES.index(pid) * 10 + FORMATS.index(fmt), sparse=fmt not in ("bin", "elf"))
    path = tmp_path / f"fw.{fmt}"
    if fmt == "elf":
        write_elf(img, path)
    else:
        save(img, str(path))
    assert load(str(path), device=dev).read(img.start, img.end - img.start) == img.read(img.start, img.end - img.start)
    sim_file = tmp_path / "chip.img"
    chip = registry.register(f"fmt-{pid}-{fmt}", VirtualChip(dev, image_path=sim_file))
    chip.preload(dev.flash_start, b"\x00" * 64)  # old content that must be erased
    try:
        rc = run_cli("uart", f"sim://{pid}?chip=fmt-{pid}-{fmt}", str(path), "--no-image-check", "--after", "stay", "-q")
        assert rc == 0
        want = expected_flash(img, dev)
        assert bytes(chip.flash[: len(want)]) == want
        chip.save()
        assert flash_bytes(sim_file)[: len(want)] == want
    finally:
        registry.unregister(f"fmt-{pid}-{fmt}")


def test_json_events_and_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dev = devices.find("0x413")
    img = make_image(dev, 7, sparse=False)
    path = tmp_path / "fw.hex"
    save(img, str(path))
    registry.register("json", VirtualChip(dev))
    try:
        rc = run_cli("uart", "sim://0x413?chip=json", str(path), "--no-image-check", "--json")
    finally:
        registry.unregister("json")
    assert rc == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    phases = [e["phase"] for e in events if e["event"] == "phase"]
    assert phases[-3:] == ["erase", "write", "verify"]
    result = events[-1]
    assert result["event"] == "result" and result["verified"] is True
    assert result["image_crc32"] == f"0x{img.crc32():08X}"
    assert result["pid"] == "0x413" and len(result["uid"]) == 24
    assert any(e["event"] == "progress" and e["done"] == e["total"] for e in events)


def test_info_read_erase_and_protection_actions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dev = devices.find("0x460")
    chip = registry.register("act", VirtualChip(dev))
    url = "sim://0x460?chip=act"
    # a G0 whose flash is programmed boots it after an option-byte reload unless
    # nBOOT_SEL = 0 hands boot selection to the (strapped-high) BOOT0 pin (RM0444 Table 8)
    pin = ob_fields.resolve(dev, {"nBOOT_SEL": 0})
    chip.store_raw_option_bytes(ob_fields.apply(dev, chip.option_bytes(), pin))
    try:
        data = random.Random(3).randbytes(4096)
        chip.preload(dev.flash_start, data)
        assert run_cli("uart", url) == 0
        out = capsys.readouterr().out
        assert "STM32G07x/08x" in out and "PID 0x460" in out and "UID" in out
        dump = tmp_path / "dump.bin"
        assert run_cli("uart", url, "--read", str(dump), "--range", "0x08000000:4K", "-q") == 0
        assert dump.read_bytes() == data
        assert run_cli("uart", url, "--erase-only", "--erase", "0x08000800:2K", "-q") == 0
        assert bytes(chip.flash[0x800:0x1000]) == b"\xff" * 0x800 and bytes(chip.flash[:0x800]) == data[:0x800]
        assert run_cli("uart", url, "--erase-only", "--erase", "0x08000801:2K", "-q") == 2
        assert run_cli("uart", url, "--protect", "-q") == 0
        assert chip.rdp_level == 1
        assert run_cli("uart", url, "--read", str(dump), "-q") == 4
        assert "--unprotect" in capsys.readouterr().err
        assert run_cli("uart", url, "--unprotect", "-q") == 0
        assert chip.rdp_level == 0 and bytes(chip.flash[:16]) == b"\xff" * 16
        assert run_cli("uart", url, "--write-protect", "0-1", "-q") == 0
        assert chip.wrp
        assert run_cli("uart", url, "--write-unprotect", "-q") == 0
        assert not chip.wrp
        assert run_cli("uart", url, "--read-option-bytes") == 0
        ob = capsys.readouterr().out
        assert "option bytes @0x1FFF7800" in ob
    finally:
        registry.unregister("act")


def test_exit_codes_for_bad_input_and_missing_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("uart", "/dev/does-not-exist") == 3
    err = capsys.readouterr().err
    assert "/dev/does-not-exist" in err and err.count("\n") == 1 and "Traceback" not in err
    bad = tmp_path / "bad.hex"
    bad.write_text(":10000000ZZ\n")
    assert run_cli("uart", "sim://0x413", str(bad)) == 2
    outside = tmp_path / "outside.hex"
    save(Image.from_bytes(b"\x00" * 16, 0x08100000), str(outside))
    registry.register("outside", VirtualChip(devices.find("0x413")))
    try:
        assert run_cli("uart", "sim://0x413?chip=outside", str(outside), "-q") == 2
        assert "0x08100000" in capsys.readouterr().err
    finally:
        registry.unregister("outside")
    assert run_cli("uart", "sim://0x413?fault=silent", "-q", "--timeout", "0.05") == 3


def test_examples_flash_and_run(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent / "examples"
    hexfile = root / "blinky-f407.hex"
    assert hexfile.exists(), "examples/ are committed: the README's quick start needs them"
    chip = registry.register("ex", VirtualChip(devices.find("0x413")))
    try:
        assert run_cli("uart", "sim://F407?chip=ex", str(hexfile), "--no-image-check", "-q") == 0
        img = load(str(hexfile))
        assert bytes(chip.flash[: img.size]) == img.segments[0].data
        assert chip.mode == "app" and chip.go_address == 0x08000000
    finally:
        registry.unregister("ex")


def test_write_protected_flash_is_a_protection_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dev = devices.find("0x413")
    chip = registry.register("wrp", VirtualChip(dev))
    chip.write_protect([0], reset=False)
    path = tmp_path / "fw.bin"
    path.write_bytes(random.Random(5).randbytes(2048))
    try:
        assert run_cli("uart", "sim://0x413?chip=wrp", str(path), "--no-image-check", "-q") == 4
        assert "write-protected" in capsys.readouterr().err
        assert run_cli("uart", "sim://0x413?chip=wrp", str(path), "--no-image-check", "--write-unprotect", "-q") == 0
        assert bytes(chip.flash[:2048]) == path.read_bytes()
    finally:
        registry.unregister("wrp")


def test_option_bytes_write_and_after_reset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dev = devices.find("0x460")
    chip = registry.register("ob", VirtualChip(dev))
    try:
        ob = bytearray(chip.option_bytes())  # the whole area (a part of it is refused)
        ob[2], ob[3] = 0x5A, 0xA5  # two G0 OPTR user bytes (their complements at 6, 7)
        # before the port is opened the bytes can only be decoded for a named part
        assert run_cli("uart", "sim://unnamed?chip=ob", "--write-option-bytes", ob.hex(), "-q") == 2
        assert chip.reset_count == 0
        assert run_cli("uart", "sim://0x460?chip=ob", "--write-option-bytes", ob.hex(), "--device", "G071",
                       "-q") == 0
        assert chip.option_bytes()[:4] == bytes(ob[:4])
        assert run_cli("uart", "sim://0x460?chip=ob", "--write-option-bytes", ob[:16].hex(), "-q") == 2
        assert chip.option_bytes()[6:8] == b"\xa5\x5a"  # written by the chip, not by us
        path = tmp_path / "fw.bin"
        path.write_bytes(b"\x11" * 256)
        resets = chip.reset_count
        assert run_cli("uart", "sim://0x460?chip=ob", str(path), "--no-image-check", "--after", "reset", "-q") == 0
        # the reset stub ran: a system reset, back into the ROM (BOOT0 strapped high)
        assert chip.reset_count == resets + 1 and chip.mode == "bootloader"
    finally:
        registry.unregister("ob")


@pytest.mark.parametrize("pid", ["0x460", "0x413"])
def test_auto_erase_keeps_flash_outside_the_image(pid, tmp_path):
    """A small image must not cost the rest of the flash (EEPROM emulation, calibration
    data), even where one global erase is as fast as a page erase (G0)."""
    dev = devices.find(pid)
    chip = VirtualChip(dev)
    keep_at = dev.erase_units[-1].address
    chip.preload(keep_at, b"CALIBRATION-DATA")
    registry.register("keep", chip)
    try:
        img = Image()
        img.add(dev.flash_start, bytes(range(256)) * 8)
        path = tmp_path / "small.hex"
        save(img, str(path))
        assert run_cli("uart", "sim://x?chip=keep", str(path), "--no-image-check", "-q") == 0
        assert bytes(chip.flash[: 2048]) == img.read(dev.flash_start, 2048)
        off = keep_at - dev.flash_start
        assert bytes(chip.flash[off : off + 16]) == b"CALIBRATION-DATA"
    finally:
        registry.clear()


def test_after_reset_runs_the_reset_stub(tmp_path):
    """Without reset pins, --after reset loads the SYSRESETREQ stub into RAM and Goes to it;
    the virtual chip resets (as the real one would) instead of pretending to run an app."""
    dev = devices.find("0x413")
    chip = VirtualChip(dev)
    registry.register("rst", chip)
    try:
        path = tmp_path / "fw.hex"
        save(make_image(dev, 3, sparse=False), str(path))
        before = chip.reset_count
        assert run_cli("uart", "sim://x?chip=rst", str(path), "--no-image-check", "-q", "--after", "reset") == 0
        assert chip.reset_count == before + 1
        assert chip.mode == "bootloader"  # BOOT0 strapped high: back in the ROM, syncable
        assert run_cli("uart", "sim://x?chip=rst", "-q") == 0
        # a Go to other code in RAM is not a reset: the code runs (stmflash.sim.cpu, with
        # unicorn) or, without an emulator, the chip has left its ROM
        from stmflash.sim import cpu

        other = dev.ram_usable.start + 0x100
        chip.preload(other, (other + 0x400).to_bytes(4, "little") + (other + 9).to_bytes(4, "little") + b"\xfe\xe7" * 16)
        chip.go(other)
        assert chip.mode == ("cpu" if cpu.available() else "app") and chip.reset_count == before + 1
    finally:
        registry.clear()


@pytest.mark.parametrize("name", ["G031", "G474", "H743", "L476"])
def test_verify_catches_a_dropped_peer_style_write(name: str) -> None:
    """A peer writing 256-byte blocks from a start inside a programming unit gets ACKs and
    nothing programmed (``write_misaligned = "drop"``); our verify reports it, and our own
    programming of the same image at the same start succeeds (it aligns down, 0xFF-filled)."""
    from stmflash.errors import VerifyError
    from stmflash.pipeline import program, verify_image
    from stmflash.progress import Reporter
    from stmflash.uart.link import connect

    dev = devices.find(name)
    assert dev.write_misaligned == "drop" and dev.write_align > 4
    chip = registry.register(f"drop-{name}", VirtualChip(dev))
    data = random.Random(5).randbytes(1028)
    start = dev.flash_start + 4
    img = Image()
    img.add(start, data)
    with connect(f"sim://{dev.short_name}?chip=drop-{name}") as link:
        for off in range(0, len(data), 256):  # what stm32flash -S start sends
            link.bl.write_memory(start + off, data[off : off + 256])  # every block ACKed
        assert chip.dropped_writes == 5 and chip.flash[: 2048] == b"\xff" * 2048
        with pytest.raises(VerifyError):
            verify_image(link, img, Reporter())
        result = program(link, img, after="stay")
    assert result.verified
    assert chip.flash[:4] == b"\xff" * 4 and chip.flash[4 : 4 + len(data)] == data
