"""Serial allocation throughput of both ledger engines, one station and four stations.

A board costs the ledger three transactions: reserve (the number), written (before the
first byte goes to the chip) and the result with its run row. This measures complete
board cycles per second for one process and for four processes drawing from one pool
at once, on SQLite (a file here) and PostgreSQL (a throwaway server started in a
temporary directory, as the tests do; or ``--pg URL``). Goal: the ledger is not the
bottleneck of a 16-board batch (16 cycles must take far less than one board's flashing).

    python benchmarks/ledger_alloc.py [--count 300] [--pg postgresql://...]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from stmflash.production.store import RunRecord, open_ledger  # noqa: E402


def cycles(spec: str, station: str, count: int, start: multiprocessing.synchronize.Event | None = None) -> None:
    with open_ledger(spec, station=station) as led:
        if start is not None:
            start.wait()
        for i in range(count):
            uid = f"{station}-{i:06d}"
            r = led.reserve(uid, target="bench")
            led.written(r.n)
            led.record(RunRecord("bench", uid=uid, serial_number=r.n, serial=str(r.n), result="passed",
                                 run=led.run_id), "done")


def measure(spec: str, stations: int, count: int) -> float:
    """Board cycles per second with ``stations`` processes, each doing ``count``."""
    with open_ledger(spec):
        pass  # schema first, so the timing is allocation only
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=cycles, args=(spec, f"st{k}-{secrets.token_hex(3)}", count, start))
             for k in range(stations)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # every process connected
    t0 = time.perf_counter()
    start.set()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a station failed (exit {p.exitcode})")
    elapsed = time.perf_counter() - t0
    with open_ledger(spec) as led:
        numbers = [e.n for e in led.entries()]
    assert len(numbers) == len(set(numbers)) >= stations * count, "a number was issued twice"
    return stations * count / elapsed


def start_postgres(tmp: str):
    from tests.pgserver import PgServer, _free_port, find_bindir

    bindir = find_bindir()
    if bindir is None:
        return None
    base = os.path.join(tmp, "pg")
    os.mkdir(base, 0o700)
    run_as = None
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        run_as = (nobody.pw_uid, nobody.pw_gid)
        os.chmod(tmp, 0o755)
        os.chown(base, *run_as)
    server = PgServer(bindir, base, _free_port(), secrets.token_hex(8), run_as)
    server.init()
    server.start()
    return server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=300, help="board cycles per station")
    ap.add_argument("--pg", default=None, help="an existing PostgreSQL database URL (it gets stmflash tables)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ledger-bench-")
    server = None
    try:
        engines = [("sqlite", lambda tag: os.path.join(tmp, f"{tag}.db"))]
        if args.pg:
            engines.append(("postgresql", lambda tag: args.pg))
        else:
            server = start_postgres(tmp)
            if server is not None:
                engines.append(("postgresql", lambda tag: server.url(server.new_database())))
            else:
                print("postgresql: server binaries not found, skipped")
        print("numbers/s = complete board cycles per second (reserve + written + result with its run row)")
        if server is not None:
            print("(the throwaway PostgreSQL server runs with fsync=off, as in the tests; SQLite fsyncs every commit)")
        print(f"{'engine':<11} {'stations':>8} {'numbers/s':>10}  ledger time of a 16-board batch")
        for name, make in engines:
            for stations in (1, 4):
                rate = measure(make(f"{name}{stations}"), stations, args.count)
                print(f"{name:<11} {stations:>8} {rate:>10.0f}  {16 / rate * 1000:8.1f} ms")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
