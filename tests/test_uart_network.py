"""``stmflash uart`` over network serial ports: ``socket://`` and ``rfc2217://``.

Production lines put boards behind network serial servers. Here a loopback TCP server
bridges to a virtual STM32 (the raw bytes for ``socket://``, pyserial's RFC 2217 port
manager for ``rfc2217://``), and the result is checked on the chip itself.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import serial
import serial.rfc2217

from stmflash import devices
from stmflash.image import save
from stmflash.image.model import Image
from stmflash.sim import registry
from stmflash.sim.chip import VirtualChip
from stmflash.sim.protocol_sim import Serial as SimSerial
from tests.clirun import exit_code as run_cli


class _Writer:
    """PortManager writes its telnet negotiation through ``.write``."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def write(self, data: bytes) -> None:
        self.conn.sendall(data)


@contextmanager
def bridge(chip_name: str, rfc2217: bool) -> Iterator[int]:
    """A one-connection TCP server on 127.0.0.1 whose far end is ``sim://?chip=NAME``."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(10)
        try:
            conn, _ = server.accept()
        except OSError:
            return
        port = SimSerial(f"sim://x?chip={chip_name}", timeout=0)
        manager = serial.rfc2217.PortManager(port, _Writer(conn)) if rfc2217 else None
        with conn:
            while not stop.is_set():
                ready, _, _ = select.select([conn], [], [], 0.002)
                if ready:
                    data = conn.recv(4096)
                    if not data:
                        break
                    if manager is not None:
                        data = b"".join(manager.filter(data))
                    if data:
                        port.write(data)
                out = port.read(port.in_waiting or 1)
                if out:
                    conn.sendall(b"".join(manager.escape(out)) if manager is not None else out)
        port.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()
        thread.join(timeout=10)


@pytest.mark.parametrize("scheme", ["socket", "rfc2217"])
def test_flash_through_a_network_serial_port(scheme: str, tmp_path) -> None:
    dev = devices.find("0x460")
    chip = VirtualChip(dev)
    registry.register("net", chip)
    try:
        img = Image()
        img.add(dev.flash_start, bytes((i * 7 + 3) & 0xFF for i in range(5000)))
        path = tmp_path / "fw.hex"
        save(img, str(path))
        with bridge("net", rfc2217=scheme == "rfc2217") as tcp_port:
            rc = run_cli("uart", f"{scheme}://127.0.0.1:{tcp_port}", str(path), "--no-image-check", "-q", "--after", "stay")
        assert rc == 0
        assert bytes(chip.flash[:5000]) == img.read(dev.flash_start, 5000)
        assert chip.flash[5000:6144] == b"\xff" * 1144  # padding to the write unit, then erased
    finally:
        registry.clear()


def test_network_port_that_refuses_is_exit_3() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    free = s.getsockname()[1]
    s.close()  # nothing listens there now
    assert run_cli("uart", f"socket://127.0.0.1:{free}", "-q") == 3
