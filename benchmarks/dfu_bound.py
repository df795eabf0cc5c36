"""How close does ``stmflash dfu`` get to what the hardware needs?

Flashes 512 KiB (random data, valid vector table) with read-back verification onto
realistic-timing virtual STM32F407 and STM32H743 chips on the virtual USB bus, and prints
the wall time against the model's lower bound:

    bound = erase time of the units the image covers (typical, device table)
          + programming time of the image (typical, device table)
          + control-transfer time of the fewest transfers DfuSe allows:
              per erase unit and per write block: DNLOAD + GETSTATUS (dfuDNBUSY) +
              GETSTATUS (dfuDNLOAD-IDLE); one SET_ADDRESS (3 transfers) before the
              writes and one before the read-back; per read block one UPLOAD
            each transfer costing CONTROL_FRAME_S + bytes / CONTROL_BYTES_PER_S
            (stmflash.sim.usb_backend's documented model).

The bound is recomputed here from the device table and the documented USB model, not
taken from the simulator.  Goal: measured within 10 % of the bound.

Run:  python benchmarks/dfu_bound.py [--size 512K] [--device F407 --device H743]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stmflash.commands.common import parse_int  # noqa: E402
from stmflash.devices import find  # noqa: E402
from stmflash.dfu.link import DfuLink  # noqa: E402
from stmflash.dfu.usb import find_devices  # noqa: E402
from stmflash.image.model import Image  # noqa: E402
from stmflash.pipeline import program  # noqa: E402
from stmflash.sim.chip import VirtualChip  # noqa: E402
from stmflash.sim.usb_backend import CONTROL_BYTES_PER_S, CONTROL_FRAME_S, VirtualBus  # noqa: E402


def cost(nbytes: int) -> float:
    return CONTROL_FRAME_S + nbytes / CONTROL_BYTES_PER_S


def bound(device, image: Image, xfer: int) -> dict[str, float]:
    units = device.units_covering(image.start, image.end)
    erase = sum(device.unit_erase_ms(u)[0] for u in units) / 1000.0
    prog = device.program_time_ms(image.size)[0] / 1000.0
    blocks = [len(d) for _, d in image.chunks(xfer)]
    usb = 0.0
    usb += len(units) * (cost(5) + 2 * cost(6))  # erase page commands
    usb += 2 * (cost(5) + 2 * cost(6))  # SET_ADDRESS before writing and before reading
    usb += sum(cost(n) + 2 * cost(6) for n in blocks)  # write blocks
    usb += sum(cost(n) for n in blocks)  # read-back
    return {"erase": erase, "program": prog, "usb": usb, "total": erase + prog + usb}


def run(name: str, size: int, seed: int) -> dict[str, float]:
    device = find(name)
    rnd = random.Random(seed)
    data = (0x20001000).to_bytes(4, "little") + (0x08000101).to_bytes(4, "little") + rnd.randbytes(size - 8)
    image = Image.from_bytes(data, device.flash_start)
    chip = VirtualChip(device, timing="realistic")
    bus = VirtualBus()
    bus.attach(chip)
    (info,) = find_devices(backend=bus.backend)
    link = DfuLink(info).open()
    t0 = time.perf_counter()
    result = program(link, image, verify=True, after="stay")
    elapsed = time.perf_counter() - t0
    assert bytes(chip.flash[:size]) == data and result.verified
    b = bound(link.device, image, link.max_write)
    return {"measured": elapsed, **b, "transfers": link.proto.transfers, "xfer": link.max_write}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="512K")
    ap.add_argument("--device", action="append")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    size = parse_int(args.size)
    worst = 0.0
    print(f"{'device':<8} {'size':>7} {'xfer':>5} {'erase s':>8} {'prog s':>7} {'usb s':>6} "
          f"{'bound s':>8} {'measured s':>10} {'over':>6}")
    for name in args.device or ["F407", "H743"]:
        r = run(name, size, args.seed)
        over = r["measured"] / r["total"] - 1
        worst = max(worst, over)
        print(f"{name:<8} {size // 1024:>6}K {r['xfer']:>5} {r['erase']:>8.2f} {r['program']:>7.2f} "
              f"{r['usb']:>6.2f} {r['total']:>8.2f} {r['measured']:>10.2f} {over * 100:>5.1f}%")
    print(f"worst overhead above the bound: {worst * 100:.1f}% (goal: within 10%)")


if __name__ == "__main__":
    main()
