"""``stmflash trigger PORT``: send only the bootloader-entry trigger (for scripts).

Exit 0 when the application acknowledged (it is now resetting into its ROM bootloader),
3 when nothing answered. Useful to chain other tools (stm32flash, CubeProgrammer) after a
pin-less entry, or to check that a firmware build includes the companion.
"""

from __future__ import annotations

import click

from stmflash.commands.common import SECONDS, complete_ports, output_options


@click.command("trigger")
@click.argument("port", shell_complete=complete_ports)
@click.option("--app-baud", type=click.IntRange(min=1), default=115200, show_default=True,
              help="The application's own baud rate (8N1).")
@click.option("--key", "--trigger-key", "key", metavar="HEX", default=None,
              help="Shared key the firmware companion was built with (default: none).")
@click.option("--timeout", "--trigger-timeout", "timeout", type=SECONDS,
              default=1.0,
              show_default=True, help="Seconds to wait for the acknowledgement.")
@output_options
def trigger(port: str, app_baud: int, key: str | None, timeout: float, json_: bool, quiet: bool,
            trace: str | None = None) -> None:
    """Ask the application on PORT to reboot into the ROM bootloader and wait for its ack.

    \b
    Examples:
      stmflash trigger /dev/ttyUSB0
      stmflash trigger /dev/ttyACM0 --app-baud 921600 --key 5a17c0de --json
    """
    from stmflash.commands.common import run_and_report
    from stmflash.errors import UsageError
    from stmflash.progress import make_reporter
    from stmflash.trigger.host import parse_key, send_trigger

    if app_baud <= 0:
        raise UsageError(f"bad --app-baud {app_baud}")
    if timeout <= 0:
        raise UsageError(f"bad --timeout {timeout:g} (seconds, > 0)")
    key_b = parse_key(key)
    reporter = make_reporter(json_, quiet)

    def run() -> None:
        from stmflash import trace as tracing
        from stmflash.trigger.host import _open_app_port

        ack = send_trigger(port, app_baud=app_baud, key=key_b, timeout=timeout,
                           opener=lambda p, b: tracing.wrap(_open_app_port(p, b)))
        reporter.result(ok=True, **ack.to_dict())
        if not json_ and not quiet:
            click.echo(
                f"{port}: application acknowledged (nonce {ack.nonce:08x}) in "
                f"{ack.seconds * 1000:.0f} ms; it is resetting into the ROM bootloader",
                err=True,
            )

    run_and_report(reporter, run, trace_to=trace)
