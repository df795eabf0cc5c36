"""The front door tried as a careless new user would (issue #12): every mistake is one line
and a documented exit code, damaged or wrong files are refused, output paths are checked
before the chip is touched. Everything runs against the virtual STM32."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

from stmflash.cli import main
from stmflash.devices import find
from stmflash.image import load, save
from stmflash.image.model import Image
from stmflash.sim import VirtualChip, registry

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, want_code: int, *needles: str) -> str:
    assert code == want_code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("Usage:", "Try "))]
    errors = [line for line in lines if line.startswith(("stmflash: error:", "Error:"))]
    assert len(errors) == 1, err
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


@pytest.fixture()
def chip():
    c = registry.register("front", VirtualChip(find("F407")))
    yield c
    registry.unregister("front")


URL = "sim://F407?chip=front"


def firmware_hex(tmp_path: Path) -> Path:
    p = tmp_path / "fw.hex"
    shutil.copy(EXAMPLES / "blinky-f407.hex", p)
    return p


# ---- 1. numbers ----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["08000000", "007", "0x_", "0x", "1_", "12Q", "--1"])
@pytest.mark.parametrize(
    "argv",
    [
        ["uart", URL, "{bin}", "--address", "{v}"],
        ["uart", URL, "--read", "{out}", "--start", "{v}", "--length", "16"],
        ["uart", URL, "--read", "{out}", "--range", "{v}:16"],
        ["dfu", "{bin}", "--address", "{v}"],
        ["image", "merge", "{bin}@{v}", "-o", "{out}"],
        ["image", "stamp", "{hex}", "-o", "{out}", "--at", "{v}"],
        ["batch", "{hex}", URL, "--serial-address", "{v}"],
    ],
)
def test_bad_numbers_are_one_line_and_exit_2(capsys, tmp_path, chip, argv, value):
    before = bytes(chip.flash[:64])
    fmt = {"v": value, "bin": str(EXAMPLES / "blinky-f407.bin"), "hex": str(EXAMPLES / "blinky-f407.hex"),
           "out": str(tmp_path / "out.hex")}
    code, _, err = run(capsys, *[a.format(**fmt) for a in argv])
    line = one_line_error(code, err, 2, repr(value) if value != "--1" else "")
    if value in ("08000000", "007"):
        assert "leading zero" in line and "0x" in line
    assert bytes(chip.flash[:64]) == before
    assert not (tmp_path / "out.hex").exists()


def test_number_spelling_is_in_help(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "08000000" in out and "refused" in out
    code, out, _ = run(capsys, "uart", "--help")
    assert code == 0 and "leading zero" in " ".join(out.split())


def test_hex_and_sizes_still_work(capsys, tmp_path, chip):
    out = tmp_path / "d.bin"
    code, _, err = run(capsys, "uart", URL, "--read", str(out), "--range", "0x0800_0000:1K", "-q")
    assert code == 0, err
    assert out.stat().st_size == 1024


# ---- 1. templates, job files, simulator paths ---------------------------------------------------
@pytest.mark.parametrize(
    "template, needle",
    [("SN-{n:06d}}", "Single '}'"), ("{n:>999999999}", "wider"), ("{n:{n}}", "nested"), ("{x}", "unknown field")],
)
def test_bad_serial_templates(capsys, tmp_path, chip, template, needle):
    code, _, err = run(capsys, "batch", str(firmware_hex(tmp_path)), URL, "--serial-address", "0x080F0000",
                       "--serial-format", "template", "--serial-template", template, "--serial-size", "16",
                       "--report-dir", str(tmp_path / "rep"), "--ledger", str(tmp_path / "l.jsonl"))
    one_line_error(code, err, 2, needle)
    assert not (tmp_path / "rep").exists()


def test_serial_width_is_bounded_before_formatting(capsys, tmp_path, chip):
    code, _, err = run(capsys, "batch", str(firmware_hex(tmp_path)), URL, "--serial-address", "0x080F0000",
                       "--serial-format", "ascii", "--serial-width", "999999999",
                       "--report-dir", str(tmp_path / "rep"), "--ledger", str(tmp_path / "l.jsonl"))
    one_line_error(code, err, 2, "wider")


def test_job_file_with_a_non_utf8_byte(capsys, tmp_path):
    job = tmp_path / "line.toml"
    job.write_bytes(b'image = "fw.hex"\ndevice = "F4\xff07"\n')
    code, _, err = run(capsys, "batch", "--job", str(job))
    one_line_error(code, err, 2, str(job), "line 2", "UTF-8")


def test_sim_link_and_image_in_missing_directories(capsys, tmp_path):
    code, _, err = run(capsys, "sim", "uart", "--device", "F407", "--link", str(tmp_path / "no" / "link"))
    one_line_error(code, err, 2, "--link")
    code, _, err = run(capsys, "sim", "uart", "--device", "F407", "--image", str(tmp_path / "no" / "f4.img"))
    one_line_error(code, err, 2, "--image", "does not exist")
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    code, _, err = run(capsys, "sim", "uart", "--device", "F407", "--link", str(victim))
    one_line_error(code, err, 2, "not a symlink")
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("name", ["", "  "])
def test_empty_device_name(capsys, name):
    code, _, err = run(capsys, "sim", "uart", "--device", name)
    line = one_line_error(code, err, 2, "no device name")
    assert "F407" in line and len(line) < 200


# ---- 2. output paths before the chip -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["dir", "missing"])
@pytest.mark.parametrize("link", ["uart", "dfu"])
def test_read_output_checked_first(capsys, tmp_path, monkeypatch, chip, kind, link):
    target = tmp_path / "adir" if kind == "dir" else tmp_path / "no" / "such" / "x.bin"
    if kind == "dir":
        target.mkdir()
    reads: list[int] = []
    if link == "uart":
        orig = chip.read

        def counting(addr: int, n: int) -> bytes:
            reads.append(n)
            return orig(addr, n)

        monkeypatch.setattr(chip, "read", counting)
        code, _, err = run(capsys, "uart", URL, "--read", str(target))
    else:
        monkeypatch.setenv("STMFLASH_USB_SIM", "F407")
        code, _, err = run(capsys, "dfu", "--read", str(target))
    one_line_error(code, err, 2, "--read", str(target))
    assert reads == []


def test_batch_report_dir_and_ledger_checked_before_any_board(capsys, tmp_path, chip):
    fw = firmware_hex(tmp_path)
    before = bytes(chip.flash[:64])
    code, _, err = run(capsys, "batch", str(fw), URL, "--report-dir", "/proc/nope")
    one_line_error(code, err, 2, "--report-dir", "/proc/nope")
    code, _, err = run(capsys, "batch", str(fw), URL, "--report-dir", str(tmp_path / "rep"),
                       "--serial-address", "0x080F0000", "--ledger", str(tmp_path / "no" / "l.jsonl"))
    one_line_error(code, err, 2, "--ledger")
    assert bytes(chip.flash[:64]) == before
    assert not (tmp_path / "rep").exists()


# ---- 3. damaged and wrong input -----------------------------------------------------------
def _s3(address: int, data: bytes) -> str:
    body = bytes([len(data) + 5]) + address.to_bytes(4, "big") + data
    return "S3" + body.hex().upper() + f"{(~sum(body)) & 0xFF:02X}"


def _truncations(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    hex_lines = (EXAMPLES / "blinky-f407.hex").read_text().splitlines()
    srec_lines = (EXAMPLES / "blinky-f407.srec").read_text().splitlines()
    cases = {
        "hex-no-eof": ("\n".join(hex_lines[:-1]) + "\n", ".hex", "end-of-file record"),
        "hex-cut": ("\n".join(hex_lines[: len(hex_lines) // 2]) + "\n", ".hex", "end-of-file record"),
        "hex-after-eof": ("\n".join(hex_lines + [hex_lines[1]]) + "\n", ".hex", "after the end-of-file"),
        "srec-no-end": ("\n".join(srec_lines[:-1]) + "\n", ".srec", "end record"),
        "srec-after-end": ("\n".join(srec_lines + [_s3(0x08010000, b"late")]) + "\n", ".srec", "after the end record"),
    }
    # an S5 record whose count disagrees (one data record missing)
    data = [line for line in srec_lines if line[1] in "123"]
    s5_count = len(data) - 1
    body = bytes([3]) + s5_count.to_bytes(2, "big")
    s5 = "S5" + body.hex().upper() + f"{(~sum(body)) & 0xFF:02X}"
    cases["srec-bad-s5"] = ("\n".join([srec_lines[0], *data, s5, srec_lines[-1]]) + "\n", ".srec", "S5")
    out = {}
    for name, (text, ext, needle) in cases.items():
        p = tmp_path / f"{name}{ext}"
        p.write_text(text)
        out[name] = (p, needle)
    return out


def test_truncated_files_are_refused_everywhere(capsys, tmp_path, chip):
    before = bytes(chip.flash[:64])
    for name, (path, needle) in _truncations(tmp_path).items():
        for argv in (["uart", URL, str(path)], ["image", "info", str(path)],
                     ["image", "convert", str(path), str(tmp_path / "o.bin")]):
            code, _, err = run(capsys, *argv)
            one_line_error(code, err, 2, path.name, needle)
            if "after" not in name and "S5" not in needle:
                assert "line" in err and "--allow-missing-end" in err
    assert bytes(chip.flash[:64]) == before


def test_allow_missing_end_is_explicit(capsys, tmp_path, chip):
    cases = _truncations(tmp_path)
    path, _ = cases["hex-no-eof"]
    code, _, err = run(capsys, "uart", URL, str(path), "--allow-missing-end", "-q")
    assert code == 0, err
    assert bytes(chip.flash[:64]) == load(EXAMPLES / "blinky-f407.hex").read(0x08000000, 64)
    # data after the end record stays an error with the option
    path, _ = cases["hex-after-eof"]
    code, _, err = run(capsys, "image", "info", str(path), "--allow-missing-end")
    one_line_error(code, err, 2, "after the end-of-file")


def test_our_srec_writer_ends_with_a_termination_record(tmp_path):
    img = Image()
    img.add(0x08000000, bytes(range(100)))
    p = tmp_path / "o.srec"
    save(img, p)
    assert p.read_text().splitlines()[-1][:2] in ("S7", "S8", "S9")
    assert load(p).read(0x08000000, 100) == bytes(range(100))


def test_a_text_file_is_not_firmware(capsys, tmp_path, chip):
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list: milk, eggs\n")
    code, _, err = run(capsys, "uart", URL, str(notes))
    one_line_error(code, err, 2, "notes.txt", "--no-image-check")
    assert bytes(chip.flash[:16]) == b"\xff" * 16
    code, _, err = run(capsys, "uart", URL, str(notes), "--no-image-check", "-q")
    assert code == 0, err
    assert bytes(chip.flash[:26]) == notes.read_bytes()


def test_a_text_file_is_not_firmware_over_dfu(capsys, tmp_path, monkeypatch):
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list: milk, eggs\n")
    monkeypatch.setenv("STMFLASH_USB_SIM", f"F407={tmp_path / 'f4.img'}")
    code, _, err = run(capsys, "dfu", str(notes))
    one_line_error(code, err, 2, "notes.txt", "--no-image-check")
    code, _, err = run(capsys, "dfu", str(notes), "--no-image-check", "-q")
    assert code == 0, err


def test_elf_for_another_machine(capsys, tmp_path, chip):
    exe = Path(shutil.which("ls") or "/bin/ls").resolve()
    elf = tmp_path / "fw.elf"
    shutil.copy(exe, elf)
    code, _, err = run(capsys, "uart", URL, str(elf))
    one_line_error(code, err, 2, "fw.elf", "not ARM")
    code, _, err = run(capsys, "image", "info", str(elf))
    one_line_error(code, err, 2, "not ARM")


def test_write_option_bytes_needs_the_whole_area_and_says_rdp1(capsys, chip):
    from stmflash import option_bytes as obl

    area = chip.option_bytes()
    code, _, err = run(capsys, "uart", URL, "--write-option-bytes", area[:4].hex())
    one_line_error(code, err, 2, "whole area", str(len(area)))
    rdp1 = obl.set_rdp(chip.device, bytes(area), 1)
    code, _, err = run(capsys, "uart", URL, "--write-option-bytes", rdp1.hex())
    assert code == 0, err
    assert "RDP level 1" in err
    assert obl.rdp_level(chip.device, chip.option_bytes()) == 1


def test_elf_header_machine_field_is_what_decides(tmp_path):
    """A minimal ELF32 with e_machine = 62 (x86-64) and one PT_LOAD is refused by the loader."""
    from stmflash.errors import ImageError

    ehdr = struct.pack("<4sBBBB8xHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, 2, 62, 1, 0x08000000, 52, 0, 0,
                       52, 32, 1, 0, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, 84, 0x08000000, 0x08000000, 8, 8, 5, 4)
    p = tmp_path / "x.elf"
    p.write_bytes(ehdr + phdr + b"\x00\x00\x02\x20\x09\x00\x00\x08")
    with pytest.raises(ImageError, match="X86_64"):
        load(p)
    arm = bytearray(p.read_bytes())
    arm[18:20] = (40).to_bytes(2, "little")  # EM_ARM
    p.write_bytes(bytes(arm))
    assert load(p).read(0x08000000, 8) == b"\x00\x00\x02\x20\x09\x00\x00\x08"


def test_nothing_left_behind_by_path_checks(tmp_path):
    from stmflash.paths import check_output_dir, check_output_file

    check_output_file(str(tmp_path / "x.bin"), "--read")
    check_output_dir(str(tmp_path / "a" / "b"), "--report-dir")
    assert os.listdir(tmp_path) == []


# ---- 4. messages that say what is wrong --------------------------------------------------------
def test_read_range_past_the_end_is_checked_first(capsys, monkeypatch, chip):
    code, _, err = run(capsys, "uart", URL, "--read", "o.bin", "--range", "0x080FFFF0:64")
    one_line_error(code, err, 2, "past the end", "flash", "16 bytes")
    code, _, err = run(capsys, "uart", URL, "--read", "o.bin", "--start", "0x30000000", "--length", "16")
    one_line_error(code, err, 2, "not in a memory")
    monkeypatch.setenv("STMFLASH_USB_SIM", "F407")
    code, _, err = run(capsys, "dfu", "--read", "o.bin", "--start", "0x080FFFF0", "--length", "64")
    one_line_error(code, err, 2, "past the end", "16 bytes")


def test_port_forgotten(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("STMFLASH_PORT", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    fw = firmware_hex(tmp_path)
    code, _, err = run(capsys, "uart", str(fw))
    if "several USB serial adapters" not in err and "no USB serial adapter" not in err:
        pytest.skip(f"this machine has exactly one USB serial adapter: {err.strip()}")
    one_line_error(code, err, 2, "no PORT given", "looks like a firmware image")
    code, _, err = run(capsys, "uart", "missing.hex")
    one_line_error(code, err, 2, "first argument is the PORT")


def test_negative_retries_and_baud_are_usage_errors(capsys, chip):
    for opt, value in (("--retries", "-1"), ("--baud", "0"), ("--timeout", "0"), ("--app-baud", "-5")):
        code, _, err = run(capsys, "uart", URL, opt, value)
        one_line_error(code, err, 2, opt)


def test_after_go_and_reset_without_a_file_do_it(capsys, chip):
    chip.go(chip.device.flash_start)  # pretend the app ran, then the ROM came back
    chip.reset("bootloader")
    code, _, err = run(capsys, "uart", URL, "--after", "go")
    assert code == 0, err
    assert "started at 0x08000000" in err and chip.mode == "app"
    chip.reset("bootloader")
    resets = chip.reset_count
    code, _, err = run(capsys, "uart", URL, "--after", "reset")
    assert code == 0, err
    assert chip.reset_count == resets + 1 and "chip reset" in err


def test_device_names(capsys):
    code, _, err = run(capsys, "devices", "f4")
    line = one_line_error(code, err, 2, "ambiguous")
    assert "H5E5" not in line and "F407" in line
    for part in ("STM32F407VG", "STM32G071RB", "stm32f103c8t6", "STM32L476RG"):
        code, out, err = run(capsys, "devices", part)
        assert code == 0, err
        assert find(part).short_name in out


def test_bad_usb_sim_spec_is_an_error(capsys, monkeypatch):
    monkeypatch.setenv("STMFLASH_USB_SIM", "garbage")
    code, _, err = run(capsys, "list")
    one_line_error(code, err, 2, "STMFLASH_USB_SIM", "garbage")


def test_list_shows_runtime_apps_and_dfu_suggests_enter(capsys, tmp_path, monkeypatch):
    img = tmp_path / "app.img"
    board = VirtualChip(find("F407"), image_path=img)
    for seg in load(EXAMPLES / "blinky-f407.hex").segments:
        board.preload(seg.address, seg.data)
    board.save()
    monkeypatch.setenv("STMFLASH_USB_SIM", f"F407={img};app=1")
    code, out, err = run(capsys, "list")
    assert code == 0, err
    assert "runtime mode" in out and "0483:5740" in out and "--enter detach" in out
    code, _, err = run(capsys, "dfu")
    one_line_error(code, err, 3, "runtime mode", "--enter detach")
    code, _, err = run(capsys, "dfu", "--enter", "detach", "--json")
    assert code == 0, err


def test_every_failed_entry_strategy_is_reported(capsys, chip):
    chip.go(chip.device.flash_start)  # the application runs, without the companion
    code, _, err = run(capsys, "uart", URL, "--enter", "command:timeout=0.05,pins:rts,-rts",
                       "--timeout", "0.05", "--retries", "0")
    line = one_line_error(code, err, 3)
    assert "command" in line and "pins:rts,-rts" in line and "2 tried" in line


def test_trigger_key_is_named(capsys, tmp_path):
    app_img = tmp_path / "a.img"
    board = VirtualChip(find("F407"), image_path=app_img)
    for seg in load(EXAMPLES / "blinky-f407.hex").segments:
        board.preload(seg.address, seg.data)
    board.save()
    url = f"sim://F407?app=1&image={app_img}&app_key=5a17c0de"
    code, _, err = run(capsys, "trigger", url, "--trigger-key", "00112233", "--timeout", "0.1")
    one_line_error(code, err, 3, "--trigger-key 00112233")
    code, _, err = run(capsys, "trigger", url, "--timeout", "0.1")
    one_line_error(code, err, 3, "STMFLASH_BOOT_KEY")
    code, _, err = run(capsys, "uart", url, "--enter", "command", "--trigger-key", "5a17c0de")
    assert code == 0, err
    assert "trigger acknowledged" in err


# ---- 6. one entry registry, no import cycle ----------------------------------------------------
def _imports(path: Path) -> set[str]:
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_entry_modules_import_alone_without_a_cycle():
    import subprocess
    import sys

    uart_entry = _imports(ROOT / "stmflash" / "uart" / "entry.py")
    host = _imports(ROOT / "stmflash" / "trigger" / "host.py")
    assert not any(m.startswith("stmflash.trigger") for m in uart_entry)
    assert not any(m.startswith("stmflash.uart") for m in host)
    assert "stmflash.enter" in uart_entry and "stmflash.enter" in host
    for first in ("stmflash.trigger.host", "stmflash.uart.entry", "stmflash.enter"):
        code = f"import {first}; import stmflash.enter as e; print(e.serial_chain('command,pins:rts,none'))"
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "CommandStrategy" in p.stdout and "PinsEntry" in p.stdout


def test_one_registry_serves_uart_and_dfu():
    from stmflash import enter
    from stmflash.errors import UsageError

    serial = enter.serial_chain("pins:rts,-rts*2,command,none")
    assert [s.describe().split(" ")[0] for s in serial] == ["pins:rts,-rts", "pins:rts,-rts", "command", "none"]
    usb = enter.usb_chain("1200,detach*2,none", timeout=1.0)
    assert [w for w, _ in usb] == ["1200", "detach", "detach", "none"]
    with pytest.raises(UsageError, match="not a USB entry"):
        enter.usb_chain("command", timeout=1.0)
    with pytest.raises(UsageError, match="unknown --enter strategy"):
        enter.serial_chain("bogus")


def test_enter_command_on_a_pty_at_the_default_parity(capsys, tmp_path):
    """Switching back to 8E1 after the trigger falls back to 8N1 on a pty, as opening does."""
    import signal
    import subprocess
    import sys

    from stmflash.sim.app import demo_vector_table

    img = tmp_path / "board.img"
    board = VirtualChip(find("F407"), image_path=img)
    board.preload(board.device.flash_start, demo_vector_table(board))
    board.save()
    proc = subprocess.Popen([sys.executable, "-m", "stmflash", "sim", "uart", "--device", "F407", "--image",
                             str(img), "--app"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        path = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert path.startswith("/dev/")
        code, _, err = run(capsys, "uart", path, "--enter", "command")
        assert code == 0, err
        assert "trigger acknowledged" in err and "Invalid argument" not in err
        code, _, err = run(capsys, "uart", path, "--enter", "command,none")  # the ROM is there already
        assert code == 0, err
        assert "not open" not in err
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()


# ---- 7. no pointers to files a cloner does not have ----------------------------------------------
def test_no_references_to_files_outside_the_repository():
    import re
    import subprocess

    p = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"not a git checkout: {p.stderr.strip()}")
    pattern = re.compile(r"shared/reference|shared/seeds|/work/|common\.md|(uart-an3155|dfu-dfuse|"
                         r"trigger-and-production)\.md|project brief")
    bad = []
    for name in p.stdout.split():
        path = ROOT / name
        if path.suffix in (".img", ".bin", ".elf", ".dfu", ".png") or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if pattern.search(line) and name != "tests/test_front_door.py":
                bad.append(f"{name}:{n}: {line.strip()[:100]}")
    assert not bad, "\n".join(bad)


# ---- 11. start-up work (the timing itself is benchmarks/help_startup.py) -------------------------
def _python(code: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_help_imports_nothing_heavy():
    code = ("import sys\nfrom stmflash.cli import main\nsys.argv = ['stmflash', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('serial', 'usb', 'intelhex', 'bincopy', 'elftools', 'stmflash.devices',"
            " 'stmflash.image.loaders', 'stmflash.commands.uart_cmd', 'tomllib', 'json') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    p = _python(code)
    assert "HEAVY []" in p.stderr, p.stderr
    assert "uart" in p.stdout and "dfu" in p.stdout


def test_public_api_is_lazy_and_complete():
    code = ("import sys, stmflash\nassert 'stmflash.pipeline' not in sys.modules\n"
            "names = [n for n in stmflash.__all__]\nobjs = [getattr(stmflash, n) for n in names]\n"
            "assert stmflash.connect_uart.__module__ == 'stmflash.uart.link'\n"
            "assert stmflash.connect_dfu.__module__ == 'stmflash.dfu.link'\n"
            "assert issubclass(stmflash.ImageError, stmflash.StmflashError)\nprint('OK', len(names))\n")
    p = _python(code)
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr


# ---- 9. the everyday actions peers have --------------------------------------------------------
def test_verify_only_and_crc_over_uart(capsys, chip):
    fw = EXAMPLES / "blinky-f407.hex"
    code, _, err = run(capsys, "uart", URL, str(fw), "--verify-only")
    one_line_error(code, err, 5, "NOT what was asked")  # blank chip: nothing written
    assert bytes(chip.flash[:16]) == b"\xff" * 16
    assert run(capsys, "uart", URL, str(fw), "-q", "--after", "stay")[0] == 0
    code, out, err = run(capsys, "uart", URL, str(fw), "--verify-only", "--json")
    assert code == 0, err
    import json

    result = json.loads(out.strip().splitlines()[-1])
    assert result["verified"] is True and result["image_crc32"] == f"0x{load(fw).crc32():08X}"
    img = load(fw)
    code, out, err = run(capsys, "uart", URL, "--crc", f"0x{img.start:08X}:{img.size}", "--json")
    assert code == 0, err
    crc = json.loads(out.strip().splitlines()[-1])["crc"]
    from stmflash.image.crc import stm32_crc, zlib_crc

    data = img.read(img.start, img.size)
    assert crc == {"start": f"0x{img.start:08X}", "length": img.size, "crc32": f"0x{zlib_crc(data):08X}",
                   "stm32_crc": f"0x{stm32_crc(data):08X}"}
    code, _, err = run(capsys, "uart", URL, "--verify-only")
    one_line_error(code, err, 2, "--verify-only needs FILE")


def test_verify_only_crc_and_erase_range_over_dfu(capsys, tmp_path, monkeypatch):
    import json

    from stmflash.image.crc import zlib_crc

    monkeypatch.setenv("STMFLASH_USB_SIM", f"F407={tmp_path / 'f4.img'}")
    fw = EXAMPLES / "blinky-f407.hex"
    assert run(capsys, "dfu", str(fw), "-q")[0] == 0
    code, _, err = run(capsys, "dfu", str(fw), "--verify-only", "-q")
    assert code == 0, err
    img = load(fw)
    code, out, err = run(capsys, "dfu", "--crc", f"0x08000000:{img.size}", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["crc"]["crc32"] == f"0x{zlib_crc(img.read(img.start, img.size)):08X}"
    code, _, err = run(capsys, "dfu", "--erase-range", "0x08000000:1K")
    one_line_error(code, err, 2, "sector boundaries", "0x08004000")
    code, _, err = run(capsys, "dfu", "--erase-range", "0x08000000:16K", "-q")
    assert code == 0, err
    code, _, err = run(capsys, "dfu", str(fw), "--verify-only")
    one_line_error(code, err, 5)


def test_srecord_ending_with_its_count_is_complete(tmp_path):
    """srec_cat writes no S7/S8/S9 without an entry point, but a final S5 count: complete."""
    from stmflash.errors import ImageError

    recs = [_s3(0x08000000 + 16 * i, bytes([i]) * 16) for i in range(3)]
    body = bytes([3, 0, 3])
    s5 = "S5" + body.hex().upper() + f"{(~sum(body)) & 0xFF:02X}"
    p = tmp_path / "c.srec"
    p.write_text("\n".join([*recs, s5]) + "\n")
    assert load(p).read(0x08000010, 16) == b"\x01" * 16
    p.write_text("\n".join(recs[:2]) + "\n")  # cut before the count: refused
    with pytest.raises(ImageError, match="no end record"):
        load(p)


def test_port_defaults_env_and_config_profiles(capsys, tmp_path, monkeypatch, chip):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    fw = firmware_hex(tmp_path)
    monkeypatch.setenv("STMFLASH_PORT", URL)
    code, _, err = run(capsys, "uart", str(fw), "--after", "stay", "-q")  # FILE alone: port from the env
    assert code == 0, err
    assert bytes(chip.flash[:8]) == load(fw).read(0x08000000, 8)
    monkeypatch.delenv("STMFLASH_PORT")
    cfg = tmp_path / ".config" / "stmflash"
    cfg.mkdir(parents=True)
    (cfg / "config.toml").write_text(f'[profile.default]\nport = "{URL}"\n[profile.g0]\nport = "sim://G071"\n'
                                     'baud = 57600\n')
    code, out, err = run(capsys, "uart")
    assert code == 0, err
    assert "STM32F4" in out and "config.toml" in err
    code, out, err = run(capsys, "uart", "--profile", "g0")
    assert code == 0, err
    assert "G07" in out
    code, _, err = run(capsys, "uart", "--profile", "nope")
    one_line_error(code, err, 2, "no [profile.nope]", "default, g0")
    (cfg / "config.toml").write_text('[profile.default]\nbaud = "fast"\n')
    code, _, err = run(capsys, "uart", URL)
    one_line_error(code, err, 2, "profile.default.baud")


def test_trace_logs_the_wire_and_usb_transfers(capsys, tmp_path, monkeypatch, chip):
    log = tmp_path / "t.log"
    code, _, err = run(capsys, "uart", URL, "--trace", str(log))
    assert code == 0, err
    lines = log.read_text().splitlines()
    assert lines[0].split()[1:] == ["uart", ">", "7f"]  # the sync byte first
    assert lines[1].split()[1:] == ["uart", "<", "79"]  # ACK
    times = [float(line.split()[0]) for line in lines]
    assert times == sorted(times)
    monkeypatch.setenv("STMFLASH_USB_SIM", "F407")
    code, _, err = run(capsys, "dfu", "--trace", "-")
    assert code == 0, err
    usb = [line for line in err.splitlines() if " usb " in line]
    assert any("(GETSTATUS, 6 bytes)" in line for line in usb) and any("(UPLOAD" in line for line in usb)
    code, _, err = run(capsys, "uart", URL, "--trace", str(tmp_path / "no" / "t.log"))
    one_line_error(code, err, 2, "--trace")


def test_shell_completion_for_devices_ports_and_files(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "blinky.hex").write_text("")

    def complete(words: str, cword: int) -> list[str]:
        env = dict(os.environ, COMP_WORDS=words, COMP_CWORD=str(cword), _STMFLASH_COMPLETE="bash_complete")
        p = subprocess.run([sys.executable, "-m", "stmflash"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=60)
        return p.stdout.splitlines()

    assert "plain,F407" in complete("stmflash devices F40", 2)
    assert "plain,G071" in complete("stmflash sim uart --device G07", 4)
    assert "plain,sim://F407" in complete("stmflash uart sim://F40", 2)
    assert "file,bl" in complete("stmflash uart sim://F407 bl", 3)  # the shell lists the files
    assert "file,bl" in complete("stmflash image info bl", 3)
