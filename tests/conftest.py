import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

pytest_plugins = ["tests.pgserver"]


@pytest.fixture
def usb(tmp_path, monkeypatch):
    """``usb("F407")``: one virtual chip alone on the virtual USB bus; returns its bus device
    (``STMFLASH_USB_SIM`` for this test only)."""
    from stmflash.sim import usb_backend

    def make(spec: str) -> usb_backend.VirtualUsbDevice:
        monkeypatch.setenv("STMFLASH_USB_SIM", f"{spec}={tmp_path / 'chip.img'}")
        usb_backend.forget()
        return usb_backend.bus_from_env().snapshot()[0]

    yield make
    usb_backend.forget()


@pytest.fixture
def dfu_link(usb):
    """``dfu_link("F407")``: (its virtual chip, a DfuLink opened on it), the chip alone on the
    virtual USB bus; the links are closed afterwards."""
    from stmflash.dfu.link import connect

    links = []

    def make(spec: str):
        dev = usb(spec)
        links.append(connect())
        return dev.chip, links[-1]

    yield make
    for link in links:
        link.close()
