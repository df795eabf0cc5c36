"""Does the realistic virtual STM32 take as long as its timing model says?

Starts ``stmflash sim uart --timing realistic`` on a pseudo-terminal, writes a 64 KiB
image through it with a client (stm32flash by default, or a minimal built-in AN3155
client), measures the wall-clock time of the client and compares it with the model
computed independently here from the exchanges the client makes:

    per exchange: host bytes x 11/baud + adapter turnaround + chip bytes x 11/baud
                  + programming time (Write Memory) or erase time (Erase)

with the device table's typical programming/erase figures. The client also runs against
an *instant* server (interleaved with the realistic runs, ``--pairs`` rounds, fresh chip
each): that is what the client and the pty need when the chip costs nothing (process
start-up, syscalls, wake-ups of both sides, ~0.1-0.3 ms per exchange here), which no chip
model contains. Prints measured / model and measured / (model + instant), the pty
server's CPU share and how late its answers left their modelled deadlines; exits 1 when
measured / (model + instant) is off by more than 5 %. At 921600 baud an exchange's
modelled time is ~3 ms, so the raw ratio is dominated by those host-side microseconds.

    python benchmarks/sim_pty_timing.py [--device 0x460] [--baud 115200] [--latency-ms 1]
                                        [--client stm32flash|minimal] [--size 65536] [--pairs 3]
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _harness as H  # noqa: E402

from stmflash import devices  # noqa: E402
from stmflash.sim.timing import TimingModel  # noqa: E402

ACK = 0x79


def model_seconds(device: devices.Device, tm: TimingModel, size: int) -> tuple[float, dict[str, float]]:
    """Modelled duration of: sync, Get Version, Get, Get ID, erase covered units, write."""
    bt = tm.byte_time()
    lat = tm.latency()
    parts = {"wire": 0.0, "turnarounds": 0.0, "program": 0.0, "erase": 0.0}

    def exchange(host: int, chip: int, busy: float = 0.0, kind: str = "") -> None:
        parts["wire"] += (host + chip) * bt
        parts["turnarounds"] += lat
        if kind:
            parts[kind] += busy

    exchange(1, 1)  # 0x7F -> ACK
    exchange(2, 5)  # Get Version: ACK, version, 2 option bytes, ACK
    exchange(2, 3 + len(device.commands) + 1)  # Get
    exchange(2, 5)  # Get ID
    units = device.units_covering(device.flash_start, device.flash_start + size)
    if device.erase_command == 0x44:
        exchange(2, 1)
        exchange(2 + 2 * len(units) + 1, 1, tm.erase_time(units), "erase")
    else:
        exchange(2, 1)
        exchange(1 + len(units) + 1, 1, tm.erase_time(units), "erase")
    for _ in range(0, size, 256):
        exchange(2, 1)
        exchange(5, 1)
        exchange(1 + 256 + 1, 1, tm.program_time(256), "program")
    return sum(parts.values()), parts


def minimal_client(pty: str, data: bytes, device: devices.Device) -> None:
    """Just enough AN3155 to do what stm32flash -w does, with blocking reads."""
    import serial

    def xor(b: bytes) -> int:
        x = 0
        for c in b:
            x ^= c
        return x

    with serial.Serial(pty, 115200, timeout=10) as port:

        def ask(out: bytes, n: int = 1) -> bytes:
            port.write(out)
            got = port.read(n)
            if len(got) != n or got[0] != ACK:
                raise SystemExit(f"no ACK for {out[:4].hex()}: {got.hex()}")
            return got

        ask(b"\x7f")
        ask(b"\x01\xfe", 5)
        ask(b"\x00\xff", 4 + len(device.commands))
        ask(b"\x02\xfd", 5)
        units = device.units_covering(device.flash_start, device.flash_start + len(data))
        if device.erase_command == 0x44:
            ask(b"\x44\xbb")
            body = (len(units) - 1).to_bytes(2, "big") + b"".join(u.index.to_bytes(2, "big") for u in units)
        else:
            ask(b"\x43\xbc")
            body = bytes([len(units) - 1, *(u.index for u in units)])
        ask(body + bytes([xor(body)]))
        for off in range(0, len(data), 256):
            ask(b"\x31\xce")
            a = (device.flash_start + off).to_bytes(4, "big")
            ask(a + bytes([xor(a)]))
            frame = bytes([255]) + data[off : off + 256]
            ask(frame + bytes([xor(frame)]))


def run_once(args: argparse.Namespace, device: devices.Device, client: str, timing: str, seed: int) -> H.Run:
    """One write through a fresh pty server; wall time of the client, the server's own cost."""
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "chip.img"
        fw = Path(tmp) / "fw.bin"
        data = random.Random(seed).randbytes(args.size)
        fw.write_bytes(data)
        server = subprocess.Popen(
            [sys.executable, "-m", "stmflash", "sim", "uart", "--device", args.device, "--image", str(image),
             "--timing", timing, "--baud", str(args.baud), "--latency-ms", str(args.latency_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert server.stdout is not None
            pty = server.stdout.readline().strip()
            time.sleep(max(0.2, device.startup_ms / 1000 * 2))  # let the ROM start up
            cpu0 = H.proc_cpu_s(server.pid)
            t0 = time.perf_counter()
            if client == "stm32flash":
                proc = subprocess.run(["stm32flash", "-m", "8n1", "-w", str(fw), pty],
                                      capture_output=True, text=True, timeout=600)
                if proc.returncode != 0:
                    return H.Run(0.0, ok=False, status=(proc.stdout + proc.stderr).strip()[-200:])
            else:
                minimal_client(pty, data, device)
            measured = time.perf_counter() - t0
            cpu = H.proc_cpu_s(server.pid) - cpu0
        finally:
            server.send_signal(signal.SIGINT)
            _, err = server.communicate(timeout=30)
        from stmflash.sim.chip import flash_bytes

        if flash_bytes(image)[: args.size] != data:
            return H.Run(measured, ok=False, status="flash content differs from the image written")
    stats = H.sim_stats_from_text(err)
    return H.Run(measured, sim_cpu_s=cpu, sim_late_s=stats.get("late_s", 0.0),
                 extra={"answers": stats.get("answers", 0)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="0x460")
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--latency-ms", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=65536)
    ap.add_argument("--client", choices=["stm32flash", "minimal"], default=None)
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--pairs", type=int, default=3, help="interleaved instant/realistic rounds")
    ap.add_argument("--markdown", action="store_true", help="print one table row (for the README)")
    args = ap.parse_args()

    device = devices.find(args.device)
    client = args.client or ("stm32flash" if shutil.which("stm32flash") else "minimal")
    tm = TimingModel(device, "realistic", baud=args.baud, latency_ms=args.latency_ms)
    model, parts = model_seconds(device, tm, args.size)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    res = H.interleave({t: (lambda r, t=t: run_once(args, device, client, t, r)) for t in ("instant", "realistic")},
                       args.pairs, log)
    bad = [r for r in res["instant"] + res["realistic"] if not r.ok]
    if bad:
        print(f"FAIL: {bad[0].status}", file=sys.stderr)
        return 2
    real = H.summary([r.wall_s for r in res["realistic"]])
    base = H.summary([r.wall_s for r in res["instant"]])
    raw = real.median / model
    # What the client and the pty need against a chip that answers at once (start-up,
    # syscalls, wake-ups): not the simulator's timing, so it is added to the model.
    calibrated = real.median / (model + base.median)
    share = max(r.sim_share for r in res["realistic"])
    late = max(r.sim_late_s for r in res["realistic"])
    ok = abs(calibrated - 1) <= args.tolerance
    if args.markdown:
        print(f"| {device.short_name} (0x{device.pid:03X}) | {args.size // 1024} KiB | {args.baud} | "
              f"{args.latency_ms:g} ms | {client} | {model:.3f} s | {real.min:.3f} / {real.median:.3f} s | "
              f"{base.median:.3f} s | {raw:.3f} | {calibrated:.3f} | {share:.1%} | {late:.3f} s |")
        return 0 if ok else 1
    print(f"device {device.name} (0x{device.pid:03X}), {args.size} bytes, {args.baud} baud, "
          f"latency {args.latency_ms} ms, client {client}, {H.machine_line()}")
    print("model: " + ", ".join(f"{k} {v:.3f} s" for k, v in parts.items()) + f" = {model:.3f} s")
    print(f"realistic min/median {real.min:.3f}/{real.median:.3f} s; instant (client + pty only) "
          f"{base.min:.3f}/{base.median:.3f} s")
    print(f"measured/model {raw:.4f}; measured/(model + instant) {calibrated:.4f}; "
          f"simulator CPU {share:.1%} of wall, answers late by {late:.3f} s in total (worst run)")
    if not ok:
        print(f"FAIL: off by more than {args.tolerance:.0%}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
