"""A small USB/IP client (the vhci-hcd side of the protocol) for the server's host tests.

It speaks the wire format of Linux ``Documentation/usb/usbip_protocol.rst`` from Python, so
the server's answers are checked without a kernel; the kernel tier (test_usbkernel.py)
puts the real vhci-hcd in front of the same server.
"""

from __future__ import annotations

import itertools
import socket
import struct
from dataclasses import dataclass

VERSION = 0x0111


@dataclass
class Reply:
    kind: str  # "submit" | "unlink"
    seq: int
    status: int
    data: bytes = b""
    actual: int = 0


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed")
        buf += chunk
    return buf


def parse_record(rec: bytes) -> dict:
    path, busid, busnum, devnum, speed, vid, pid, bcd, cls, sub, proto, cfg, ncfg, nintf = \
        struct.unpack(">256s32sIIIHHHBBBBBB", rec)
    return {"path": path.rstrip(b"\0").decode(), "busid": busid.rstrip(b"\0").decode(),
            "busnum": busnum, "devnum": devnum, "speed": speed, "vid": vid, "pid": pid,
            "bcdDevice": bcd, "class": (cls, sub, proto), "nintf": nintf}


def devlist(sock: socket.socket) -> list[dict]:
    sock.sendall(struct.pack(">HHI", VERSION, 0x8005, 0))
    _v, code, status, n = struct.unpack(">HHII", recv_exact(sock, 12))
    assert (code, status) == (0x0005, 0)
    out = []
    for _ in range(n):
        rec = parse_record(recv_exact(sock, 312))
        rec["interfaces"] = [tuple(recv_exact(sock, 4)[:3]) for _ in range(rec["nintf"])]
        out.append(rec)
    return out


class Client:
    """One imported device: submit URBs, read replies in whatever order they come."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.seqs = itertools.count(1)
        self.pending: dict[int, Reply] = {}
        self.directions: dict[int, int] = {}

    def import_(self, busid: str) -> tuple[int, dict | None]:
        self.sock.sendall(struct.pack(">HHI32s", VERSION, 0x8003, 0, busid.encode()))
        _v, code, status = struct.unpack(">HHI", recv_exact(self.sock, 8))
        assert code == 0x0003
        return status, parse_record(recv_exact(self.sock, 312)) if status == 0 else None

    def submit(self, ep: int, direction: int, length: int, setup: bytes = bytes(8), data: bytes = b"") -> int:
        seq = next(self.seqs)
        self.directions[seq] = direction
        hdr = struct.pack(">IIIIIIiiiI8s", 1, seq, 0x10002, direction, ep, 0,
                          len(data) if direction == 0 else length, 0, 0, 0, setup)
        self.sock.sendall(hdr + (data if direction == 0 else b""))
        return seq

    def unlink(self, target: int) -> int:
        seq = next(self.seqs)
        self.sock.sendall(struct.pack(">IIIIII24x", 2, seq, 0x10002, 0, 0, target))
        return seq

    def read_reply(self) -> Reply:
        hdr = recv_exact(self.sock, 48)
        cmd, seq = struct.unpack(">II", hdr[:8])
        if cmd == 4:
            return Reply("unlink", seq, struct.unpack(">i", hdr[20:24])[0])
        assert cmd == 3, cmd
        status, actual = struct.unpack(">ii", hdr[20:28])
        data = recv_exact(self.sock, actual) if self.directions.get(seq) == 1 and actual > 0 else b""
        return Reply("submit", seq, status, data, actual)

    def wait(self, seq: int) -> Reply:
        while seq not in self.pending:
            r = self.read_reply()
            self.pending[r.seq] = r
        return self.pending.pop(seq)

    def control(self, rtype: int, req: int, value: int, index: int, length_or_data: int | bytes) -> Reply:
        data = length_or_data if isinstance(length_or_data, bytes) else b""
        length = len(data) if data or isinstance(length_or_data, bytes) else int(length_or_data)
        setup = struct.pack("<BBHHH", rtype, req, value, index, length)
        direction = 1 if rtype & 0x80 else 0
        return self.wait(self.submit(0, direction, length, setup, data))

    def descriptor(self, dtype: int, index: int = 0, length: int = 4096, langid: int = 0) -> bytes:
        r = self.control(0x80, 6, dtype << 8 | index, langid, length)
        assert r.status == 0, r
        return r.data

    def string(self, index: int) -> str:
        return self.descriptor(3, index, 255, 0x0409)[2:].decode("utf-16-le")
