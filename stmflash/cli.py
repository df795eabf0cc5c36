"""The ``stmflash`` command line.

Sub-commands live in ``stmflash.commands.*`` and are imported only when invoked, so that
``stmflash --help`` and ``stmflash --version`` stay fast (no pyusb, serial or ELF import).
Every :class:`~stmflash.errors.StmflashError` becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import importlib
import sys

import click

from stmflash import __version__
from stmflash.errors import EXIT_INTERRUPTED, EXIT_USAGE, StmflashError

# name -> (module, attribute, one-line help shown by --help without importing the module)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "uart": ("stmflash.commands.uart_cmd", "uart", "Program or inspect a chip through its ROM USART bootloader (AN3155)."),
    "dfu": ("stmflash.commands.dfu_cmd", "dfu", "Program or inspect a chip through its ROM USB DFU bootloader (DfuSe)."),
    "batch": ("stmflash.commands.batch_cmd", "batch", "Program many boards in parallel (production line)."),
    "trigger": ("stmflash.commands.trigger_cmd", "trigger", "Send the bootloader-entry trigger to a running application."),
    "list": ("stmflash.commands.list_cmd", "list_", "List serial ports and DFU devices."),
    "ledger": ("stmflash.commands.ledger_cmd", "ledger", "Serial numbers and run records: show, find, export, void, check, import."),
    "image": ("stmflash.commands.image_cmd", "image", "Inspect, convert, merge and stamp firmware images."),
    "devices": ("stmflash.commands.devices_cmd", "devices", "Show the STM32 device table."),
    "sim": ("stmflash.commands.sim_cmd", "sim", "Run a virtual STM32 (pseudo-terminal or USB)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module_name, attr, short = spec
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            # Not built yet: present a placeholder so --help still lists it.
            @click.command(cmd_name, help=short + " (not available in this build)")
            def _missing() -> None:
                raise StmflashError(f"'{cmd_name}' is not available in this build")

            return _missing
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="stmflash")
def cli() -> None:
    """Program STM32 microcontrollers through the bootloaders in their ROM.

    \b
    Quick start without a board (virtual STM32):
      stmflash uart "sim://F407" examples/blinky-f407.hex

    Addresses and sizes: 0x08000000 (hex), 4096 (decimal), 16K or 1M (x1024). A leading
    zero (08000000, 007) is refused as ambiguous: write 0x08000000.
    """


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run click in standalone mode but own the error reporting."""
    try:
        rv = cli.main(args=argv, prog_name="stmflash", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("stmflash: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if exc.exit_code == 2 else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except StmflashError as exc:
        click.echo(f"stmflash: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("stmflash: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as exc:  # a file-system failure no command anticipated: still one line
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        click.echo(f"stmflash: error: {where}{exc.strerror or exc}", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
