"""Wall time of a whole ``stmflash batch`` process on 1, 4 and 16 boards.

Goal: 16 boards take at most 1.1x the time of one (the work is waiting on serial lines
and flash timings, so the workers must overlap instead of queueing).

Boards are virtual STM32F407s with realistic timing (line rate, erase and program
times), fresh for every run, in two set-ups, interleaved 1 4 16 1 4 16 ... per mode:

* ``pty``: each board a ``stmflash sim uart`` pty server in its own process, like
  USB-serial adapters; the batch process only runs the clients;
* ``sim``: in-process ``sim://`` ports, so the batch process also runs every simulator
  (the GIL is shared between 16 clients and 16 simulators).

Timed: the whole batch process, from spawn to exit (interpreter start-up, job checks,
ledger and report included). Printed per row: min / median, the paired ratio to one
board of the same round, the simulators' CPU (pty servers: their processes' CPU; sim:
the CPU the in-process simulators counted) and the batch process's own CPU.

    python benchmarks/batch_parallel.py [--modes pty,sim] [--boards 1,4,16] [--rounds 3] [--size 16384]
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import _harness as H  # noqa: E402

# Runs the batch, then reports what the in-process simulators (sim:// chips, registered
# by name) spent, in the sim-stats format the pty servers use.
CHILD = """
import sys
from stmflash.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 1
from stmflash.sim import registry
from stmflash.sim.timing import SimStats
total = SimStats()
for name in registry.names():
    s = registry.get(name).stats
    total.cpu_s += s.cpu_s
    total.late_s += s.late_s
    total.answers += s.answers
    total.late_answers += s.late_answers
print(total.summary(), file=sys.stderr)
sys.exit(code)
"""


def start_ptys(n: int, tmp: str, baud: int, tag: str) -> tuple[list[subprocess.Popen[str]], list[str]]:
    procs, paths = [], []
    for i in range(n):
        p = subprocess.Popen(
            [sys.executable, "-m", "stmflash", "sim", "uart", "-d", "F407", "--timing", "realistic",
             "--baud", str(baud), "--seed", str(i), "--image", os.path.join(tmp, f"{tag}-{i}.img")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        procs.append(p)
    for p in procs:
        assert p.stdout is not None
        paths.append(p.stdout.readline().strip())
    return procs, paths


def child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def one_run(mode: str, boards: int, r: int, tmp: str, baud: int, image: str, serial_at: int) -> H.Run:
    tag = f"{mode}{boards}r{r}"
    procs: list[subprocess.Popen[str]] = []
    if mode == "pty":
        procs, targets = start_ptys(boards, tmp, baud, tag)
        time.sleep(0.3)  # start-up of the ROMs
    else:
        targets = [f"sim://F407?seed={i}&timing=realistic&baud={baud}&chip={tag}-{i}" for i in range(boards)]
    args = ["batch", image, *targets, "--parity", "none", "--after", "stay", "--baud", str(baud), "--quiet",
            "--json", "--serial-address", hex(serial_at), "--ledger", os.path.join(tmp, f"{tag}.db"),
            "--report-dir", os.path.join(tmp, f"rep-{tag}"), "--no-image-check"]
    try:
        server_cpu0 = sum(H.proc_cpu_s(p.pid) for p in procs)
        cpu0 = child_cpu()
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, cwd=ROOT,
                              timeout=1800)
        wall = time.perf_counter() - t0
        batch_cpu = child_cpu() - cpu0
        server_cpu = sum(H.proc_cpu_s(p.pid) for p in procs) - server_cpu0
    finally:
        errs = ""
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            errs += p.communicate(timeout=60)[1]
    stats = H.sim_stats_from_text(errs if mode == "pty" else proc.stderr)
    sim_cpu = server_cpu if mode == "pty" else stats.get("cpu_s", 0.0)
    if proc.returncode != 0:
        return H.Run(wall, ok=False, status=f"exit {proc.returncode}: {proc.stderr.strip()[-120:]}")
    return H.Run(wall, sim_cpu_s=sim_cpu, sim_late_s=stats.get("late_s", 0.0),
                 extra={"batch_cpu_s": batch_cpu})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="pty,sim")
    ap.add_argument("--boards", default="1,4,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--size", type=int, default=16384, help="random image size in bytes (+ a serial number)")
    a = ap.parse_args()
    counts = [int(x) for x in a.boards.split(",")]
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from stmflash.image import save
        from stmflash.image.model import Image

        image = os.path.join(tmp, "random.hex")
        save(Image.from_bytes(__import__("random").Random(a.size).randbytes(a.size), 0x08000000), image)
        serial_at = 0x08000000 + a.size + 0x100
        for mode in modes:
            log(f"mode {mode}")
            runners = {f"{mode} x{n}": (lambda r, n=n, mode=mode: one_run(mode, n, r, tmp, a.baud, image, serial_at))
                       for n in counts}
            res = H.interleave(runners, a.rounds, log)
            one = res[f"{mode} x{counts[0]}"]
            for n in counts:
                runs = res[f"{mode} x{n}"]
                rows.append((mode, n, runs, one))
    print(f"Batch, F407 boards at {a.baud} baud, {a.size // 1024} KiB random image + serial, whole-process wall time, "
          f"{a.rounds} interleaved rounds, fresh chips each run; {H.machine_line()}\n")
    print(f"| simulators | boards | min / median | vs {counts[0]} board (paired) | simulator CPU | batch process CPU |")
    print("|---|---|---|---|---|---|")
    failed = False
    worst = 0.0
    for mode, n, runs, one in rows:
        where = "pty servers (own processes)" if mode == "pty" else "in-process `sim://`"
        if not all(r.ok for r in runs + one):
            failed = True
            print(f"| {where} | {n} | FAILED: {next(r.status for r in runs + one if not r.ok)} | | | |")
            continue
        s = H.summary([r.wall_s for r in runs])
        ratios = H.paired_ratios([r.wall_s for r in one], [r.wall_s for r in runs])
        if n == max(counts) and mode == "pty":
            worst = max(worst, H.summary(ratios).median)
        cpu = H.summary([r.sim_cpu_s for r in runs]).median
        bcpu = H.summary([r.extra["batch_cpu_s"] for r in runs]).median
        print(f"| {where} | {n} | {s.min:.2f} / {s.median:.2f} s | {H.ratio_cell(ratios)} | {cpu:.2f} s | {bcpu:.2f} s |")
    print(f"\n{max(counts)} boards vs {counts[0]} with pty servers: {worst:.3f}x median (goal <= 1.10x)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
