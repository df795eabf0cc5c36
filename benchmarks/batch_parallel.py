"""Wall time of ``stmflash batch`` on 16 boards in parallel against one board.

Goal: 16 boards take at most 1.3x the time of one (the work is waiting on serial lines
and flash timings, so the workers must overlap instead of queueing on the GIL).

Boards are virtual STM32F407s with realistic timing (line rate, erase and program
times): either pty servers in their own processes (``--mode pty``, the default, like
USB-serial adapters) or in-process ``sim://`` ports (``--mode sim``, where the
simulator's CPU cost lands in the batch process too).

    python benchmarks/batch_parallel.py [--mode pty|sim] [--boards 16] [--baud 115200]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
HEX = os.path.join(ROOT, "examples", "blinky-f407.hex")


def start_ptys(n: int, tmp: str, baud: int) -> tuple[list[subprocess.Popen[str]], list[str]]:
    procs, paths = [], []
    for i in range(n):
        p = subprocess.Popen(
            [sys.executable, "-m", "stmflash", "sim", "uart", "-d", "F407", "--timing", "realistic",
             "--baud", str(baud), "--seed", str(i), "--image", os.path.join(tmp, f"pty{i}.img")],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        )
        procs.append(p)
        assert p.stdout is not None
        paths.append(p.stdout.readline().strip())
    return procs, paths


def run_batch(targets: list[str], tmp: str, tag: str, baud: int, image: str, serial_at: int) -> tuple[float, int]:
    from stmflash.cli import main

    args = ["batch", image, *targets, "--parity", "none", "--after", "stay", "--baud", str(baud), "--quiet", "--json",
            "--serial-address", hex(serial_at), "--ledger", os.path.join(tmp, f"{tag}.db"),
            "--report-dir", os.path.join(tmp, "rep"), "--no-image-check"]
    t0 = time.perf_counter()
    code = 0
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
        except SystemExit as exc:
            code = int(exc.code or 0)
    elapsed = time.perf_counter() - t0
    if code:
        import glob
        import json

        latest = max(glob.glob(os.path.join(tmp, "rep", "*.json")), key=os.path.getmtime)
        for r in json.load(open(latest))["results"]:
            if r["result"] != "passed":
                print(f"  {r['target']}: {r['error']}", file=sys.stderr)
    return elapsed, code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["pty", "sim"], default="pty")
    ap.add_argument("--boards", type=int, default=16)
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each; the best is reported")
    ap.add_argument("--size", type=int, default=0,
                    help="use a random image of this many bytes instead of the example blinky")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        image, serial_at = HEX, 0x08003F00
        if a.size:
            image = os.path.join(tmp, "random.hex")
            from stmflash.image import save
            from stmflash.image.model import Image

            save(Image.from_bytes(os.urandom(a.size), 0x08000000), image)
            serial_at = 0x08000000 + a.size + 0x100
        procs: list[subprocess.Popen[str]] = []
        try:
            if a.mode == "pty":
                procs, targets = start_ptys(a.boards, tmp, a.baud)
            else:
                targets = [f"sim://F407?seed={i}&timing=realistic&baud={a.baud}" for i in range(a.boards)]
            one, many = [], []
            for r in range(a.repeat):
                t, code = run_batch(targets[:1], tmp, f"one{r}", a.baud, image, serial_at)
                assert code == 0, f"single-board run failed ({code})"
                one.append(t)
                t, code = run_batch(targets, tmp, f"many{r}", a.baud, image, serial_at)
                assert code == 0, f"{a.boards}-board run failed ({code})"
                many.append(t)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(20)
    t1, tn = min(one), min(many)
    size = f"{a.size} random bytes" if a.size else os.path.basename(HEX)
    print(f"mode={a.mode} baud={a.baud} cpus={os.cpu_count()} image={size} (+serial)")
    print(f"1 board:   {t1:6.3f} s   (runs: {', '.join(f'{x:.3f}' for x in one)})")
    print(f"{a.boards} boards: {tn:6.3f} s   (runs: {', '.join(f'{x:.3f}' for x in many)})")
    ratio = tn / t1
    print(f"ratio {ratio:.2f}x (goal <= 1.30x): {'OK' if ratio <= 1.3 else 'MISSED'}")


if __name__ == "__main__":
    main()
