"""The RAM flasher stub against the ROM path and stm32flash, on the realistic virtual STM32.

Each run gets a fresh ``stmflash sim uart --timing realistic`` pty server (115200 baud 8E1
model for the ROM, 1 ms adapter turnaround, typical programming/erase times) with a blank
chip, is timed from process start to exit, and its result is checked on the server's saved
image file. Tools: ``rom`` (``stmflash uart --stub off``), ``stub`` (``--stub on``, default
stub baud), ``stm32flash -w -v``, and ``reflash`` (``--stub on`` again on the chip the stub
run left: the same image, unchanged). All write and verify. Runs are interleaved in pairs
(the order rotates each round: A B C D, B C D A, ...), ``--pairs`` rounds, so slow phases
of a loaded machine hit every tool alike; min and median are reported.

The stub protocol's own bound for a write+verify of S bytes on a blank chip:

* upload through the ROM: Write Memory of the stub (265 + 3 bytes and 3 turnarounds per
  256-byte block), Go (the stub checks its own image by CRC);
* the erase the image needs (typical times), which nothing can overlap;
* streaming: max(wire time of the WRITE frames at the stub baud, 11 bits per byte, 1036
  bytes per 1 KiB frame; typical programming time) -- frames in flight hide the rest;
* verification: one CRC per erase unit, the stub reading flash, plus a few small frames.
  The virtual chip charges time per peripheral access, not per instruction (see
  ``stmflash.sim.cpu``): a CRC word costs the flash read and one status poll of the stub's
  loop, and the CRC arithmetic itself is free. The bound uses that cost, so that it bounds
  what runs here; on silicon the arithmetic adds roughly 100-200 cycles per word (0.4-0.8 s
  per 256 KiB at 16 MHz).

Usage: ``python benchmarks/stub_vs_rom.py [--pairs 3] [--quick] [--tools rom,stub,stm32flash,reflash]``
(about 15 minutes at the defaults; ``--quick`` uses 64 KiB and one round).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _harness import sim_stats_from_text  # noqa: E402

from stmflash import devices  # noqa: E402
from stmflash.erase_plan import plan_erase  # noqa: E402
from stmflash.image.model import Image  # noqa: E402
from stmflash.sim import cpu  # noqa: E402
from stmflash.sim.spawn import timed_flash  # noqa: E402
from stmflash.stub import stub_image  # noqa: E402
from stmflash.stub.link import DEFAULT_BAUDS, MIN_BRR  # noqa: E402

BAUD = 115200
LATENCY_MS = 1.0
BITS = 11
SCENARIOS = [("F407", 256 * 1024), ("G0B1", 256 * 1024)]


def stub_baud(dev: devices.Device) -> int:
    clock = int(dev.stub["rom_clock_hz"])
    clock = round(clock / BAUD) * BAUD  # what the stub derives from the ROM's BRR
    return next(b for b in DEFAULT_BAUDS if clock / b >= MIN_BRR - 0.5 and abs(clock / round(clock / b) - b) / b < 0.015)


def stub_bound(dev: devices.Device, size: int) -> dict[str, float]:
    byte, lat = BITS / BAUD, LATENCY_MS / 1000.0
    stub = stub_image(dev.stub["group"])
    blocks = -(-len(stub.data) // 256)
    upload = blocks * ((265 + 3) * byte + 3 * lat) + 7 * byte + 2 * lat
    plan = plan_erase(Image.from_bytes(b"\0" * size, dev.flash_start), dev, allow_mass=False)
    erase = sum(dev.unit_erase_ms(u)[0] for u in plan.units) / 1000.0
    baud = stub_baud(dev)
    wire = -(-size // 1024) * 1036 * BITS / baud
    program = dev.program_time_ms(size)[0] / 1000.0
    word_cycles = cpu.FLASH_READ_CYCLES + cpu.ACCESS_CYCLES  # what the virtual chip charges
    verify = size / 4 * word_cycles / int(dev.stub["rom_clock_hz"]) + len(plan.units) * 30 * BITS / baud
    return {"upload": upload, "erase": erase, "stream": max(wire, program), "verify": verify,
            "total": upload + erase + max(wire, program) + verify, "baud": baud}


SERVER_ARGS = ("--timing", "realistic", "--baud", str(BAUD), "--latency-ms", str(LATENCY_MS))


def command(tool: str, pty: str, fw: Path) -> list[str] | None:
    base = [sys.executable, "-m", "stmflash", "uart", pty, str(fw), "--no-image-check", "--after", "stay", "-q"]
    if tool == "rom":
        return [*base, "--stub", "off"]
    if tool in ("stub", "reflash"):
        return [*base, "--stub", "on"]
    if tool == "stm32flash":
        exe = shutil.which("stm32flash")
        return None if exe is None else [exe, "-b", "0", "-w", str(fw), "-v", pty]
    raise ValueError(tool)


def run_tool(tool: str, name: str, fw: Path, data: bytes, tmp: Path,
             sim_cpu: list[float] | None = None) -> tuple[float | None, str]:
    """One timed run; ``sim_cpu`` receives the simulator process's CPU seconds (its
    ``sim-stats`` line), so the table can show whether the simulator kept up."""
    image = tmp / f"{tool}-{name}.img"
    if tool == "reflash":
        stub_img = tmp / f"stub-{name}.img"
        if not stub_img.exists():
            return None, "no stub run to re-flash"
        shutil.copyfile(stub_img, image)
    else:
        if image.exists():
            image.unlink()
        if devices.find(name).family in ("G0", "C0"):
            # a factory G0/C0 boots its programmed flash whatever BOOT0 says (RM0444 boot
            # table): nBOOT_SEL=0 first, as a line that re-enters the ROM does (not timed)
            subprocess.run([sys.executable, "-m", "stmflash", "uart", f"sim://{name}?image={image}",
                            "--ob", "nBOOT_SEL=0", "-q"], check=True, cwd=ROOT, capture_output=True)
    err: list[str] = []
    result = timed_flash(name, image, data, lambda pty: command(tool, pty, fw), *SERVER_ARGS, cwd=ROOT,
                         server_stderr=err)
    stats = sim_stats_from_text("".join(err))
    if sim_cpu is not None and "process_cpu_s" in stats:
        sim_cpu.append(stats["process_cpu_s"])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--quick", action="store_true", help="64 KiB images, one round")
    ap.add_argument("--tools", default="rom,stub,stm32flash,reflash")
    args = ap.parse_args()
    tools = args.tools.split(",")
    rounds = 1 if args.quick else args.pairs
    results: dict[tuple[str, str], list[float]] = {}
    sim_cpu: dict[tuple[str, str], list[float]] = {}
    failures: dict[tuple[str, str], str] = {}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for name, size in SCENARIOS:
            if args.quick:
                size = 64 * 1024
            data = random.Random(size).randbytes(size)
            fw = tmp / f"fw-{name}.bin"
            fw.write_bytes(data)
            for r in range(rounds):
                order = tools[r % len(tools):] + tools[: r % len(tools)]
                if "reflash" in order:  # it needs this round's stub run first
                    order.remove("reflash")
                    order.insert(order.index("stub") + 1 if "stub" in order else len(order), "reflash")
                for tool in order:
                    t, status = run_tool(tool, name, fw, data, tmp, sim_cpu.setdefault((name, tool), []))
                    if t is None:
                        failures[(name, tool)] = status
                    else:
                        results.setdefault((name, tool), []).append(t)
                    shown = f"{t:7.2f} s" if t is not None else status
                    print(f"{name} {size // 1024} KiB round {r + 1}  {tool:10s} {shown}", file=sys.stderr, flush=True)
    print(f"\nRealistic virtual STM32 over a pty, ROM at {BAUD} baud 8E1, {LATENCY_MS:g} ms adapter "
          f"turnaround; {rounds} interleaved round(s), fresh chip per run; wall clock incl. start-up.\n")
    print("| device | image | path | min | median | vs stm32flash (median) | stub bound |")
    print("|---|---|---|---|---|---|---|")
    for name, size in SCENARIOS:
        if args.quick:
            size = 64 * 1024
        dev = devices.find(name)
        bound = stub_bound(dev, size)
        peer = results.get((name, "stm32flash"))
        for tool in tools:
            times = results.get((name, tool))
            label = {"rom": "stmflash, ROM path", "stub": f"stmflash, stub at {bound['baud']}",
                     "stm32flash": "stm32flash `-w -v`", "reflash": "stub, unchanged re-flash"}[tool]
            if not times:
                print(f"| {name} | {size // 1024} KiB | {label} | {failures.get((name, tool), '-')} | | | |")
                continue
            med = statistics.median(times)
            ratio = f"{statistics.median(peer) / med:.1f}x faster" if peer and tool != "stm32flash" else ""
            shown_bound = f"{bound['total']:.2f} s" if tool == "stub" else ""
            print(f"| {name} | {size // 1024} KiB | {label} | {min(times):.2f} s | {med:.2f} s | {ratio} | {shown_bound} |")
    print()
    for name, size in SCENARIOS:
        if args.quick:
            size = 64 * 1024
        b = stub_bound(devices.find(name), size)
        print(f"stub bound {name} {size // 1024} KiB at {b['baud']} baud: upload {b['upload']:.2f} s + erase "
              f"{b['erase']:.2f} s + stream {b['stream']:.2f} s + verify {b['verify']:.2f} s = {b['total']:.2f} s")
    print()
    for name, _ in SCENARIOS:
        for tool in ("stub", "reflash"):
            cpu, times = sim_cpu.get((name, tool)), results.get((name, tool))
            if cpu and times:
                # the server lives from before the tool starts until after it exits
                print(f"simulator CPU {name} {tool}: median {statistics.median(cpu):.2f} s "
                      f"for runs of median {statistics.median(times):.2f} s (emulated Cortex-M included)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
