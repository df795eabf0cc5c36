"""Run every benchmark once, as the README's speed section shows them, and print that
section's tables (markdown) with the command, the machine and its load average.

    python benchmarks/run_all.py [--quick] > speed.md

``--quick`` shrinks every image and runs 1 round: a smoke test of the whole chain, not
figures to publish. The full run takes about 20 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _harness as H  # noqa: E402

SIM_PTY_ROWS = [
    # device, baud, latency ms, size
    ("0x460", 115200, 1.0, 65536),
    ("0x413", 115200, 1.0, 65536),
    ("0x460", 921600, 1.0, 65536),
    ("0x460", 115200, 16.0, 32768),
]


def run(args: list[str], log: list[str]) -> tuple[int, str]:
    cmd = [sys.executable, *args]
    print("$ " + " ".join(["python", *args]), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(HERE))
    log.append(f"{' '.join(['python', *args])}: exit {proc.returncode}, {time.perf_counter() - t0:.0f} s")
    return proc.returncode, proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    rounds = "1" if a.quick else "3"
    log: list[str] = []
    start_load = H.loadavg()
    t0 = time.perf_counter()
    out: list[str] = []

    uart = ["benchmarks/uart_vs_peers.py", "--pairs", rounds] + (["--scale", "0.125"] if a.quick else [])
    _, text = run(uart, log)
    out += ["### UART", "", text.strip(), ""]

    dfu = ["benchmarks/dfu_bound.py", "--runs", rounds] + (["--size", "64K"] if a.quick else [])
    _, text = run(dfu, log)
    out += ["### USB DFU", "", text.strip(), ""]

    batch = ["benchmarks/batch_parallel.py", "--rounds", rounds] + (["--size", "2048"] if a.quick else [])
    _, text = run(batch, log)
    out += ["### Production batch", "", text.strip(), ""]

    out += ["### Simulator fidelity (`benchmarks/sim_pty_timing.py`, stm32flash `-w` through the pty)", "",
            "| device | image | baud | turnaround | client | model | measured min / median | client + pty "
            "(instant chip) | measured / model | measured / (model + instant) | server CPU | server late |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for dev, baud, lat, size in SIM_PTY_ROWS:
        if a.quick:
            size //= 8
        _, text = run(["benchmarks/sim_pty_timing.py", "--markdown", "--pairs", rounds, "--device", dev,
                       "--baud", str(baud), "--latency-ms", str(lat), "--size", str(size)], log)
        out.append(text.strip() or f"| {dev} | {size // 1024} KiB | {baud} | {lat:g} ms | FAILED |")
    out.append("")
    elapsed = time.perf_counter() - t0
    print(f"Produced by `python benchmarks/run_all.py{' --quick' if a.quick else ''}` in {elapsed / 60:.0f} min; "
          f"load average {start_load} at the start, {H.loadavg()} at the end ({os.cpu_count()} CPUs).\n")
    print("\n".join(out))
    print("<!-- " + "; ".join(log) + " -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())
