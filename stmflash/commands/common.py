"""Click options and the run-and-report glue shared by ``uart``, ``dfu`` and ``batch``.

One place decides how numbers, ranges and erase/verify/after options are spelled and how
a result or an error is reported (human line on stderr, or JSON events on stdout), so the
transports stay consistent with each other. Kept import-light: heavy modules are imported
inside functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from stmflash.numbers import NUMBER_HELP, parse_int, parse_range  # noqa: F401  (re-exported: one spelling)

F = TypeVar("F", bound=Callable[..., Any])


def complete_ports(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion for PORT: the serial ports present, and ``sim://`` with device names."""
    from click.shell_completion import CompletionItem

    if incomplete.startswith("sim://"):
        return [CompletionItem(f"sim://{n}") for n in _device_names(incomplete[6:])]
    try:
        from serial.tools import list_ports

        ports = [p.device for p in list_ports.comports()]
    except Exception:  # completion must never fail
        ports = []
    return [CompletionItem(p, help="serial port") for p in ports if p.startswith(incomplete)] + (
        [CompletionItem("sim://", help="the virtual STM32")] if "sim://".startswith(incomplete) else []
    )


def complete_devices(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion for a device name: the table's aliases."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(n) for n in _device_names(incomplete)]


def _device_names(prefix: str) -> list[str]:
    from stmflash.devices import all_devices

    names = sorted({a for d in all_devices() for a in d.aliases})
    return [n for n in names if n.upper().startswith(prefix.upper())]


FILE = click.Path(dir_okay=False)  # completes file names in the shell; checked by the loaders


class IntParam(click.ParamType):
    """A click type for addresses and sizes (hex, decimal, K/M suffixes)."""

    name = "ADDR"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from stmflash.errors import UsageError

        try:
            return parse_int(value, "value")
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


class SizeParam(IntParam):
    name = "SIZE"


class SecondsParam(click.ParamType):
    """A time in seconds: finite, above ``minimum`` (exclusive when 0), at most ``maximum``
    (click's FloatRange lets ``nan`` through, and a ``nan`` timeout never ends)."""

    name = "SECONDS"

    def __init__(self, minimum: float = 0.0, maximum: float = 600.0, *, allow_zero: bool = False) -> None:
        self.minimum, self.maximum, self.allow_zero = minimum, maximum, allow_zero

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        import math

        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        low_ok = v >= self.minimum if self.allow_zero else v > self.minimum
        if not math.isfinite(v) or not low_ok or v > self.maximum:
            bound = ">=" if self.allow_zero else ">"
            self.fail(f"{value!r}: give seconds {bound} {self.minimum:g} and <= {self.maximum:g}", param, ctx)
        return v


INT = IntParam()
SIZE = SizeParam()
SECONDS = SecondsParam()


def output_options(f: F) -> F:
    """``--json``, ``--quiet`` and ``--trace``."""
    f = click.option(
        "--trace", metavar="FILE", default=None,
        help="Log every byte on the wire (UART) or USB control transfer (DFU), with timestamps, "
        "to FILE ('-': stderr): what to attach to a bug report.",
    )(f)
    f = click.option("--quiet", "-q", is_flag=True, help="No progress bars, only errors.")(f)
    f = click.option(
        "--json", "json_", is_flag=True, help="One JSON event per line on stdout (phase, progress, result)."
    )(f)
    return f


def program_options(f: F) -> F:
    """``--address``, ``--erase``, ``--verify/--no-verify``, ``--after``."""
    f = click.option(
        "--after",
        type=click.Choice(["go", "reset", "stay"]),
        default=None,
        help="After programming: run the application (Go), reset the chip, or stay in the "
        "bootloader [default: go]. Without FILE: only that (start or reset the chip).",
    )(f)
    f = click.option(
        "--verify/--no-verify", default=True, show_default=True, help="Check the flash against the image."
    )(f)
    f = click.option(
        "--erase",
        default="auto",
        show_default=True,
        metavar="auto|all|none|RANGE",
        help="auto: only the pages/sectors the image covers; all: whole flash; none: no erase. "
        "With --erase-only also a RANGE (START:LENGTH).",
    )(f)
    f = click.option(
        "--address",
        "-a",
        type=INT,
        default=None,
        help="Load address for raw .bin files (default: the flash start). " + NUMBER_HELP,
    )(f)
    return f


def find_device(name: str) -> Any:
    """``--device NAME``: the table entry, or a UsageError naming the unknown part."""
    from stmflash.devices import find
    from stmflash.errors import UsageError

    try:
        return find(name)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None


def allow_missing_end_option(f: F) -> F:
    """``--allow-missing-end``: every command that reads an image file."""
    return click.option(
        "--allow-missing-end", is_flag=True,
        help="Accept an Intel HEX / S-record file without its end record (a truncated file is refused).",
    )(f)


def image_input_options(f: F) -> F:
    """``--image-check/--no-image-check`` and ``--allow-missing-end`` (uart and dfu)."""
    f = allow_missing_end_option(f)
    f = click.option(
        "--image-check/--no-image-check", default=True, show_default=True,
        help="Refuse an image whose vector table is not firmware for the part (stack pointer "
        "in RAM, Thumb reset vector inside the image).",
    )(f)
    return f


def load_image(path: str, *, address: int | None, device: Any = None, require_end: bool = True) -> Any:
    """Load a firmware file; every failure is an ImageError naming the file."""
    import os

    from stmflash.errors import ImageError
    from stmflash.image import load

    if path != "-" and not os.path.exists(path):
        raise ImageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a directory, not a firmware file")
    return load(path, address=address, device=device, require_end=require_end)


def check_image(image: Any, device: Any, enabled: bool = True) -> None:
    """Refuse an image that is not firmware for the part (exit 2), before anything is written.

    Only images that start in flash are checked (the part boots from there; data for OTP,
    option bytes or RAM has no vector table). Without ``device`` (before connecting) the
    flash of every known part and the RAM of every known part stand in.
    """
    if not enabled or image is None or not image.segments:
        return
    from stmflash.errors import ImageError
    from stmflash.image.vectors import check_vector_table

    if device is not None:
        if image.start not in device.flash:
            return
    else:
        from stmflash.devices import all_devices

        if not any(image.start in d.flash for d in all_devices()):
            return
    problems = check_vector_table(image, device)
    if problems:
        raise ImageError(
            f"{image.source or 'image'}: {problems[0]} (not firmware for this part? "
            "--no-image-check to flash it anyway)"
        )


def check_port_argument(port: str) -> None:
    """``stmflash uart fw.hex`` (the port forgotten): say so instead of an ioctl error."""
    import os
    import stat

    from stmflash.errors import UsageError
    from stmflash.image.loaders import EXTENSIONS

    if "://" in port:
        return
    try:
        is_file = stat.S_ISREG(os.stat(port).st_mode) or stat.S_ISDIR(os.stat(port).st_mode)
    except OSError:
        is_file = False
    image_like = os.path.splitext(port)[1].lower() in EXTENSIONS
    if is_file or (image_like and not os.path.exists(port)):
        hint = f"; {port} looks like a firmware image: stmflash uart PORT {port}" if image_like else ""
        raise UsageError(
            f"{port} is not a serial port: the first argument is the PORT (/dev/ttyUSB0, COM3, "
            f"socket://host:port, sim://F407), FILE comes second{hint}"
        )


def describe_result(result: Any) -> str:
    """The one human summary line of a programming run."""
    d = result.to_dict()
    speed = d["bytes_written"] / result.duration_s / 1024 if result.duration_s > 0 else 0.0
    verified = f"verified ({d['verify_method']})" if d["verified"] else "NOT verified (--no-verify)"
    after = {
        "go": "; application started",
        "reset": "; chip reset",
        "leave": "; application started (leave)",
    }.get(str(d.get("after")), "; chip left in its bootloader")
    return (
        f"wrote {d['bytes_written']} bytes to {d['device']} in {d['duration_s']:.2f}s "
        f"({speed:.1f} KiB/s), {verified}, image CRC32 {d['image_crc32']}{after}"
    )


def run_and_report(reporter: Any, fn: Callable[[], Any], trace_to: str | None = None) -> Any:
    """Run ``fn``; errors become a JSON ``error`` event (when --json) and propagate to the CLI,
    which prints the one-line message and exits with the error's code."""
    from stmflash import trace
    from stmflash.errors import EXIT_INTERRUPTED, StmflashError

    if trace_to:
        if trace_to != "-":
            from stmflash.paths import check_output_file

            check_output_file(trace_to, "--trace")
        trace.open_trace(trace_to)
    try:
        result = fn()
    except StmflashError as exc:
        _abort_quietly(reporter)
        reporter.error(str(exc), exc.exit_code)
        raise
    except KeyboardInterrupt:
        _abort_quietly(reporter)
        reporter.error("interrupted", EXIT_INTERRUPTED)
        raise
    finally:
        trace.close()
    reporter.close()
    return result


def _abort_quietly(reporter: Any) -> None:
    try:
        reporter.abort()
    except Exception:  # pragma: no cover - reporting must never hide the real error
        pass


def option_bytes_arg(text: str) -> bytes:
    """--write-option-bytes takes a file or hex bytes (spaces, colons and 0x allowed)."""
    import os

    from stmflash.errors import UsageError

    if os.path.exists(text):
        with open(text, "rb") as f:
            return f.read()
    cleaned = text.replace(" ", "").replace(":", "").replace("0x", "")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise UsageError(f"--write-option-bytes: {text!r} is neither a file nor hex bytes") from None


def raw_needs_device(path: str, address: int | None) -> bool:
    """A raw binary without --address is placed at the flash start of the chip we find."""
    if address is not None:
        return False
    from stmflash.image.loaders import format_from_extension, sniff

    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    kind = sniff(head) or format_from_extension(path) or "bin"
    return kind in ("bin", "dfu-bin")


def save_read(path: str, start: int, data: bytes) -> None:
    """--read output: raw bytes for .bin (or no known extension), else HEX/S-record/.dfu at ``start``."""
    from stmflash.image.loaders import format_from_extension

    kind = format_from_extension(path)
    if kind in (None, "bin"):
        with open(path, "wb") as f:
            f.write(data)
        return
    from stmflash.image import save
    from stmflash.image.model import Image

    save(Image.from_bytes(data, start, path), path)


def read_to_file(link: Any, reporter: Any, path: str, start: int, length: int) -> None:
    """``--read``: the same phase, progress and file output for every link."""
    reporter.phase("read", length)
    data = link.read(start, length, reporter.advance)
    save_read(path, start, data)
    reporter.info(f"read {length} bytes from 0x{start:08X} into {path}")


def standalone_options(f: F) -> F:
    """``--verify-only`` and ``--crc RANGE``: the actions peers have besides flashing."""
    f = click.option(
        "--crc", "crc_range", metavar="START:LENGTH",
        help="Print the CRC-32 (zlib) and STM32 CRC of a memory range (read from the chip).",
    )(f)
    f = click.option(
        "--verify-only", is_flag=True,
        help="Compare the chip with FILE without erasing or writing (exit 5 when they differ).",
    )(f)
    return f


def verify_only(link: Any, reporter: Any, image: Any, file: str) -> dict[str, Any]:
    """``--verify-only``: the pipeline's verification, nothing written."""
    from stmflash.pipeline import verify_image

    method = verify_image(link, image, reporter)
    reporter.info(f"the chip holds {file} ({image.size} bytes, verified by {method})")
    return {"verified": True, "verify_method": method, "image_crc32": f"0x{image.crc32():08X}",
            "image_bytes": image.size}


def crc_of_range(link: Any, reporter: Any, start: int, length: int) -> dict[str, Any]:
    """``--crc``: read the range and give both CRC flavours, as ``image info`` does for files."""
    from stmflash.image.crc import stm32_crc, zlib_crc

    reporter.phase("read", length)
    data = link.read(start, length, reporter.advance)
    out = {"start": f"0x{start:08X}", "length": length, "crc32": f"0x{zlib_crc(data):08X}",
           "stm32_crc": f"0x{stm32_crc(data):08X}"}
    reporter.info(f"0x{start:08X}+{length}: crc32 {out['crc32']} (zlib), stm32 crc {out['stm32_crc']}")
    return out


def units_for_range(device: Any, start: int, length: int) -> list[Any]:
    """The erase units exactly covering ``[start, start+length)``; else a UsageError naming the
    nearest unit-aligned range (a partial page cannot be erased)."""
    from stmflash.errors import UsageError

    end = start + length
    units = device.units_covering(start, end)
    if not units or units[0].address != start or units[-1].end != end or end > device.flash.end:
        lo = units[0].address if units else start
        hi = units[-1].end if units else end
        raise UsageError(
            f"erase range 0x{start:08X}..0x{end:08X} must start and end on "
            f"{'page' if device.uniform_pages else 'sector'} boundaries inside flash "
            f"(nearest: 0x{lo:08X}..0x{hi:08X})"
        )
    return units
