"""``--enter STRATEGY*N``: one strategy tried N times before the chain falls back."""

from __future__ import annotations

from typing import Any

import pytest

from stmflash import devices
from stmflash.errors import UsageError
from stmflash.sim import registry
from stmflash.sim.chip import VirtualChip
from stmflash.uart import entry
from stmflash.uart.entry import EntryStrategy, parse_entry, split_repeat
from tests.clirun import exit_code as run_cli


class SecondPulse(EntryStrategy):
    """A reset pulse that only takes on its second try (a slow RC on NRST, say)."""

    name = "secondpulse"
    calls = 0

    def enter(self, ser: Any) -> None:
        SecondPulse.calls += 1
        if SecondPulse.calls >= 2:
            registry.get("rep").reset("bootloader")


@pytest.fixture
def chip_running_its_app():
    entry.register_strategy("secondpulse", lambda arg, inv: SecondPulse())
    SecondPulse.calls = 0
    chip = VirtualChip(devices.find("0x460"))
    chip.go(chip.device.flash_start)  # running its application: the ROM is not listening
    registry.register("rep", chip)
    yield chip
    registry.clear()
    entry._FACTORIES.pop("secondpulse", None)


def test_split_repeat_and_chain_expansion():
    assert split_repeat("pins:rts,-rts*3") == ("pins:rts,-rts", 3)
    assert split_repeat("none") == ("none", 1)
    assert [s.describe() for s in parse_entry("pins:rts,-rts*2,none")] == ["pins:rts,-rts"] * 2 + ["none"]
    with pytest.raises(UsageError, match="repeat count"):
        parse_entry("none*0")
    with pytest.raises(UsageError, match="repeat count"):
        parse_entry("none*99")


def test_a_repeated_strategy_gets_its_second_chance(chip_running_its_app):
    assert run_cli("uart", "sim://x?chip=rep", "-q", "--enter", "secondpulse*2") == 0
    assert SecondPulse.calls == 2


def test_without_repeat_the_chain_gives_up(chip_running_its_app):
    assert run_cli("uart", "sim://x?chip=rep", "-q", "--enter", "secondpulse") == 3
    assert SecondPulse.calls == 1


def test_dfu_chain_accepts_repeats():
    from stmflash.trigger.host import enter_dfu

    assert enter_dfu("none*2") is None  # parsed, and 'none' means already in DFU mode
    with pytest.raises(UsageError, match="repeat count"):
        enter_dfu("detach*0")
