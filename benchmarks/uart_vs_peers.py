"""stmflash against stm32flash and stm32loader on the realistic virtual STM32, interleaved.

Every run gets a fresh ``stmflash sim uart --timing realistic`` pty server in its own
process with a blank chip (or, for read-only, a chip holding the image), is timed from
process start to exit, and its result is checked on the server's saved image (or the file
it read): a tool that leaves the wrong content is reported as failed, not timed. Tools run
interleaved, A B C A B C ... (``--pairs`` rounds, at least 3), and each row gives min /
median, its own lower bound, and the paired ratio to stmflash of the same round.

The bound (``benchmarks/_harness.py``: ``UartUse``/``uart_bound``) is a true lower bound
for the AN3155 protocol *as that tool uses it*: stmflash pipelines Read Memory (one wait
per frame) and the command+address of Write Memory (two waits per frame) and skips blank
256-byte blocks; stm32flash and stm32loader wait for every ACK and write every block. The
erase in the bound is what the tool asks for: the covered sectors (stmflash, stm32flash),
or a global mass erase (stm32loader ``-e``: 16 s typical on an F407). stm32loader is shown
twice: its default (``-e -w -v``: mass erase, and its reset sleeps, 0.6 s entering and
0.6 s leaving the bootloader, which no option turns off, in every run) and with its fairest settings (``-w -v`` without ``-e``, correct here
only because every run starts on a blank chip).

Scenarios (``--scenarios``, comma separated): dense, dense-ftdi, sparse, dense-921600,
read, read-ftdi. ``ftdi`` = 16 ms adapter turnaround (default FTDI latency timer), the
others 1 ms (CH340/CP210x).

    python benchmarks/uart_vs_peers.py [--pairs 3] [--scenarios dense,read] [--scale 0.5]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _harness as H  # noqa: E402

from stmflash import devices  # noqa: E402
from stmflash.erase_plan import plan_erase  # noqa: E402
from stmflash.image.model import Image  # noqa: E402
from stmflash.sim.chip import VirtualChip, flash_bytes  # noqa: E402
from stmflash.sim.spawn import stm32loader_command  # noqa: E402
from stmflash.sim.timing import ADAPTERS, TimingModel  # noqa: E402


@dataclass
class Scenario:
    name: str
    device: str
    size: int
    baud: int = 115200
    adapter: str = "ch340"
    kind: str = "write"  # write | read
    sparse: bool = False  # 3 of 4 blocks blank (0xFF)
    tools: tuple[str, ...] = ("stmflash", "stm32flash", "stm32loader")


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("dense", "0x413", 32 * 1024, tools=("stmflash", "stm32flash", "stm32loader", "stm32loader-default")),
        Scenario("dense-ftdi", "0x413", 16 * 1024, adapter="ftdi"),
        Scenario("sparse", "0x413", 32 * 1024, sparse=True),
        Scenario("dense-921600", "0x413", 64 * 1024, baud=921600),
        Scenario("read", "0x413", 32 * 1024, kind="read"),
        Scenario("read-ftdi", "0x413", 16 * 1024, kind="read", adapter="ftdi"),
    ]
}
FAMILY = {"0x413": "F4", "0x460": "G0", "0x410": "F1"}
LABEL = {
    "stmflash": "stmflash",
    "stm32flash": "stm32flash `-w -v`",
    "stm32loader": "stm32loader `-w -v` (fairest)",
    "stm32loader-default": "stm32loader `-e -w -v` (default)",
}
READ_LABEL = {"stmflash": "stmflash `--read`", "stm32flash": "stm32flash `-r`", "stm32loader": "stm32loader `-r`"}


def make_data(sc: Scenario) -> bytes:
    rnd = random.Random(sc.size + sc.sparse)
    data = bytearray(rnd.randbytes(sc.size))
    if sc.sparse:
        for off in range(0, sc.size, 256):
            if (off // 256) % 4:
                data[off : off + 256] = b"\xff" * 256
    return bytes(data)


def tool_use(tool: str, sc: Scenario, dev: devices.Device, data: bytes) -> H.UartUse:
    """How ``tool`` uses the protocol for this job (see the module docstring)."""
    all_blocks = H.blocks(len(data))
    if sc.kind == "read":
        return H.UartUse(pipelined_read=tool == "stmflash", read_blocks=all_blocks)
    units = plan_erase(Image.from_bytes(data, dev.flash_start), dev).units
    extended = dev.erase_command == 0x44
    per_unit = 2 if extended else 1
    unit_erase = sum(dev.unit_erase_ms(u)[0] for u in units) / 1000.0
    if tool == "stmflash":
        nonblank = [len(d) for _, d in Image.from_bytes(data, dev.flash_start).chunks(256) if d != b"\xff" * len(d)]
        frames = len(units) if not dev.uniform_pages else 1  # one sector per call on F2/F4/F7
        req = frames * (per_unit + 1) + len(units) * per_unit
        return H.UartUse(True, True, nonblank, all_blocks, frames, req, unit_erase)
    if tool == "stm32flash":  # at best one erase frame for all covered units
        return H.UartUse(False, False, all_blocks, all_blocks, 1, per_unit + len(units) * per_unit + 1, unit_erase)
    if tool == "stm32loader-default":  # -e: global mass erase
        return H.UartUse(False, False, all_blocks, all_blocks, 1, per_unit + 1, dev.mass_erase_time_ms()[0] / 1000.0)
    return H.UartUse(False, False, all_blocks, all_blocks)  # stm32loader without -e


def command(tool: str, sc: Scenario, pty: str, fw: Path, out: Path) -> list[str] | None:
    family = FAMILY.get(sc.device, "F4")
    start = "0x08000000"
    if tool == "stmflash":
        base = [sys.executable, "-m", "stmflash", "uart", pty, "--baud", str(sc.baud), "--no-image-check", "-q"]
        if sc.kind == "read":
            return [*base, "--read", str(out), "--range", f"{start}:{sc.size}"]
        return [*base, str(fw), "--after", "stay", "--stub", "off"]  # the ROM path; the stub: stub_vs_rom.py
    if tool == "stm32flash":
        exe = shutil.which("stm32flash")
        if exe is None:
            return None
        if sc.kind == "read":
            return [exe, "-b", "0", "-r", str(out), "-S", f"{start}:{sc.size}", pty]
        return [exe, "-b", "0", "-w", str(fw), "-v", pty]
    try:
        import stm32loader  # noqa: F401
    except ImportError:
        return None
    # -P none: a pty cannot do parity; -a is the flash start (the default, stated)
    base = [*stm32loader_command(), "-p", pty, "-b", str(sc.baud), "-P", "none", "-f", family, "-n", "-a", start]
    if sc.kind == "read":
        return [*base, "-r", "-l", str(sc.size), str(out)]
    erase = ["-e"] if tool == "stm32loader-default" else []
    return [*base, *erase, "-w", "-v", str(fw)]


def one_run(tool: str, sc: Scenario, data: bytes, fw: Path, tmp: Path, r: int) -> H.Run:
    image = tmp / f"{sc.name}-{tool}-{r}.img"
    out = tmp / f"{sc.name}-{tool}-{r}.bin"
    dev = devices.find(sc.device)
    if sc.kind == "read":
        chip = VirtualChip(dev, image_path=image)
        chip.preload(dev.flash_start, data)
        chip.save()
    cmd_probe = command(tool, sc, "/dev/null", fw, out)
    if cmd_probe is None:
        return H.Run(0.0, ok=False, status="not installed")
    server = subprocess.Popen(
        [sys.executable, "-m", "stmflash", "sim", "uart", "--device", sc.device, "--image", str(image),
         "--timing", "realistic", "--baud", str(sc.baud), "--adapter", sc.adapter, "--seed", str(r)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert server.stdout is not None
        pty = server.stdout.readline().strip()
        if not pty.startswith("/dev/"):
            return H.Run(0.0, ok=False, status="server did not start")
        time.sleep(0.3)  # the ROM's start-up, and the server settling
        cmd = command(tool, sc, pty, fw, out)
        assert cmd is not None
        cpu0 = H.proc_cpu_s(server.pid)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
        wall = time.perf_counter() - t0
        cpu = H.proc_cpu_s(server.pid) - cpu0
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=60)
    stats = H.sim_stats_from_text(err)
    run = H.Run(wall, sim_cpu_s=cpu, sim_late_s=stats.get("late_s", 0.0))
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return H.Run(wall, ok=False, status=f"exit {proc.returncode}: {tail[0][:70]}")
    got = out.read_bytes()[: len(data)] if sc.kind == "read" else flash_bytes(image)[: len(data)]
    if got != data:
        return H.Run(wall, ok=False, status="WRONG CONTENT")
    for p in (image, out):
        if p.exists():
            p.unlink()
    return run


def run_scenario(sc: Scenario, pairs: int, tmp: Path, log: Callable[[str], None]) -> list[dict]:
    dev = devices.find(sc.device)
    data = make_data(sc)
    fw = tmp / f"fw-{sc.name}.bin"
    fw.write_bytes(data)
    tm = TimingModel(dev, "realistic", baud=sc.baud, latency_ms=ADAPTERS[sc.adapter])
    log(f"{sc.name}: {dev.short_name} {sc.size // 1024} KiB {sc.kind} {sc.baud} baud {sc.adapter} "
        f"({ADAPTERS[sc.adapter]:g} ms)")
    runners = {t: (lambda r, t=t: one_run(t, sc, data, fw, tmp, r)) for t in sc.tools}
    results = H.interleave(runners, pairs, log)
    rows = []
    base = results.get("stmflash")
    for tool in sc.tools:
        runs = results[tool]
        bound = H.uart_bound(tool_use(tool, sc, dev, data), baud=sc.baud, latency_s=tm.latency(),
                             program_s=tm.program_time)
        ok = [r for r in runs if r.ok]
        row = {"scenario": sc, "tool": tool, "bound": bound, "runs": runs}
        if len(ok) == len(runs):
            row["summary"] = H.summary([r.wall_s for r in runs])
            row["sim_share"] = max(r.sim_share for r in runs)
            row["late"] = max(r.sim_late_s for r in runs)
            if base and tool != "stmflash" and all(b.ok for b in base):
                row["paired"] = H.paired_ratios([b.wall_s for b in base], [r.wall_s for r in runs])
        else:
            row["status"] = next(r.status for r in runs if not r.ok)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| scenario | tool | min / median | bound as used | median / bound | paired vs stmflash | sim CPU | sim late |",
           "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        sc: Scenario = row["scenario"]
        what = f"F407 {sc.size // 1024} KiB {sc.kind if not sc.sparse else 'sparse write'}, {sc.baud}, {sc.adapter}"
        label = (READ_LABEL if sc.kind == "read" else LABEL).get(row["tool"], row["tool"])
        if row["tool"] == "stmflash":
            label = f"**{label}**"
        b = row["bound"]["total"]
        if "summary" not in row:
            out.append(f"| {what} | {label} | {row['status']} | {b:.2f} s | | | | |")
            continue
        s: H.Summary = row["summary"]
        paired = H.ratio_cell(row["paired"]) if "paired" in row else "1"
        out.append(f"| {what} | {label} | {s.min:.2f} / {s.median:.2f} s | {b:.2f} s | {s.median / b:.3f}x | "
                   f"{paired} | {row['sim_share']:.1%} | {row['late']:.3f} s |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3, help="interleaved rounds (at least 3 for the README)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every image size (e.g. 0.25 to try it out)")
    args = ap.parse_args()
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s) {', '.join(unknown)} (known: {', '.join(SCENARIOS)})", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as td:
        for n in names:
            sc = SCENARIOS[n]
            if args.scale != 1.0:
                sc = Scenario(**{**sc.__dict__, "size": max(1024, int(sc.size * args.scale) // 256 * 256)})
            rows += run_scenario(sc, args.pairs, Path(td), log)
    print(f"UART, realistic virtual STM32F407 on a pty, {args.pairs} interleaved rounds, fresh chip each run; "
          f"{H.machine_line()}\n")
    print(table(rows))
    print("\nmin / median: wall time from process start to exit; bound as used: the protocol's lower bound for "
          "the frames that tool sends (benchmarks/_harness.py); paired: that tool / stmflash in the same round, "
          "median (range); sim CPU: the pty server's CPU / wall (worst run); sim late: wall time one of the "
          "server's answers was overdue on its modelled deadline (worst run; the server does not carry it into "
          "later deadlines).")
    failed = [r for r in rows if "summary" not in r and r.get("status") != "not installed"]
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
