"""Wait for a board to re-enumerate as the ST ROM DFU device on the same USB port.

After a 1200-baud touch or a DFU_DETACH the application's USB device disappears and,
a little later, the ROM bootloader (0483:df11) appears. Names change (``ttyACM0`` may come
back as ``ttyACM1``, serial numbers collide between boards of one batch), so the device is
followed by its *physical port path* (``bus-port.port...``): the only key that stays the
same across the re-enumeration. We wait for the old device to **leave** first, so we never
talk to a dying application, then for the new one to **arrive** on that path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from stmflash.errors import LinkError

ROM_DFU_ID = (0x0483, 0xDF11)
DEFAULT_TIMEOUT_S = 10.0  # fwupd's re-enumeration allowance for a chain of slow hubs
DEFAULT_POLL_S = 0.1
DEFAULT_SETTLE_S = 0.5  # after arrival: udev/permissions, macOS "resource busy"


@dataclass(frozen=True)
class UsbSeen:
    """One USB device (or USB serial port) as seen by a scan."""

    vid: int
    pid: int
    path: str | None  # physical port path "bus-p.p.p", None when the OS does not say
    name: str = ""  # /dev/ttyACM0 for a serial port, "" for a raw USB device
    serial: str | None = None

    @property
    def id(self) -> str:
        return f"{self.vid:04x}:{self.pid:04x}"

    def describe(self) -> str:
        where = f"USB port {self.path}" if self.path else "an unknown USB port"
        return f"{self.id} on {where}" + (f" ({self.name})" if self.name else "")


def usb_path(bus: int | None, port_numbers: Sequence[int] | None) -> str | None:
    """``bus-p.p.p`` (Linux sysfs spelling) from pyusb's ``bus`` and ``port_numbers``."""
    if bus is None or not port_numbers:
        return None
    return f"{bus}-" + ".".join(str(p) for p in port_numbers)


def location_path(location: str | None) -> str | None:
    """pyserial's ``ListPortInfo.location`` (``1-1.2:1.0``) without the interface suffix."""
    if not location:
        return None
    return location.split(":", 1)[0] or None


def is_rom_dfu(dev: UsbSeen) -> bool:
    return (dev.vid, dev.pid) == ROM_DFU_ID


def _same(a: UsbSeen, b: UsbSeen) -> bool:
    """One physical device in two scans (a USB scan has no tty name, a serial scan has)."""
    if (a.vid, a.pid) != (b.vid, b.pid):
        return False
    if a.path is not None or b.path is not None:
        return a.path == b.path
    return a.name == b.name


def wait_for_reenumeration(
    scan: Callable[[], Iterable[UsbSeen]],
    *,
    old: UsbSeen | None,
    before: Iterable[UsbSeen] = (),
    match: Callable[[UsbSeen], bool] = is_rom_dfu,
    timeout: float = DEFAULT_TIMEOUT_S,
    poll: float = DEFAULT_POLL_S,
    settle: float = DEFAULT_SETTLE_S,
    how: str = "the request",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> UsbSeen:
    """The new device once ``old`` has left and a ``match`` arrived on the same port path.

    ``before`` is the snapshot taken before the trigger: when the old device's path is not
    known, the first matching device that was not in it is taken instead. Raises
    :class:`LinkError` naming the port and the step that did not happen.
    """
    path = old.path if old is not None else None
    seen_before = list(before)
    deadline = clock() + timeout
    left = old is None

    def arrived(devices: list[UsbSeen]) -> UsbSeen | None:
        for dev in devices:
            if not match(dev):
                continue
            if path is not None:
                if dev.path == path:
                    return dev
            elif not any(_same(dev, b) for b in seen_before):
                return dev
        return None

    while True:
        devices = list(scan())
        new = arrived(devices)
        if new is not None:
            # The new device on this path implies the old one left, even between two polls.
            if settle > 0:
                sleep(settle)
            return new
        if not left and old is not None and not any(_same(old, d) for d in devices):
            left = True
        if clock() >= deadline:
            break
        sleep(poll)

    want = "ROM DFU device (0483:df11)"
    if not left and old is not None:
        raise LinkError(
            f"the application {old.describe()} did not disconnect within {timeout:g} s after "
            f"{how}: the firmware does not handle it (no stmflash companion, or no DFU runtime "
            "interface / 1200-baud handler)"
        )
    where = f"USB port {path}" if path else "any new USB port"
    raise LinkError(
        f"no {want} appeared on {where} within {timeout:g} s after {how}"
        + (" (the application left but the ROM bootloader did not enumerate: check that the "
           "part has USB DFU in ROM and its clock requirements, e.g. the HSE crystal; "
           "'stmflash devices NAME' shows where a part's ROM listens)" if old else "")
    )


# ---- scanners -------------------------------------------------------------------------------


def scan_usb(backend: object | None = None) -> list[UsbSeen]:
    """Every USB device pyusb sees through ``backend`` (the virtual bus when given)."""
    import usb.core

    found = []
    try:
        devices = usb.core.find(find_all=True, backend=backend)
        for dev in devices:
            found.append(
                UsbSeen(
                    int(dev.idVendor),
                    int(dev.idProduct),
                    usb_path(getattr(dev, "bus", None), getattr(dev, "port_numbers", None)),
                )
            )
    except (usb.core.USBError, usb.core.NoBackendError, ValueError, NotImplementedError):
        return found
    return found
