"""The USB/IP server (``stmflash sim usbip``), spoken to from Python over a socketpair.

The client side here is the wire format vhci-hcd speaks (tests/usbip_client.py); the
kernel tier (test_usbkernel.py) puts the real kernel in front of the same server. What
must hold: the records and descriptors are the device table's, the DfuSe state machine
is the shared one, several URBs can be in flight, an unlink cancels exactly the URB
still owed, and a device leaving the bus closes its connection and comes back as its
other face under the same bus ID.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stmflash import devices
from stmflash.dfu.facts import dfu_facts, serial_string
from stmflash.dfu.protocol import (
    CLRSTATUS,
    CMD_ERASE,
    CMD_SET_ADDRESS,
    DNLOAD,
    GETSTATUS,
    REQ_IN,
    REQ_OUT,
    UPLOAD,
    State,
)
from stmflash.sim.chip import VirtualChip
from stmflash.sim.usb_backend import bus_from_spec
from stmflash.sim.usbip import UsbipServer
from tests.test_trigger_usb import image_with_app
from tests.usbip_client import Client, devlist

ECONNRESET, EPIPE = 104, 32
F407 = devices.find("F407")


class Harness:
    """A server on one bus; each ``connect()`` is one connection served in a thread."""

    def __init__(self, spec: str) -> None:
        self.bus = bus_from_spec(spec)
        self.lines: list[str] = []
        self.server = UsbipServer(self.bus, self.lines.append)
        self.threads: list[threading.Thread] = []
        self.socks: list[socket.socket] = []

    def connect(self) -> socket.socket:
        a, b = socket.socketpair()
        b.settimeout(10)
        t = threading.Thread(target=self.server.serve_connection, args=(a,), daemon=True)
        t.start()
        self.threads.append(t)
        self.socks.append(b)
        return b

    def client(self, busid: str = "1-1") -> tuple[Client, dict]:
        c = Client(self.connect())
        status, rec = c.import_(busid)
        assert status == 0 and rec is not None, self.lines
        return c, rec

    def close(self) -> None:
        for s in self.socks:
            s.close()
        for t in self.threads:
            t.join(timeout=10)
            assert not t.is_alive(), "a server session did not end when its connection closed"


@pytest.fixture
def harness() -> Iterator[Callable]:
    made: list[Harness] = []

    def make(spec: str) -> Harness:
        h = Harness(spec)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def status_of(c: Client) -> tuple[int, int, int]:
    r = c.control(REQ_IN, GETSTATUS, 0, 0, 6)
    assert r.status == 0 and len(r.data) == 6, r
    return r.data[0], r.data[1] | r.data[2] << 8 | r.data[3] << 16, r.data[4]


def dnload(c: Client, block: int, data: bytes) -> None:
    r = c.control(REQ_OUT, DNLOAD, block, 0, data)
    assert r.status == 0 and r.actual == len(data), r
    while True:
        status, _poll, state = status_of(c)
        assert status == 0, f"DFU status {status}"
        if state != State.DNBUSY:
            assert state == State.DNLOAD_IDLE
            return


# ---- records and descriptors ---------------------------------------------------------------
def test_devlist_shows_each_chip_as_its_rom_presents_it(harness: Callable) -> None:
    h = harness("F407,H743;port=1-4")
    recs = devlist(h.connect())
    assert [(r["busid"], r["vid"], r["pid"]) for r in recs] == [("1-1", 0x0483, 0xDF11), ("1-4", 0x0483, 0xDF11)]
    for rec, name in zip(recs, ("F407", "H743"), strict=True):
        assert rec["bcdDevice"] == dfu_facts(devices.find(name)).bcd_device
        assert rec["speed"] == 2 and rec["interfaces"] == [(0xFE, 0x01, 0x02)]


@pytest.mark.parametrize("name", ["F407", "L476", "G474", "H743"])
def test_descriptors_over_usbip_are_the_device_tables(harness: Callable, name: str) -> None:
    facts = dfu_facts(devices.find(name))
    h = harness(name)
    c, rec = h.client()
    dev = c.descriptor(1, length=18)
    assert len(dev) == 18 and struct.unpack_from("<HH", dev, 8) == (0x0483, 0xDF11)
    assert struct.unpack_from("<H", dev, 12)[0] == facts.bcd_device == rec["bcdDevice"]
    head = c.descriptor(2, length=9)
    total = struct.unpack_from("<H", head, 2)[0]
    cfg = c.descriptor(2, length=total)
    assert len(cfg) == total
    # the walk: configuration, one interface per alt (FE/01/02), then the functional descriptor
    pos, alts, func = 9, [], None
    while pos < total:
        length, dtype = cfg[pos], cfg[pos + 1]
        if dtype == 4:
            assert cfg[pos + 5:pos + 8] == bytes([0xFE, 0x01, 0x02])
            alts.append(c.string(cfg[pos + 8]))
        elif dtype == 0x21:
            func = cfg[pos:pos + length]
        pos += length
    assert tuple(alts) == facts.alts
    assert func is not None and struct.unpack_from("<H", func, 5)[0] == facts.transfer_size
    assert c.string(dev[14]) == facts.manufacturer and c.string(dev[15]) == facts.product
    assert c.string(dev[16]) == serial_string(facts, h.bus.chip(0).uid)


def test_wtransfersize_fault_changes_only_what_the_descriptor_says(harness: Callable) -> None:
    c, _ = harness("F407;fault=wtransfersize=4096").client()
    cfg = c.descriptor(2, length=255)
    func = cfg[cfg.index(bytes([9, 0x21])):][:9]
    assert struct.unpack_from("<H", func, 5)[0] == 4096
    assert c.control(0x01, 11, 0, 0, 0).status == 0
    dnload(c, 0, bytes([CMD_SET_ADDRESS]) + struct.pack("<I", F407.flash_start))
    r = c.control(REQ_OUT, DNLOAD, 2, 0, bytes(4096))  # what the descriptor promised
    assert r.status == -EPIPE


# ---- DFU through the server ------------------------------------------------------------------
def test_dfuse_download_upload_round_trip(harness: Callable, tmp_path: Path) -> None:
    img = tmp_path / "f4.img"
    h = harness(f"F407={img}")
    c, _ = h.client()
    assert c.control(0x00, 9, 1, 0, 0).status == 0  # SET_CONFIGURATION
    assert c.control(0x01, 11, 0, 0, 0).status == 0  # SET_INTERFACE alt 0
    payload = os.urandom(4096)
    base = F407.flash_start
    dnload(c, 0, bytes([CMD_ERASE]) + struct.pack("<I", base))
    dnload(c, 0, bytes([CMD_SET_ADDRESS]) + struct.pack("<I", base))
    dnload(c, 2, payload[:2048])
    dnload(c, 3, payload[2048:])
    assert c.control(REQ_OUT, 6, 0, 0, 0).status == 0  # ABORT: back to dfuIDLE
    back = c.control(REQ_IN, UPLOAD, 2, 0, 2048).data + c.control(REQ_IN, UPLOAD, 3, 0, 2048).data
    assert back == payload
    assert h.bus.chip(0).read(base, 4096) == payload
    # a request the ROM refuses is a STALL on the wire, and the ROM reports it
    assert c.control(REQ_OUT, DNLOAD, 1, 0, b"\x00").status == -EPIPE
    assert status_of(c)[2] == State.ERROR
    assert c.control(REQ_OUT, CLRSTATUS, 0, 0, 0).status == 0
    c.sock.close()
    h.close()
    assert VirtualChip(F407, image_path=img).read(base, 4096) == payload  # saved at session end


def test_leave_answers_then_unplugs(harness: Callable, tmp_path: Path) -> None:
    h = harness(f"F407={image_with_app(tmp_path)}")
    c, _ = h.client()
    dnload(c, 0, bytes([CMD_SET_ADDRESS]) + struct.pack("<I", F407.flash_start))
    assert c.control(REQ_OUT, DNLOAD, 0, 0, b"").status == 0
    r = c.control(REQ_IN, GETSTATUS, 0, 0, 6)
    assert r.status == 0 and r.data[4] == State.MANIFEST
    assert c.sock.recv(1) == b"", "the server must close the connection: the device left the bus"
    assert any("left the bus" in line for line in h.lines)


# ---- several URBs in flight, unlink, timeouts ---------------------------------------------
def test_timeout_fault_is_an_urb_left_to_the_hosts_unlink(harness: Callable) -> None:
    h = harness("F407;fault=timeout@getstatus:1")
    c, _ = h.client()
    setup = struct.pack("<BBHHH", REQ_IN, GETSTATUS, 0, 0, 6)
    lost = c.submit(0, 1, 6, setup)
    for _ in range(500):  # the host gives up only after its timeout: the request has run
        if any("left unanswered" in line for line in h.lines):
            break
        time.sleep(0.01)
    un = c.unlink(lost)
    r = c.read_reply()
    assert (r.kind, r.seq, r.status) == ("unlink", un, -ECONNRESET)  # no RET_SUBMIT came first
    assert status_of(c)[2] == State.IDLE  # the next request is answered
    done = c.submit(0, 1, 6, setup)
    c.wait(done)
    un2 = c.unlink(done)
    assert c.wait(un2).status == 0  # already answered: nothing to cancel


def test_app_face_serves_bulk_and_interrupt_with_urbs_in_flight(harness: Callable, tmp_path: Path) -> None:
    h = harness(f"F407={image_with_app(tmp_path)};app=1")
    recs = devlist(h.connect())
    assert (recs[0]["vid"], recs[0]["pid"]) == (0x0483, 0x5740)
    assert recs[0]["interfaces"] == [(0x02, 0x02, 0x01), (0x0A, 0x00, 0x00), (0xFE, 0x01, 0x01)]
    c, _ = h.client()
    cfg = c.descriptor(2, length=512)
    eps = [cfg[i + 2:i + 4] for i in range(len(cfg) - 1) if cfg[i] == 7 and cfg[i + 1] == 5]
    assert eps == [bytes([0x82, 3]), bytes([0x01, 2]), bytes([0x81, 2])]
    notify = c.submit(2, 1, 8)  # the notification URB cdc_acm keeps queued
    reads = [c.submit(1, 1, 64) for _ in range(4)]
    # at the application's own settings (115200 8N1) a typed line is echoed
    assert c.control(0x21, 0x20, 0, 0, struct.pack("<IBBB", 115200, 0, 0, 8)).status == 0
    assert c.control(0x21, 0x22, 3, 0, 0).status == 0  # DTR + RTS
    w = c.submit(1, 0, 0, data=b"hello\r")
    assert c.wait(w).status == 0
    text = b""
    for seq in reads:
        r = c.wait(seq)
        assert r.status == 0
        text += r.data
        if b"echo: hello" in text:
            break
    assert b"echo: hello\r\n" in text
    # nothing was sent on the notification endpoint: still owed, the unlink cancels it
    un = c.unlink(notify)
    assert c.wait(un).status == -ECONNRESET
    assert h.bus.chip(0).usb_app.dtr is True


def test_app_hears_only_its_own_line_settings(harness: Callable, tmp_path: Path) -> None:
    h = harness(f"F407={image_with_app(tmp_path)};app=1")
    c, _ = h.client()
    assert c.control(0x21, 0x20, 0, 0, struct.pack("<IBBB", 115200, 0, 2, 8)).status == 0  # 8E1
    w = c.submit(1, 0, 0, data=b"hello\r")
    assert c.wait(w).status == 0
    read = c.submit(1, 1, 64)
    un = c.unlink(read)
    assert c.wait(un).status == -ECONNRESET, "at 8E1 the 8N1 application must not answer"
    assert h.bus.chip(0).app.lines == []


def test_1200_baud_touch_reenumerates_as_the_rom_on_the_same_busid(harness: Callable, tmp_path: Path) -> None:
    h = harness(f"F407={image_with_app(tmp_path)};app=1")
    c, rec = h.client()
    assert rec["pid"] == 0x5740
    assert c.control(0x21, 0x20, 0, 0, struct.pack("<IBBB", 1200, 0, 0, 8)).status == 0
    assert c.control(0x21, 0x22, 0, 0, 0).status == 0  # DTR low at 1200 baud: the touch
    assert c.sock.recv(1) == b""
    c2, rec2 = h.client("1-1")
    assert (rec2["pid"], rec2["busid"]) == (0xDF11, "1-1")
    assert c2.descriptor(1, length=18)[10:12] == b"\x11\xdf"


def test_import_refusals(harness: Callable) -> None:
    h = harness("F407")
    c, _ = h.client()
    status, _ = Client(h.connect()).import_("1-1")
    assert status == 2  # busy: one importer at a time
    status, _ = Client(h.connect()).import_("1-9")
    assert status == 1  # no such device


# ---- the command --------------------------------------------------------------------------------
def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stmflash", "sim", "usbip", *args], input=stdin,
                          capture_output=True, timeout=60)


def test_cli_refuses_a_non_loopback_address() -> None:
    r = run_cli("F407", "--listen", "0.0.0.0:0")
    assert r.returncode == 2
    assert b"not a loopback address" in r.stderr and b"Traceback" not in r.stderr


def test_cli_rejects_a_bad_listen_value() -> None:
    r = run_cli("F407", "--listen", "nowhere")
    assert r.returncode == 2 and b"HOST:PORT" in r.stderr


def test_cli_stdio_serves_one_connection_on_pipes(tmp_path: Path) -> None:
    log = tmp_path / "srv.log"
    req = struct.pack(">HHI", 0x0111, 0x8005, 0)
    r = run_cli("G474", "--stdio", "--log", str(log), stdin=req)
    assert r.returncode == 0, r.stderr
    _v, code, status, n = struct.unpack(">HHII", r.stdout[:12])
    assert (code, status, n) == (0x0005, 0, 1)
    busid = r.stdout[12 + 256:12 + 288].rstrip(b"\0")
    assert busid == b"1-1" and "exporting 1-1 G474" in log.read_text()


def test_cli_listens_and_serves_a_devlist(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "stmflash", "sim", "usbip", "F407", "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        host, port = proc.stdout.readline().decode().strip().rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            assert [r["busid"] for r in devlist(s)] == ["1-1"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


# ---- the USB-serial adapter face (AN3155 behind CDC-ACM) -------------------------------------
def line_coding(baud: int, parity: int) -> bytes:
    return struct.pack("<IBBB", baud, 0, parity, 8)


def read_some(c: Client, want: int, tries: int = 50) -> bytes:
    """Bulk IN until ``want`` bytes came (each URB waits while the adapter has nothing)."""
    got = b""
    for _ in range(tries):
        seq = c.submit(1, 1, 64)
        r = c.wait(seq)
        assert r.status == 0
        got += r.data
        if len(got) >= want:
            break
    return got


def test_adapter_carries_an3155_at_8e1(harness: Callable) -> None:
    h = harness("F103;adapter=1")
    c, rec = h.client()
    assert (rec["vid"], rec["pid"]) == (0x1209, 0x0001) and rec["class"] == (0x02, 0, 0)
    assert c.control(0x21, 0x20, 0, 0, line_coding(57600, 2)).status == 0  # 8E1
    assert c.wait(c.submit(1, 0, 0, data=b"\x7f")).status == 0
    assert read_some(c, 1) == b"\x79"  # ACK: synced
    assert c.wait(c.submit(1, 0, 0, data=b"\x02\xfd")).status == 0  # Get ID
    answer = read_some(c, 5)
    assert answer[0] == 0x79 and struct.unpack(">H", answer[2:4])[0] == devices.find("F103").pid
    # the ROM locked on 57600: the same bytes at another baud rate are noise to it
    assert c.control(0x21, 0x20, 0, 0, line_coding(115200, 2)).status == 0
    assert c.wait(c.submit(1, 0, 0, data=b"\x02\xfd")).status == 0
    pending = c.submit(1, 1, 64)
    assert c.wait(c.unlink(pending)).status == -ECONNRESET


def test_adapter_at_8n1_never_syncs(harness: Callable) -> None:
    h = harness("F407;adapter=1")
    c, _ = h.client()
    assert c.control(0x21, 0x20, 0, 0, line_coding(115200, 0)).status == 0  # 8N1
    for _ in range(3):
        assert c.wait(c.submit(1, 0, 0, data=b"\x7f")).status == 0
    pending = c.submit(1, 1, 64)
    assert c.wait(c.unlink(pending)).status == -ECONNRESET, "a ROM at 8E1 must not answer 8N1"
    assert h.bus.chip(0).usb_adapter.dropped == 3


def test_adapter_pins_reset_into_the_rom_and_stay_on_the_bus(harness: Callable, tmp_path: Path) -> None:
    h = harness(f"F407={image_with_app(tmp_path)};adapter=pins;app=1")
    chip = h.bus.chip(0)
    assert chip.mode == "app"
    c, _ = h.client()
    # RTS (BOOT0 high) + DTR (NRST low), then release DTR: the chip boots its ROM
    assert c.control(0x21, 0x22, 3, 0, 0).status == 0
    assert c.control(0x21, 0x22, 2, 0, 0).status == 0
    assert chip.mode == "bootloader"
    assert c.control(0x21, 0x20, 0, 0, line_coding(115200, 2)).status == 0
    assert c.wait(c.submit(1, 0, 0, data=b"\x7f")).status == 0
    assert read_some(c, 1) == b"\x79"
    assert not any("left the bus" in line for line in h.lines), "the adapter must not re-enumerate"


def test_adapter_carries_the_trigger_at_8n1_then_the_rom_at_8e1(harness: Callable, tmp_path: Path) -> None:
    from stmflash.trigger.frame import encode_ack, encode_request

    h = harness(f"F407={image_with_app(tmp_path)};adapter=1;app=1")
    chip = h.bus.chip(0)
    c, _ = h.client()
    assert c.control(0x21, 0x20, 0, 0, line_coding(115200, 0)).status == 0  # the app's 8N1
    assert c.wait(c.submit(1, 0, 0, data=encode_request(7))).status == 0
    want = encode_ack(7)
    ack = read_some(c, len(want))
    assert want in ack and chip.mode == "bootloader", ack  # the acknowledgement left before the reset
    assert c.control(0x21, 0x20, 0, 0, line_coding(115200, 2)).status == 0  # the ROM's 8E1
    assert c.wait(c.submit(1, 0, 0, data=b"\x7f")).status == 0
    assert read_some(c, 1)[-1:] == b"\x79"
