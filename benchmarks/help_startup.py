"""How fast does ``stmflash --help`` answer?  Target: under 150 ms (median) on an idle machine.

stm32flash and dfu-util answer ``--help`` in about a millisecond; a Python tool pays for the
interpreter and click, so everything else must stay out of the start-up path: sub-commands
are imported only when invoked (``stmflash.cli.LazyGroup``), and ``import stmflash`` loads
only the error classes (the rest of the public API is imported on first use).

Prints the wall time of ``stmflash --help`` (and ``--version``) over N runs, the median and
the slowest, the same for a bare ``python -c pass`` (the interpreter's own share), and the
ten most expensive imports of ``python -X importtime``. Exits 1 when the median is over the
target.

Run:  python benchmarks/help_startup.py [--runs 20] [--target-ms 150]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def timed(argv: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def importtime() -> list[tuple[int, str]]:
    p = subprocess.run([sys.executable, "-X", "importtime", "-c", "from stmflash.cli import cli"],
                       capture_output=True, text=True, check=True)
    rows = []
    for line in p.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    return sorted(rows, reverse=True)[:10]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--target-ms", type=float, default=150.0)
    args = ap.parse_args()
    exe = shutil.which("stmflash")
    cmd = [exe] if exe else [sys.executable, "-m", "stmflash"]
    rows = [
        ("python -c pass", timed([sys.executable, "-c", "pass"], args.runs)),
        ("stmflash --version", timed([*cmd, "--version"], args.runs)),
        ("stmflash --help", timed([*cmd, "--help"], args.runs)),
    ]
    print(f"{'command':<22} {'median ms':>10} {'max ms':>8}   ({args.runs} runs)")
    for name, times in rows:
        print(f"{name:<22} {statistics.median(times):>10.1f} {max(times):>8.1f}")
    print("\nmost expensive imports (cumulative us) of 'from stmflash.cli import cli':")
    for us, name in importtime():
        print(f"  {us:>8}  {name}")
    median = statistics.median(rows[-1][1])
    verdict = "ok" if median <= args.target_ms else "TOO SLOW"
    print(f"\nstmflash --help: median {median:.1f} ms, target {args.target_ms:.0f} ms: {verdict}")
    return 0 if median <= args.target_ms else 1


if __name__ == "__main__":
    sys.exit(main())
