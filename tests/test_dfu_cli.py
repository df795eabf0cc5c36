"""``stmflash dfu`` and ``stmflash list`` end to end against virtual STM32s on the virtual
USB bus (STMFLASH_USB_SIM); content is checked on the simulator's image file."""

from __future__ import annotations

import json
import random

import pytest

from stmflash.cli import main
from stmflash.image import save
from stmflash.image.model import Image
from stmflash.sim import usb_backend
from stmflash.sim.chip import flash_bytes, load_image_file

VECTORS = (0x20001000).to_bytes(4, "little") + (0x08000101).to_bytes(4, "little")
OB_ALT = {"F407": 1, "L476": 1, "G474": 1, "H743": 1}


def firmware(n: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    return VECTORS + bytes(rnd.randrange(256) for _ in range(n - len(VECTORS)))


@pytest.fixture
def sim(monkeypatch, tmp_path):
    """``sim("F407;rdp=1")`` attaches chips (image files in tmp_path) and returns the bus."""

    def make(spec: str) -> usb_backend.VirtualBus:
        entries = []
        for i, part in enumerate(spec.split(",")):
            head, *opts = part.split(";")
            entries.append(";".join([f"{head}={tmp_path / f'chip{i}.img'}", *opts]))
        monkeypatch.setenv("STMFLASH_USB_SIM", ",".join(entries))
        return usb_backend.bus_from_env()

    yield make
    usb_backend.forget()


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def image_file(bus: usb_backend.VirtualBus, i: int = 0):
    return bus.devices[i].chip.image_path


@pytest.mark.parametrize("name", ["F407", "L476", "G474", "H743"])
@pytest.mark.parametrize("fmt", ["bin", "hex", "dfu"])
def test_flash_and_leave(name, fmt, sim, tmp_path, capsys):
    bus = sim(name)
    data = firmware(20000, seed=len(name) + len(fmt))
    path = tmp_path / f"fw.{fmt}"
    if fmt == "bin":
        path.write_bytes(data)
    else:
        save(Image.from_bytes(data, 0x08000000), str(path))
    code, out, err = run(["dfu", str(path), "--no-image-check", "--leave", "--json"], capsys)
    assert code == 0, err
    ev = events(out)
    assert [e["phase"] for e in ev if e["event"] == "phase"][-3:] == ["erase", "write", "verify"]
    result = ev[-1]
    assert result["event"] == "result" and result["verified"] and result["after"] == "go"
    assert flash_bytes(image_file(bus))[: len(data)] == data
    chip = bus.devices[0].chip
    assert chip.mode == "app" and chip.go_address == 0x08000000
    assert bus.backend.enumerate_devices() == []


@pytest.mark.parametrize("name", ["F407", "G474", "H743"])
def test_multi_target_dfu_file(name, sim, tmp_path, capsys):
    """Flash segments go through the pipeline, the option-bytes target through its alt."""
    bus = sim(name)
    chip = bus.devices[0].chip
    ob_len = {"F407": 16, "G474": 48, "H743": 128}[name]
    ob_addr = {"F407": 0x1FFFC000, "G474": 0x1FFF7800, "H743": 0x5200201C}[name]
    ob = bytearray(chip.option_bytes().ljust(ob_len, b"\xff")[:ob_len])
    want = b"\x3c\xc3"
    ob[2], ob[3] = want
    if name == "H743":  # H7: the write programs OPTSR_PRG (+4); OPTSR_CUR shows it after the reload
        want = b"\x86\x01"  # FZ_IWDG_SDBY, bits 23/24 kept; SECURITY stays 0
        ob[6], ob[7] = want
    if name == "G474":  # G4: the complement word of OPTR follows it (the chip rewrites it)
        # IWDG_SW = 0 only: 0x3CC3 would clear nBOOT1 with BOOT0 high, and a G4 then boots
        # SRAM (RM0440 boot table), never re-enumerating
        want = b"\xee\xff"
        ob[2], ob[3] = want
        ob[6], ob[7] = 0x11, 0x00
    img = Image(alt_names={0: "Internal Flash", 1: "Option Bytes"})
    a, b = firmware(6000, 7), firmware(3000, 8)[8:]
    img.add(0x08000000, a, alt=0)
    img.add(0x08040000, b, alt=0)
    img.add(ob_addr, bytes(ob), alt=OB_ALT[name])
    path = tmp_path / "multi.dfu"
    save(img, str(path))
    code, _, err = run(["dfu", str(path), "--no-image-check", "--leave"], capsys)
    assert code == 0, err
    header, regions = load_image_file(image_file(bus))
    assert regions["flash"][: len(a)] == a
    assert regions["flash"][0x40000 : 0x40000 + len(b)] == b
    assert regions["option_bytes"][2:4] == want
    assert chip.mode == "app"


def test_dfuse_pack_file_flashes(sim, tmp_path, capsys):
    from tests.peers import require
    from tests.peers import run as peer

    require("dfuse-pack")
    bus = sim("F407")
    data = firmware(10000, 3)
    (tmp_path / "a.bin").write_bytes(data)
    ob = bytes([0xAA, 0x55, 0x77, 0x88]) + bytes([0xFF, 0x00] * 6)
    (tmp_path / "ob.bin").write_bytes(ob)
    out = tmp_path / "packed.dfu"
    peer(["dfuse-pack", "-b", f"0x08000000:{tmp_path / 'a.bin'}", "-b", f"0x1FFFC000@1:{tmp_path / 'ob.bin'}", str(out)])
    code, _, err = run(["dfu", str(out), "--no-image-check"], capsys)
    assert code == 0, err
    header, regions = load_image_file(image_file(bus))
    assert regions["flash"][: len(data)] == data
    assert regions["option_bytes"][:16] == ob


def test_our_dfu_files_pass_dfu_util_tools(tmp_path, capsys):
    from tests.peers import require
    from tests.peers import run as peer

    require("dfu-suffix")
    require("dfuse-pack")
    data = firmware(5000, 4)
    (tmp_path / "fw.bin").write_bytes(data)
    code, _, err = run(["image", "convert", "--address", "0x08000000", str(tmp_path / "fw.bin"), str(tmp_path / "fw.dfu")], capsys)
    assert code == 0, err
    res = peer(["dfu-suffix", "--check", str(tmp_path / "fw.dfu")])
    assert "0x011A" in res.stdout and "0xDF11" in res.stdout
    res = peer(["dfuse-pack", "-d", str(tmp_path / "fw.dfu")], cwd=tmp_path)
    assert "address: 0x08000000" in res.stdout
    dumped = tmp_path / "fw.dfu.target0.image0.bin"
    assert dumped.read_bytes() == data
    # several targets (flash + option bytes), as our multi-target writer makes them
    img = Image(alt_names={0: "Internal Flash", 1: "Option Bytes"})
    img.add(0x08000000, data, alt=0)
    img.add(0x1FFFC000, bytes(16), alt=1)
    save(img, str(tmp_path / "multi.dfu"))
    peer(["dfu-suffix", "--check", str(tmp_path / "multi.dfu")])
    res = peer(["dfuse-pack", "-d", str(tmp_path / "multi.dfu")], cwd=tmp_path)
    assert "targets: 2" in res.stdout and "alt setting: 1" in res.stdout
    assert (tmp_path / "multi.dfu.target1.image0.bin").read_bytes() == bytes(16)


def test_info_without_file(sim, capsys):
    sim("G474")
    code, out, err = run(["dfu"], capsys)
    assert code == 0, err
    assert "alt 0       Internal Flash: 0x08000000 512K: 256x2K (rew)" in out
    assert "Option Bytes" in out and "0x1FFFF800" in out
    assert "bcdDevice 0x0200" in out


def test_option_bytes_read_and_write(sim, capsys):
    bus = sim("F407")
    code, out, err = run(["dfu", "--read-option-bytes"], capsys)
    assert code == 0, err
    assert "option bytes @0x1FFFC000: ec aa ff ff" in out  # F4: USER, then RDP 0xAA (level 0)
    new = "aa55 1234 ff00 ff00 ff00 ff00 ff00 ff00"
    resets = bus.devices[0].chip.reset_count
    code, out, err = run(["dfu", "--write-option-bytes", new, "--json"], capsys)
    assert code == 0, err
    assert bus.devices[0].chip.reset_count == resets + 1
    assert load_image_file(image_file(bus))[1]["option_bytes"][:4] == bytes.fromhex("aa551234")
    code, out, err = run(["dfu", "--write-option-bytes", "aa55"], capsys)
    assert code == 2 and "whole area of 16 bytes" in err


def test_read_protection_exit_4_then_unprotect(sim, tmp_path, capsys):
    bus = sim("F407;rdp=1")
    chip = bus.devices[0].chip
    chip.preload(0x08000000, b"old secret")
    data = firmware(4000, 9)
    (tmp_path / "fw.bin").write_bytes(data)
    code, out, err = run(["dfu"], capsys)
    assert code == 0 and "protection  readout protected" in out
    code, out, err = run(["dfu", str(tmp_path / "fw.bin"), "--no-image-check"], capsys)
    assert code == 4 and "readout protection" in err and "--unprotect" in err
    code, out, err = run(["dfu", "--unprotect", str(tmp_path / "fw.bin"), "--no-image-check"], capsys)
    assert code == 0, err
    assert chip.rdp_level == 0
    f = flash_bytes(image_file(bus))
    assert f[: len(data)] == data and f[0x20000:0x20010] == b"\xff" * 16


def test_read_memory(sim, tmp_path, capsys):
    bus = sim("H743")
    blob = firmware(3000, 5)
    bus.devices[0].chip.preload(0x08000100, blob)
    out_file = tmp_path / "dump.bin"
    code, out, err = run(["dfu", "--read", str(out_file), "--start", "0x08000100", "--length", "3000"], capsys)
    assert code == 0, err
    assert out_file.read_bytes() == blob


@pytest.mark.parametrize("fault", ["stall@dnload:15", "timeout@getstatus:40", "disconnect@dnload:20", "stall@upload:5"])
def test_a_single_usb_fault_costs_a_retry_not_the_board(fault, sim, tmp_path, capsys):
    bus = sim(f"F407;fault={fault}")
    data = firmware(64000, 11)
    (tmp_path / "fw.bin").write_bytes(data)
    code, out, err = run(["dfu", str(tmp_path / "fw.bin"), "--no-image-check", "--leave"], capsys)
    assert code == 0, err
    assert bus.devices[0].usb_faults[0].fired  # the fault did hit the run
    assert flash_bytes(image_file(bus))[: len(data)] == data
    assert bus.devices[0].chip.mode == "app"


def test_a_device_that_keeps_failing_exits_3_clearly(sim, tmp_path, capsys):
    bus = sim("F407;fault=stall=0.9")
    data = firmware(8000, 11)
    (tmp_path / "fw.bin").write_bytes(data)
    code, out, err = run(["dfu", str(tmp_path / "fw.bin"), "--no-image-check", "--leave"], capsys)
    assert code == 3, err
    assert err.splitlines()[-1].startswith("stmflash: error: ") and "Traceback" not in err
    assert "retries" in err
    assert bus.devices[0].chip.mode == "bootloader"  # never started a half-written image


def test_no_device_exit_3(sim, capsys):
    sim("F407")
    code, _, err = run(["dfu", "--serial", "NOPE"], capsys)
    assert code == 3
    assert "no DFU device 0483:df11 with serial NOPE found" in err and "udev" in err


def test_several_devices_need_a_filter(sim, tmp_path, capsys):
    bus = sim("F407,H743")
    code, _, err = run(["dfu"], capsys)
    assert code == 2 and "1-1" in err and "1-2" in err and "--path" in err
    data = firmware(3000, 12)
    (tmp_path / "fw.bin").write_bytes(data)
    code, _, err = run(["dfu", "--path", "1-2", str(tmp_path / "fw.bin"), "--no-image-check"], capsys)
    assert code == 0, err
    assert flash_bytes(image_file(bus, 1))[: len(data)] == data
    assert flash_bytes(image_file(bus, 0))[:16] == b"\xff" * 16
    serial = bus.devices[0].rom.serial
    code, out, err = run(["dfu", "--serial", serial, "--json"], capsys)
    assert code == 0 and events(out)[-1]["usb"]["path"] == "1-1"


def test_list_shows_dfu_devices(sim, capsys):
    bus = sim("F407,L476;port=3-1.4")
    code, out, err = run(["list", "--json"], capsys)
    assert code == 0, err
    obj = json.loads(out)
    assert "serial_ports" in obj
    devs = {d["path"]: d for d in obj["dfu_devices"]}
    assert set(devs) == {"1-1", "3-1.4"}
    assert devs["1-1"]["bcd_device"] == "0x2100" and devs["1-1"]["serial"] == bus.devices[0].rom.serial
    assert [a["name"] for a in devs["3-1.4"]["alts"]][:2] == ["Internal Flash", "Option Bytes"]
    code, out, err = run(["list"], capsys)
    assert code == 0 and "3-1.4" in out and "Internal Flash" in out


def test_bad_input_before_touching_the_device(sim, tmp_path, capsys):
    sim("F407")
    code, _, err = run(["dfu", str(tmp_path / "missing.hex"), "--no-image-check"], capsys)
    assert code == 2 and "no such file" in err
    (tmp_path / "far.bin").write_bytes(b"\0" * 64)
    code, _, err = run(["dfu", str(tmp_path / "far.bin"), "--no-image-check", "--address", "0x09000000"], capsys)
    assert code == 2 and "0x09000000" in err


def test_raw_file_into_the_otp_alt(sim, tmp_path, capsys):
    bus = sim("F407")
    otp = bytes(range(32))
    (tmp_path / "otp.bin").write_bytes(otp)
    code, _, err = run(["dfu", str(tmp_path / "otp.bin"), "--no-image-check", "--alt", "OTP Memory", "--address", "0x1FFF7800"], capsys)
    assert code == 0, err
    assert load_image_file(image_file(bus))[1]["otp"][:32] == otp
    code, _, err = run(["dfu", str(tmp_path / "otp.bin"), "--no-image-check", "--alt", "OTP Memory", "--address", "0x08000000"], capsys)
    assert code == 2 and "outside alternate setting 'OTP Memory'" in err


def test_separate_processes_share_the_image_file(tmp_path):
    """What a user does: two stmflash runs against the same simulated chip file."""
    import os
    import subprocess
    import sys

    img = tmp_path / "h7.img"
    data = firmware(9000, 13)
    (tmp_path / "fw.bin").write_bytes(data)
    env = dict(os.environ, STMFLASH_USB_SIM=f"H743={img}")
    p = subprocess.run([sys.executable, "-m", "stmflash", "dfu", str(tmp_path / "fw.bin"), "--no-image-check", "--leave", "-q"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert flash_bytes(img)[: len(data)] == data
    p = subprocess.run([sys.executable, "-m", "stmflash", "sim", "usb", f"H743={img}", "--", "stmflash", "dfu",
                        "--read", str(tmp_path / "back.bin"), "--length", str(len(data))],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "back.bin").read_bytes() == data


def test_sim_usb_shows_rom_descriptors(capsys):
    code, out, err = run(["sim", "usb", "G474;port=2-3"], capsys)
    assert code == 0, err
    assert "Port 2-3: ID 0483:df11" in out and "wTransferSize 1024" in out
    assert "alt 1: @Option Bytes  /0x1FFF7800/01*048 e/0x1FFFF800/01*048 e" in out


def test_udev_rules_cover_the_bootloader_and_adapters():
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "udev" / "50-stmflash.rules").read_text()
    ids = set()
    for line in text.splitlines():
        if line.startswith("#") or "uaccess" not in line:
            continue
        m = re.search(r'idVendor}=="([0-9a-f]{4})".*idProduct}=="([0-9a-f]{4})"', line)
        assert m, line
        ids.add(f"{m.group(1)}:{m.group(2)}")
    assert ids == {
        "0483:df11", "0403:6001", "0403:6010", "0403:6014", "0403:6015", "10c4:ea60", "1a86:7523",
        "067b:2303", "0483:374b", "0483:3752", "0483:374e", "0483:374f",
    }


def test_power_loss_mid_write(sim, tmp_path, capsys):
    bus = sim("G474;fault=power_loss=after:8192")
    chip = bus.devices[0].chip
    data = firmware(30000, 14)
    (tmp_path / "fw.bin").write_bytes(data)
    code, _, err = run(["dfu", str(tmp_path / "fw.bin"), "--no-image-check"], capsys)
    assert code == 3 and "disconnected" in err and "did not come back" in err
    assert not chip.powered and flash_bytes(image_file(bus))[: len(data)] != data
    chip.power_on()
    code, _, err = run(["dfu", str(tmp_path / "fw.bin"), "--no-image-check"], capsys)
    assert code == 0, err
    assert flash_bytes(image_file(bus))[: len(data)] == data


@pytest.mark.parametrize("seed", range(6))
def test_random_faults_never_pass_wrong_content(seed, sim, tmp_path, capsys):
    bus = sim(f"L476;seed={seed};fault=stall=0.01+timeout=0.005+disconnect=0.003")
    data = firmware(24000, seed)
    (tmp_path / "fw.bin").write_bytes(data)
    for _ in range(30):  # re-run until it passes, as an operator would
        code, _, err = run(["dfu", str(tmp_path / "fw.bin"), "--no-image-check"], capsys)
        if code == 0:
            break
        assert code == 3 and "Traceback" not in err
    assert code == 0
    assert flash_bytes(image_file(bus))[: len(data)] == data


@pytest.mark.parametrize(
    "spec, address, extra, quirk",
    [
        ("F407;timing=realistic;scale=100", 0x08000000, ["--mass-erase"], "mass_erase_poll_underreported"),
        ("H743;timing=realistic;scale=400", 0x08100000, [], "dnbusy_stuck"),
    ],
)
def test_table_quirks_end_to_end(spec, address, extra, quirk, sim, tmp_path, capsys):
    """The device table names each ROM's quirk; the virtual ROM shows it, the client copes."""
    bus = sim(spec)
    data = firmware(6000, 15)
    (tmp_path / "fw.bin").write_bytes(data)
    code, _, err = run(["dfu", str(tmp_path / "fw.bin"), "--no-image-check", "--address", hex(address), *extra], capsys)
    assert code == 0, err
    off = address - 0x08000000
    assert flash_bytes(image_file(bus))[off : off + len(data)] == data
    assert bus.devices[0].rom.quirk_hits.get(quirk, 0) > 0  # the ROM really misbehaved
