"""The C companion's matcher and decision logic, run on the host against register mocks.

``firmware/stmflash_boot/stmflash_boot.c`` is compiled unchanged with the host gcc and
``-DSTMFLASH_BOOT_HOST_TEST`` (register accesses go to ``firmware/test/sb_mock.c``, the
"reset" and the "jump" longjmp back) into a shared library driven through ctypes.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stmflash.trigger.frame import Matcher, encode_ack, encode_request
from tests.test_trigger_frame import overlapping_frames

ROOT = Path(__file__).resolve().parent.parent
FW = ROOT / "firmware"
MAGIC = 0x424D5453

RAN_NO_REQUEST, RAN_STALE, RAN_BAD_ROM = 0, 1, 2
RAN_JUMPED, RAN_RESET = 101, 102

# family -> (ROM vector table, reset-flag register, SFTRSTF mask, RMVF, SYSCFG remap reg or
#            None, (RCC clock-enable register, bit) for SYSCFG, has VTOR)
FAMILIES = {
    "F0": (0x00000000, 0x40021024, 1 << 28, 1 << 24, 0x40010000, (0x40021018, 1 << 0), False),
    "F1": (0x1FFFF000, 0x40021024, 1 << 28, 1 << 24, None, None, True),
    "F2": (0x1FFF0000, 0x40023874, 1 << 28, 1 << 24, 0x40013800, (0x40023844, 1 << 14), True),
    "F3": (0x1FFFD800, 0x40021024, 1 << 28, 1 << 24, 0x40010000, (0x40021018, 1 << 0), True),
    "F4": (0x1FFF0000, 0x40023874, 1 << 28, 1 << 24, 0x40013800, (0x40023844, 1 << 14), True),
    "F7": (0x1FF00000, 0x40023874, 1 << 28, 1 << 24, None, None, True),
    "G0": (0x1FFF0000, 0x40021060, 1 << 28, 1 << 23, 0x40010000, (0x40021040, 1 << 0), True),
    "C0": (0x1FFF0000, 0x40021060, 1 << 28, 1 << 23, 0x40010000, (0x40021040, 1 << 0), True),
    "G4": (0x1FFF0000, 0x40021094, 1 << 28, 1 << 23, 0x40010000, (0x40021060, 1 << 0), True),
    "L4": (0x1FFF0000, 0x40021094, 1 << 28, 1 << 23, 0x40010000, (0x40021060, 1 << 0), True),
    "L0": (0x1FF00000, 0x40021050, 1 << 28, 1 << 23, 0x40010000, (0x40021034, 1 << 0), True),
    "L1": (0x1FF00000, 0x40023834, 1 << 28, 1 << 24, 0x40010000, (0x40023820, 1 << 0), True),
    "H7": (0x1FF09800, 0x580244D0, 1 << 24, 1 << 16, None, None, True),
    "H7AB": (0x1FF0A000, 0x580244D0, 1 << 24, 1 << 16, None, None, True),
    "L5": (0x0BF90000, 0x40021094, 1 << 28, 1 << 23, None, None, True),
}

VTOR, AIRCR, CCR, DCCMVAC, SYST_CSR = 0xE000ED08, 0xE000ED0C, 0xE000ED14, 0xE000EF68, 0xE000E010
ICER0, ICPR0 = 0xE000E180, 0xE000E280
ROM_SP, ROM_PC = 0x20001F80, 0x1FFF3A5D


class Lib:
    """ctypes view of one build of the companion + mock."""

    def __init__(self, path: Path) -> None:
        self.c = ctypes.CDLL(str(path))
        c = self.c
        c.stmflash_boot_feed.argtypes = [ctypes.c_uint8]
        c.stmflash_boot_last_nonce.restype = ctypes.c_uint32
        c.stmflash_boot_set_key.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        c.stmflash_boot_sysmem_base.restype = ctypes.c_uint32
        c.mock_set.argtypes = [ctypes.c_uint32, ctypes.c_uint32]
        c.mock_get.argtypes = [ctypes.c_uint32]
        c.mock_get.restype = ctypes.c_uint32
        c.mock_events.restype = ctypes.c_char_p
        c.mock_jump_sp.restype = ctypes.c_uint32
        c.mock_jump_pc.restype = ctypes.c_uint32
        c.mock_run_request.argtypes = [ctypes.c_int]
        self._key = ctypes.create_string_buffer(0)

    # matcher
    def feed(self, data: bytes) -> list[int]:
        """Positions (index of the completing byte) where the C matcher triggered."""
        return [i for i, b in enumerate(data) if self.c.stmflash_boot_feed(b)]

    def set_key(self, key: bytes) -> None:
        self._key = ctypes.create_string_buffer(key, len(key) or 1)  # keep alive
        self.c.stmflash_boot_set_key(self._key, len(key))

    def ack(self) -> bytes:
        out = (ctypes.c_uint8 * 11)()
        self.c.stmflash_boot_ack_frame(out)
        return bytes(out)

    # mock
    def set(self, addr: int, value: int) -> None:
        self.c.mock_set(addr, value)

    def get(self, addr: int) -> int:
        return self.c.mock_get(addr)

    @property
    def events(self) -> str:
        return self.c.mock_events().decode()

    def sent(self) -> bytes:
        buf = (ctypes.c_uint8 * 64)()
        n = self.c.mock_sent(buf)
        return bytes(buf[:n])

    def fresh(self) -> Lib:
        """Back to power-on: no flag, empty matcher, default key, fresh registers."""
        self.c.mock_clear()
        self.c.mock_run_check()  # consumes a flag left by an earlier test (RSTF reads 0)
        self.c.mock_clear()
        self.c.stmflash_boot_matcher_reset()
        self.set_key(b"")
        return self


def _compiler() -> str:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no host C compiler (gcc) to build the firmware companion's unit tests")
    return cc


@pytest.fixture(scope="session")
def build(tmp_path_factory):
    cache: dict[tuple, Lib] = {}
    out = tmp_path_factory.mktemp("sbhost")

    def _build(family: str = "F4", flag: str = "NOINIT", *defines: str) -> Lib:
        key = (family, flag, defines)
        if key not in cache:
            so = out / f"libsb_{family}_{flag}_{len(cache)}.so"
            cmd = [
                _compiler(), "-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-fPIC", "-shared",
                "-DSTMFLASH_BOOT_HOST_TEST", f"-DSTMFLASH_BOOT_FAMILY_{family}",
                f"-DSTMFLASH_BOOT_FLAG_{flag}", *defines, f"-I{FW / 'stmflash_boot'}",
                str(FW / "stmflash_boot" / "stmflash_boot.c"), str(FW / "test" / "sb_mock.c"),
                "-o", str(so),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            assert proc.returncode == 0, f"host build failed:\n{proc.stderr}"
            assert proc.stderr == "", f"host build warned:\n{proc.stderr}"
            cache[key] = Lib(so)
        return cache[key].fresh()

    return _build


def _arm(lib: Lib, family: str) -> None:
    """Store a request the way the application does (ack, flush, flag, reset)."""
    assert lib.c.mock_run_request(1) == RAN_RESET
    base, rstf, sft, *_ = FAMILIES[family]
    lib.c.mock_clear()  # the reset: registers back to reset values, RAM (the flag) survives
    lib.set(rstf, sft)  # ... and the reset was a software reset
    lib.set(base, ROM_SP)
    lib.set(base + 4, ROM_PC)


# ---- matcher --------------------------------------------------------------------------------
def test_valid_request_triggers_on_its_last_byte(build):
    lib = build()
    assert lib.feed(encode_request(0xDEADBEEF)) == [10]
    assert lib.c.stmflash_boot_last_nonce() == 0xDEADBEEF
    assert lib.ack() == encode_ack(0xDEADBEEF)


def test_wrong_check_value_does_not_trigger(build):
    lib = build()
    req = encode_request(42)
    for i in range(7, 11):
        bad = bytearray(req)
        bad[i] ^= 0x01
        assert lib.feed(bytes(bad)) == [], f"check byte {i} corrupted but accepted"
    assert lib.feed(req) == [10]


def test_key_set_at_run_time(build):
    lib = build()
    lib.set_key(b"line-7")
    assert lib.feed(encode_request(1)) == []
    assert lib.feed(encode_request(1, b"line-8")) == []
    assert lib.feed(encode_request(1, b"line-7")) == [10]
    assert lib.ack() == encode_ack(1, b"line-7")


def test_compile_time_key_is_the_default(build, tmp_path):
    # Documented spelling: the bytes the host gets from `--trigger-key 5a17c0de`.
    lib = build("G0", "NOINIT", r'-DSTMFLASH_BOOT_KEY="\x5a\x17\xc0\xde"')
    # fresh() installed the empty run-time key; a copy of the library loaded under another
    # name has untouched statics, i.e. the compile-time default a chip starts with.
    copy = tmp_path / "libcopy.so"
    copy.write_bytes(Path(lib.c._name).read_bytes())
    pristine = Lib(copy)
    key = bytes.fromhex("5a17c0de")
    assert pristine.feed(encode_request(5)) == []
    assert pristine.feed(encode_request(5, key)) == [10]
    assert pristine.ack() == encode_ack(5, key)


def test_partial_frames_then_full_frame(build):
    lib = build()
    req = encode_request(0x01020304)
    for cut in range(1, 11):
        assert lib.feed(req[:cut]) == []
        assert lib.feed(req) == [10], f"no resync after {cut}-byte partial"


def test_resync_on_repeated_sync(build):
    lib = build()
    data = b"\xb0\xb0\x07" + encode_request(7) + b"\xb0\x07\x01" + encode_request(8)
    assert lib.feed(data) == [13, 27]


def test_bytes_of_a_matched_frame_are_not_reused(build):
    key, stream = overlapping_frames()
    lib = build()
    lib.set_key(key)
    assert lib.feed(stream) == [10]


@given(st.binary(max_size=2048))
def test_random_noise_never_triggers(build, noise):
    assert build().feed(noise) == []


@given(st.binary(max_size=200), st.integers(0, 0xFFFFFFFF), st.binary(max_size=200))
def test_trigger_embedded_in_noise(build, before, nonce, after):
    lib = build()
    stream = before + encode_request(nonce) + after
    assert lib.feed(stream) == [len(before) + 10]
    assert lib.c.stmflash_boot_last_nonce() == nonce


_chunks = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.builds(encode_request, st.integers(0, 0xFFFFFFFF)),
    st.builds(lambda n, k: encode_request(n)[:k], st.integers(0, 0xFFFFFFFF), st.integers(1, 10)),
    st.sampled_from([b"\xb0", b"\xb0\x07", b"\xb0\x07\x01", b"\xb0\xb0\x07\x01"]),
)


@given(st.lists(_chunks, max_size=40))
def test_c_and_python_matchers_agree(build, chunks):
    lib = build()
    stream = b"".join(chunks)
    py = Matcher()
    py_hits = [i for i, b in enumerate(stream) if py.feed(b)]
    assert lib.feed(stream) == py_hits
    if py_hits:
        assert lib.c.stmflash_boot_last_nonce() == py.nonce


@given(st.lists(_chunks, max_size=20), st.binary(min_size=1, max_size=8))
def test_c_and_python_matchers_agree_with_key(build, chunks, key):
    lib = build()
    lib.set_key(key)
    stream = b"".join(chunks) + encode_request(77, key)
    py = Matcher(key=key)
    assert lib.feed(stream) == [i for i, b in enumerate(stream) if py.feed(b)]


# ---- request / reset ------------------------------------------------------------------------
def test_request_acks_flushes_then_resets(build):
    lib = build()
    lib.set(AIRCR, 0xFA050300)  # PRIGROUP=3 must survive the reset request
    lib.feed(encode_request(0x55AA55AA))
    assert lib.c.mock_run_request(1) == RAN_RESET
    assert lib.sent() == encode_ack(0x55AA55AA)
    assert lib.events == "SFDR"  # send, flush, irqs off, reset - in that order
    assert lib.get(AIRCR) == 0x05FA0000 | 0x300 | 0x4


def test_dfu_detach_sets_flag_and_resets_without_ack(build):
    lib = build()
    assert lib.c.mock_run_dfu_detach() == RAN_RESET
    assert lib.sent() == b""
    lib.c.mock_clear()
    base, rstf, sft, *_ = FAMILIES["F4"]
    lib.set(rstf, sft)
    lib.set(base, ROM_SP)
    lib.set(base + 4, ROM_PC)
    assert lib.c.mock_run_check() == RAN_JUMPED


# ---- early check: decision ------------------------------------------------------------------
def test_no_request_boots_the_application_and_leaves_reset_flags(build):
    lib = build()
    _, rstf, sft, rmvf, *_ = FAMILIES["F4"]
    lib.set(rstf, sft)
    assert lib.c.mock_run_check() == RAN_NO_REQUEST
    assert lib.get(rstf) == sft  # RMVF not written: the app may read its reset cause
    assert "J" not in lib.events


def test_request_without_software_reset_is_dropped(build):
    lib = build()
    _arm(lib, "F4")
    _, rstf, sft, rmvf, *_ = FAMILIES["F4"]
    lib.set(rstf, 1 << 26)  # PINRSTF: the user pressed reset after a request
    assert lib.c.mock_run_check() == RAN_STALE
    assert "J" not in lib.events
    assert lib.get(rstf) & rmvf == 0
    lib.set(rstf, sft)  # the flag was consumed: a later software reset boots the app
    assert lib.c.mock_run_check() == RAN_NO_REQUEST


def test_request_and_software_reset_enter_rom_once(build):
    lib = build()
    _arm(lib, "F4")
    base, rstf, sft, rmvf, remap, (en_reg, en_bit), _ = FAMILIES["F4"]
    assert lib.c.mock_run_check() == RAN_JUMPED
    assert (lib.c.mock_jump_sp(), lib.c.mock_jump_pc()) == (ROM_SP, ROM_PC)
    assert lib.get(rstf) & rmvf, "reset flags not cleared (RMVF)"
    assert lib.get(VTOR) == base
    assert lib.get(remap) & 3 == 1 and lib.get(en_reg) & en_bit
    assert lib.get(SYST_CSR) == 0
    assert all(lib.get(ICER0 + 4 * i) == 0xFFFFFFFF for i in range(8))
    assert all(lib.get(ICPR0 + 4 * i) == 0xFFFFFFFF for i in range(8))
    # interrupts: masked while tearing down, unmasked (reset state) right before the branch
    ev = lib.events
    assert ev.endswith("DCEJ"), ev
    assert lib.c.mock_primask() == 0
    # one shot: the next software reset boots the application
    lib.set(rstf, sft)
    assert lib.c.mock_run_check() == RAN_NO_REQUEST


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rom_address_and_registers_per_family(build, family):
    lib = build(family)
    base, rstf, sft, rmvf, remap, clock, has_vtor = FAMILIES[family]
    assert lib.c.stmflash_boot_sysmem_base() == base
    _arm(lib, family)
    lib.set(VTOR, 0xDEAD0000)
    assert lib.c.mock_run_check() == RAN_JUMPED, family
    assert (lib.c.mock_jump_sp(), lib.c.mock_jump_pc()) == (ROM_SP, ROM_PC)
    assert lib.get(rstf) & rmvf
    assert lib.get(VTOR) == (base if has_vtor else 0xDEAD0000)
    if remap is not None:
        assert lib.get(remap) & 3 == 1, "system memory not remapped"
        assert lib.get(clock[0]) & clock[1], "SYSCFG clock not enabled"


def test_h7_dual_core_software_reset_flag(build):
    # H7: RCC_RSR SFTRSTF is bit 24; dual-core parts report SFT2RSTF (bit 25) too.
    lib = build("H7")
    _arm(lib, "H7")
    lib.set(0x580244D0, 1 << 25)
    assert lib.c.mock_run_check() == RAN_JUMPED


def test_invalid_rom_table_boots_the_application(build):
    lib = build("F4")
    _arm(lib, "F4")
    base, rstf, sft, rmvf, remap, (en_reg, en_bit), _ = FAMILIES["F4"]
    lib.set(base, 0xFFFFFFFF)  # erased-looking / wrong family
    assert lib.c.mock_run_check() == RAN_BAD_ROM
    assert "J" not in lib.events
    assert lib.get(remap) == 0 and lib.get(en_reg) & en_bit == 0, "remap not undone"
    assert lib.c.mock_primask() == 0


def test_h7_falls_back_to_boot_add1_entry(build):
    lib = build("H7")
    _arm(lib, "H7")
    lib.set(0x1FF09800, 0)  # primary table unreadable/invalid
    lib.set(0x1FF00000, 0x24001000)
    lib.set(0x1FF00004, 0x1FF0ABCD)
    assert lib.c.mock_run_check() == RAN_JUMPED
    assert (lib.c.mock_jump_sp(), lib.c.mock_jump_pc()) == (0x24001000, 0x1FF0ABCD)
    assert lib.get(VTOR) == 0x1FF00000


def test_sysmem_override(build):
    lib = build("F0", "NOINIT", "-DSTMFLASH_BOOT_SYSMEM_BASE=0x1FFFC800")
    assert lib.c.stmflash_boot_sysmem_base() == 0x1FFFC800
    assert lib.c.mock_run_request(0) == RAN_RESET
    lib.c.mock_clear()
    lib.set(0x40021024, 1 << 28)
    lib.set(0x1FFFC800, 0x20001000)
    lib.set(0x1FFFC804, 0x1FFFD001)
    assert lib.c.mock_run_check() == RAN_JUMPED
    assert lib.c.mock_jump_pc() == 0x1FFFD001


@pytest.mark.parametrize("family", ["F7", "H7"])
def test_caches_are_cleaned_and_disabled(build, family):
    lib = build(family)
    lib.set(CCR, (1 << 16) | (1 << 17))  # D- and I-cache on in the application
    assert lib.c.mock_run_request(0) == RAN_RESET
    assert lib.get(DCCMVAC) != 0, "flag's cache line not cleaned before the reset"
    base, rstf, sft, *_ = FAMILIES[family]
    lib.c.mock_clear()
    lib.set(CCR, (1 << 16) | (1 << 17))  # pretend SystemInit enabled them before the check
    lib.set(rstf, sft)
    lib.set(base, ROM_SP)
    lib.set(base + 4, ROM_PC)
    assert lib.c.mock_run_check() == RAN_JUMPED
    assert lib.get(CCR) & ((1 << 16) | (1 << 17)) == 0


# ---- backup-register backend ---------------------------------------------------------------
@pytest.mark.parametrize(
    "family,bkp,pwr_en,dbp",
    [
        ("F4", 0x40002850, (0x40023840, 1 << 28), 0x40007000),
        ("G0", 0x4000B100, (0x4002103C, (1 << 28) | (1 << 10)), 0x40007000),
        ("H7", 0x58004050, (0x580244F4, 1 << 16), 0x58024800),
    ],
)
def test_backup_register_flag(build, family, bkp, pwr_en, dbp):
    lib = build(family, "BKP")
    lib.set(bkp, 0)
    assert lib.c.mock_run_request(0) == RAN_RESET
    assert lib.get(bkp) == MAGIC
    assert lib.get(pwr_en[0]) == 0 and lib.get(dbp) == 0, "PWR clock / DBP not restored"
    base, rstf, sft, *_ = FAMILIES[family]
    saved = lib.get(bkp)
    lib.c.mock_clear()  # backup domain survives the reset
    lib.set(bkp, saved)
    lib.set(rstf, sft)
    lib.set(base, ROM_SP)
    lib.set(base + 4, ROM_PC)
    assert lib.c.mock_run_check() == RAN_JUMPED
    assert lib.get(bkp) == 0, "backup register not cleared (one shot)"


def test_backup_register_survives_pin_reset_but_is_dropped(build):
    lib = build("F4", "BKP")
    assert lib.c.mock_run_request(0) == RAN_RESET
    lib.set(0x40023874, 1 << 26)  # NRST, not software
    assert lib.c.mock_run_check() == RAN_STALE
    assert lib.get(0x40002850) == 0
