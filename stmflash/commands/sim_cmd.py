"""``stmflash sim``: run a virtual STM32 that other programs can talk to.

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
@click.option("--latency-ms", type=SecondsParam(0.0, 10000.0, allow_zero=True), default=1.0, show_default=True, help="Modelled adapter turnaround per answer.")
@click.option("--fault", "fault", default=None, help="Fault spec, e.g. 'drop=0.01,stray_zero,power_loss=after:4096'.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for faults and the chip's UID.")
@click.option("--link", "link", type=click.Path(dir_okay=False), default=None,
              help="Also create this symlink to the pseudo-terminal (removed on exit).")
@click.option("--app", "app", is_flag=True,
              help="Run the flash application when the flash holds a valid vector table: it talks "
              "at --app-baud 8N1 and answers the stmflash trigger (pin-less bootloader entry).")
@click.option("--app-baud", type=int, default=115200, show_default=True, help="The application's baud rate.")
@click.option("--app-key", metavar="HEX", default="", help="Key the application's trigger companion uses.")
def uart(device_name: str, image: str | None, timing: str, baud: int, latency_ms: float,
         fault: str | None, seed: int, link: str | None, app: bool = False, app_baud: int = 115200,
         app_key: str = "") -> None:
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
    (keys: timing, scale, port, seed, rdp, fault; see the README).
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
