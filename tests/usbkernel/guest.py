"""The kernel tier's scenarios, run inside the QEMU guest as ONE Python process.

The guest's kernel has vhci-hcd (the USB/IP host side) and cdc_acm; ``stmflash sim usbip``
runs on the host and is reached through QEMU's guestfwd. This script keeps the virtual
chips attached to fixed vhci ports (a thread re-imports a device each time it leaves the
bus, so a chip that re-enumerates comes back on the same USB port path), then runs the
real host programs -- dfu-util, stmflash over libusb, usbip, udevadm, pyserial on
/dev/ttyACM* -- and records what they printed and returned in ``results.json`` of the
output share. It decides nothing: the host-side test module asserts on the results, the
image files and the server's log.

Imports are kept to the standard library: Python start-up under TCG is slow.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

VHCI = "/sys/devices/platform/vhci_hcd.0"
USB = "/sys/bus/usb/devices"
OUT = sys.argv[1]
PLAN = json.load(open(os.path.join(OUT, "plan.json")))
RESULTS: dict[str, dict] = {}
T0 = time.monotonic()
ENV = {k: v for k, v in os.environ.items() if k != "STMFLASH_USB_SIM"}  # the real USB stack only


def say(text: str) -> None:
    print(f"STMFLASH-GUEST [{time.monotonic() - T0:6.1f}] {text}", flush=True)


def save() -> None:
    tmp = os.path.join(OUT, "results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(RESULTS, f, indent=1)
    os.replace(tmp, os.path.join(OUT, "results.json"))


def record(name: str, **fields) -> None:
    RESULTS[name] = {"t": round(time.monotonic() - T0, 1), **fields}
    save()


def run(name: str, argv: list[str], timeout: float = 120, **extra) -> dict:
    """Run one host program; its exit code and output go into the results."""
    t = time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout, env=ENV,
                           cwd=OUT)  # the host's / is read-only here; reports go to the share
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = "timeout", f"{exc.stdout or ''}{exc.stderr or ''}"
    except OSError as exc:
        rc, out = "not-run", str(exc)
    out = out.replace("\r", "\n")
    record(name, argv=argv, rc=rc, out=out[-20000:], secs=round(time.monotonic() - t, 2), **extra)
    say(f"{name}: rc={rc} in {time.monotonic() - t:.1f}s")
    return RESULTS[name]


def stmflash(name: str, *args: str, timeout: float = 150) -> dict:
    return run(name, [sys.executable, "-m", "stmflash", *args], timeout=timeout)


# ---- vhci attach (what `usbip attach` does, on a port we choose) --------------------------------
def port_free(rhport: int) -> bool:
    with open(f"{VHCI}/status") as f:
        for line in f.read().splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 3 and cols[0] == "hs" and int(cols[1]) == rhport:
                return int(cols[2]) == 4  # VDEV_ST_NULL
    return False


def attach(host: str, busid: str, rhport: int) -> bool:
    """OP_REQ_IMPORT, then hand the connection to vhci-hcd (usbip_protocol.rst, vhci sysfs)."""
    try:
        s = socket.create_connection((host, 3240), timeout=10)
    except OSError:
        return False
    with s:
        try:
            s.sendall(struct.pack(">HHI32s", 0x0111, 0x8003, 0, busid.encode()))
            head = s.recv(8, socket.MSG_WAITALL)
            if len(head) < 8 or struct.unpack(">HHI", head)[2] != 0:
                return False
            rec = s.recv(312, socket.MSG_WAITALL)
            busnum, devnum, speed = struct.unpack(">III", rec[288:300])
            with open(f"{VHCI}/attach", "w") as f:
                f.write(f"{rhport} {s.fileno()} {busnum << 16 | devnum} {speed}")
            return True
        except OSError:
            return False


def detach(rhport: int) -> None:
    with open(f"{VHCI}/detach", "w") as f:
        f.write(str(rhport))


class Attacher(threading.Thread):
    """Keep each bus ID imported on its own vhci port: re-import after every disconnect."""

    def __init__(self, host: str, ports: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.host, self.ports = host, dict(ports)
        self.attaches: dict[str, int] = {b: 0 for b in ports}
        self.lock = threading.Lock()

    def add(self, busid: str, rhport: int) -> None:
        with self.lock:
            self.ports[busid] = rhport
            self.attaches[busid] = 0

    def run(self) -> None:
        while True:
            with self.lock:
                ports = list(self.ports.items())
            for busid, rhport in ports:
                if port_free(rhport) and attach(self.host, busid, rhport):
                    with self.lock:
                        self.attaches[busid] += 1
            time.sleep(0.1)


def usb_id(path: str) -> str | None:
    try:
        with open(f"{USB}/{path}/idVendor") as v, open(f"{USB}/{path}/idProduct") as p:
            return f"{v.read().strip()}:{p.read().strip()}"
    except OSError:
        return None


def wait_for(path: str, want: str | None, timeout: float = 60) -> str | None:
    """Wait until the device at ``path`` has id ``want`` (None: until it is gone)."""
    end = time.monotonic() + timeout
    now = usb_id(path)
    while now != want and time.monotonic() < end:
        time.sleep(0.1)
        now = usb_id(path)
    return now


def wait_tty(path: str, timeout: float = 30) -> str | None:
    """The ttyACM node cdc_acm made for the device at ``path`` (interface 0)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            names = os.listdir(f"{USB}/{path}:1.0/tty")
            if names and os.path.exists(f"/dev/{names[0]}"):
                return f"/dev/{names[0]}"
        except OSError:
            pass
        time.sleep(0.1)
    return None


# ---- scenarios ---------------------------------------------------------------------------------
def enumerate_all(att: Attacher) -> None:
    t = time.monotonic()
    seen = {p: wait_for(p, want) for p, want in PLAN["expect"].items()}
    record("enumerate", seen=seen, secs=round(time.monotonic() - t, 2))
    say(f"enumerated {seen} in {time.monotonic() - t:.1f}s")


def dfu_scenarios() -> None:
    run("usbip_list", ["usbip", "list", "-r", PLAN["server"]], timeout=60)
    run("dfu_util_list", ["dfu-util", "-l"], timeout=60)
    fw_a, fw_b = PLAN["fw_a"], PLAN["fw_b"]
    # dfu-util round trip on 1-1, then stmflash reads what dfu-util wrote
    run("dfu_util_download", ["dfu-util", "-p", "1-1", "-a", "0", "-s", "0x08000000", "-D", fw_a])
    up_a = os.path.join(OUT, "up_a.bin")
    run("dfu_util_upload", ["dfu-util", "-p", "1-1", "-a", "0", "-s", f"0x08000000:{os.path.getsize(fw_a)}",
                            "-U", up_a])
    stmflash("stmflash_read_dfu_util_image", "dfu", "--path", "1-1", "--read", os.path.join(OUT, "rd_a.bin"),
             "--start", "0x08000000", "--length", str(os.path.getsize(fw_a)))
    # stmflash writes + verifies through libusb, dfu-util reads it back
    stmflash("stmflash_write", "dfu", fw_b, "--path", "1-1", "--address", "0x08000000")
    run("dfu_util_reads_stmflash", ["dfu-util", "-p", "1-1", "-a", "0", "-s",
                                   f"0x08000000:{os.path.getsize(fw_b)}", "-U", os.path.join(OUT, "up_b.bin")])
    # the test of the test: a ROM announcing a wrong wTransferSize must make dfu-util fail
    ok = attach(PLAN["stdio_server"], "1-1", PLAN["broken_rhport"])
    path = f"1-{PLAN['broken_rhport'] + 1}"
    seen = wait_for(path, "0483:df11", 30)
    run("broken_transfer_size", ["dfu-util", "-p", path, "-a", "0", "-s", "0x08000000", "-D", fw_a],
        attached=ok, seen=seen)
    detach(PLAN["broken_rhport"])
    wait_for(path, None, 20)


def udev_scenarios() -> None:
    rules_dir = "/etc/udev/rules.d"
    try:
        with open(PLAN["rules"]) as src, open(os.path.join(rules_dir, "50-stmflash.rules"), "w") as dst:
            dst.write(src.read())
    except OSError as exc:  # no udev on the host: nothing to test the rules with
        for name in PLAN["udev_devices"]:
            record(f"udev_{name}", rc="not-run", out=f"cannot install the rules: {exc}")
        return
    for name, path in PLAN["udev_devices"].items():
        run(f"udev_{name}", ["udevadm", "test", "--action=add", f"/sys/bus/usb/devices/{path}"], timeout=90)


def app_scenarios() -> None:
    app = PLAN["app_path"]
    record("app_seen", id=wait_for(app, "0483:5740", 60), tty=wait_tty(app))
    console_check(app)
    stmflash("stmflash_list", "list", "--json")
    stmflash("enter_1200", "dfu", PLAN["fw_app"], "--enter", "1200", "--leave", "--enter-timeout", "30")
    record("after_1200", id=wait_for(app, "0483:5740", 60), tty=wait_tty(app))
    snapshot(app, "after_1200")
    stmflash("enter_detach", "dfu", PLAN["fw_app2"], "--enter", f"detach:{app}", "--leave",
             "--enter-timeout", "30")
    record("after_detach", id=wait_for(app, "0483:5740", 60))
    snapshot(app, "after_detach")


def snapshot(path: str, name: str) -> None:
    """Keep the chip's image as the server saved it (when the chip left the bus, or once
    the host had been quiet for a moment)."""
    time.sleep(1.0)
    with open(os.path.join(OUT, f"{path}.img"), "rb") as src, open(os.path.join(OUT, f"{name}.img"), "wb") as dst:
        dst.write(src.read())


def uart_scenarios() -> None:
    """The AN3155 ROM behind USB-serial adapters: real termios, parity, DTR/RTS."""
    a, b, c = (PLAN["adapters"][k] for k in ("plain", "app", "pins"))
    tty = {p: wait_tty(p) for p in (a, b, c)}
    record("adapters", ttys=tty)
    fw = PLAN["fw_uart"]
    run("stm32flash_8n1", ["stm32flash", "-b", "115200", "-m", "8n1", tty[a]], timeout=60)
    run("stm32flash_8e1", ["stm32flash", "-b", "115200", "-m", "8e1", "-w", fw, "-v", "-S", "0x08000000",
                           tty[a]], timeout=120)
    snapshot(a, "after_stm32flash")
    stmflash("stmflash_uart_read", "uart", tty[a], "--read", os.path.join(OUT, "rd_uart.bin"),
             "--start", "0x08000000", "--length", str(os.path.getsize(fw)))
    run("stm32loader_read", ["stm32loader", "-p", tty[a], "-b", "115200", "-r", "-a", "0x08000000",
                             "-l", str(os.path.getsize(fw)), os.path.join(OUT, "rd_loader.bin")], timeout=90)
    stmflash("uart_enter_command", "uart", tty[b], PLAN["fw_uart2"], "--enter", "command")
    snapshot(b, "after_enter_command")
    # DTR is asserted from the open on: with the auto-reset wiring NRST is held low, so a
    # flasher that does not run the pin sequence gets no answer
    run("stm32flash_pins_held_in_reset", ["stm32flash", "-b", "115200", "-m", "8e1", tty[c]], timeout=60)
    stmflash("uart_enter_pins", "uart", tty[c], PLAN["fw_uart3"], "--enter", "pins:rts,dtr,-dtr:-rts,dtr,-dtr")
    snapshot(c, "after_enter_pins")


def console_check(app: str) -> None:
    """The application's console on /dev/ttyACM*: real termios, line coding to the chip."""
    tty = wait_tty(app)
    out: dict[str, str] = {}
    if tty is None:
        record("console", rc="no-tty", out={})
        return
    import serial  # pyserial, from the host's venv

    for label, parity in (("8N1", serial.PARITY_NONE), ("8E1", serial.PARITY_EVEN)):
        with serial.Serial(tty, 115200, parity=parity, timeout=0.2) as port:
            port.reset_input_buffer()
            port.write(f"hello {label}\r".encode())
            got = b""
            end = time.monotonic() + 4
            while time.monotonic() < end and b"\n" not in got.split(b"echo:", 1)[-1]:
                got += port.read(256)
            out[label] = got.decode("ascii", "replace")
    record("console", rc=0, tty=tty, out=out)


def main() -> int:
    say("scenarios start")
    att = Attacher(PLAN["server"], PLAN["attach"])
    att.start()
    enumerate_all(att)
    groups = {"dfu": dfu_scenarios, "udev": udev_scenarios, "app": app_scenarios, "uart": uart_scenarios,
              "final": final_scenarios,
              "faults": lambda: fault_scenarios(att)}
    for name, group in groups.items():
        try:
            group()
        except Exception as exc:  # recorded, the host test names it
            record(f"crash_{name}", rc="crash", out=repr(exc))
            say(f"{name} crashed: {exc!r}")
    with att.lock:
        record("attaches", counts=dict(att.attaches))
    with open(os.path.join(OUT, "dmesg.txt"), "w") as f:
        subprocess.run(["dmesg"], stdout=f, stderr=subprocess.STDOUT)
    say("scenarios done")
    return 0


def final_scenarios() -> None:
    """Two chips at once, then the leave that drops 1-1 off the bus (last: it stays away)."""
    stmflash("batch_dfu", "batch", PLAN["fw_batch"], "dfu:*", "--address", "0x08000000", "--after", "stay",
             timeout=240)
    snapshot("1-1", "after_batch_1-1")  # the leave below writes 1-1 again
    uart = PLAN["adapters"]["plain"]
    stmflash("batch_mixed", "batch", PLAN["fw_mixed"], "dfu:path=1-1", wait_tty(uart) or "no-tty",
             "--address", "0x08000000", "--after", "stay", timeout=240)
    snapshot("1-1", "after_mixed_1-1")
    snapshot(uart, "after_mixed_uart")
    stmflash("stmflash_leave", "dfu", PLAN["fw_b"], "--path", "1-1", "--address", "0x08000000", "--leave")
    record("after_leave", id=wait_for("1-1", None, 20))
    time.sleep(1)
    record("after_leave_1s", id=usb_id("1-1"))


def fault_scenarios(att: Attacher) -> None:
    """Stalls, timeouts and disconnects of the fault injector, through the real stack."""
    for path in PLAN["fault_ports"]:
        att.add(path, int(path.split("-")[1]) - 1)  # attached only now: not in the listings above
    for path, runs in PLAN["fault_ports"].items():
        wait_for(path, "0483:df11", 60)
        for i in range(runs):
            stmflash(f"fault_{path}_{i}", "dfu", PLAN["fw_fault"], "--no-image-check", "--path", path, "--address", "0x08000000",
                     "--enter-timeout", "20")
            wait_for(path, "0483:df11", 30)
        snapshot(path, f"fault_{path}")


if __name__ == "__main__":
    sys.exit(main())
