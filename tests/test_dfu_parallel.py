"""The virtual USB bus shared by parallel boards (``stmflash batch ... "dfu:*"``): one
board's enumeration, reset or injected fault must never touch a neighbour's chip."""

from __future__ import annotations

import json
import os
import threading

import pytest
import usb.core

from stmflash.cli import main
from stmflash.devices import find
from stmflash.errors import EXIT_BATCH
from stmflash.image import load
from stmflash.sim import usb_backend
from stmflash.sim.chip import VirtualChip, flash_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEX = os.path.join(ROOT, "examples", "blinky-f407.hex")


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as ei:
        main(args)
    out = capsys.readouterr()
    return int(ei.value.code or 0), out.out, out.err


@pytest.fixture
def fresh_bus():
    usb_backend.forget()
    yield
    usb_backend.forget()


def test_concurrent_saves_of_one_chip_all_succeed(tmp_path):
    """Several threads saving one chip (a worker, the bus, atexit) must not race on the
    tmp file: before the per-chip lock this failed with 'No such file or directory'."""
    chip = VirtualChip(find("F407"), image_path=tmp_path / "c.img")
    chip.preload(0x08000000, b"\x42" * 64)
    errors: list[str] = []

    def saver() -> None:
        for _ in range(25):
            try:
                chip.save()
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(str(exc))

    threads = [threading.Thread(target=saver) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert flash_bytes(tmp_path / "c.img")[:64] == b"\x42" * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.img"]  # no tmp file left behind


def test_enumeration_leaves_a_busy_neighbour_alone(tmp_path):
    """Another thread enumerating while device 0 is mid-transfer (its lock held) and its
    chip has just reset must neither wait for it nor drop/save it behind its back."""
    bus = usb_backend.bus_from_spec(f"F407={tmp_path / 'a.img'},F407={tmp_path / 'b.img'};seed=1")
    dev0, dev1 = bus.devices
    saves: list[str] = []
    real_save = dev0.chip.save

    def counting_save(*a, **kw):
        saves.append(threading.current_thread().name)
        return real_save(*a, **kw)

    dev0.chip.save = counting_save  # type: ignore[method-assign]
    gen0 = dev0.generation
    holding, release = threading.Event(), threading.Event()

    def owner() -> None:
        with dev0.lock:  # a transfer in flight whose request reset the chip
            dev0.chip.reset()
            holding.set()
            release.wait(10)
            dev0.sync()
            dev0.save_if_dropped()

    t = threading.Thread(target=owner, name="owner")
    t.start()
    assert holding.wait(10)
    try:
        found = list(usb.core.find(find_all=True, backend=bus.backend))
        # both still listed as last seen; nothing of device 0 changed by this thread
        assert {d.port_numbers for d in found} == {dev0.ports, dev1.ports}
        assert dev0.generation == gen0
        assert saves == []
    finally:
        release.set()
        t.join(10)
    # its own thread saw the reset: dropped off the bus once, saved once, by itself
    assert dev0.generation == gen0 + 1
    assert saves == ["owner"]


def test_bus_attach_is_thread_safe_and_ports_unique(tmp_path):
    bus = usb_backend.VirtualBus()
    chips = [VirtualChip(find("F407"), seed=i) for i in range(16)]
    threads = [threading.Thread(target=bus.attach, args=(c,)) for c in chips]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({d.path for d in bus.snapshot()}) == 16
    with pytest.raises(Exception, match="two devices on port path 1-3"):
        bus.attach(VirtualChip(find("F407")), port="1-3")


@pytest.mark.parametrize("after", ["reset", "stay"])
def test_eight_usb_boards_two_faulty(tmp_path, capsys, monkeypatch, fresh_bus, after):
    """8 virtual F407s in one batch; a disconnect on one costs a retry, a power loss on
    another fails only that one: the seven others pass, verified on their own image files
    (exit 6)."""
    data = load(HEX).segments[0].data
    faulty = {2: "fault=disconnect@dnload:3", 5: "fault=power_loss=after:512"}
    entries = []
    for i in range(8):
        opts = [f"seed={400 + i}"] + ([faulty[i]] if i in faulty else [])
        entries.append(";".join([f"F407={tmp_path / f'u{i}.img'}", *opts]))
    monkeypatch.setenv("STMFLASH_USB_SIM", ",".join(entries))
    code, out, err = run_cli(
        ["batch", HEX, "dfu:*", "--after", after, "--retries", "0", "--json",
         "--report-dir", str(tmp_path / "rep")], capsys)
    usb_backend.forget()  # saves every image file
    assert code == EXIT_BATCH, err
    assert "cannot save simulator image" not in out + err
    summary = [json.loads(line) for line in out.splitlines() if '"summary"' in line][-1]
    results = {r["target"]: r for r in json.load(open(summary["report_json"]))["results"]}
    assert len(results) == 8
    for i in range(8):
        r = results[f"dfu:path=1-{i + 1}"]
        if i == 5:
            assert r["result"] == "failed" and r["error"], r
            assert "disconnected" in r["error"]
        else:
            assert r["result"] == "passed", r
            assert flash_bytes(tmp_path / f"u{i}.img")[: len(data)] == data
