"""Protection over DfuSe follows the same retry rule as every other DFU request.

The option-byte rewrites behind readout and write protection (``DfuLink._rewrite_ob``) and
Read Unprotect used to fail the board on the first stalled or timed-out request; now a fault
costs a retry (the link is recovered, the option bytes read, and a write that already took
effect is not sent again). Faults are injected on the virtual USB bus, counted from the
moment of the protection request so they hit exactly its transfers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stmflash import option_bytes as obl
from stmflash.dfu.link import DfuLink, connect
from stmflash.errors import VerifyError
from stmflash.sim import usb_backend
from stmflash.sim.usb_backend import UsbFault, VirtualUsbDevice


@pytest.fixture
def f407(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[VirtualUsbDevice, DfuLink]]:
    monkeypatch.setenv("STMFLASH_USB_SIM", f"F407={tmp_path / 'p.img'}")
    usb_backend.forget()
    dev = usb_backend.bus_from_env().snapshot()[0]
    link = connect()
    try:
        yield dev, link
    finally:
        link.close()
        usb_backend.forget()


def inject(dev: VirtualUsbDevice, kind: str, req: str, k: int) -> UsbFault:
    """A fault on the ``k``-th ``req`` (dnload, upload, getstatus) from now on."""
    fault = UsbFault(kind, req, dev.per_request.get(req, 0) + k)
    dev.usb_faults.append(fault)
    return fault


# Every DNLOAD / GETSTATUS of the rewrite, in turn: SET_ADDRESS, the option-byte data, their
# status polls; the read-backs' UPLOADs.
REWRITE_FAULTS = [("stall", "dnload", k) for k in (1, 2, 3)] + [
    ("timeout", "getstatus", 1), ("timeout", "getstatus", 2), ("stall", "upload", 1), ("stall", "upload", 2),
    ("disconnect", "dnload", 2),
]


@pytest.mark.parametrize("kind, req, k", REWRITE_FAULTS)
def test_write_protect_survives_one_usb_fault(f407, kind: str, req: str, k: int) -> None:
    dev, link = f407
    fault = inject(dev, kind, req, k)
    before = link.retried
    link.write_protect([0, 1])
    assert fault.fired  # the fault hit the protection's own transfers
    assert link.retried > before
    assert dev.chip.wrp == {0, 1} and dev.chip.rdp_level == 0
    assert obl.wrp_units(link.device, link.ob_area_read()) == {0, 1}


@pytest.mark.parametrize("kind, req, k", [("stall", "dnload", 2), ("timeout", "getstatus", 1),
                                              ("stall", "upload", 1)])
def test_readout_protect_survives_one_usb_fault(f407, kind: str, req: str, k: int) -> None:
    dev, link = f407
    fault = inject(dev, kind, req, k)
    link.readout_protect(1)
    assert fault.fired and link.retried >= 1
    assert dev.chip.rdp_level == 1


@pytest.mark.parametrize("kind, req, k", [("stall", "dnload", 1), ("timeout", "getstatus", 1)])
def test_read_unprotect_survives_one_usb_fault(f407, kind: str, req: str, k: int) -> None:
    dev, link = f407
    dev.chip.preload(link.device.flash_start, b"\x5a" * 64)
    link.readout_protect(1)
    assert dev.chip.rdp_level == 1
    fault = inject(dev, kind, req, k)
    before = link.retried
    link.read_unprotect()
    assert fault.fired and link.retried > before
    assert dev.chip.rdp_level == 0
    assert bytes(dev.chip.flash[:64]) == b"\xff" * 64  # the ROM's mass erase happened once


def test_a_write_that_took_effect_is_not_sent_again(f407, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fault comes after the ROM applied the option bytes (the status poll of the
    reset): the read before the retry finds them written, and no second write goes out."""
    dev, link = f407
    writes: list[bytes] = []
    real = DfuLink._download_ob

    def counting(self: DfuLink, start: int, data: bytes, **kw: object) -> bool:
        writes.append(data)
        real(self, start, data, **kw)  # type: ignore[arg-type]
        raise usb_backend_stall()  # as if the last request of the write had stalled

    monkeypatch.setattr(DfuLink, "_download_ob", counting)
    link.write_protect([2])
    assert len(writes) == 1 and dev.chip.wrp == {2}


def usb_backend_stall() -> Exception:
    from stmflash.dfu.protocol import Stall

    return Stall("a stall after the option bytes were applied")


def test_a_rom_that_never_takes_the_value_is_a_verify_error(f407, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retried, then reported (exit 5): never a silent 'protected' that is not."""
    dev, link = f407
    monkeypatch.setattr(DfuLink, "_download_ob", lambda self, start, data, **kw: True)  # the ROM ignores it
    with pytest.raises(VerifyError) as err:
        link.write_protect([0])
    assert "read back as" in str(err.value) and f"({link.retries} retries)" in str(err.value)
    assert dev.chip.wrp == set()


def test_a_device_that_keeps_stalling_still_fails_clearly(f407) -> None:
    dev, link = f407
    for k in range(1, 40):
        inject(dev, "stall", "dnload", k)
    with pytest.raises(Exception) as err:
        link.write_protect([0])
    assert "retries" in str(err.value)
    assert dev.chip.wrp == set()
