"""Finding DFU devices: real ones through libusb, virtual ones when STMFLASH_USB_SIM is set.

libusb comes from the ``libusb-package`` wheel when it is installed (no system library
needed, also on Windows), else from the system.  Devices are told apart by serial number
or by USB port path (``BUS-PORT[.PORT...]``, as dfu-util's ``-p`` and ``lsusb -t`` show
it): older ROMs report the serial "STM32" on every chip, so on a production line the port
path is the stable name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from stmflash.dfu.layout import AltLayout, try_parse_alt
from stmflash.errors import LinkError, UsageError

ST_VID = 0x0483
DFU_PID = 0xDF11
DFU_CLASS, DFU_SUBCLASS = 0xFE, 0x01
FUNC_DESC_TYPE = 0x21
UDEV_HINT = "on Linux install udev/50-stmflash.rules (see README)"


@dataclass
class DfuAlt:
    alt: int
    interface: int
    name: str
    layout: AltLayout


@dataclass
class DfuDeviceInfo:
    """One DFU-mode device as enumerated (the pyusb object stays open for the link)."""

    dev: Any
    vid: int
    pid: int
    bcd_device: int
    path: str
    serial: str
    product: str
    manufacturer: str
    alts: list[DfuAlt] = field(default_factory=list)
    transfer_size: int = 0
    attributes: int = 0
    detach_timeout: int = 0
    bcd_dfu: int = 0
    virtual: bool = False
    backend: Any = None  # the pyusb backend that found it (to find it again after a reset)

    @property
    def label(self) -> str:
        return f"{self.vid:04x}:{self.pid:04x} at {self.path} (serial {self.serial or '?'})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "vid": f"0x{self.vid:04X}",
            "pid": f"0x{self.pid:04X}",
            "path": self.path,
            "serial": self.serial,
            "bcd_device": f"0x{self.bcd_device:04X}",
            "product": self.product,
            "manufacturer": self.manufacturer,
            "transfer_size": self.transfer_size,
            "virtual": self.virtual,
            "alts": [{"alt": a.alt, "name": a.name, "layout": a.layout.text} for a in self.alts],
        }


def sim_spec() -> str | None:
    value = os.environ.get("STMFLASH_USB_SIM", "").strip()
    return value or None


def get_backend() -> Any:
    """The pyusb backend to use: the virtual bus, libusb-package's libusb, or the system's."""
    spec = sim_spec()
    if spec is not None:
        from stmflash.sim.usb_backend import bus_from_env

        return bus_from_env().backend
    try:
        import libusb_package

        backend = libusb_package.get_libusb1_backend()
        if backend is not None:
            return backend
    except Exception:  # noqa: BLE001 - an "empty" libusb-package install: use the system's
        pass
    try:
        import usb.backend.libusb1

        backend = usb.backend.libusb1.get_backend()
    except Exception:  # noqa: BLE001
        backend = None
    if backend is None:
        raise LinkError(
            "no libusb found: install libusb-package (pip install libusb-package) or the system libusb-1.0"
        )
    return backend


def port_path(dev: Any) -> str:
    ports = getattr(dev, "port_numbers", None) or ()
    bus = getattr(dev, "bus", None)
    if not ports:
        return f"{bus}-?" if bus is not None else "?"
    return f"{bus}-" + ".".join(str(p) for p in ports)


def _string(dev: Any, index: int) -> str:
    if not index:
        return ""
    import usb.core
    import usb.util

    try:
        s = usb.util.get_string(dev, index)
    except (usb.core.USBError, ValueError, NotImplementedError):
        return ""
    return (s or "").rstrip("\x00")


def _functional(extra: bytes) -> tuple[int, int, int, int] | None:
    """(bmAttributes, wDetachTimeOut, wTransferSize, bcdDFU) from a descriptor blob."""
    i = 0
    while i + 2 <= len(extra):
        length, dtype = extra[i], extra[i + 1]
        if length < 2:
            break
        if dtype == FUNC_DESC_TYPE and length >= 7:
            d = extra[i : i + length]
            attrs = d[2]
            detach = d[3] | d[4] << 8
            xfer = d[5] | d[6] << 8
            bcd = (d[7] | d[8] << 8) if length >= 9 else 0x0100
            return attrs, detach, xfer, bcd
        i += length
    return None


def describe(dev: Any, *, virtual: bool = False, tries: int = 4) -> DfuDeviceInfo | None:
    """Read the descriptors of a device; None when it has no DFU-mode interface.

    The alt strings, the functional descriptor and the product string decide the memory
    layout and the device: they are read until two readings agree (a glitch on a hub must
    not turn one part into another), else LinkError.
    """
    seen: list[tuple[Any, ...]] = []
    for _ in range(tries):
        info = _describe_once(dev, virtual=virtual)
        key = None if info is None else (
            tuple((a.alt, a.interface, a.name, a.layout.text) for a in info.alts),
            info.transfer_size, info.attributes, info.bcd_dfu, info.product, info.serial, info.bcd_device,
        )
        if key in seen:
            return info
        seen.append(key)
    raise LinkError(
        f"the DFU device at {port_path(dev)} gives different descriptors on every reading; "
        "check the cable and the hub"
    )


def _describe_once(dev: Any, *, virtual: bool = False) -> DfuDeviceInfo | None:
    import usb.core

    try:
        cfg = dev[0]
    except (usb.core.USBError, IndexError):
        return None
    alts: list[DfuAlt] = []
    func = _functional(bytes(getattr(cfg, "extra_descriptors", b"") or b""))
    for intf in cfg:
        if intf.bInterfaceClass != DFU_CLASS or intf.bInterfaceSubClass != DFU_SUBCLASS:
            continue
        if intf.bInterfaceProtocol == 1:
            continue  # run-time DFU interface of an application, not the bootloader
        name = _string(dev, intf.iInterface)
        alts.append(DfuAlt(intf.bAlternateSetting, intf.bInterfaceNumber, name.strip().lstrip("@").split("/")[0].strip(), try_parse_alt(name)))
        if func is None:
            func = _functional(bytes(getattr(intf, "extra_descriptors", b"") or b""))
    if not alts:
        return None
    if func is None:  # not among the descriptors: ask for it (dfu-util does the same)
        try:
            raw = dev.ctrl_transfer(0x80, 6, FUNC_DESC_TYPE << 8, 0, 9)
            func = _functional(bytes(raw))
        except (usb.core.USBError, NotImplementedError):
            func = None
    attrs, detach, xfer, bcd = func if func else (0x0B, 255, 2048, 0x011A)
    return DfuDeviceInfo(
        dev=dev,
        vid=dev.idVendor,
        pid=dev.idProduct,
        bcd_device=dev.bcdDevice,
        path=port_path(dev),
        serial=_string(dev, dev.iSerialNumber),
        product=_string(dev, dev.iProduct),
        manufacturer=_string(dev, dev.iManufacturer),
        alts=alts,
        transfer_size=xfer,
        attributes=attrs,
        detach_timeout=detach,
        bcd_dfu=bcd,
        virtual=virtual,
    )


_VIDPID_RE = re.compile(r"^\s*([0-9a-fA-F]{1,4})\s*:\s*([0-9a-fA-F]{1,4})\s*$")


def parse_vid_pid(text: str) -> tuple[int, int]:
    m = _VIDPID_RE.match(text or "")
    if not m:
        raise UsageError(f"bad USB id {text!r}: expected VID:PID in hex, e.g. 0483:df11")
    return int(m.group(1), 16), int(m.group(2), 16)


def find_devices(
    *,
    serial: str | None = None,
    path: str | None = None,
    vid_pid: tuple[int, int] | None = (ST_VID, DFU_PID),
    backend: Any = None,
) -> list[DfuDeviceInfo]:
    """Every DFU-mode device matching the filters (virtual ones when STMFLASH_USB_SIM is set)."""
    import usb.core

    be = backend if backend is not None else get_backend()
    virtual = getattr(be, "virtual", False)
    kwargs: dict[str, Any] = {}
    if vid_pid is not None:
        kwargs = {"idVendor": vid_pid[0], "idProduct": vid_pid[1]}
    try:
        devs = list(usb.core.find(find_all=True, backend=be, **kwargs))
    except usb.core.NoBackendError as exc:  # pragma: no cover - get_backend raises first
        raise LinkError(f"no USB backend: {exc}") from None
    except usb.core.USBError as exc:
        raise LinkError(f"listing USB devices failed: {exc}") from None
    out = []
    for dev in devs:
        if path is not None and port_path(dev) != path.strip():
            continue
        info = describe(dev, virtual=virtual)
        if info is None:
            continue
        if serial is not None and info.serial != serial:
            continue
        info.backend = be
        out.append(info)
    return out


def open_one(
    *, serial: str | None = None, path: str | None = None, vid_pid: tuple[int, int] | None = None
) -> DfuDeviceInfo:
    """The one device the filters select; exit 3 when none, exit 2 when ambiguous."""
    ids = vid_pid or (ST_VID, DFU_PID)
    found = find_devices(serial=serial, path=path, vid_pid=ids)
    if not found:
        filt = "".join(
            f" {k} {v}" for k, v in (("with serial", serial), ("at port path", path)) if v is not None
        )
        raise LinkError(
            f"no DFU device {ids[0]:04x}:{ids[1]:04x}{filt} found; is the chip in its bootloader "
            f"(BOOT0 high, reset)? {UDEV_HINT}"
        )
    if len(found) > 1:
        listing = "; ".join(f"{d.path} serial {d.serial or '?'}" for d in found)
        raise UsageError(
            f"{len(found)} DFU devices found ({listing}); choose one with --serial or --path"
        )
    return found[0]
