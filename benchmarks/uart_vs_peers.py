"""Flash the same image onto the same realistic-timing virtual STM32 with stmflash,
stm32flash and stm32loader, and compare each with the protocol's lower bound.

Every tool gets a fresh ``stmflash sim uart --timing realistic`` pty server with a blank
chip, is timed from process start to exit, and its result is checked on the server's
saved image file (a tool that leaves the wrong flash is reported as failed, not timed).

The lower bound (what any AN3155 host must spend at this baud rate on this chip):

* Write Memory per 256-byte block: 265 bytes out + 3 ACKs in on the wire (11 bits/byte,
  8E1), 3 request/answer turnarounds (the simulator's adapter latency, 1 ms each), and the
  block's typical programming time from the device table;
* the erase the image needs (``plan_erase``: the covered units, or a mass erase when that
  is no slower), typical times;
* the cheapest verification the chip offers: Get Checksum when Get lists it, else a
  read-back (9 bytes out, 3 ACKs + 256 bytes in, 3 turnarounds per block).

Usage: ``python benchmarks/uart_vs_peers.py [--quick] [--tools stmflash,stm32flash,stm32loader]``
(about 6 minutes for the full run; ``--quick`` uses 32 KiB images).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stmflash import devices  # noqa: E402
from stmflash.erase_plan import plan_erase  # noqa: E402
from stmflash.image.model import Image  # noqa: E402
from stmflash.sim.spawn import stm32loader_command, timed_flash  # noqa: E402

BAUD = 115200
LATENCY_MS = 1.0
BITS = 11

# stm32loader toggles RTS/DTR, which a pty does not have: ignore ENOTTY from those ioctls

SCENARIOS = [
    # (device, image size, stm32loader family)
    ("0x413", 256 * 1024, "F4"),
    ("0x460", 128 * 1024, "G0"),
]


def lower_bound(dev: devices.Device, size: int) -> dict[str, float]:
    """Seconds per part of the bound (see module docstring)."""
    byte = BITS / BAUD
    lat = LATENCY_MS / 1000.0
    blocks = -(-size // 256)
    write = blocks * ((265 + 3) * byte + 3 * lat) + dev.program_time_ms(size)[0] / 1000.0
    plan = plan_erase(Image.from_bytes(b"\0" * size, dev.flash_start), dev)
    erase = (dev.mass_erase_time_ms()[0] if plan.mass else sum(dev.unit_erase_ms(u)[0] for u in plan.units)) / 1000.0
    if 0xA1 in dev.commands:
        verify = (2 + 5 + 5 + 5 + 5 + 5 + 5) * byte + 6 * lat
        how = "checksum"
    else:
        verify = blocks * ((9 + 3 + 256) * byte + 3 * lat)
        how = "read-back"
    return {"write": write, "erase": erase, "verify": verify, "total": write + erase + verify, "how": how}  # type: ignore[dict-item]


SERVER_ARGS = ("--timing", "realistic", "--baud", str(BAUD), "--latency-ms", str(LATENCY_MS))


def command(tool: str, pty: str, fw: Path, family: str) -> list[str] | None:
    if tool == "stmflash":
        # the ROM protocol against its peers: the RAM stub is benchmarks/stub_vs_rom.py
        return [sys.executable, "-m", "stmflash", "uart", pty, str(fw), "--after", "stay", "-q", "--stub", "off"]
    if tool == "stm32flash":
        exe = shutil.which("stm32flash")
        return None if exe is None else [exe, "-b", "0", "-w", str(fw), "-v", pty]
    if tool == "stm32loader":
        try:
            import stm32loader  # noqa: F401
        except ImportError:
            return None
        # -P none: a pty cannot do parity; -a is the flash start (the default, stated)
        return [*stm32loader_command(), "-p", pty, "-P", "none", "-f", family, "-n",
                "-a", "0x08000000", "-e", "-w", "-v", str(fw)]
    raise ValueError(tool)


def run_tool(tool: str, pid: str, fw: Path, data: bytes, family: str, tmp: Path) -> tuple[float | None, str]:
    image = tmp / f"{tool}-{pid}.img"
    if image.exists():
        image.unlink()
    return timed_flash(pid, image, data, lambda pty: command(tool, pty, fw, family), *SERVER_ARGS, cwd=ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 KiB images (smoke test)")
    ap.add_argument("--tools", default="stmflash,stm32flash,stm32loader")
    args = ap.parse_args()
    tools = args.tools.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for pid, size, family in SCENARIOS:
            if args.quick:
                size = 32 * 1024
            dev = devices.find(pid)
            data = random.Random(size).randbytes(size)
            fw = tmp / f"fw-{pid}.bin"
            fw.write_bytes(data)
            bound = lower_bound(dev, size)
            times: dict[str, float | None] = {}
            for tool in tools:
                t, status = run_tool(tool, pid, fw, data, family, tmp)
                times[tool] = t
                shown = f"{t:7.2f} s" if t is not None else status
                print(f"{dev.short_name} {size // 1024} KiB  {tool:12s} {shown}", file=sys.stderr, flush=True)
                rows.append((dev, size, tool, t, status, bound))
            print(file=sys.stderr)
    print(f"\nRealistic virtual STM32 over a pty, {BAUD} baud 8E1 model, {LATENCY_MS:g} ms adapter "
          "turnaround; every tool writes and verifies; times are wall clock incl. start-up.\n")
    print("| device | image | tool | time | vs bound | vs stmflash |")
    print("|---|---|---|---|---|---|")
    by_key = {(r[0].pid, r[2]): r[3] for r in rows}
    for dev, size, tool, t, status, bound in rows:
        ours = by_key.get((dev.pid, "stmflash"))
        if t is None:
            print(f"| {dev.short_name} (0x{dev.pid:03X}) | {size // 1024} KiB | {tool} | {status} | | |")
            continue
        vs_ours = f"{t / ours:.2f}x" if ours else ""
        print(f"| {dev.short_name} (0x{dev.pid:03X}) | {size // 1024} KiB | {tool} | {t:.2f} s | "
              f"{t / bound['total']:.2f}x | {vs_ours} |")
    print()
    for pid, size, _ in SCENARIOS:
        dev = devices.find(pid)
        if args.quick:
            size = 32 * 1024
        b = lower_bound(dev, size)
        print(f"lower bound {dev.short_name} {size // 1024} KiB: write {b['write']:.2f} s + erase "
              f"{b['erase']:.2f} s + verify ({b['how']}) {b['verify']:.2f} s = {b['total']:.2f} s")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
