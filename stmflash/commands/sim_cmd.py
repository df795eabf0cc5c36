"""``stmflash sim``: run a virtual STM32 that other programs can talk to.

``sim usbip`` exports virtual USB chips to a Linux USB stack over USB/IP
(:mod:`stmflash.sim.usbip`).

``sim uart`` serves the AN3155 ROM bootloader on a pseudo-terminal: its path is the first
line of stdout so scripts can read it and hand it to any flasher (stm32flash, stm32loader,
stmflash). The image file keeps flash, option bytes and OTP across runs.
"""

from __future__ import annotations

import click

from stmflash.commands.common import SecondsParam, complete_devices


@click.group("sim")
def sim() -> None:
    """Run a virtual STM32 (pseudo-terminal or USB)."""


@sim.command("uart")
@click.option("--device", "-d", "device_name", required=True, shell_complete=complete_devices, help="Device name, alias or PID (e.g. F407, 0x413).")
@click.option("--image", "image", type=click.Path(dir_okay=False), default=None,
              help="Image file holding flash, option bytes and OTP (created if missing, saved on exit).")
@click.option("--timing", type=click.Choice(["instant", "realistic"]), default="instant", show_default=True,
              help="instant: answer at once; realistic: pace the line, programming and erase times.")
@click.option("--baud", type=click.IntRange(min=1), default=115200, show_default=True, help="Modelled line rate (realistic timing).")
@click.option("--adapter", type=click.Choice(["ch340", "cp210x", "ftdi", "ideal"]), default="ch340",
              show_default=True, help="USB-serial adapter profile (realistic timing): turnaround per answer "
              "ch340/cp210x ~1 ms, ftdi 16 ms (default latency timer), ideal 0.")
@click.option("--latency-ms", type=SecondsParam(0.0, 10000.0, allow_zero=True), default=None,
              help="Explicit adapter turnaround per answer in ms (overrides --adapter).")
@click.option("--fault", "fault", default=None, help="Fault spec, e.g. 'drop=0.01,stray_zero,power_loss=after:4096'.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for faults and the chip's UID.")
@click.option("--link", "link", type=click.Path(dir_okay=False), default=None,
              help="Also create this symlink to the pseudo-terminal (removed on exit).")
@click.option("--app", "app", is_flag=True,
              help="Run the flash application when the flash holds a valid vector table: it talks "
              "at --app-baud 8N1 and answers the stmflash trigger (pin-less bootloader entry).")
@click.option("--app-baud", type=int, default=115200, show_default=True, help="The application's baud rate.")
@click.option("--app-key", metavar="HEX", default="", help="Key the application's trigger companion uses.")
def uart(device_name: str, image: str | None, timing: str, baud: int, latency_ms: float | None,
         fault: str | None, seed: int, link: str | None, app: bool = False, app_baud: int = 115200,
         app_key: str = "", adapter: str = "ch340") -> None:
    """Serve the AN3155 USART bootloader of a virtual STM32 on a pseudo-terminal.

    \b
    Prints the pty path (e.g. /dev/pts/3) as the first line, serves until Ctrl-C or
    SIGTERM, then saves the image. Peers: stm32flash -b 0 /dev/pts/3, stm32loader -p ...
    """
    import sys

    from stmflash import devices
    from stmflash.errors import UsageError
    from stmflash.sim.chip import VirtualChip
    from stmflash.sim.faults import FaultPlan
    from stmflash.sim.pty import run_server

    try:
        device = devices.find(device_name)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from None
    if baud <= 0:
        raise UsageError(f"--baud must be positive, not {baud}")
    if latency_ms is not None and latency_ms < 0:
        raise UsageError(f"--latency-ms must not be negative, not {latency_ms}")
    if image is not None:
        from stmflash.paths import check_output_file

        check_output_file(image, "--image")  # saved on exit: refuse now, not after the session
    chip = VirtualChip(
        device,
        image_path=image,
        timing=timing,
        faults=FaultPlan.parse(fault, seed=seed),
        seed=seed,
        baud=baud,
        latency_ms=latency_ms,
        adapter=adapter,
    )

    if app:
        from stmflash.sim.app import install

        try:
            install(chip, {"app": "1", "app_baud": str(app_baud), "app_key": app_key})
        except ValueError as exc:
            raise UsageError(f"--app: {exc}") from None

    def announce(path: str) -> None:
        click.echo(path)
        sys.stdout.flush()
        click.echo(
            f"virtual {device.name} (PID 0x{device.pid:03X}) on {path}"
            + (f", image {image}" if image else "")
            + f", timing {timing}"
            + (f" ({adapter} adapter, {chip.timing.latency_ms:g} ms turnaround, {baud} baud)"
               if timing == "realistic" else "")
            + (f", running its application ({chip.mode} mode)" if app else "")
            + "; Ctrl-C to stop",
            err=True,
        )

    run_server(chip, link=link, announce=announce)


@sim.command("usb", context_settings={"ignore_unknown_options": True})
@click.argument("spec")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def usb(spec: str, command: tuple[str, ...]) -> None:
    """Attach virtual STM32s to the virtual USB bus and show them, or run COMMAND with them.

    \b
    SPEC is a STMFLASH_USB_SIM value: DEVICE[=IMAGEFILE][;key=value...], comma separated
    (keys: timing, scale, port, seed, rdp, fault, app, adapter; see the README).
    Without COMMAND: print each device's descriptors as the ROM presents them.
    With COMMAND: run it with STMFLASH_USB_SIM=SPEC (the chips live in that process).

    \b
      stmflash sim usb "F407=f4.img,H743"
      stmflash sim usb "F407=f4.img" -- stmflash dfu fw.hex --leave
    """
    import os
    import subprocess
    import sys

    from stmflash.sim.usb_backend import bus_from_spec

    bus = bus_from_spec(spec)  # validates the spec (and creates missing image files)
    if command:
        argv = list(command)
        if argv and argv[0] == "--":
            argv = argv[1:]
        if argv and argv[0] == "stmflash":
            argv = [sys.executable, "-m", "stmflash", *argv[1:]]
        env = dict(os.environ, STMFLASH_USB_SIM=spec)
        try:
            rc = subprocess.call(argv, env=env)
        except OSError as exc:
            from stmflash.errors import UsageError

            raise UsageError(f"cannot run {argv[0]!r}: {exc.strerror}") from None
        sys.exit(rc)
    from stmflash.dfu.usb import find_devices

    for info in find_devices(backend=bus.backend):
        dev = next(d for d in bus.devices if d.path == info.path)
        click.echo(
            f"Bus {dev.bus:03d} Port {info.path}: ID {info.vid:04x}:{info.pid:04x} {info.manufacturer} "
            f"{info.product} (virtual {dev.chip.device.name}"
            + (f", image {dev.chip.image_path}" if dev.chip.image_path else "") + ")"
        )
        click.echo(f"  bcdDevice 0x{info.bcd_device:04X}  iSerial {info.serial}  bcdDFU 0x{info.bcd_dfu:04X}  "
                   f"wTransferSize {info.transfer_size}  bmAttributes 0x{info.attributes:02X}")
        for a in info.alts:
            click.echo(f"  alt {a.alt}: {a.layout.text}")


@sim.command("usbip")
@click.argument("spec")
@click.option("--listen", "listen", default="127.0.0.1:3240", show_default=True, metavar="HOST:PORT",
              help="Address to serve USB/IP on (port 0: any free port; the first stdout line says which).")
@click.option("--stdio", is_flag=True, help="Serve one connection on stdin/stdout, then exit "
              "(for QEMU's guestfwd=...-cmd: or inetd-style launchers).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None,
              help="Append a log of imports, class requests, unlinks and disconnects to this file.")
@click.option("--allow-remote", is_flag=True,
              help="Allow a non-loopback --listen address. USB/IP has no authentication: anyone "
              "who reaches the port can attach the device. Never use it on a public address.")
def usbip(spec: str, listen: str, stdio: bool, log_path: str | None, allow_remote: bool) -> None:
    """Export virtual STM32s over USB/IP (v1.1.1) to a Linux USB stack.

    \b
    SPEC is a STMFLASH_USB_SIM value (e.g. "F407=f4.img;app=1,H743=h7.img"); the N-th
    chip has bus ID 1-N (or its port= option). On the Linux side (root):
      modprobe vhci-hcd
      usbip attach -r 127.0.0.1 -b 1-1
    then dfu-util, stmflash dfu or /dev/ttyACM* (app=1) reach the virtual chip through
    the real kernel. Serves until Ctrl-C or SIGTERM; image files are saved as the chips
    leave the bus and at exit. Loopback only unless --allow-remote.
    """
    import signal
    import socket
    import sys

    from stmflash.errors import UsageError
    from stmflash.sim.usb_backend import bus_from_spec
    from stmflash.sim.usbip import UsbipServer, check_listen_address, stdio_conn

    host, sep, port_s = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_s.isdigit() or int(port_s) > 65535:
        raise UsageError(f"--listen {listen!r}: expected HOST:PORT (e.g. 127.0.0.1:3240)")
    if not stdio and not check_listen_address(host):
        if not allow_remote:
            raise UsageError(f"--listen {listen}: not a loopback address; USB/IP has no authentication, "
                             "so stmflash serves loopback only (--allow-remote overrides, never on a "
                             "public address)")
        click.echo(f"WARNING: serving unauthenticated USB/IP on {listen}: anyone who reaches it "
                   "can attach and reprogram the virtual chips", err=True)
    bus = bus_from_spec(spec)
    log_file = open(log_path, "a", buffering=1, encoding="utf-8") if log_path else None

    def log(text: str) -> None:
        if log_file is not None:
            log_file.write(text + "\n")

    server = UsbipServer(bus, log)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    exports = ", ".join(f"{d.path} {d.chip.device.short_name}" for d in bus.snapshot())
    try:
        if stdio:
            log(f"stdio connection; exporting {exports}")
            server.serve_connection(stdio_conn())
            return
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            listener = socket.create_server((host, int(port_s)), family=family)
        except OSError as exc:
            raise UsageError(f"--listen {listen}: {exc.strerror or exc}") from None
        addr = listener.getsockname()
        click.echo(f"{addr[0]}:{addr[1]}")
        sys.stdout.flush()
        click.echo(f"USB/IP server on {addr[0]}:{addr[1]} exporting {exports}; attach with "
                   f"`usbip attach -r {addr[0]} -b {bus.snapshot()[0].path}`; Ctrl-C to stop", err=True)
        log(f"listening on {addr[0]}:{addr[1]}; exporting {exports}")
        try:
            server.serve_forever(listener)
        except KeyboardInterrupt:
            pass
        finally:
            listener.close()
    finally:
        bus.save_all()
        log("stopped")
        if log_file is not None:
            log_file.close()
