"""Host side of pin-less entry over a serial link: ``stmflash trigger`` and ``--enter command``.

Everything runs against the in-process virtual STM32 (``sim://...&app=1``) whose application
uses the same matcher as the firmware companion.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stmflash import devices
from stmflash.errors import EXIT_NO_ANSWER, EXIT_USAGE, UsageError
from stmflash.sim import registry
from stmflash.sim.app import VirtualApp, demo_vector_table, install
from stmflash.sim.chip import VirtualChip
from stmflash.trigger import frame
from stmflash.trigger.host import (
    CommandStrategy,
    NoAckError,
    parse_key,
    send_trigger,
    set_defaults,
    trigger_options_from,
)
from stmflash.uart.entry import NoEntry, PinsEntry, parse_entry

F407 = devices.find("F407")


@pytest.fixture(autouse=True)
def _defaults() -> Iterator[None]:
    set_defaults()
    yield
    set_defaults()


@pytest.fixture
def named() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for n in names:
        registry.unregister(n)


def make_chip(names: list[str], *, app: str | None = "1", **opts: str) -> tuple[VirtualChip, str]:
    """A registered F407 running a small application; returns the chip and its URL."""
    name = f"trig-{uuid.uuid4().hex[:8]}"
    names.append(name)
    chip = VirtualChip(F407)
    chip.preload(F407.flash_start, demo_vector_table(chip))
    if app is not None:
        install(chip, {"app": app, **opts})
    registry.register(name, chip)
    return chip, f"sim://F407?chip={name}&app={app or 0}"


def app_bin(tmp_path: Path, size: int = 3000) -> tuple[Path, bytes]:
    data = bytearray(os.urandom(size))
    data[:8] = struct.pack("<II", 0x20020000, F407.flash_start + 0x201)
    path = tmp_path / "app.bin"
    path.write_bytes(bytes(data))
    return path, bytes(data)


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from stmflash.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


# ---- library --------------------------------------------------------------------------------


def test_send_trigger_gets_the_ack_and_the_chip_enters_its_rom(named: list[str]) -> None:
    chip, url = make_chip(named)
    before = chip.reset_count
    ack = send_trigger(url, nonce=0x01020304)
    assert ack.nonce == 0x01020304 and ack.app_baud == 115200
    assert frame.encode_ack(0x01020304) in ack.received
    assert chip.mode == "bootloader" and chip.reset_count == before + 1


def test_silent_port_raises_no_ack_naming_port_and_causes(named: list[str]) -> None:
    chip, url = make_chip(named, app="plain")
    with pytest.raises(NoAckError) as err:
        send_trigger(url, timeout=0.2)
    msg = str(err.value)
    assert url in msg and "115200 8N1" in msg
    assert "wrong port or baud" in msg and "stmflash companion (firmware/)" in msg
    assert err.value.exit_code == EXIT_NO_ANSWER
    assert chip.mode == "app"


def test_parse_key() -> None:
    assert parse_key(None) == b""
    assert parse_key("5a17c0de") == bytes.fromhex("5a17c0de")
    assert parse_key("0x5A:17") == b"\x5a\x17"
    with pytest.raises(UsageError):
        parse_key("xyz")


def test_command_arguments_in_the_chain() -> None:
    opts = trigger_options_from("baud=921600,key=a1b2,timeout=2.5,settle=0")
    assert (opts.app_baud, opts.key, opts.timeout, opts.settle) == (921600, b"\xa1\xb2", 2.5, 0.0)
    assert trigger_options_from("57600").app_baud == 57600
    with pytest.raises(UsageError):
        trigger_options_from("speed=1")
    chain = parse_entry("command:baud=921600,key=a1b2,pins:rts,dtr,-dtr:-rts,none")
    assert [type(s) for s in chain] == [CommandStrategy, PinsEntry, NoEntry]
    assert chain[0].options.app_baud == 921600 and chain[0].options.key == b"\xa1\xb2"


def test_command_line_defaults_reach_the_strategy() -> None:
    set_defaults(app_baud=460800, key="beef", timeout=3.0)
    (strategy,) = parse_entry("command")
    assert strategy.options.app_baud == 460800 and strategy.options.key == b"\xbe\xef"
    assert strategy.options.timeout == 3.0
    with pytest.raises(UsageError):
        set_defaults(app_baud=0)


# ---- stmflash trigger -----------------------------------------------------------------------


def test_trigger_command_exit_0_and_json(named: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    chip, url = make_chip(named)
    code, out, _ = cli(["trigger", url, "--json"], capsys)
    assert code == 0
    result = [json.loads(line) for line in out.splitlines() if line.strip()][-1]
    assert result["event"] == "result" and result["ok"] is True and len(result["nonce"]) == 8
    assert chip.mode == "bootloader"


def test_trigger_command_no_ack_exit_3(named: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    chip, url = make_chip(named, app="plain")
    before = chip.reset_count
    code, _, err = cli(["trigger", url, "--timeout", "0.2"], capsys)
    assert code == EXIT_NO_ANSWER
    assert err.startswith("stmflash: error: no acknowledgement from the application on")
    assert "stmflash companion (firmware/)" in err and "Traceback" not in err
    assert chip.mode == "app" and chip.reset_count == before


def test_trigger_at_the_wrong_baud_is_not_obeyed(named: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    chip, url = make_chip(named)
    before = chip.reset_count
    code, _, err = cli(["trigger", url, "--app-baud", "9600", "--timeout", "0.2"], capsys)
    assert code == EXIT_NO_ANSWER and "9600 8N1" in err
    assert chip.mode == "app" and chip.reset_count == before


def test_trigger_key_must_match(named: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    chip, url = make_chip(named, app_key="c0ffee")
    code, _, _ = cli(["trigger", url, "--timeout", "0.2"], capsys)
    assert code == EXIT_NO_ANSWER and chip.mode == "app"
    code, _, _ = cli(["trigger", url, "--key", "c0ffee"], capsys)
    assert code == 0 and chip.mode == "bootloader"


def test_trigger_bad_key_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["trigger", "sim://F407", "--key", "nothex"], capsys)
    assert code == EXIT_USAGE and "bad trigger key" in err


# ---- stmflash uart --enter command ------------------------------------------------------------


def test_uart_enter_command_flashes_and_leaves_the_new_app_running(
    named: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chip, url = make_chip(named)
    path, data = app_bin(tmp_path)
    code, _, err = cli(["uart", url, str(path), "--enter", "command"], capsys)
    assert code == 0, err
    assert bytes(chip.flash[: len(data)]) == data
    assert chip.mode == "app" and isinstance(chip.app, VirtualApp)
    assert chip.app.triggers == 1
    # and the new application answers the trigger again (it is really running)
    send_trigger(url)
    assert chip.mode == "bootloader"


def test_uart_enter_command_after_reset_runs_the_app(
    named: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chip, url = make_chip(named)
    path, data = app_bin(tmp_path)
    code, _, err = cli(["uart", url, str(path), "--enter", "command", "--after", "reset"], capsys)
    assert code == 0, err
    assert bytes(chip.flash[: len(data)]) == data and chip.mode == "app"


def test_uart_enter_command_with_app_settings(
    named: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chip, url = make_chip(named, app_baud="921600", app_key="a1b2")
    path, data = app_bin(tmp_path)
    code, _, err = cli(
        ["uart", url, str(path), "--enter", "command", "--app-baud", "921600", "--trigger-key", "a1b2"],
        capsys,
    )
    assert code == 0, err
    assert bytes(chip.flash[: len(data)]) == data and chip.mode == "app"


def test_uart_enter_command_silent_app_exit_3(
    named: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chip, url = make_chip(named, app="plain")
    path, _ = app_bin(tmp_path)
    before = bytes(chip.flash[:64])
    code, _, err = cli(
        ["uart", url, str(path), "--enter", "command", "--trigger-timeout", "0.2"], capsys
    )
    assert code == EXIT_NO_ANSWER
    assert "no acknowledgement from the application" in err and "wrong port or baud" in err
    assert chip.mode == "app" and bytes(chip.flash[:64]) == before


def test_uart_enter_command_falls_back_to_none(
    named: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chip, url = make_chip(named, app=None)  # already in its ROM: no application answers
    assert chip.mode == "bootloader"
    path, data = app_bin(tmp_path)
    code, _, err = cli(
        ["uart", url, str(path), "--enter", "command:timeout=0.2,none"], capsys
    )
    assert code == 0, err
    assert bytes(chip.flash[: len(data)]) == data


def test_uart_1200_strategy_touches_the_port_and_restores_it() -> None:
    class Port:
        def __init__(self) -> None:
            self.log: list[tuple[str, object]] = []
            self._baud = 115200

        @property
        def baudrate(self) -> int:
            return self._baud

        @baudrate.setter
        def baudrate(self, value: int) -> None:
            self._baud = value
            self.log.append(("baud", value))

        @property
        def dtr(self) -> bool:
            return True

        @dtr.setter
        def dtr(self, value: bool) -> None:
            self.log.append(("dtr", value))

    (strategy,) = parse_entry("1200")
    port = Port()
    strategy.enter(port)
    assert port.log == [("baud", 1200), ("dtr", False), ("baud", 115200)]


def test_uart_enter_command_on_a_plain_app_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``sim://F407?app=1&image=...`` without a chip name: the reopen finds the same chip."""
    img = tmp_path / "f4.img"
    chip = VirtualChip(F407, image_path=img)
    chip.preload(F407.flash_start, demo_vector_table(chip))
    chip.save()
    url = f"sim://F407?app=1&image={img}"
    path, data = app_bin(tmp_path)
    try:
        code, _, err = cli(["uart", url, str(path), "--enter", "command"], capsys)
        assert code == 0, err
        live = registry.get("url:" + url)
        assert live is not None and live.mode == "app"
        assert bytes(live.flash[: len(data)]) == data
    finally:
        registry.unregister("url:" + url)
