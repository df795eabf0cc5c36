"""``stmflash dfu``: program, read or inspect a chip through its ROM USB DFU (DfuSe) bootloader.

The image is loaded and checked before the device is touched; flashing goes through the
same pipeline as ``uart`` (erase plan, write, read-back verify, start), so progress, JSON
events and exit codes are the same.  Multi-target ``.dfu`` files put each target into its
own alternate setting (flash and OTP through the pipeline, option bytes through their alt).
"""

from __future__ import annotations

from typing import Any

import click

from stmflash.commands.common import (
    FILE,
    INT,
    NUMBER_HELP,
    SECONDS,
    check_image,
    complete_devices,
    crc_of_range,
    describe_result,
    find_device,
    image_input_options,
    load_image,
    option_bytes_arg,
    output_options,
    raw_needs_device,
    read_to_file,
    run_and_report,
    standalone_options,
    units_for_range,
    verify_only,
)
from stmflash.commands.ob_cli import echo_rows, ob_options, ob_request, run_ob_actions
from stmflash.numbers import parse_range


@click.command("dfu", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("file", required=False, type=FILE)
@click.option("--address", "-a", type=INT, default=None, help="Load address for raw .bin files (default: flash start). " + NUMBER_HELP)
@click.option("--leave", is_flag=True, help="Start the application afterwards (leave DFU mode).")
@click.option("--serial", "-S", metavar="SN", help="Select the device by USB serial number.")
@click.option("--path", "-p", "port_path", metavar="BUS-PORT[.PORT]", help="Select the device by USB port path.")
@click.option("--vid-pid", "-d", metavar="VID:PID", default=None, help="USB ids in DFU mode [default: 0483:df11].")
@click.option("--device", "device_name", metavar="NAME", shell_complete=complete_devices, help="Assume this device (e.g. F407) instead of recognising it.")
@click.option("--alt", metavar="NAME", help="Alternate setting for a raw FILE or --read (e.g. 'OTP Memory').")
@click.option("--erase", type=click.Choice(["auto", "all", "none"]), default="auto", show_default=True,
              help="auto: only the pages/sectors the image covers; all: whole flash; none: no erase.")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Read the flash back and compare.")
@click.option("--mass-erase", is_flag=True, help="Mass-erase the flash (alone, or before writing FILE).")
@click.option("--unprotect", is_flag=True, help="Remove readout protection first (Read Unprotect: erases the flash).")
@click.option("--read", "read_out", metavar="OUT", help="Read memory into OUT (.bin/.hex/.srec...).")
@click.option("--start", type=INT, default=None, help="Start address for --read (default: start of the alt).")
@click.option("--length", type=INT, default=None, help="Length for --read (default: to the end of the alt).")
@click.option("--protect", is_flag=True, help="Enable readout protection (RDP level 1) at the end.")
@click.option("--write-unprotect", is_flag=True, help="Remove write protection first.")
@click.option("--write-protect", metavar="UNITS", help="Write-protect sectors/pages (e.g. 0-3,7) at the end.")
@click.option("--read-option-bytes", is_flag=True, help="Print the option bytes (read through their alt).")
@click.option("--write-option-bytes", metavar="FILE|HEX", help="Write the whole option-byte area (the chip resets).")
@ob_options
@click.option("--i-understand-rdp2-is-permanent", "rdp2_ok", is_flag=True,
              help="Required for option bytes that set RDP level 2 or another permanent value "
              "(--write-option-bytes, --ob RDP=level2, or inside FILE), and for any option-byte write "
              "on a part whose layout is not in the table.")
@click.option("--enter", default="none", show_default=True, metavar="CHAIN",
              help="Bring a running application into the ROM DFU bootloader first, tried in order: "
              "1200[:PORT] (1200-baud touch on its USB CDC port), detach[:PATH|VID:PID] (DFU_DETACH "
              "to its DFU runtime interface), none. E.g. '1200,detach'; a *N suffix retries one: '1200*2,detach'.")
@click.option("--enter-timeout", type=SECONDS, default=10.0, show_default=True,
              help="Seconds to wait for the DFU device to appear on the same USB port after the entry.")
@click.option("--erase-range", metavar="START:LENGTH",
              help="Erase only these pages/sectors (unit-aligned), nothing else (DfuSe page erase).")
@image_input_options
@standalone_options
@output_options
def dfu(**kw: Any) -> None:
    """Program FILE through the ROM USB DFU bootloader (DfuSe, 0483:df11).

    \b
    Without FILE or actions: show the device, its alternate settings and memory layout.
    FILE: .hex, .srec, .elf, .bin (at --address or the flash start) or .dfu (each
    target goes to its own alternate setting).

    \b
    Examples:
      stmflash dfu firmware.hex --leave
      stmflash dfu app.bin --address 0x08004000 --serial 3677345D3236
      stmflash dfu --path 1-4.2 --read dump.bin --start 0x08000000 --length 64K
      stmflash dfu --read-option-bytes
      stmflash dfu --ob BOR_LEV=off --ob nRST_STOP=1 --ob-show
      STMFLASH_USB_SIM=F407 stmflash dfu fw.hex --leave    (virtual chip)
    """
    from stmflash.progress import make_reporter

    reporter = make_reporter(json=kw["json_"], quiet=kw["quiet"])
    run_and_report(reporter, lambda: _run(reporter, **kw), trace_to=kw["trace"])


def _run(reporter: Any, **kw: Any) -> None:
    import os

    from stmflash.errors import ImageError, UsageError

    file: str | None = kw["file"]
    if kw["serial"] and kw["port_path"]:
        raise UsageError("use either --serial or --path")
    if (kw["start"] is not None or kw["length"] is not None) and not kw["read_out"]:
        raise UsageError("--start/--length apply to --read")
    if kw["mass_erase"] and kw["erase"] == "none":
        raise UsageError("--mass-erase contradicts --erase none")
    if kw["verify_only"] and not file:
        raise UsageError("--verify-only needs FILE (the image to compare the chip with)")
    if kw["verify_only"] and (kw["mass_erase"] or kw["erase_range"] or kw["protect"] or kw["unprotect"]):
        raise UsageError("--verify-only changes nothing: it cannot be combined with erase or protection")
    if kw["erase_range"] and file:
        raise UsageError("--erase-range is an action of its own: it takes no FILE")
    for opt in ("erase_range", "crc_range"):
        if kw[opt]:
            parse_range(kw[opt])  # spelled right before the device is touched
    ob_data = option_bytes_arg(kw["write_option_bytes"]) if kw["write_option_bytes"] else None
    if kw["read_out"]:
        from stmflash.paths import check_output_file

        check_output_file(kw["read_out"], "--read")
    if kw["write_protect"]:
        from stmflash.commands.uart_cmd import _parse_units

        kw["wp_units"] = _parse_units(kw["write_protect"])
    vid_pid = None
    if kw["vid_pid"]:
        from stmflash.dfu.usb import parse_vid_pid

        vid_pid = parse_vid_pid(kw["vid_pid"])
    forced = find_device(kw["device_name"]) if kw["device_name"] else None
    kw["ob_req"] = ob_req = ob_request(kw)
    if ob_req is not None:
        ob_req.precheck(forced, rdp2_confirmed=kw["rdp2_ok"])  # exit 2 before the device is opened
        if forced is not None and ob_req.writes:
            _precheck_dfu_blocks(forced, ob_req)
    if forced is not None and kw.get("wp_units"):
        _precheck_wp_units(forced, kw["wp_units"])  # exit 2 before the device is opened
    image = None
    if file:
        if not os.path.exists(file):
            raise ImageError(f"{file}: no such file")
        if not raw_needs_device(file, kw["address"]):
            image = load_image(file, address=kw["address"], require_end=not kw["allow_missing_end"])
            if not kw["alt"]:
                check_image(image, None, kw["image_check"])

    if kw.get("enter") and kw["enter"].strip().lower() != "none":  # pin-less entry (stmflash.trigger)
        from stmflash.trigger.host import enter_dfu

        if forced is not None:
            # a part whose ROM has no USB would leave its application for a ROM that never
            # enumerates: say where it listens instead of waiting for it (AN2606 per part)
            from stmflash.rom_interfaces import no_usb_reason

            reason = no_usb_reason(forced)
            if reason:
                raise UsageError(
                    f"--enter {kw['enter']}: {reason}; wire a USB-serial adapter to one of "
                    "those and use stmflash uart (with --enter command on the application's "
                    "serial port when it carries the stmflash companion)"
                )

        reporter.phase("enter")
        seen = enter_dfu(kw["enter"], timeout=kw["enter_timeout"], log=reporter.info)
        if seen is not None:
            reporter.info(f"the application re-enumerated as the ROM DFU device at USB {seen.path or '?'}")
        if seen is not None and seen.path and not kw["serial"] and not kw["port_path"]:
            kw["port_path"] = seen.path  # the board we just rebooted, not another one in DFU
    from stmflash.dfu.link import DfuLink
    from stmflash.dfu.usb import open_one

    reporter.phase("connect")
    from stmflash.errors import LinkError

    # the descriptors identify the part: everything checkable is checked before it is opened
    try:
        usb_dev = open_one(serial=kw["serial"], path=kw["port_path"], vid_pid=vid_pid)
    except LinkError as exc:
        if "no DFU device" not in str(exc) or (kw.get("enter") or "none").strip().lower() != "none":
            raise
        from stmflash.trigger.runtime import hint

        extra = hint()
        if not extra:
            raise
        raise type(exc)(str(exc) + extra) from None
    link = DfuLink(usb_dev, device=forced)
    try:
        _precheck(link, kw, image, ob_data)
        link.open()
        _session(link, reporter, kw, image, file, ob_data)
    finally:
        link.close()


def _whole_area(link: Any, ob_data: bytes) -> int:
    """--write-option-bytes writes the alt's whole first region: its start, or UsageError."""
    from stmflash.errors import UsageError

    start, end = link.option_bytes_alt().layout.regions()[0]
    if len(ob_data) != end - start:
        raise UsageError(
            f"option bytes: {len(ob_data)} bytes given; the option-bytes alt takes the whole area "
            f"of {end - start} bytes at 0x{start:08X}"
        )
    return start


def _alt_names_block2(device: Any) -> bool:
    """Does the part's DFU option-bytes alt (device table) name its second block?"""
    from stmflash.dfu.layout import try_parse_alt
    from stmflash.dfu.link import block2_in_regions

    return any(block2_in_regions(device, try_parse_alt(text).regions())
               for text in device.dfu_alts() if "option" in text.lower())


def _precheck_wp_units(device: Any, units: list[int]) -> None:
    """``--write-protect`` on a part named by ``--device``: what the option-byte table
    cannot encode (a unit without a WRP bit, more runs than areas), or units of a second
    block the alt does not name, is refused before the device is opened (exit 2)."""
    from stmflash import option_bytes as obl
    from stmflash.dfu.link import block2_wrp_error

    if not obl.supported(device):
        return  # the link decides from what the chip says
    obl.check_wrp_units(device, units)
    if obl.split_wrp(device, units)[1] and not _alt_names_block2(device):
        raise block2_wrp_error(device)


def _precheck_dfu_blocks(device: Any, req: Any) -> None:
    """A field of the second option-byte block (F42x bank 2) on a part whose DFU option-bytes
    alt (device table) does not name that block: exit 2 before the device is opened."""
    from stmflash.dfu.link import block2_fields_error
    from stmflash.ob_ops import values_for

    if device.option_bytes2 is None or _alt_names_block2(device):
        return
    first = device.option_bytes.size
    beyond = [f.name for f in values_for(device, req, rdp2_confirmed=True) if f.offset >= first]
    if beyond:
        raise block2_fields_error(
            device, beyond, "--ob-reset-defaults" if req.reset_defaults and not req.assignments else req.where
        )


def _precheck(link: Any, kw: dict[str, Any], image: Any, ob_data: bytes | None) -> None:
    """Option bytes and protection requests against the alt and the layout, unit numbers:
    refused (exit 2) from the descriptors alone, before a request reaches the device."""

    if ob_data is not None:
        _whole_area(link, ob_data)
        link.check_option_bytes(ob_data, confirm_permanent=kw["rdp2_ok"], where="--write-option-bytes")
    if image is not None:
        _, ob_segments = _split_option_bytes(image, link)
        for address, data in ob_segments:
            link.check_option_bytes(data, address, confirm_permanent=kw["rdp2_ok"],
                                    where=f"{image.source or 'image'}: option bytes at 0x{address:08X}")
    if kw.get("wp_units") or kw["protect"]:
        link.check_protection(kw.get("wp_units"), 1 if kw["protect"] else 0)


def _split_option_bytes(image: Any, link: Any) -> tuple[Any, list[tuple[int, bytes]]]:
    """(image without option-byte data, [(address, bytes)] for the option-bytes alt).

    The address decides (the ROM's alt strings say where each memory is); the target's
    alt number only decides for data at an address no alt describes.
    """
    from stmflash.dfu.link import OPTION_BYTES
    from stmflash.image.model import Image

    ob_alt = link.find_alt(OPTION_BYTES)
    rest = Image(source=image.source, format=image.format, alt_names=dict(image.alt_names), dfu_ids=image.dfu_ids)
    obs: list[tuple[int, bytes]] = []
    for seg in image.segments:
        alt = image.alts.get(seg.address)
        name = image.alt_names.get(alt, "") if alt is not None else ""
        described = any(a.layout.contains(seg.address, len(seg.data)) for a in link.info.alts)
        is_ob = ob_alt is not None and (
            ob_alt.layout.contains(seg.address, len(seg.data))
            or (not described and alt == ob_alt.alt and "flash" not in name.lower())
        )
        if is_ob:
            obs.append((seg.address, seg.data))
        else:
            rest.add(seg.address, seg.data, alt=alt)
    return rest, obs


def _session(link: Any, reporter: Any, kw: dict[str, Any], image: Any, file: str | None, ob_data: bytes | None) -> None:
    from stmflash.errors import UsageError
    from stmflash.pipeline import program, start_address

    device = link.device
    info = link.info
    reporter.info(f"{device.name} (PID 0x{device.pid:03X}) at USB {info.path}, serial {info.serial or '?'}")
    if image is not None and image.dfu_ids is not None:
        vid, pid, _bcd = image.dfu_ids
        if (vid not in (0xFFFF, info.vid)) or (pid not in (0xFFFF, info.pid)):
            reporter.warn(f"{file}: DFU suffix is for {vid:04x}:{pid:04x}, the device is {info.vid:04x}:{info.pid:04x}")
    did = False
    result = None
    fields: dict[str, Any] = {"usb": info.to_dict()}
    ob_req = kw["ob_req"]
    if ob_req is not None:
        from stmflash.ob_ops import values_for

        # the identified chip's table, then its alt (none, not the area, a second block it
        # does not name): exit 2, nothing written
        values = values_for(device, ob_req, rdp2_confirmed=True) if ob_req.writes else {}
        link.check_ob_fields(values)
    if file:  # a raw binary goes to this chip's flash start; checked before any change
        if image is None:
            image = load_image(file, address=kw["address"], device=device, require_end=not kw["allow_missing_end"])
        if not kw["alt"]:
            check_image(image, device, kw["image_check"])

    if kw["unprotect"]:
        reporter.phase("unprotect")
        link.read_unprotect()
        reporter.info("readout protection removed (the device erased its flash and reset)")
        did = True

    if kw["write_unprotect"]:
        reporter.phase("unprotect")
        link.write_unprotect()
        reporter.info("write protection removed (the device reset)")
        did = True

    if kw["mass_erase"] and not file:
        reporter.phase("erase", device.flash_size)
        link.mass_erase()
        reporter.advance(device.flash_size)
        did = True

    if kw["erase_range"]:
        start, length = parse_range(kw["erase_range"])
        units = units_for_range(device, start, length)
        reporter.phase("erase", length)
        link.erase(units)
        reporter.advance(length)
        reporter.info(f"erased {len(units)} units, 0x{start:08X}..0x{start + length:08X}")
        fields["erased"] = {"start": f"0x{start:08X}", "length": length, "units": len(units)}
        did = True

    if kw["verify_only"] and file:
        fields.update(verify_only(link, reporter, image, file))
        did = True
    if kw["crc_range"]:
        start, length = parse_range(kw["crc_range"])
        flash_alt = link.find_alt("Internal Flash")
        if not any(a.layout.contains(start, length) for a in link.info.alts):
            where = flash_alt.layout.describe() if flash_alt is not None else "no memory"
            raise UsageError(f"--crc 0x{start:08X}+{length} is outside the device's memories ({where})")
        fields["crc"] = crc_of_range(link, reporter, start, length)
        did = True

    if file and not kw["verify_only"]:
        if kw["alt"]:
            alt = link.select(kw["alt"])
            if not all(alt.layout.contains(s.address, len(s.data)) for s in image.segments):
                raise UsageError(f"{file}: data lies outside alternate setting {alt.name!r} ({alt.layout.describe()})")
        image, ob_segments = _split_option_bytes(image, link)
        leave_after = (kw["leave"] and not ob_segments and not ob_data and not kw["read_out"]
                       and not kw["protect"] and not kw.get("wp_units") and ob_req is None)
        if image:
            result = program(
                link,
                image,
                erase="all" if kw["mass_erase"] else kw["erase"],
                verify=kw["verify"],
                after="go" if leave_after else "stay",
                reporter=reporter,
            )
        for address, data in ob_segments:
            reporter.phase("options")
            if not link.write_option_bytes(data, address, confirm_permanent=kw["rdp2_ok"]):
                reporter.info(f"option bytes at 0x{address:08X} written: the device is silent now (RDP level 2)")
                kw["silent"] = True
                break
            if kw["verify"]:
                _verify_ob(link, address, data)
            reporter.info(f"option bytes at 0x{address:08X} written ({len(data)} bytes)")
        did = True

    if ob_data is not None:
        reporter.phase("options")
        start = _whole_area(link, ob_data)
        if link.write_option_bytes(ob_data, confirm_permanent=kw["rdp2_ok"]):
            _verify_ob(link, start, ob_data)
            reporter.info("option bytes written and verified (the device reset)")
        else:
            reporter.info("option bytes written: the device is silent now (RDP level 2)")
            kw["silent"] = True
        did = True
    if kw.get("silent"):
        if kw["read_out"] or kw["read_option_bytes"] or kw.get("wp_units") or kw["protect"] or kw["leave"]:
            reporter.warn("the device no longer answers (RDP level 2): the remaining actions were skipped")
        kw.update(read_out=None, read_option_bytes=False, wp_units=None, protect=False, leave=False)

    if kw["read_out"]:
        start, length = _read_range(kw, link)
        read_to_file(link, reporter, kw["read_out"], start, length)
        fields["read"] = {"start": start, "length": length, "file": kw["read_out"]}
        did = True

    ob_read: list[tuple[int, bytes]] | None = None
    if kw["read_option_bytes"]:
        ob_read = link.read_option_bytes()
        fields["option_bytes"] = [{"address": a, "data": d.hex()} for a, d in ob_read]
        did = True

    ob_did, _ = run_ob_actions(link, ob_req, kw, reporter, fields, part="write")
    did = did or ob_did

    # protection last, after the flash verified: RDP would refuse the read-back
    if kw.get("wp_units"):
        reporter.phase("protect")
        link.write_protect(kw["wp_units"])
        reporter.info("write protection set on units " + ",".join(str(u) for u in kw["wp_units"]))
        did = True
    # --ob-show decodes what the command leaves (write protection included), before RDP
    show_did, ob_rows = run_ob_actions(link, ob_req, kw, reporter, fields, part="show")
    did = did or show_did
    if kw["protect"]:
        reporter.phase("protect")
        link.readout_protect()
        reporter.info("readout protection enabled (RDP level 1)")
        did = True

    if kw["leave"] and kw["protect"]:
        reporter.phase("leave")  # SET_ADDRESS is refused now: leave from the flash start
        link.reset()
        fields["left"] = f"0x{device.flash_start:08X}"
        if result is not None:
            result.started = "leave"
    elif kw["leave"] and (result is None or result.started != "go"):
        target = kw["address"] if kw["address"] is not None else device.flash_start
        if image is not None and image:
            target = start_address(image, device)
        reporter.phase("leave")
        link.start(target)
        fields["left"] = f"0x{target:08X}"
        did = True
    reporter.close()

    if result is not None:
        fields.update(result.to_dict())
    if not did:
        fields["layout"] = [a.layout.to_dict() for a in info.alts]
    fields["device"] = device.name
    reporter.result(ok=True, **fields)
    if kw["json_"]:
        return
    echo_rows(ob_rows)
    if ob_read is not None:
        for a, d in ob_read:
            click.echo(f"option bytes @0x{a:08X}: {d.hex(' ')}")
    if result is not None:
        if not kw["quiet"]:
            click.echo(describe_result(result), err=True)
    elif not did:
        _print_info(link)
    elif not kw["quiet"] and ob_read is None and ob_rows is None:
        click.echo("done", err=True)


def _verify_ob(link: Any, address: int, data: bytes) -> None:
    from stmflash.errors import VerifyError

    back = dict(link.read_option_bytes())
    for start, blob in back.items():
        if start <= address < start + len(blob):
            got = blob[address - start : address - start + len(data)]
            if got != data and got != _ob_encoded(link, address, data):
                raise VerifyError(f"option bytes at 0x{address:08X} read back as {got.hex()} after writing {data.hex()}")
            return


def _read_range(kw: dict[str, Any], link: Any) -> tuple[int, int]:
    from stmflash.errors import UsageError

    alt = link.select(kw["alt"]) if kw["alt"] else link.find_alt("Internal Flash")
    regions = alt.layout.regions() if alt is not None else []
    start = kw["start"]
    if start is None:
        if not regions:
            raise UsageError("--read needs --start (the alt describes no memory)")
        start = regions[0][0]
    length = kw["length"]
    if length is None:
        region = next(((a, b) for a, b in regions if a <= start < b), None)
        if region is None:
            raise UsageError(f"--read at 0x{start:08X} outside the alt's memory needs --length")
        length = region[1] - start
    if length <= 0:
        raise UsageError("--length must be positive")
    if alt is not None and regions and not alt.layout.contains(start, length):
        inside = next(((a, b) for a, b in regions if a <= start < b), None)
        if inside is not None:
            raise UsageError(
                f"--read 0x{start:08X}+{length} runs past the end of {alt.name!r} "
                f"(0x{inside[0]:08X}..0x{inside[1]:08X}): at most {inside[1] - start} bytes from 0x{start:08X}"
            )
        raise UsageError(f"--read 0x{start:08X}+{length} is outside {alt.name!r} ({alt.layout.describe()})")
    return start, length


def _print_info(link: Any) -> None:
    info, device = link.info, link.device
    lines = [
        f"device      {device.name} (PID 0x{device.pid:03X})" + (" - not in the device table" if device.generic else ""),
        f"usb         {info.vid:04x}:{info.pid:04x} at {info.path}, bcdDevice 0x{info.bcd_device:04X}, "
        f"serial {info.serial or '?'}",
        f"product     {info.manufacturer} {info.product}".rstrip(),
        f"transfer    {info.transfer_size} bytes per request (using {link.max_write}), DFU 0x{info.bcd_dfu:04X}",
    ]
    for a in info.alts:
        lines.append(f"alt {a.alt}       {a.name}: {a.layout.describe() or a.layout.text}")
    lines.append("protection  " + _protection(link))
    click.echo("\n".join(lines))


def _protection(link: Any) -> str:
    """Probe with a 4-byte read of the flash: under RDP the ROM answers errVENDOR."""
    from stmflash.errors import ProtectionError, StmflashError

    try:
        link.read(link.device.flash_start, 4)
    except ProtectionError:
        return "readout protected: use --unprotect (erases the flash)"
    except StmflashError as exc:
        return f"unknown ({exc})"
    return "none detected (flash readable)"


__all__ = ["dfu"]


def _ob_encoded(link: Any, address: int, data: bytes) -> bytes | None:
    """``data`` as the chip stores it: the flash interface rewrites the complement bytes,
    so a whole option-byte area reads back in the family encoding, not as sent."""
    from stmflash import option_bytes as obl
    from stmflash.errors import UsageError

    dev = link.device
    alt = link.option_bytes_alt()
    first = alt.layout.regions()[0][0]
    size = dev.option_bytes.size if dev.option_bytes is not None else len(data)
    virtual = bool(getattr(link.info, "virtual", False))
    at_area = address == first and (virtual or (dev.option_bytes is not None and dev.option_bytes.start == first))
    if not at_area or len(data) < size:
        return None
    try:
        return obl.as_stored(dev, data[:size]) + data[size:]
    except UsageError:
        return None
