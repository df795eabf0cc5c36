"""The virtual STM32 behind a real Linux USB stack: dfu-util, libusb, usbfs, cdc_acm, udev.

One QEMU guest (TCG, ``-smp 1``; KVM is not used: it is unavailable or hangs on CI-like
machines) boots Debian's kernel -- unpacked from the ``linux-image`` package, not
installed -- with a busybox initramfs holding vhci-hcd, cdc_acm and the 9p/virtio modules.
The guest mounts the host's ``/`` read-only over 9p and chroots into it, so it runs the
host's own dfu-util, usbip, udevadm, Python and this checkout. ``stmflash sim usbip``
runs on the host; QEMU's user network (``restrict=on``: no other traffic) hands each
guest connection to 10.0.2.100:3240 to it (through socat) and each connection to
10.0.2.101:3240 to a fresh ``stmflash sim usbip --stdio``. tests/usbkernel/guest.py runs
every scenario in one guest process and writes what the programs printed; the tests
below assert on that, on the chips' image files and on the server's log. No mock sits
between the programs and the virtual chip: kernel, usbfs, libusb and cdc_acm are real.

Needs qemu-system-x86, busybox-static, socat, dfu-util and a kernel tree from
``apt-get download linux-image-<ver>-amd64 && dpkg-deb -x`` (``.ci/run`` prepares it in
``~/.cache/stmflash-usbkernel/kroot``; ``STMFLASH_USBKERNEL_ROOT`` points elsewhere).
Run alone: ``pytest -m usbkernel``; skip it: ``pytest -m "not usbkernel"``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from stmflash import devices
from stmflash.dfu.facts import dfu_facts
from stmflash.sim.app import demo_vector_table
from stmflash.sim.chip import VirtualChip
from stmflash.sim.usb_backend import bus_from_spec

BOOT_TIMEOUT_S = 480  # the guest normally finishes in 3-4 minutes (2 shared cores)
pytestmark = [pytest.mark.usbkernel, pytest.mark.timeout(BOOT_TIMEOUT_S + 120)]

REPO = Path(__file__).resolve().parent.parent
GUEST_DIR = Path(__file__).resolve().parent / "usbkernel"
MODULES = ["virtio_pci", "virtio_net", "9pnet_virtio", "9p", "vhci-hcd", "cdc_acm"]
DFU_CHIPS = {"1-1": "F407", "1-2": "L476", "1-3": "G474", "1-4": "H743"}
APP_PATH = "1-5"
# attached only for the fault scenarios: path -> (fault spec, stmflash runs, what the server
# log shows when each fault fired: a STALL answered, an URB left to the host's unlink, a drop)
FAULTS = {
    "1-6": ("stall@dnload:5", 2, [r"1-6 ctrl 21/01 value 0x\w+ index 0 len \d+: EPIPE"]),
    "1-7": ("timeout@getstatus:3+disconnect@dnload:12", 3,
            [r"1-7 seq \d+ left unanswered", r"1-7 unlink seq \d+ \(ep 0 running\)", r"1-7 left the bus"]),
}
BROKEN_RHPORT = 7  # the --stdio server's broken ROM, on 1-8
# USB-serial adapters on the USART bootloader: plain, with the application, with DTR/RTS wired
ADAPTERS = {"plain": "1-9", "app": "1-10", "pins": "1-11"}


# ---- what the tier needs ---------------------------------------------------------------------------
def kernel_tree() -> tuple[Path, str] | str:
    """(root of an unpacked linux-image package, version), or why there is none."""
    roots = [os.environ.get("STMFLASH_USBKERNEL_ROOT", ""),
             str(Path.home() / ".cache" / "stmflash-usbkernel" / "kroot"), "/"]
    for root in filter(None, roots):
        for vmlinuz in sorted(Path(root, "boot").glob("vmlinuz-*")):
            ver = vmlinuz.name[len("vmlinuz-"):]
            if (Path(root) / "lib/modules" / ver / "modules.dep").exists():
                return Path(root), ver
    return ("no kernel tree with modules (.ci/run unpacks linux-image-*-amd64 into "
            "~/.cache/stmflash-usbkernel/kroot; or set STMFLASH_USBKERNEL_ROOT)")


def missing_requirements() -> str | None:
    for prog, pkg in (("qemu-system-x86_64", "qemu-system-x86"), ("socat", "socat"), ("dfu-util", "dfu-util"),
                      ("modinfo", "kmod")):
        if shutil.which(prog) is None:
            return f"{prog} is not installed (Debian package {pkg}; .ci/run installs it)"
    busybox = Path("/bin/busybox")
    if not busybox.exists() or b"ld-linux" in busybox.read_bytes()[:8192]:
        return "a static busybox is needed for the guest's initramfs (Debian package busybox-static)"
    tree = kernel_tree()
    return tree if isinstance(tree, str) else None


# ---- initramfs --------------------------------------------------------------------------------------
def module_order(root: Path, ver: str) -> list[Path]:
    """The .ko files of MODULES and their dependencies, dependencies first (modinfo)."""
    order: list[Path] = []
    seen: set[str] = set()

    def info(field: str, name: str) -> str:
        return subprocess.run(["modinfo", "-b", str(root), "-k", ver, "-F", field, name],
                              capture_output=True, text=True, check=True).stdout.strip()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for dep in filter(None, info("depends", name).split(",")):
            visit(dep)
        order.append(Path(info("filename", name)))

    for m in MODULES:
        visit(m)
    return order


def newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio "newc" archive (what the kernel unpacks as initramfs) of (name, mode, data)."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        out += b"070701" + b"".join(f"{v:08X}".encode() for v in fields) + name.encode() + b"\0"
        out += bytes(-len(out) % 4)
        out += data
        out += bytes(-len(out) % 4)
    return bytes(out)


def build_initramfs(root: Path, ver: str, dest: Path) -> list[str]:
    entries: list[tuple[str, int, bytes]] = []
    for d in ("bin", "dev", "proc", "sys", "host", "lib", "lib/modules"):
        entries.append((d, 0o040755, b""))
    entries.append(("bin/busybox", 0o100755, Path("/bin/busybox").read_bytes()))
    for applet in ("sh", "mount", "insmod", "ip", "sed", "cut", "cat", "chroot", "poweroff", "dirname"):
        entries.append((f"bin/{applet}", 0o120777, b"busybox"))
    mods = module_order(root, ver)
    for ko in mods:
        entries.append((f"lib/modules/{ko.name}", 0o100644, ko.read_bytes()))
    entries.append(("modules.order", 0o100644, "".join(f"{ko.name}\n" for ko in mods).encode()))
    entries.append(("init", 0o100755, (GUEST_DIR / "init.sh").read_bytes()))
    dest.write_bytes(gzip.compress(newc(entries), compresslevel=1))
    return [ko.name for ko in mods]


# ---- the one guest run -----------------------------------------------------------------------------
@dataclass
class Tier:
    out: Path
    results: dict
    console: str
    server_log: str
    broken_log: str
    specs: dict[str, str]
    fw: dict[str, bytes]
    secs: float

    def result(self, name: str) -> dict:
        assert name in self.results, f"scenario {name!r} did not run; guest console tail:\n{self.console[-3000:]}"
        return self.results[name]

    def peer(self, name: str, program: str) -> dict:
        """The result of a scenario run by ``program``; skip when it is not installed."""
        r = self.result(name)
        if r["rc"] == "not-run":
            pytest.skip(f"{program} is not installed in the guest's (the host's) userland: {r['out']}")
        return r

    def ok(self, name: str) -> str:
        r = self.result(name)
        assert r["rc"] == 0, f"{name}: {r.get('argv')} exited {r['rc']}:\n{r['out'][-4000:]}"
        return r["out"]

    def image(self, path: str) -> VirtualChip:
        name = DFU_CHIPS.get(path, "F407")
        return VirtualChip(devices.find(name), image_path=self.out / f"{path}.img")


def firmware(size: int, seed: int, app_for: str | None = None) -> bytes:
    data = bytearray(os.urandom(size)) if seed < 0 else bytearray(
        (i * 131 + seed * 7919 + (i >> 8) * 17) & 0xFF for i in range(size))
    if app_for is not None:
        dev = devices.find(app_for)
        data[:8] = demo_vector_table(VirtualChip(dev), entry_offset=0x201 + seed * 4)
    return bytes(data)


def checkout_env() -> dict[str, str]:
    """The environment for the servers: this checkout's stmflash first on the path."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path}


def app_image(path: Path) -> Path:
    """An F407 image whose flash holds a valid vector table: the chip runs its application."""
    chip = VirtualChip(devices.find("F407"), image_path=path)
    chip.preload(chip.device.flash_start, demo_vector_table(chip))
    chip.save()
    return path


def free_port_server(argv: list[str], log: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(log.with_suffix(".stderr"), "w"), cwd=REPO,
                            env=checkout_env())
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line:
        proc.kill()
        raise AssertionError(f"stmflash sim usbip did not start: {log.with_suffix('.stderr').read_text()}")
    return proc, int(line.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Tier:
    why = missing_requirements()
    if why:
        pytest.skip(why)
    root, ver = kernel_tree()  # type: ignore[misc]
    out = tmp_path_factory.mktemp("usbkernel")
    t0 = time.monotonic()
    build_initramfs(root, ver, out / "initramfs.cpio.gz")

    fw = {"fw_a": firmware(64 * 1024, -1), "fw_b": firmware(48 * 1024, 3, "F407"),
          "fw_fault": firmware(32 * 1024, -1), "fw_mixed": firmware(6 * 1024, 6, "F407"), "fw_uart": firmware(4 * 1024, -1),
          "fw_uart2": firmware(3 * 1024, 4, "F407"), "fw_uart3": firmware(3 * 1024, 5, "F407"),
          "fw_app": firmware(24 * 1024, 1, "F407"), "fw_app2": firmware(20 * 1024, 2, "F407"),
          "fw_batch": firmware(16 * 1024, -1)}
    # one image for four families: a stack pointer inside every one's SRAM, reset in flash
    fw["fw_batch"] = struct.pack("<II", 0x20004000, 0x08000201) + fw["fw_batch"][8:]
    for name, data in fw.items():
        (out / f"{name}.bin").write_bytes(data)
    app_img = app_image(out / f"{APP_PATH}.img")
    specs = {p: f"{name}={out / (p + '.img')};port={p};seed={i + 1}" for i, (p, name) in enumerate(DFU_CHIPS.items())}
    specs[APP_PATH] = f"F407={app_img};app=1;port={APP_PATH};seed=9"
    for kind, path in ADAPTERS.items():
        options = {"plain": "adapter=1", "app": "adapter=1;app=1", "pins": "adapter=pins;app=1"}[kind]
        if kind != "plain":
            app_image(out / f"{path}.img")
        specs[path] = f"F407={out / (path + '.img')};port={path};seed={30 + len(specs)};{options}"
    for i, (path, (fault, _runs, _marks)) in enumerate(FAULTS.items()):
        specs[path] = f"F407={out / (path + '.img')};port={path};seed={20 + i};fault={fault}"
    spec = ",".join(specs.values())
    server_log, broken_log = out / "server.log", out / "broken.log"
    py = sys.executable
    server, port = free_port_server([py, "-m", "stmflash", "sim", "usbip", spec, "--listen", "127.0.0.1:0",
                                     "--log", str(server_log)], server_log)
    broken_spec = f"F407={out / 'broken.img'};fault=wtransfersize=4096"
    plan = {
        "server": "10.0.2.100", "stdio_server": "10.0.2.101", "broken_rhport": BROKEN_RHPORT,
        "attach": {p: int(p.split("-")[1]) - 1 for p in specs if p not in FAULTS},
        "fault_ports": {p: runs for p, (_f, runs, _m) in FAULTS.items()},
        "expect": {**{p: "0483:df11" for p in DFU_CHIPS}, APP_PATH: "0483:5740"},
        "rules": str(REPO / "udev" / "50-stmflash.rules"),
        "udev_devices": {"dfu": "1-2", "app": APP_PATH},
        "app_path": APP_PATH, "adapters": ADAPTERS,
        **{name: str(out / f"{name}.bin") for name in fw},
    }
    (out / "plan.json").write_text(json.dumps(plan, indent=1))

    def cmd(argv: list[str]) -> str:
        return " ".join(shlex.quote(a) for a in argv).replace(",", ",,")

    relay = cmd(["socat", "STDIO", f"TCP:127.0.0.1:{port}"])
    stdio = cmd([py, "-m", "stmflash", "sim", "usbip", broken_spec, "--stdio", "--log", str(broken_log)])
    netdev = (f"user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:3240-cmd:{relay},"
              f"guestfwd=tcp:10.0.2.101:3240-cmd:{stdio}")
    append = (f"console=ttyS0 loglevel=3 panic=-1 stmflash.out={out} stmflash.py={py} "
              f"stmflash.guest={GUEST_DIR / 'guest.py'} stmflash.src={REPO}")
    qemu = ["timeout", str(BOOT_TIMEOUT_S), "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "1024",
            "-smp", "1", "-display", "none", "-monitor", "none", "-serial", f"file:{out / 'console.log'}",
            "-no-reboot", "-kernel", str(root / "boot" / f"vmlinuz-{ver}"),
            "-initrd", str(out / "initramfs.cpio.gz"), "-append", append,
            "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile=",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={out},mount_tag=out,security_model=none,multidevs=remap"]
    try:
        subprocess.run(qemu, stdin=subprocess.DEVNULL, stdout=open(out / "qemu.log", "w"),
                       stderr=subprocess.STDOUT, timeout=BOOT_TIMEOUT_S + 20, cwd=out, env=checkout_env())
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    console = (out / "console.log").read_text(errors="replace") if (out / "console.log").exists() else ""
    results_file = out / "results.json"
    if not results_file.exists():
        raise AssertionError(f"the guest wrote no results; qemu: {(out / 'qemu.log').read_text()[-2000:]}\n"
                             f"console:\n{console[-4000:]}")
    return Tier(out, json.loads(results_file.read_text()), console, server_log.read_text(),
                broken_log.read_text() if broken_log.exists() else "", specs, fw, time.monotonic() - t0)


# ---- expectations from the device table -----------------------------------------------------------
def expected_dfu_lines(tier: Tier) -> set[str]:
    """The `dfu-util -l` lines each ROM must produce, devnum left out."""
    lines = set()
    for path, name in DFU_CHIPS.items():
        dev = bus_from_spec(tier.specs[path]).snapshot()[0]
        facts = dfu_facts(devices.find(name))
        for alt, text in enumerate(facts.alts):
            lines.add(f'Found DFU: [0483:df11] ver={facts.bcd_device:04x}, cfg=1, intf=0, path="{path}", '
                      f'alt={alt}, name="{text}", serial="{dev.rom.serial}"')
    return lines


def found_lines(out: str, kind: str = "DFU") -> set[str]:
    return {re.sub(r" devnum=\d+,", "", line.strip()) for line in out.splitlines()
            if line.startswith(f"Found {kind}:")}


# ---- the scenarios' checks -------------------------------------------------------------------------
def test_all_chips_enumerate_on_their_ports(tier: Tier) -> None:
    seen = tier.result("enumerate")["seen"]
    assert seen == {**{p: "0483:df11" for p in DFU_CHIPS}, APP_PATH: "0483:5740"}


def test_usbip_tool_lists_the_exported_chips(tier: Tier) -> None:
    tier.peer("usbip_list", "usbip (Debian package usbip)")
    out = tier.ok("usbip_list")
    for path in DFU_CHIPS:
        assert re.search(rf"^\s*{path}: STMicroelectronics : .*\(0483:df11\)", out, re.M), out
    assert re.search(rf"^\s*{APP_PATH}: STMicroelectronics : .*\(0483:5740\)", out, re.M), out


def test_dfu_util_lists_exactly_the_rom_descriptors(tier: Tier) -> None:
    out = tier.ok("dfu_util_list")
    got = {line for line in found_lines(out) if 'path="1-5"' not in line}
    assert got == expected_dfu_lines(tier)


def test_dfu_util_sees_the_application_runtime_interface(tier: Tier) -> None:
    runtime = found_lines(tier.ok("dfu_util_list"), "Runtime")
    assert any(f'path="{APP_PATH}"' in line and "[0483:5740]" in line and "intf=2" in line
               and 'name="DFU runtime (stmflash companion)"' in line for line in runtime), runtime


def test_dfu_util_download_upload_round_trip(tier: Tier) -> None:
    tier.ok("dfu_util_download")
    tier.ok("dfu_util_upload")
    assert (tier.out / "up_a.bin").read_bytes() == tier.fw["fw_a"]


def test_stmflash_reads_what_dfu_util_wrote(tier: Tier) -> None:
    tier.ok("stmflash_read_dfu_util_image")
    assert (tier.out / "rd_a.bin").read_bytes() == tier.fw["fw_a"]


def test_stmflash_write_verify_and_dfu_util_reads_it(tier: Tier) -> None:
    out = tier.ok("stmflash_write")
    assert "verif" in out.lower(), out
    tier.ok("dfu_util_reads_stmflash")
    assert (tier.out / "up_b.bin").read_bytes() == tier.fw["fw_b"]


def test_a_wrong_wtransfersize_makes_dfu_util_fail(tier: Tier) -> None:
    """The test of the test: one wrong descriptor byte must fail the real stack's run."""
    r = tier.result("broken_transfer_size")
    assert r["attached"] and r["seen"] == "0483:df11", r
    assert r["rc"] not in (0, "timeout", "not-run"), r["out"]
    assert "Device returned transfer size 4096" in r["out"], r["out"]
    assert "LIBUSB_ERROR_PIPE" in r["out"] and "Error during download" in r["out"], r["out"][-2000:]
    assert re.search(r"ctrl 21/01 value 0x0002 index 0 len 4096: EPIPE", tier.broken_log), tier.broken_log[-2000:]
    assert "stdio connection" in tier.broken_log  # it was the --stdio server, started by QEMU


def test_udev_rules_tag_the_dfu_device(tier: Tier) -> None:
    tier.peer("udev_dfu", "udevadm (Debian package udev)")
    out = tier.ok("udev_dfu")
    assert "50-stmflash.rules" in out, out[-3000:]
    tags = re.findall(r"^(?:CURRENT_)?TAGS=(.*)$", out, re.M)
    assert tags and all(":uaccess:" in t for t in tags), out[-3000:]


def test_udev_rules_leave_the_application_alone(tier: Tier) -> None:
    tier.peer("udev_app", "udevadm (Debian package udev)")
    out = tier.ok("udev_app")
    assert not any(":uaccess:" in t for t in re.findall(r"^TAGS=(.*)$", out, re.M)), out[-3000:]


def test_batch_programs_several_chips_at_once(tier: Tier) -> None:
    out = tier.ok("batch_dfu")
    assert re.search(rf"summary: {len(DFU_CHIPS)} passed, 0 failed of {len(DFU_CHIPS)}", out), out[-2000:]
    for path, name in DFU_CHIPS.items():
        image = tier.out / ("after_batch_1-1.img" if path == "1-1" else f"{path}.img")
        chip = VirtualChip(devices.find(name), image_path=image)
        start = chip.device.flash_start
        assert chip.read(start, len(tier.fw["fw_batch"])) == tier.fw["fw_batch"], f"{path}: {out[-2000:]}"


def test_stmflash_leave_disconnects_and_counts_as_success(tier: Tier) -> None:
    tier.ok("stmflash_leave")
    assert tier.result("after_leave")["id"] is None, "1-1 is still on the bus after --leave"
    assert tier.result("after_leave_1s")["id"] is None, "1-1 came back: the application did not start"
    assert re.search(r"1-1 left the bus", tier.server_log)
    chip = tier.image("1-1")
    assert chip.read(chip.device.flash_start, len(tier.fw["fw_b"])) == tier.fw["fw_b"]


def test_application_console_on_ttyacm_hears_only_its_line_settings(tier: Tier) -> None:
    r = tier.result("console")
    assert r["rc"] == 0, r
    assert "echo: hello 8N1" in r["out"]["8N1"], r
    assert "echo:" not in r["out"]["8E1"], r
    assert re.search(r"1-5 ctrl 21/20 value 0x0000 index 0 len 7: ok 00c2010000020?8", tier.server_log) \
        or "ok 00c2010000020" in tier.server_log  # SET_LINE_CODING 115200 even parity reached the chip


def test_stmflash_list_shows_cdc_port_with_port_path(tier: Tier) -> None:
    data = json.loads(tier.ok("stmflash_list"))
    acm = {p["location"]: p["usb"] for p in data["serial_ports"] if p["device"].startswith("/dev/ttyACM")}
    assert acm == {f"{APP_PATH}:1.0": "0483:5740", **{f"{p}:1.0": "1209:0001" for p in ADAPTERS.values()}}, data
    assert sorted(d["path"] for d in data["dfu_devices"]) == sorted(DFU_CHIPS), data
    assert all(not d["virtual"] for d in data["dfu_devices"])  # the real bus, not STMFLASH_USB_SIM
    assert [(r["path"], r["pid"], r["interface"]) for r in data["dfu_runtime"]] == [(APP_PATH, "5740", 2)], data


def test_app_and_rom_faces_alternate_on_one_bus_id(tier: Tier) -> None:
    """1200-baud touch, leave, DFU_DETACH, leave: four re-enumerations on 1-5."""
    faces = re.findall(rf"import {APP_PATH}: 0483:([0-9a-f]{{4}})", tier.server_log)
    assert faces == ["5740", "df11", "5740", "df11", "5740"], faces


def test_enter_1200_reenumerates_on_the_same_port(tier: Tier) -> None:
    assert f"at USB {APP_PATH}," in tier.ok("enter_1200")
    assert tier.result("after_1200")["id"] == "0483:5740"
    chip = VirtualChip(devices.find("F407"), image_path=tier.out / "after_1200.img")
    assert chip.read(chip.device.flash_start, len(tier.fw["fw_app"])) == tier.fw["fw_app"]


def test_enter_detach_reenumerates_on_the_same_port(tier: Tier) -> None:
    assert f"at USB {APP_PATH}," in tier.ok("enter_detach")
    assert tier.result("after_detach")["id"] == "0483:5740"
    chip = VirtualChip(devices.find("F407"), image_path=tier.out / "after_detach.img")
    assert chip.read(chip.device.flash_start, len(tier.fw["fw_app2"])) == tier.fw["fw_app2"]


def test_no_scenario_group_crashed(tier: Tier) -> None:
    crashes = {k: v["out"] for k, v in tier.results.items() if k.startswith("crash_")}
    assert not crashes, crashes


@pytest.mark.parametrize("path", sorted(FAULTS))
def test_faults_through_the_real_stack_end_clearly(tier: Tier, path: str) -> None:
    """Stall / timeout / disconnect: a clear non-zero exit or a completed retry, never a
    success over wrong content; the last run (no fault left) must succeed."""
    runs = [tier.result(f"fault_{path}_{i}") for i in range(FAULTS[path][1])]
    for r in runs:
        assert r["rc"] in (0, 1, 3, 5), f"{path}: exit {r['rc']}:\n{r['out'][-3000:]}"
        assert "Traceback" not in r["out"], r["out"][-3000:]
        if r["rc"] != 0:
            assert re.search(r"^stmflash: ", r["out"], re.M), r["out"][-3000:]
    assert runs[-1]["rc"] == 0, runs[-1]["out"][-3000:]
    chip = VirtualChip(devices.find("F407"), image_path=tier.out / f"fault_{path}.img")
    assert chip.read(chip.device.flash_start, len(tier.fw["fw_fault"])) == tier.fw["fw_fault"]
    for mark in FAULTS[path][2]:  # each fault really went through the kernel's stack
        assert re.search(mark, tier.server_log), f"{path}: no {mark!r} in the server log"


# ---- the USB-serial adapter in front of the AN3155 ROM ---------------------------------------------
def image_at(tier: Tier, snapshot: str, n: int) -> bytes:
    chip = VirtualChip(devices.find("F407"), image_path=tier.out / f"{snapshot}.img")
    return chip.read(chip.device.flash_start, n)


def test_adapters_enumerate_as_ttyacm(tier: Tier) -> None:
    ttys = tier.result("adapters")["ttys"]
    assert set(ttys) == set(ADAPTERS.values()) and all(t and t.startswith("/dev/ttyACM") for t in ttys.values())


def test_stm32flash_at_8n1_cannot_sync_with_the_8e1_rom(tier: Tier) -> None:
    r = tier.peer("stm32flash_8n1", "stm32flash")
    assert r["rc"] not in (0, "timeout", "not-run"), r["out"]
    assert "Failed to init device" in r["out"], r["out"]


def test_stm32flash_at_8e1_agrees_with_the_simulator(tier: Tier) -> None:
    tier.peer("stm32flash_8e1", "stm32flash")
    out = tier.ok("stm32flash_8e1")
    assert "Version" in out and "0x0413" in out, out  # Get / Get ID answered through cdc_acm
    assert image_at(tier, "after_stm32flash", len(tier.fw["fw_uart"])) == tier.fw["fw_uart"]
    path = ADAPTERS["plain"]
    # the host's termios reached the chip as SET_LINE_CODING 115200 even parity 8 bits
    assert re.search(rf"{path} ctrl 21/20 value 0x0000 index 0 len 7: ok 00c2010000020?8", tier.server_log)


def test_stmflash_uart_reads_what_stm32flash_wrote(tier: Tier) -> None:
    tier.ok("stmflash_uart_read")
    assert (tier.out / "rd_uart.bin").read_bytes() == tier.fw["fw_uart"]


def test_stm32loader_reads_it_too(tier: Tier) -> None:
    tier.peer("stm32loader_read", "stm32loader")
    tier.ok("stm32loader_read")
    assert (tier.out / "rd_loader.bin").read_bytes() == tier.fw["fw_uart"]


def test_stmflash_uart_enter_command_through_ttyacm(tier: Tier) -> None:
    tier.ok("uart_enter_command")
    assert image_at(tier, "after_enter_command", len(tier.fw["fw_uart2"])) == tier.fw["fw_uart2"]
    # the trigger went out at the application's 8N1, the session at the ROM's 8E1
    path = ADAPTERS["app"]
    codings = re.findall(rf"{path} ctrl 21/20 value 0x0000 index 0 len 7: ok ([0-9a-f]+)", tier.server_log)
    assert "00c20100000008" in codings and "00c20100000208" in codings, codings


def test_pins_reach_the_chip_as_nrst_and_boot0(tier: Tier) -> None:
    r = tier.peer("stm32flash_pins_held_in_reset", "stm32flash")
    assert r["rc"] not in (0, "timeout", "not-run") and "Failed to init device" in r["out"], r["out"][-2000:]
    tier.ok("uart_enter_pins")
    assert image_at(tier, "after_enter_pins", len(tier.fw["fw_uart3"])) == tier.fw["fw_uart3"]
    assert re.search(rf"{ADAPTERS['pins']} ctrl 21/22 value 0x0002", tier.server_log)  # RTS only: BOOT0


def test_mixed_batch_dfu_and_uart_targets(tier: Tier) -> None:
    out = tier.ok("batch_mixed")
    assert re.search(r"summary: 2 passed, 0 failed of 2", out), out[-2000:]
    n = len(tier.fw["fw_mixed"])
    assert image_at(tier, "after_mixed_1-1", n) == tier.fw["fw_mixed"]
    assert image_at(tier, "after_mixed_uart", n) == tier.fw["fw_mixed"]
