"""``stmflash uart``: program, read, erase, protect or inspect a chip over its ROM USART bootloader.

The image is loaded and checked before the chip is touched (bad input is exit 2 without a
single byte on the wire); everything after identification goes through the shared
pipeline, so verification, erase planning and reporting are the same as for DFU.
"""

from __future__ import annotations

from typing import Any

import click

from stmflash.commands.common import (
    FILE,
    INT,
    SECONDS,
    SIZE,
    check_image,
    check_port_argument,
    complete_ports,
    crc_of_range,
    describe_result,
    image_input_options,
    load_image,
    option_bytes_arg,
    output_options,
    parse_int,
    parse_range,
    program_options,
    raw_needs_device,
    read_to_file,
    run_and_report,
    standalone_options,
    units_for_range,
    verify_only,
)
from stmflash.commands.ob_cli import device_hint, echo_rows, ob_options, ob_request, run_ob_actions


def _parse_units(text: str) -> list[int]:
    from stmflash.errors import UsageError

    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        a, sep, b = part.partition("-")
        try:
            lo = int(a, 0)
            hi = int(b, 0) if sep else lo
        except ValueError:
            raise UsageError(f"bad unit list {text!r} (e.g. 0-3,7)") from None
        if hi < lo:
            raise UsageError(f"bad unit range {part!r} in {text!r}")
        out.extend(range(lo, hi + 1))
    if not out:
        raise UsageError(f"empty unit list {text!r}")
    return sorted(set(out))


def _print_info(info: Any, device: Any) -> None:
    from stmflash.uart.protocol import COMMAND_NAMES

    d = info.to_dict()
    lines = [
        f"device      {device.name} (PID {d['pid']})",
        f"bootloader  ID {d['bootloader_id'] or 'unknown'}, protocol {d['protocol']}",
        f"flash       {device.flash_size // 1024} KiB at 0x{device.flash_start:08X} "
        f"({len(device.erase_units)} {'pages' if device.uniform_pages else 'sectors'}, "
        f"{'Extended Erase 0x44' if 0x44 in info.commands else 'Erase 0x43'})",
        f"UID         {d['uid'] or 'unknown'}",
        "protection  " + ("readout protected (RDP level 1): use --unprotect" if info.read_protected else "none detected"),
        "commands    " + ", ".join(COMMAND_NAMES.get(c, f"0x{c:02X}") for c in info.commands),
    ]
    for note in info.notes:
        lines.append(f"note        {note}")
    click.echo("\n".join(lines))


@click.command("uart", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("port", required=False, shell_complete=complete_ports)
@click.argument("file", required=False, type=FILE)
@click.option("--profile", default=None, metavar="NAME",
              help="Settings (port, baud, enter) from [profile.NAME] of ~/.config/stmflash/config.toml.")
@program_options
@click.option("--baud", "-b", type=click.IntRange(min=1), default=None, help="Line rate [default: 115200].")
@click.option(
    "--parity", type=click.Choice(["even", "none"]), default="even", show_default=True,
    help="AN3155 uses even parity; 'none' for BlueNRG-like ROMs and 8N1-only adapters.",
)
@click.option(
    "--enter", default=None, metavar="CHAIN",
    help="How to enter the bootloader, tried in order: none, pins:ENTRY[:EXIT] (stm32flash -i "
    "syntax, e.g. pins:rts,dtr,-dtr:-rts,dtr,-dtr), e.g. 'pins:...,none'; command (the stmflash "
    "trigger to a running application), 1200[:PORT], detach[:PATH], e.g. 'command,pins:...'. "
    "A *N suffix tries one strategy N times before falling back: 'pins:...*3,none'.",
)
@click.option("--app-baud", type=click.IntRange(min=1), default=None, metavar="N",
              help="--enter command: the application's baud rate (8N1) [default: 115200].")
@click.option("--trigger-key", default=None, metavar="HEX",
              help="--enter command: key the firmware companion was built with [default: none].")
@click.option("--trigger-timeout", type=SECONDS, default=None, metavar="S",
              help="--enter command: seconds to wait for the application's acknowledgement [default: 1].")
@click.option("--invert", multiple=True, type=click.Choice(["dtr", "rts"]), help="Invert a line in pin sequences.")
@click.option("--read", "read_out", metavar="OUT", help="Read memory into OUT (.bin/.hex/.srec...).")
@click.option("--start", type=INT, default=None, help="Start address for --read.")
@click.option("--length", type=SIZE, default=None, help="Length for --read (default: to the end of flash).")
@click.option("--range", "range_", metavar="START:LENGTH", help="Range for --read (or START..END).")
@click.option("--erase-only", is_flag=True, help="Only erase (--erase all or --erase START:LENGTH).")
@click.option("--protect", is_flag=True, help="Enable readout protection (RDP level 1) at the end.")
@click.option("--protect-level", type=click.IntRange(1, 2), default=None, metavar="1|2",
              help="Readout protection level to set at the end (2 is permanent: needs --i-understand-rdp2-is-permanent).")
@click.option("--i-understand-rdp2-is-permanent", "rdp2_ok", is_flag=True,
              help="Required for RDP level 2 (--protect-level 2, or option bytes that set it).")
@click.option("--unprotect", is_flag=True, help="Remove readout protection first (mass-erases the flash).")
@click.option("--write-unprotect", is_flag=True, help="Remove write protection first.")
@click.option("--write-protect", metavar="UNITS",
              help="Write-protect these pages/sectors (e.g. 0-3,7) at the end; where one option bit "
              "covers several units, their whole group is protected.")
@click.option("--read-option-bytes", is_flag=True, help="Print the option bytes.")
@click.option("--write-option-bytes", metavar="FILE|HEX",
              help="Write the option bytes (the chip resets); needs --device or a sim://NAME port (so "
              "they can be decoded before the port is opened) or --i-understand-rdp2-is-permanent.")
@ob_options
@click.option("--device", "device_name", metavar="NAME",
              help="The part you expect (e.g. F407): option bytes and option-field requests are "
              "checked against it before the port is opened, and any other chip is refused before "
              "anything is written.")
@click.option("--timeout", type=SECONDS, default=0.3, show_default=True,
              help="Base answer timeout (s).")
@click.option("--retries", type=click.IntRange(min=0, max=100), default=6, show_default=True,
              help="Retries per command on a noisy line.")
@click.option("--no-pipeline", is_flag=True, help="Wait for every ACK (ROMs/adapters that lose bytes sent early).")
@image_input_options
@standalone_options
@click.option("--stub", "stub_mode", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Program through the RAM flasher stub (higher baud, frames in flight, on-chip CRC, "
              "unchanged units skipped); auto: where the family has one and it pays off.")
@click.option("--stub-baud", type=int, default=None, metavar="N",
              help="The stub's line rate [default: the highest of 2000000, 1000000, 921600, 500000, "
              "460800, 230400 that port and the chip's clock (BRR >= 32) take].")
@click.option("--verify-rom", is_flag=True,
              help="After programming through the stub, also read the flash back through the ROM.")
@output_options
def uart(**kw: Any) -> None:
    """Program FILE into the chip on PORT through its ROM USART bootloader (AN3155).

    \b
    PORT: /dev/ttyUSB0, COM3, rfc2217://host:port, socket://host:port, sim://F407 ...
    Without PORT: STMFLASH_PORT, the config file's profile, or the only USB serial adapter.
    Without FILE and actions: show what the chip is.

    \b
    Examples:
      stmflash uart /dev/ttyUSB0 firmware.hex
      stmflash uart /dev/ttyUSB0 app.bin --address 0x08004000 --after stay
      stmflash uart /dev/ttyUSB0 fw.elf --enter pins:rts,dtr,-dtr:-rts,dtr,-dtr
      stmflash uart /dev/ttyUSB0 --read dump.bin --range 0x08000000:64K
      stmflash uart "sim://F407" fw.hex --json
      stmflash uart /dev/ttyUSB0 --ob nBOOT_SEL=0 --ob BORR_LEV=2 --ob-show
    """
    from stmflash.progress import make_reporter

    reporter = make_reporter(json=kw["json_"], quiet=kw["quiet"])
    run_and_report(reporter, lambda: _run(reporter, **kw), trace_to=kw["trace"])


def _run(reporter: Any, **kw: Any) -> None:
    from stmflash import config
    from stmflash.errors import UsageError

    settings = config.profile(kw["profile"])
    port: str | None = kw["port"]
    file: str | None = kw["file"]
    if port is not None and file is None and _is_image_path(port):
        port, file = None, port  # "stmflash uart fw.hex": the port comes from the defaults
    if port is None:
        try:
            port, source = config.default_port(settings)
        except UsageError as exc:
            if file is not None and kw["port"] == file:
                raise UsageError(f"{exc}; {file} looks like a firmware image: stmflash uart PORT {file}") from None
            raise
        reporter.info(f"port {port} (from {source})")
    kw["port"] = port
    if kw["baud"] is None:
        kw["baud"] = settings.get("baud", 115200)
    if kw["enter"] is None:
        kw["enter"] = settings.get("enter", "none")
    erase: str = kw["erase"]
    json_mode: bool = kw["json_"]

    # ---- check the request before touching the chip -----------------------------------------
    if kw["erase_only"] and file:
        raise UsageError("--erase-only takes no FILE")
    erase_range: tuple[int, int] | None = None
    if erase not in ("auto", "all", "none"):
        if not kw["erase_only"]:
            raise UsageError(f"--erase {erase!r}: a range is only valid with --erase-only")
        erase_range = parse_range(erase)
    if kw["erase_only"] and erase in ("auto", "none"):
        raise UsageError("--erase-only needs --erase all or --erase START:LENGTH")
    if kw["verify_only"] and not file:
        raise UsageError("--verify-only needs FILE (the image to compare the chip with)")
    if kw["verify_only"] and (kw["erase_only"] or kw["protect"] or kw["unprotect"] or kw["write_option_bytes"]):
        raise UsageError("--verify-only changes nothing: it cannot be combined with erase or protection")
    if kw["crc_range"]:
        parse_range(kw["crc_range"])  # spelled right before connecting; the map is checked after
    if (kw["start"] is not None or kw["length"] is not None or kw["range_"]) and not kw["read_out"]:
        raise UsageError("--start/--length/--range apply to --read")
    if kw["baud"] <= 0:
        raise UsageError(f"bad --baud {kw['baud']}")
    check_port_argument(port)
    kw["go_only"] = kw["after"] if (kw["after"] in ("go", "reset") and (not file or kw["verify_only"])) else None
    kw["after"] = kw["after"] or "go"
    if kw["stub_baud"] is not None and kw["stub_baud"] <= 0:
        raise UsageError(f"bad --stub-baud {kw['stub_baud']}")
    wp_units = _parse_units(kw["write_protect"]) if kw["write_protect"] else None
    if kw["protect_level"] is not None:
        kw["protect"] = True
    kw["rdp_level"] = kw["protect_level"] or 1
    if kw["rdp_level"] == 2 and not kw["rdp2_ok"]:
        raise UsageError(
            "--protect-level 2 makes the chip permanently unreadable and disables its bootloader "
            "and debug port for good; add --i-understand-rdp2-is-permanent to really do it"
        )
    ob_data = option_bytes_arg(kw["write_option_bytes"]) if kw["write_option_bytes"] else None
    kw["ob_req"] = ob_req = ob_request(kw)
    kw["expected_device"] = expected = device_hint(port, kw["device_name"])
    if ob_data is not None:
        from stmflash.safety import check_option_bytes_early

        check_option_bytes_early(expected, ob_data, rdp2_confirmed=kw["rdp2_ok"], where="--write-option-bytes")
    if wp_units and expected is not None:
        from stmflash import option_bytes as obl

        if obl.supported(expected):  # what the table cannot encode: exit 2 before the port is opened
            obl.check_wrp_units(expected, wp_units)
    if ob_req is not None:
        ob_req.precheck(expected, rdp2_confirmed=kw["rdp2_ok"])  # exit 2 before the port is opened
    if kw["read_out"]:
        from stmflash.paths import check_output_file

        check_output_file(kw["read_out"], "--read")
    image = None
    if file:
        if not raw_needs_device(file, kw["address"]):
            image = load_image(file, address=kw["address"], require_end=not kw["allow_missing_end"])
            check_image(image, None, kw["image_check"])
        else:
            import os

            from stmflash.errors import ImageError

            if not os.path.exists(file):
                raise ImageError(f"{file}: no such file")

    # ---- connect ------------------------------------------------------------------------------
    from stmflash.trigger.host import set_defaults  # --enter command settings
    from stmflash.uart.link import connect

    set_defaults(app_baud=kw.get("app_baud"), key=kw.get("trigger_key"), timeout=kw.get("trigger_timeout"),
                 device=expected)
    reporter.phase("connect")
    from stmflash import trace

    ser = None
    if trace.current() is not None:  # --trace: the port opened here, wrapped, handed over
        from stmflash.ports import open_port

        ser = trace.wrap(open_port(port, baud=kw["baud"], parity=kw["parity"], timeout=kw["timeout"]))
    link = connect(
        port,
        ser=ser,
        baud=kw["baud"],
        parity=kw["parity"],
        enter=kw["enter"],
        invert=kw["invert"],
        timeout=kw["timeout"],
        retries=kw["retries"],
        log=None,
        pipeline=not kw["no_pipeline"],
    )
    ack = getattr(link.entry, "ack", None)
    if ack is not None:
        reporter.info(f"trigger acknowledged by the application on {ack.port} at {ack.app_baud} 8N1 "
                      f"in {ack.seconds * 1000:.0f} ms; bootloader entered")
    try:
        _session(link, reporter, kw, image, file, erase_range, wp_units, ob_data, json_mode)
    finally:
        link.close()


def _is_image_path(arg: str) -> bool:
    """An existing firmware file given where the port goes."""
    import os

    from stmflash.image.loaders import EXTENSIONS

    return "://" not in arg and os.path.isfile(arg) and os.path.splitext(arg)[1].lower() in EXTENSIONS


def _reidentify(link: Any) -> None:
    link.bl.identify()
    link.info = link.bl.info
    link.device = link.bl.device
    link.uid = link.info.uid


def _session(
    link: Any,
    reporter: Any,
    kw: dict[str, Any],
    image: Any,
    file: str | None,
    erase_range: tuple[int, int] | None,
    wp_units: list[int] | None,
    ob_data: bytes | None,
    json_mode: bool,
) -> None:
    from stmflash.errors import UsageError
    from stmflash.pipeline import program

    info = link.info
    device = link.device
    reporter.info(f"{device.name} (PID 0x{device.pid:03X}) on {link.port_name}")
    ob_req = kw["ob_req"]
    expected = kw["expected_device"]
    if kw["device_name"] and expected is not None and expected.pid != device.pid:
        raise UsageError(
            f"the chip on {link.port_name} is {device.name} (PID 0x{device.pid:03X}), "
            f"not {expected.name} as given with --device; nothing was written"
        )
    if ob_data is not None:
        link.check_option_bytes(ob_data, confirm_permanent=kw["rdp2_ok"])
    if ob_req is not None and ob_req.writes:
        from stmflash.ob_ops import values_for

        values_for(device, ob_req, rdp2_confirmed=True)  # the identified chip's table: exit 2, nothing written
    did = False
    if file:  # a raw binary goes to this chip's flash start; checked before any change
        if image is None:
            image = load_image(file, address=kw["address"], device=device, require_end=not kw["allow_missing_end"])
        check_image(image, device, kw["image_check"])
    if ob_data is not None:
        _check_option_bytes(device, ob_data, reporter)

    if kw["unprotect"]:
        reporter.phase("unprotect")
        link.bl.readout_unprotect()
        _reidentify(link)
        device, info = link.device, link.info
        if info.read_protected:  # the ACKs are not the proof: the identified chip still refuses Read Memory
            from stmflash.errors import ProtectionError

            raise ProtectionError(f"after Readout Unprotect the chip on {link.port_name} is still read-protected")
        reporter.info("readout protection removed (flash mass-erased)")
        did = True
    if kw["write_unprotect"]:
        if info.read_protected:
            raise _rdp_error(link)
        reporter.phase("unprotect")
        link.write_unprotect()
        reporter.info("write protection removed")
        did = True

    wants_memory = bool(file or kw["erase_only"] or kw["read_out"] or wp_units or ob_data or kw["read_option_bytes"]
                        or ob_req is not None)
    if info.read_protected and wants_memory:
        raise _rdp_error(link)
    if wp_units or (kw["rdp_level"] == 2 and kw["protect"]):
        # refuse a protection the table cannot encode before anything is flashed
        from stmflash import option_bytes as obl

        if wp_units:
            obl.check_wrp_units(device, wp_units)
        if kw["protect"] and kw["rdp_level"] == 2:
            obl.set_rdp(device, obl.default_ob(device), 2)

    result = None
    extra: dict[str, Any] = {}
    if kw["verify_only"]:
        extra.update(verify_only(link, reporter, image, file or ""))
        did = True
    if kw["crc_range"]:
        start, length = parse_range(kw["crc_range"])
        _check_in_memory_map(device, start, length)
        extra["crc"] = crc_of_range(link, reporter, start, length)
        did = True
    if kw["erase_only"]:
        if erase_range is None:
            reporter.phase("erase", device.flash_size)
            link.mass_erase()
            reporter.advance(device.flash_size)
            reporter.info("flash erased")
        else:
            start, length = erase_range
            end = start + length
            units = units_for_range(device, start, length)
            reporter.phase("erase", length)
            link.erase(units)
            reporter.advance(length)
            reporter.info(f"erased {len(units)} units, 0x{start:08X}..0x{end:08X}")
        did = True

    stub_info: dict[str, Any] = {"path": "rom"}
    extras = bool(wp_units or ob_data or kw["protect"] or kw["read_out"] or ob_req)
    if file and not kw["verify_only"]:  # (a raw binary was loaded for this chip above)
        stub = _stub_for(link, kw, image, reporter)
        # extras and --verify-rom need the ROM afterwards: the stub leaves into it
        back_to_rom = stub is not None and (extras or kw["verify_rom"])
        after = "stay" if (extras or back_to_rom) else kw["after"]
        result = program(stub or link, image, erase=kw["erase"], verify=kw["verify"], after=after,
                         reporter=reporter)
        if stub is not None:
            stub_info = {"path": "stub", "stub_baud": stub.baud, "stub_resent": stub.session.resent}
            if after == "stay":
                stub.leave_to_rom(sync=back_to_rom)
        if kw["verify_rom"]:
            from stmflash.pipeline import split_image, verify_image

            reporter.phase("verify")
            verify_image(link, split_image(image, device)[0].aligned(device.write_align, fill=device.erased), reporter)
            stub_info["verified_rom"] = True
            if not extras and kw["after"] != "stay":
                _after(link, kw, image, device)
        did = True

    if kw["read_out"]:
        start, length = _read_range(kw, device)
        read_to_file(link, reporter, kw["read_out"], start, length)
        did = True

    ob_read: bytes | None = None
    ob_read2: bytes | None = None  # the second block (F42x bank 2 at 0x1FFEC000)
    if ob_data is not None:
        reporter.phase("options")
        link.write_option_bytes(ob_data, confirm_permanent=kw["rdp2_ok"])
        reporter.info("option bytes written")
        did = True
    if kw["read_option_bytes"]:
        ob_read = link.read_option_bytes()
        if device.option_bytes2 is not None:
            ob_read2 = link.bl.read(device.option_bytes2.start, device.option_bytes2.size)
        did = True
    ob_fields_out: dict[str, Any] = {}
    ob_did, _ = run_ob_actions(link, ob_req, kw, reporter, ob_fields_out, part="write")
    did = did or ob_did

    if wp_units:
        reporter.phase("protect")
        link.write_protect(wp_units)
        reporter.info("write protection set on " + ",".join(str(u) for u in wp_units))
        did = True
    # --ob-show decodes what the command leaves (write protection included), before RDP
    show_did, ob_rows = run_ob_actions(link, ob_req, kw, reporter, ob_fields_out, part="show")
    did = did or show_did
    if kw["protect"]:
        reporter.phase("protect")
        level = kw["rdp_level"]
        link.readout_protect(level, confirm_permanent=kw["rdp2_ok"])
        reporter.info(
            "readout protection enabled (RDP level 1)" if level == 1
            else "RDP level 2 set: the bootloader and debug port are disabled for good"
        )
        did = True
    if kw["go_only"] == "go":
        if info.read_protected:
            raise _rdp_error(link)
        from stmflash.pipeline import start_address

        target = kw["address"] if kw["address"] is not None else start_address(None, device)
        reporter.phase("go")
        link.start(target)
        reporter.info(f"application started at 0x{target:08X} (Go)")
        did = True
    elif kw["go_only"] == "reset":
        reporter.phase("reset")
        link.reset()
        reporter.info("chip reset")
        did = True
    if result is not None and extras:
        _after(link, kw, image, device)
    reporter.close()

    # ---- report ----------------------------------------------------------------------------
    fields: dict[str, Any] = {"port": link.port_name, "chip": info.to_dict()}
    if result is not None:
        fields.update(result.to_dict())
        fields.update(stub_info)
    if ob_read is not None:
        fields["option_bytes"] = ob_read.hex()
        if ob_read2 is not None:
            fields["option_bytes2"] = ob_read2.hex()
        fields.update(_decode_ob(device, ob_read, ob_read2))
    fields.update(ob_fields_out)
    fields.update(extra)
    fields["retries"] = link.bl.retried
    reporter.result(ok=True, **fields)
    if json_mode:
        return
    echo_rows(ob_rows)
    if ob_read is not None:
        click.echo(f"option bytes @0x{device.option_bytes.start:08X}: {ob_read.hex(' ')}")
        if ob_read2 is not None:
            click.echo(f"option bytes @0x{device.option_bytes2.start:08X}: {ob_read2.hex(' ')}")
        decoded = _decode_ob(device, ob_read, ob_read2)
        if decoded:
            wrp = decoded["wrp_units"]
            click.echo(f"RDP level {decoded['rdp_level']}; write-protected units: "
                       + (",".join(map(str, wrp)) if wrp else "none"))
    if result is not None:
        if not kw["quiet"]:
            click.echo(describe_result(result), err=True)
    elif not did:
        _print_info(info, device)
    if result is None and did and not kw["quiet"] and ob_read is None and ob_rows is None:
        click.echo("done", err=True)


def _check_option_bytes(device: Any, data: bytes, reporter: Any) -> None:
    """--write-option-bytes takes the whole area (as the README says): a part of it would
    leave the rest to whatever the chip held; and a value that sets RDP level 1, or a
    proprietary-code mode bit (L0 WPRMOD, F4 SPRMOD), is said."""
    from stmflash import option_bytes as obl
    from stmflash.errors import UsageError

    area = device.option_bytes
    if area is None:
        raise UsageError(f"{device.short_name}: the device table has no option-byte area for this part")
    if len(data) != area.size:
        raise UsageError(
            f"--write-option-bytes: {len(data)} bytes given; {device.short_name} takes the whole area, "
            f"{area.size} bytes at 0x{area.start:08X} (read it with --read-option-bytes, edit, write back)"
        )
    if not obl.supported(device):
        return
    written = obl.normalize(device, data)
    if obl.rdp_level(device, written) == 1:
        reporter.warn(
            "these option bytes set RDP level 1 (readout protection): the flash becomes unreadable "
            "over the bootloader, and removing it later mass-erases the flash"
        )
    note = obl.pcrop_mode_note(device, written)
    if note:  # L0 WPRMOD / F4 SPRMOD = 1: on a factory part every sector becomes read-protected
        reporter.warn(f"{note}; on a factory part that is every sector")


def _after(link: Any, kw: dict[str, Any], image: Any, device: Any) -> None:
    """``--after`` through the ROM once the extras (protection, read, ROM verify) are done."""
    if kw["after"] == "go" and not kw["protect"]:
        from stmflash.pipeline import start_address

        link.start(start_address(image, device))
    elif kw["after"] == "reset" and not (kw["protect"] and kw["rdp_level"] == 2):
        link.reset()  # (at level 2 the chip has reset itself and answers no more)


STUB_MIN_BYTES = 16 * 1024  # below this the ROM is done before the stub is uploaded


def _stub_for(link: Any, kw: dict[str, Any], image: Any, reporter: Any) -> Any:
    """The running stub (uploaded and started), or None for the ROM path (one info line why).

    auto: the family has a stub, the chip is not read-protected, the image is big enough to
    pay for the upload, and (sim://) the simulator can run code; on: the same or exit 2."""
    mode = kw["stub_mode"]
    if mode == "off":
        return None
    from stmflash.errors import NackError, UsageError
    from stmflash.stub import support
    from stmflash.stub.link import start

    ok, why = support(link.device)
    reasons = [] if ok else [why]
    if link.info.read_protected:
        reasons.append("the chip is readout-protected")
    if str(kw["port"]).lower().startswith("sim://"):
        from stmflash.sim import cpu

        if not cpu.available():
            reasons.append("the simulator needs unicorn to run it (pip install 'stmflash[sim]')")
    if mode == "auto" and image.size < STUB_MIN_BYTES:
        reasons.append(f"the image is small ({image.size} bytes): the ROM is quicker")
    if reasons:
        if mode == "on":
            raise UsageError(f"--stub on: {reasons[0]}")
        reporter.info(f"programming through the ROM: {reasons[0]} (--stub auto)")
        return None
    reporter.phase("stub")
    try:
        stub = start(link, baud=kw["stub_baud"], rom_baud=kw["baud"], retries=kw["retries"])
    except NackError as exc:  # the ROM refused the upload or the Go: nothing runs yet
        if mode == "on":
            raise
        reporter.info(f"programming through the ROM: the ROM refused the stub ({exc})")
        return None
    reporter.info(f"RAM stub running at {stub.baud} baud ({stub.session.credits} frames in flight)")
    return stub


def _decode_ob(device: Any, ob: bytes, ob2: bytes | None = None) -> dict[str, Any]:
    """RDP level and protected units, when the table knows the family's layout (units of
    the second block, F42x sectors 12-23, counted too)."""
    from stmflash import option_bytes as obl

    if not obl.supported(device) or len(ob) != device.option_bytes.size:
        return {}
    level, units = obl.loaded_protection(device, ob, ob2)  # what the chip runs with
    return {"rdp_level": level, "wrp_units": sorted(units)}


def _rdp_error(link: Any) -> Exception:
    from stmflash.errors import ProtectionError

    return ProtectionError(
        f"the chip on {link.port_name} is read-protected (RDP level 1); run with --unprotect to "
        "remove the protection (this mass-erases the flash)"
    )


def _read_range(kw: dict[str, Any], device: Any) -> tuple[int, int]:
    from stmflash.errors import UsageError

    if kw["range_"]:
        if kw["start"] is not None or kw["length"] is not None:
            raise UsageError("use either --range or --start/--length")
        start, length = parse_range(kw["range_"], default_start=device.flash_start)
        _check_in_memory_map(device, start, length)
        return start, length
    start = device.flash_start if kw["start"] is None else kw["start"]
    if kw["length"] is not None:
        length = kw["length"]
    elif start in device.flash:
        length = device.flash.end - start
    else:
        raise UsageError("--read outside flash needs --length")
    if length <= 0:
        raise UsageError("--length must be positive")
    _check_in_memory_map(device, start, length)
    return start, length


def _check_in_memory_map(device: Any, start: int, length: int) -> None:
    """A read must lie inside one memory of the part (device table), else the ROM NACKs
    somewhere in the middle: say so before reading anything."""
    from stmflash.errors import UsageError

    named = [("flash", device.flash), ("system memory", device.system_memory),
             ("option bytes", device.option_bytes), ("OTP", device.otp), ("EEPROM", device.eeprom)]
    named += [("RAM", r) for r in device.ram]
    regions = [(n, r) for n, r in named if r is not None]
    if any(r.contains_range(start, length) for _n, r in regions):
        return
    end = start + length
    near = next(((n, r) for n, r in regions if start in r), None)
    if near is not None:
        n, r = near
        raise UsageError(
            f"range 0x{start:08X}..0x{end:08X} runs past the end of {device.short_name} {n} "
            f"(0x{r.start:08X}..0x{r.end:08X}): at most {r.end - start} bytes from 0x{start:08X}"
        )
    known = ", ".join(f"{n} 0x{r.start:08X}..0x{r.end:08X}" for n, r in regions)
    raise UsageError(f"range 0x{start:08X}..0x{end:08X} is not in a memory of {device.short_name} ({known})")


__all__ = ["uart", "parse_int"]
