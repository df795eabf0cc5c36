"""Erase planning: the smallest set of units covering an image, for every device in the
table (property tests), plus the worked cases users meet (F4 sectors, dual banks, L0 no
mass erase, data outside flash)."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stmflash import devices
from stmflash.devices import Device
from stmflash.erase_plan import ErasePlan, plan_erase
from stmflash.errors import UsageError
from stmflash.image.model import Image

TABLE = devices.all_devices()


def image(*segments: tuple[int, int]) -> Image:
    """An image of ``(address, length)`` segments filled with a non-0xFF pattern."""
    return Image.from_segments((a, bytes([0x5A]) * n) for a, n in segments)


@st.composite
def device_and_image(draw):
    dev: Device = draw(st.sampled_from(TABLE))
    if draw(st.booleans()):
        # a smaller part of the same line (flash-size register): whole units only
        n = draw(st.integers(1, len(dev.erase_units)))
        dev = dev.with_flash_size(dev.erase_units[n - 1].end - dev.flash_start)
    size = dev.flash_size
    # disjoint segments from sorted cut points inside flash
    cuts = sorted(draw(st.sets(st.integers(0, size), min_size=2, max_size=12)))
    segs = []
    for a, b in zip(cuts[::2], cuts[1::2], strict=False):
        length = min(b - a, draw(st.integers(1, 4096)))
        if length > 0:
            segs.append((dev.flash_start + a, length))
    allow_mass = draw(st.booleans())
    return dev, image(*segs), allow_mass


def _covered(plan: ErasePlan, start: int, end: int) -> bool:
    """Whether the planned units cover ``[start, end)`` without a hole."""
    addr = start
    for u in plan.units:
        if u.end <= addr:
            continue
        if u.address > addr:
            return False
        addr = u.end
        if addr >= end:
            return True
    return addr >= end


@given(device_and_image())
def test_plan_properties(case):
    dev, img, allow_mass = case
    plan = plan_erase(img, dev, allow_mass=allow_mass)
    units = dev.erase_units
    # every image byte inside a planned unit
    for s in img.segments:
        assert _covered(plan, s.address, s.end), f"0x{s.address:08X}+{len(s)} not covered"
    # no planned unit disjoint from the image => removing any unit uncovers data (minimal)
    for u in plan.units:
        assert any(s.address < u.end and u.address < s.end for s in img.segments), u
    # units are real, distinct and ordered
    assert [u.index for u in plan.units] == sorted({u.index for u in plan.units})
    assert all(units[u.index] == u for u in plan.units)
    # banks: exactly the banks whose every unit is planned
    chosen = {u.index for u in plan.units}
    expected_banks = sorted(
        b for b in {u.bank for u in units} if all(u.index in chosen for u in dev.bank_units(b))
    )
    assert plan.banks == expected_banks
    # mass erase only when allowed and supported; always when everything is needed
    if plan.mass:
        assert allow_mass and dev.mass_erase
    if allow_mass and dev.mass_erase and len(plan.units) == len(units):
        assert plan.mass
    if len(plan.units) == len(units):
        assert plan.banks == sorted({u.bank for u in units})
    unit_time = sum(dev.unit_erase_ms(u)[0] for u in plan.units)
    if allow_mass and dev.mass_erase and plan.units:
        assert plan.mass == (len(plan.units) == len(units) or dev.mass_erase_time_ms()[0] < unit_time)
    assert plan.time_ms == (dev.mass_erase_time_ms()[0] if plan.mass else unit_time)


@pytest.mark.parametrize("dev", TABLE, ids=lambda d: f"{d.pid:03X}-{d.short_name}")
def test_whole_flash_image(dev: Device):
    plan = plan_erase(image((dev.flash_start, dev.flash_size)), dev)
    assert len(plan.units) == len(dev.erase_units)
    assert plan.mass == dev.mass_erase
    assert plan.banks == list(range(1, dev.banks + 1))
    # last byte and first byte only: first and last unit
    plan = plan_erase(image((dev.flash_start, 1), (dev.flash.end - 1, 1)), dev, allow_mass=False)
    assert [u.index for u in plan.units] == sorted({0, len(dev.erase_units) - 1})


def test_f4_sectors():
    f407 = devices.find("F407")
    plan = plan_erase(image((0x08000000, 100)), f407)
    assert plan.indices == [0] and not plan.mass and plan.time_ms == 400
    plan = plan_erase(image((0x08003FFF, 2)), f407)
    assert plan.indices == [0, 1]
    plan = plan_erase(image((0x08000000, 16 * 1024), (0x08020000, 1)), f407)
    assert plan.indices == [0, 5] and plan.time_ms == 2400 and plan.banks == []
    # 10 of 12 sectors: 12.8 s of sector erases beats a 16 s mass erase
    plan = plan_erase(image((0x08000000, 0xC0000)), f407)
    assert not plan.mass and len(plan.units) == 10 and plan.time_ms == 4 * 400 + 1200 + 5 * 2000
    # all 12: 16.8 s of sectors, so the 16 s mass erase is chosen
    plan = plan_erase(image((0x08000000, 0x100000)), f407)
    assert plan.mass and plan.time_ms == 16000 and plan.banks == [1]
    plan = plan_erase(image((0x08000000, 0x100000)), f407, allow_mass=False)
    assert not plan.mass and plan.time_ms == 4 * 400 + 1200 + 7 * 2000


def test_mass_chosen_when_cheaper_than_units():
    # F429 (2 MiB): all of bank 1 plus one bank-2 sector costs 17.2 s > 16 s mass erase
    f429 = devices.find("F429")
    plan = plan_erase(image((0x08000000, 0x100000), (0x08100000, 1)), f429)
    assert plan.mass and len(plan.units) == 13 and plan.time_ms == 16000 and plan.banks == [1]


def test_dual_bank_f429_bank_two():
    f429 = devices.find("F429")
    plan = plan_erase(image((0x08100000, 0x100000)), f429, allow_mass=False)
    assert plan.indices == list(range(12, 24)) and plan.banks == [2] and not plan.mass
    assert "bank 2" in plan.describe()


def test_l0_never_mass_erases():
    l053 = devices.find("L053")
    plan = plan_erase(image((0x08000000, l053.flash_size)), l053)
    assert not plan.mass and len(plan.units) == 512
    assert plan.time_ms == pytest.approx(512 * 3.2)


def test_other_regions_are_not_erased_nor_rejected():
    f407 = devices.find("F407")
    img = image((0x08000000, 4), (0x1FFFC000, 16), (0x1FFF7800, 32), (0x20004000, 64))
    plan = plan_erase(img, f407)
    assert plan.indices == [0]
    assert plan_erase(image((0x20004000, 64)), f407).empty
    l073 = devices.find("L073")
    assert plan_erase(image((0x08080000, 128)), l073).empty  # data EEPROM


def test_empty_image_plans_nothing():
    plan = plan_erase(Image(), devices.find("G071"))
    assert plan.empty and not plan.mass and plan.time_ms == 0 and plan.describe() == "nothing to erase"


@pytest.mark.parametrize(
    "segment, where",
    [((0x30000000, 16), "0x30000000"), ((0x080FFFF0, 0x20), "0x08100000"), ((0x07FFFFF0, 0x20), "0x07FFFFF0")],
)
def test_data_outside_every_region_is_a_usage_error(segment, where):
    with pytest.raises(UsageError, match=where):
        plan_erase(image(segment), devices.find("F407"))


def test_usage_error_exit_code():
    try:
        plan_erase(image((0x30000000, 1)), devices.find("G071"))
    except UsageError as exc:
        assert exc.exit_code == 2 and "G071" in str(exc)
    else:
        pytest.fail("no UsageError")


def test_reduced_flash_size_rejects_data_beyond_it():
    small = devices.find("F407").with_flash_size(0x80000)
    with pytest.raises(UsageError, match="0x08080000"):
        plan_erase(image((0x08080000, 4)), small)


def test_generic_profile_plans_pages():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dev = devices.lookup(0x7AB)
    plan = plan_erase(image((0x08000800, 0x1000)), dev)
    assert plan.indices == [1, 2] and not plan.mass


def test_page_part_with_equal_mass_time_keeps_other_pages():
    # G0: a global erase costs one page erase, but it would wipe data the image does not
    # cover (EEPROM emulation, calibration): mass only when strictly cheaper or total.
    g071 = devices.find("G071")
    plan = plan_erase(image((0x08000000, 2000)), g071)
    assert not plan.mass and [u.index for u in plan.units] == [0]
    # two pages cost more than one global erase: the pure plan says mass is cheaper
    assert plan_erase(image((0x08000000, 3000)), g071).mass
    full = plan_erase(image((0x08000000, g071.flash_size)), g071)
    assert full.mass
    assert not plan_erase(image((0x08000000, g071.flash_size)), g071, allow_mass=False).mass


@given(st.sampled_from(TABLE), st.integers(0, (1 << 32) - 1))
def test_single_byte_anywhere(dev, address):
    """A byte in flash plans its one unit; a byte in another region plans nothing; a byte in
    no region is refused with its address in the message."""
    img = image((address, 1))
    if address in dev.flash:
        assert plan_erase(img, dev, allow_mass=False).units == [dev.unit_at(address)]
        return
    known = [*dev.ram, dev.option_bytes, dev.otp, dev.eeprom, dev.system_memory]
    if any(r is not None and address in r for r in known):
        assert plan_erase(img, dev).empty
    else:
        with pytest.raises(UsageError, match=f"0x{address:08X}"):
            plan_erase(img, dev)
