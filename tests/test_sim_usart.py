"""The USART model the emulated CPU polls (stmflash.sim.periph.Usart), read at chosen times.

The model skips its bookkeeping between changes (a status read with nothing due is the hot
path of the emulation); these tests pin what a read at any moment must show, on both
register maps: RXNE exactly from a byte's arrival, ORE when a byte arrives over an unread
one, TXE/TC following the shift register, a byte written into TDR while one shifts.
"""

from __future__ import annotations

import pytest

from stmflash.sim.periph import ORE, RXNE, TC, TXE, Usart

CLOCK, BRR = 16_000_000, 32  # 500 kbaud: 22 us per 11-bit byte


def usart(v2: bool) -> Usart:
    return Usart(0x40011000, v2, CLOCK, BRR)


def regs(v2: bool) -> tuple[int, int, int]:
    return (0x1C, 0x24, 0x28) if v2 else (0x00, 0x04, 0x04)


@pytest.mark.parametrize("v2", [False, True])
def test_a_byte_shows_from_its_arrival_and_an_unread_one_is_overrun(v2):
    u = usart(v2)
    sr, rd, _ = regs(v2)
    bt = u.byte_time()
    assert u.read(sr, 0.0)[0] & RXNE == 0  # nothing yet (the model is now quiet)
    u.receive(b"\x11\x22", 0.0)  # arrive at bt and 2*bt
    assert u.read(sr, bt * 0.99)[0] & RXNE == 0
    assert u.read(sr, bt)[0] & RXNE
    assert u.read(rd, bt) == (0x11, True)
    assert u.read(sr, bt * 1.5)[0] & RXNE == 0
    assert u.read(sr, bt * 2)[0] & RXNE  # the second byte, though the first read was recent
    u.receive(b"\x33", bt * 2)  # arrives at 3*bt while 0x22 is still unread
    assert u.read(sr, bt * 3)[0] & ORE
    assert u.read(rd, bt * 3) == (0x22, True)


@pytest.mark.parametrize("v2", [False, True])
def test_transmit_flags_follow_the_shift_register(v2):
    u = usart(v2)
    sr, _, td = regs(v2)
    bt = u.byte_time()
    assert u.read(sr, 0.0)[0] & (TXE | TC) == TXE | TC
    u.write(td, 0x41, 0.0)  # straight into the shift register
    flags = u.read(sr, bt / 2)[0]
    assert flags & TXE and not flags & TC
    u.write(td, 0x42, bt / 2)  # waits in TDR
    assert not u.read(sr, bt / 2)[0] & TXE
    flags = u.read(sr, bt * 1.5)[0]  # 0x42 shifting since bt
    assert flags & TXE and not flags & TC
    assert u.read(sr, bt * 2)[0] & TC
    assert u.take(None) == b"\x41\x42"
