"""The virtual STM32's application mode: boots the flash, talks like an app, obeys only the trigger."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stmflash import devices
from stmflash.sim.an3155 import ACK, An3155Rom
from stmflash.sim.app import (
    UartFrontEnd,
    VirtualApp,
    demo_vector_table,
    has_valid_app,
    install,
    with_app,
)
from stmflash.sim.chip import VirtualChip
from stmflash.trigger import frame

F407 = devices.find("F407")


def app_chip(**app_kw) -> tuple[VirtualChip, UartFrontEnd]:
    chip = VirtualChip(F407)
    chip.preload(F407.flash_start, demo_vector_table(chip))
    app = VirtualApp(chip, **app_kw)
    front = with_app(An3155Rom(chip))
    assert isinstance(front, UartFrontEnd) and front.app is app
    return chip, front


def test_valid_vector_table_boots_the_application() -> None:
    chip, front = app_chip()
    assert chip.mode == "app"
    assert b"application running" in front.take_output()


@pytest.mark.parametrize(
    "sp, reset",
    [
        (0xFFFFFFFF, 0xFFFFFFFF),  # erased flash
        (0x20020000, 0x08000100),  # reset vector even (not Thumb)
        (0x08000000, 0x08000101),  # SP in flash, not RAM
        (0x20020002, 0x08000101),  # SP not word aligned
        (0x20020000, 0x00000101),  # reset vector outside flash
    ],
)
def test_invalid_vector_table_stays_in_the_rom(sp: int, reset: int) -> None:
    chip = VirtualChip(F407)
    chip.preload(F407.flash_start, struct.pack("<II", sp, reset))
    assert not has_valid_app(chip)
    VirtualApp(chip)
    assert chip.mode == "bootloader"
    front = with_app(An3155Rom(chip))
    front.feed(b"\x7f")
    assert front.take_output() == bytes([ACK])
    chip.reset()  # a reset does not start garbage either
    assert chip.mode == "bootloader"


def test_typed_lines_are_echoed_and_never_reach_the_rom() -> None:
    chip, front = app_chip()
    front.take_output()
    before = chip.reset_count
    front.feed(b"help\r\nstatus\r\x7f\x7f\x7f\n")
    out = front.take_output()
    assert b"echo: help\r\n" in out and b"echo: status\r\n" in out
    assert bytes([ACK]) not in out  # the ROM never saw the 0x7F bytes
    assert chip.mode == "app" and chip.reset_count == before
    assert chip.app.lines == ["help", "status"]


def test_trigger_acks_then_resets_into_the_rom() -> None:
    chip, front = app_chip()
    front.take_output()
    before = chip.reset_count
    front.feed(frame.encode_request(0x12345678))
    assert front.take_output() == frame.encode_ack(0x12345678)
    assert chip.mode == "bootloader" and chip.reset_count == before + 1
    front.feed(b"\x7f")
    assert front.take_output() == bytes([ACK])
    assert chip.app.triggers == 1


def test_trigger_inside_chatter_still_works_and_trailing_bytes_are_lost() -> None:
    chip, front = app_chip()
    front.feed(b"abc\xb0" + frame.encode_request(7) + b"\x7f")  # 0x7F arrives while resetting
    assert frame.find_ack(front.take_output(), 7)
    assert chip.mode == "bootloader"
    front.feed(b"\x7f")
    assert front.take_output() == bytes([ACK])


def test_wrong_check_value_never_enters_the_rom() -> None:
    chip, front = app_chip()
    before = chip.reset_count
    req = bytearray(frame.encode_request(0xCAFEF00D))
    req[-1] ^= 0x01
    front.feed(bytes(req))
    assert not frame.find_ack(front.take_output(), 0xCAFEF00D)
    assert chip.mode == "app" and chip.reset_count == before


def test_keyed_application_ignores_a_host_without_the_key() -> None:
    chip, front = app_chip(key=b"\x5a\x17")
    before = chip.reset_count
    front.feed(frame.encode_request(1))  # no key
    assert chip.mode == "app" and chip.reset_count == before
    front.feed(frame.encode_request(2, b"\x5a\x17"))
    assert frame.find_ack(front.take_output(), 2, b"\x5a\x17")
    assert chip.mode == "bootloader"


def test_wrong_baud_or_parity_is_garbage_to_the_application() -> None:
    chip, front = app_chip()
    before = chip.reset_count
    front.line_settings(9600, "N")
    front.feed(frame.encode_request(3) + b"hello\r")
    front.line_settings(115200, "E")
    front.feed(frame.encode_request(4))
    assert chip.mode == "app" and chip.reset_count == before
    front.line_settings(115200, "N")
    front.feed(frame.encode_request(5))
    assert frame.find_ack(front.take_output(), 5)


def test_firmware_without_the_companion_never_answers() -> None:
    chip = VirtualChip(F407)
    chip.preload(F407.flash_start, demo_vector_table(chip))
    install(chip, {"app": "plain"})
    front = with_app(An3155Rom(chip))
    front.feed(frame.encode_request(9))
    assert not frame.find_ack(front.take_output(), 9)
    assert chip.mode == "app"


@given(noise=st.binary(min_size=0, max_size=600))
def test_line_noise_never_enters_the_rom(noise: bytes) -> None:
    chip, front = app_chip()
    before = chip.reset_count
    front.feed(noise)
    assert chip.mode == "app" and chip.reset_count == before


@given(text=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200))
def test_terminal_typing_never_enters_the_rom(text: str) -> None:
    chip, front = app_chip()
    before = chip.reset_count
    for ch in text + "\r\n":  # one key at a time, as a terminal sends them
        front.feed(ch.encode())
    assert chip.mode == "app" and chip.reset_count == before


def test_go_and_reset_run_the_application_again() -> None:
    chip, front = app_chip()
    front.feed(frame.encode_request(11))
    assert chip.mode == "bootloader"
    chip.go(F407.flash_start)  # the ROM's Go
    assert chip.mode == "app"
    front.feed(frame.encode_request(12))
    assert chip.mode == "bootloader"
    chip.reset()  # --after reset: BOOT0 low, the flash runs
    assert chip.mode == "app"
    chip.reset("bootloader")  # BOOT0 held high by pin entry: the ROM
    assert chip.mode == "bootloader"


def test_rom_ack_of_go_comes_before_the_application_banner() -> None:
    chip, front = app_chip()
    front.feed(frame.encode_request(13))
    front.take_output()
    front.feed(b"\x7f")
    addr = F407.flash_start.to_bytes(4, "big")
    x = 0
    for b in addr:
        x ^= b
    front.feed(b"\x21\xde" + addr + bytes([x]))
    out = front.take_output()
    assert out[:3] == bytes([ACK, ACK, ACK])
    assert b"application running" in out[3:]
    assert chip.mode == "app"


def test_install_options() -> None:
    chip = VirtualChip(F407)
    assert install(chip, {}) is None and install(chip, {"app": "0"}) is None
    app = install(chip, {"app": "", "app_baud": "921600", "app_key": "a1b2"})
    assert app is not None and app.baud == 921600 and app.key == b"\xa1\xb2"
    assert install(chip, {"app": "1"}) is app  # one application per chip
    with pytest.raises(ValueError):
        install(VirtualChip(F407), {"app": "1", "app_key": "xyz"})
