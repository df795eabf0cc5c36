"""Cross-builds of the firmware companion and the example applications.

Runs ``make -C firmware`` with arm-none-eabi-gcc (Debian gcc-arm-none-eabi; ``.ci/run``
installs it): the library must build without a warning (-Werror) for every core, and a
rebuild of the example images must match the committed ones in everything that does not
depend on the compiler version.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.peers import require
from tests.test_firmware_examples import EXAMPLES, load_elf, load_hex, vector_problems

ROOT = Path(__file__).resolve().parent.parent
FW = ROOT / "firmware"


def _make(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    require("arm-none-eabi-gcc")
    make = shutil.which("make")
    if make is None:
        pytest.skip("GNU make is not installed (Debian package make)")
    return subprocess.run(
        [make, "-C", str(FW), f"BUILD={tmp / 'build'}", f"OUT={tmp / 'out'}", *args],
        capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fw")
    proc = _make("check", "examples", tmp=tmp)
    return tmp, proc


def test_library_and_apps_build_without_warnings_for_every_core(built):
    tmp, proc = built
    assert proc.returncode == 0, f"make failed:\n{proc.stdout}\n{proc.stderr}"
    out = proc.stdout + proc.stderr
    assert "warning" not in out.lower(), out
    assert "firmware check: OK" in out
    cores = {line.split()[1] for line in out.splitlines() if line.strip().startswith("CC ")}
    assert {"cortex-m0", "cortex-m0plus", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33"} <= cores
    objects = list((tmp / "build" / "check").glob("*.o"))
    assert len(objects) >= 20


def test_unknown_family_is_a_build_error(tmp_path):
    cc = require("arm-none-eabi-gcc")
    proc = subprocess.run(
        [cc, "-mcpu=cortex-m4", "-mthumb", "-std=c99", "-c", "-I", str(FW / "stmflash_boot"),
         str(FW / "stmflash_boot" / "stmflash_boot.c"), "-o", str(tmp_path / "x.o")],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "STMFLASH_BOOT_FAMILY" in proc.stderr


def test_backup_backend_refused_where_not_implemented(tmp_path):
    cc = require("arm-none-eabi-gcc")
    proc = subprocess.run(
        [cc, "-mcpu=cortex-m3", "-mthumb", "-std=c99", "-c", "-DSTMFLASH_BOOT_FAMILY_F1",
         "-DSTMFLASH_BOOT_FLAG_BKP", "-I", str(FW / "stmflash_boot"),
         str(FW / "stmflash_boot" / "stmflash_boot.c"), "-o", str(tmp_path / "x.o")],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0 and "STMFLASH_BOOT_FLAG_NOINIT" in proc.stderr


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_rebuilt_example_matches_committed(built, name):
    tmp, proc = built
    assert proc.returncode == 0, proc.stderr
    device, formats = EXAMPLES[name]
    committed = load_hex(ROOT / "examples" / f"{name}.hex")
    rebuilt = load_hex(tmp / "out" / f"{name}.hex")
    assert load_elf(tmp / "out" / f"{name}.elf") == rebuilt
    for fmt in formats:
        assert (tmp / "out" / f"{name}.{fmt}").is_file()
    # Stable across compiler versions: where it starts, that it is one segment, a valid
    # vector table, and roughly the same size.
    assert [a for a, _ in rebuilt] == [a for a, _ in committed]
    assert vector_problems(rebuilt, device) == []
    size_new = sum(len(d) for _, d in rebuilt)
    size_old = sum(len(d) for _, d in committed)
    assert abs(size_new - size_old) <= max(64, size_old // 10), (size_new, size_old)


def test_cmsis_family_macro_and_header_take_precedence(tmp_path):
    """With a CMSIS device header the family comes from its STM32F4 macro and RCC_BASE wins."""
    cc = require("arm-none-eabi-gcc")
    (tmp_path / "fake_stm32f4xx.h").write_text(
        "#define STM32F4\n#define RCC_BASE 0x40023800UL\n#define SYSCFG_BASE 0x40013800UL\n"
    )
    proc = subprocess.run(
        [cc, "-mcpu=cortex-m4", "-mthumb", "-std=c99", "-Wall", "-Wextra", "-Werror", "-Os",
         "-c", f"-I{tmp_path}", "-DSTMFLASH_BOOT_DEVICE_HEADER=\"fake_stm32f4xx.h\"",
         "-I", str(FW / "stmflash_boot"), str(FW / "stmflash_boot" / "stmflash_boot.c"),
         "-o", str(tmp_path / "x.o")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    objdump = shutil.which("arm-none-eabi-objdump")
    if objdump:
        dis = subprocess.run([objdump, "-d", str(tmp_path / "x.o")], capture_output=True, text=True).stdout
        assert "1fff0000" in dis, "F4 ROM address not used"
