"""The trigger wire format, host side: known vectors, resynchronisation, and noise.

The C twin is exercised against the same properties in test_firmware_logic.py, and the two
are cross-checked there on random streams.
"""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stmflash.trigger import frame
from stmflash.trigger.frame import (
    FRAME_LEN,
    Matcher,
    decode_frame,
    encode_ack,
    encode_request,
    find_ack,
)


def test_request_layout_is_documented_bytes():
    # Hand-computed from the format: sync, cmd, nonce LE, zlib CRC-32 of (cmd, nonce) LE.
    nonce = 0x12345678
    expected_crc = zlib.crc32(b"\x01\x78\x56\x34\x12")
    req = encode_request(nonce)
    assert req == b"\xb0\x07\x01\x78\x56\x34\x12" + struct.pack("<I", expected_crc)
    assert req.hex() == "b0070178563412" + struct.pack("<I", expected_crc).hex()
    assert len(req) == FRAME_LEN == 11


def test_known_vector_pins_the_crc_variant():
    # CRC-32/ISO-HDLC ("zlib") of 01 78 56 34 12 - a different CRC variant (MPEG-2, no
    # final xor, non-reflected) would change these bytes.
    assert encode_request(0x12345678).hex(" ") == "b0 07 01 78 56 34 12 63 86 6b 75"


def test_key_enters_the_check_but_is_not_sent():
    plain = encode_request(7)
    keyed = encode_request(7, key=b"secret")
    assert plain[:7] == keyed[:7]
    assert plain[7:] != keyed[7:]
    assert b"secret" not in keyed
    assert encode_request(7, key="secret") == keyed  # str keys are UTF-8


def test_ack_differs_from_request_and_decodes():
    assert encode_ack(5) != encode_request(5)
    assert decode_frame(encode_ack(5)) == (0x81, 5)
    assert decode_frame(encode_request(5, b"k"), b"k") == (0x01, 5)
    assert decode_frame(encode_request(5, b"k"), b"") is None
    assert decode_frame(encode_request(5)[:-1]) is None


@pytest.mark.parametrize("bad", [-1, 1 << 32])
def test_nonce_out_of_range_is_refused(bad):
    with pytest.raises(ValueError):
        encode_request(bad)


def test_matcher_triggers_once_on_last_byte():
    m = Matcher()
    req = encode_request(0xCAFEBABE)
    results = [m.feed(b) for b in req]
    assert results == [False] * 10 + [True]
    assert m.nonce == 0xCAFEBABE
    # The same bytes again trigger again (a new request), but never twice per request.
    assert m.feed_bytes(req + req) == 2


def test_matcher_resynchronises_after_repeated_sync_byte():
    m = Matcher()
    assert m.feed_bytes(b"\xb0\xb0\x07" + encode_request(1)) == 1
    assert m.feed_bytes(b"\xb0" + encode_request(2)) == 1
    assert m.nonce == 2


def test_matcher_recovers_after_truncated_frame():
    m = Matcher()
    req = encode_request(99)
    for cut in range(1, FRAME_LEN):
        m.reset()
        assert m.feed_bytes(req[:cut]) == 0
        assert m.feed_bytes(req) == 1, f"no trigger after a {cut}-byte partial frame"


def test_matcher_rejects_wrong_check_and_wrong_key():
    req = bytearray(encode_request(3, key=b"k1"))
    assert Matcher(key=b"k1").feed_bytes(bytes(req)) == 1
    assert Matcher(key=b"k2").feed_bytes(bytes(req)) == 0
    assert Matcher().feed_bytes(bytes(req)) == 0
    for i in range(2, FRAME_LEN):
        for bit in range(8):
            bad = bytearray(req)
            bad[i] ^= 1 << bit
            assert Matcher(key=b"k1").feed_bytes(bytes(bad)) == 0, (i, bit)


def test_matcher_ignores_an_ack():
    assert Matcher().feed_bytes(encode_ack(1)) == 0


@given(st.binary(max_size=4096))
def test_random_bytes_never_trigger(noise):
    assert Matcher().feed_bytes(noise) == 0


@given(st.binary(max_size=300), st.integers(0, 0xFFFFFFFF), st.binary(max_size=300))
def test_request_embedded_in_noise_triggers(before, nonce, after):
    m = Matcher()
    assert m.feed_bytes(before + encode_request(nonce)) == 1
    assert m.nonce == nonce
    assert m.feed_bytes(after) == 0


@given(st.binary(max_size=64), st.integers(0, 0xFFFFFFFF), st.binary(max_size=64))
def test_find_ack_in_echo_and_text(before, nonce, after):
    buf = before + encode_request(nonce) + b"\r\nok\r\n" + encode_ack(nonce) + after
    assert find_ack(buf, nonce)
    assert not find_ack(before + encode_request(nonce) + after, nonce)
    assert not find_ack(buf, nonce, key=b"other")
    assert not find_ack(buf, (nonce + 1) & 0xFFFFFFFF) or encode_ack((nonce + 1) & 0xFFFFFFFF) in buf


def test_new_nonce_is_32_bit_and_varies():
    values = {frame.new_nonce() for _ in range(8)}
    assert all(0 <= v <= 0xFFFFFFFF for v in values)
    assert len(values) > 1


def test_defaults_are_sane_constants():
    assert frame.DEFAULT_APP_BAUD == 115200
    assert 0 < frame.DEFAULT_RESET_SETTLE_S < frame.DEFAULT_ACK_TIMEOUT_S
    assert frame.SYNC[0] >= 0x80  # not typeable 7-bit ASCII


def overlapping_frames() -> tuple[bytes, bytes]:
    """A request whose bytes 3.. start a second valid request (nonce begins B0 07 01).

    Returns ``(key, stream)`` where the second frame ends 3 bytes after the first: a
    matcher that kept the bytes of a matched frame would trigger twice.
    """
    for key_n in range(1 << 16):
        key = key_n.to_bytes(2, "little")
        for n3 in range(256):
            first = encode_request(0x000107B0 | (n3 << 24), key)
            nonce2 = int.from_bytes(first[6:10], "little")
            second = encode_request(nonce2, key)
            if second[:8] == first[3:11]:
                return key, first + second[8:]
    raise AssertionError("no overlapping pair found")


def test_bytes_of_a_matched_frame_are_not_reused():
    key, stream = overlapping_frames()
    m = Matcher(key=key)
    assert [i for i, b in enumerate(stream) if m.feed(b)] == [10]
