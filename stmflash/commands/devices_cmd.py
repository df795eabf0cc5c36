"""``stmflash devices``: show the device table, so users can check what stmflash will assume
about their chip (erase layout, usable RAM, interfaces) before it touches one, and where its
ROM bootloader listens (interfaces and pins, AN2606: :mod:`stmflash.rom_interfaces`) before
they wire it."""

from __future__ import annotations

import json as jsonlib
from typing import Any

import click

from stmflash.commands.common import complete_devices


def _size(n: int) -> str:
    if n and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MiB"
    if n and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


def _hex(v: int | None) -> str:
    return "-" if v is None else f"0x{v:08X}"


def _ob_fields(dev: Any) -> str:
    """The option-field table (--ob/--ob-show): how many fields, how many writable."""
    from stmflash import ob_fields

    t = ob_fields.table_of(dev)
    if t is None:
        return "-"
    if t.unknown:
        return f"{t.name}: {t.unknown}"
    writable = sum(1 for f in t.fields if not f.writable_reason())
    return f"{t.name}: {len(t.fields)} fields, {writable} writable (stmflash uart/dfu --ob-show)"


def _region(r: Any) -> str:
    if r is None:
        return "-"
    return f"0x{r.start:08X}-0x{r.end - 1:08X} ({_size(r.size)})"


def _bl_ids(dev: Any) -> str:
    return ",".join(f"0x{b:02X}" for b in dev.bl_ids) or "-"


def _stub(dev: Any) -> str:
    """Whether ``stmflash uart`` can program this part through the RAM flasher stub."""
    from stmflash.stub import GROUP_FAMILIES, support

    ok, why = support(dev)
    return f"yes (group {why}: {GROUP_FAMILIES.get(why, why)})" if ok else f"no ({why}): ROM path"


def _rom_lines(dev: Any) -> list[str]:
    """The ROM bootloader's interfaces and pins (AN2606), one per line, per bootloader ID
    where AN2606 gives a table per bootloader version."""
    from stmflash.rom_interfaces import parts_for

    parts = parts_for(dev)
    if not parts:
        return ["  ROM listens on:   not recorded (no AN2606 bootloader configuration for this entry)"]
    lines: list[str] = []
    for p in parts:
        head = "  ROM listens on:   " if not lines else "                    "
        tag = f"BL {','.join(f'0x{b:02X}' for b in p.bl_ids)}: " if len(parts) > 1 and p.bl_ids else ""
        lines.append(f"{head}{tag}{p.source}")
        lines += [f"    {i.text()}" for i in p.interfaces]
        if p.note:
            lines.append(f"    note: {p.note}")
    return lines


def _table(devs: list[Any]) -> str:
    from stmflash.stub import support

    header = ("PID", "BL IDs", "name", "flash", "erase layout", "RAM", "interfaces", "stub")
    rows = [header]
    for d in devs:
        rows.append(
            (
                f"0x{d.pid:03X}",
                _bl_ids(d),
                d.name,
                _size(d.flash_size),
                d.layout_summary,
                _size(sum(r.size for r in d.ram)),
                ",".join(d.interfaces),
                support(d)[1] if support(d)[0] else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"{len(devs)} entries, {len({d.pid for d in devs})} product IDs")
    return "\n".join(lines)


def _detail(dev: Any) -> str:
    units = dev.erase_units
    lines = [
        f"{dev.name}  (PID 0x{dev.pid:03X}, family {dev.family})",
        f"  aliases:          {', '.join(dev.aliases) or '-'}",
        f"  bootloader IDs:   {_bl_ids(dev)}",
        f"  flash:            {_region(dev.flash)}",
        f"  erase layout:     {dev.layout_summary}",
        f"  erase units:      {len(units)} (index {units[0].index}..{units[-1].index})" if units else "  erase units:      0",
    ]
    for b in sorted({u.bank for u in units}):
        bu = dev.bank_units(b)
        lines.append(
            f"    bank {b}:         units {bu[0].index}..{bu[-1].index} at "
            f"0x{bu[0].address:08X}-0x{bu[-1].end - 1:08X}"
        )
    lines += [
        "  RAM:              " + ("; ".join(_region(r) for r in dev.ram) or "-"),
        f"  RAM usable:       {_region(dev.ram_usable)}",
        f"  system memory:    {_region(dev.system_memory)}",
        f"  BL ID byte at:    {_hex(dev.bl_id_address)}",
        f"  option bytes:     {_region(dev.option_bytes)}"
        + (f"; bank 2 {_region(dev.option_bytes2)}" if dev.option_bytes2 is not None else ""),
        f"  option fields:    {_ob_fields(dev)}",
        f"  OTP:              {_region(dev.otp)}",
        f"  data EEPROM:      {_region(dev.eeprom)}",
        f"  flash-size reg:   {_hex(dev.flash_size_reg)}",
        f"  UID reg:          {_hex(dev.uid_reg)}",
        f"  write alignment:  {dev.write_align} bytes (short tail: 0xFF-filled by the ROM; "
        f"misaligned start: {'ignored, ACKed' if dev.write_misaligned == 'drop' else 'NACKed'})",
        f"  erased flash:     0x{dev.erased:02X}",
        f"  empty check:      {'yes' if dev.empty_check else 'no'}",
        f"  mass erase:       {'yes' if dev.mass_erase else 'no (page by page)'}",
        f"  USART protocol:   v{dev.usart_protocol >> 4}.{dev.usart_protocol & 0xF} "
        f"(erase command 0x{dev.erase_command:02X})",
        "  USART commands:   " + " ".join(f"{c:02X}" for c in dev.commands),
        f"  interfaces:       {', '.join(dev.interfaces)}",
        f"  startup delay:    {dev.startup_ms:g} ms",
        f"  RAM stub:         {_stub(dev)}",
    ]
    lines += _rom_lines(dev)
    sizes = sorted({u.size for u in units})
    times = ", ".join(
        f"{_size(s)}: {dev.unit_erase_ms(next(u for u in units if u.size == s))[0]:g}/"
        f"{dev.unit_erase_ms(next(u for u in units if u.size == s))[1]:g} ms"
        for s in sizes
    )
    mass = dev.mass_erase_time_ms()
    prog = dev.program_ms_per_256
    lines += [
        f"  erase time:       {times} (typ/max)",
        f"  mass erase time:  {mass[0]:g}/{mass[1]:g} ms",
        f"  program time:     {prog[0]:g}/{prog[1]:g} ms per 256 bytes",
    ]
    if "dfu" in dev.interfaces and dev.dfu:
        lines.append(
            f"  DFU:              bcdDevice 0x{dev.dfu.get('bcd_device', 0):04X}, "
            f"transfer {dev.dfu.get('transfer_size', '-')} bytes"
        )
        for i, alt in enumerate(dev.dfu_alts()):
            lines.append(f"    alt {i}: {alt}")
    if dev.note:
        lines.append(f"  note:             {dev.note}")
    return "\n".join(lines)


def _public(dev: Any) -> dict[str, Any]:
    """``Device.to_dict`` in the JSON convention of :mod:`stmflash.jsonfmt`; ``layout`` is
    the erase units of one bank spelled out (the table's repeating short form is internal)."""
    from stmflash.devices import unit_groups
    from stmflash.jsonfmt import addr, hexid, region
    from stmflash.rom_interfaces import parts_for

    d = dev.to_dict()
    d.pop("pid_hex", None)
    # AN2606 bootloader configuration: a list per bootloader-ID group, null = not recorded
    d["rom_interfaces"] = [p.to_dict() for p in parts_for(dev)] or None
    d["pid"] = hexid(dev.pid, 3)
    d["bl_ids"] = [hexid(b, 2) for b in dev.bl_ids]
    flash = dict(d["flash"])
    flash["start"] = addr(dev.flash_start)
    banks = sorted({u.bank for u in dev.erase_units})
    flash["layout"] = unit_groups(dev.bank_units(banks[0]) if len(banks) > 1 else dev.erase_units)
    d["flash"] = flash
    d["ram"] = [region(r) for r in d["ram"]]
    for key in ("ram_usable", "system_memory", "option_bytes", "otp", "eeprom"):
        d[key] = region(d[key])
    if "option_bytes2" in d:
        d["option_bytes2"] = region(d["option_bytes2"])
    for key in ("bl_id_address", "flash_size_reg", "uid_reg"):
        d[key] = addr(d[key])
    d["erase_command"] = hexid(d["erase_command"], 2)
    d["usart_protocol"] = hexid(d["usart_protocol"], 2)
    d["usart_commands"] = [hexid(c, 2) for c in d["usart_commands"]]
    if d.get("dfu") and isinstance(d["dfu"].get("bcd_device"), int):
        d["dfu"] = {**d["dfu"], "bcd_device": hexid(d["dfu"]["bcd_device"], 4)}
    if d.get("ob_layout"):  # byte offsets stay numbers; RDP codes and the default are byte values
        ob = dict(d["ob_layout"])
        for key in ("rdp0", "rdp1", "rdp2"):
            if isinstance(ob.get(key), int):
                ob[key] = hexid(ob[key], 2)
        d["ob_layout"] = ob
    return d


@click.command("devices")
@click.argument("name_or_pid", required=False, shell_complete=complete_devices)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of device objects.")
@click.option("--family", "family", default=None, help="Only list this family (e.g. F4, G0).")
def devices(name_or_pid: str | None, as_json: bool, family: str | None) -> None:
    """Show the STM32 device table, or one device in detail.

    \b
    NAME_OR_PID is an alias (F407, G071), a name or a product ID (0x413).
    The detail shows the interfaces and pins the part's ROM bootloader
    listens on (AN2606), e.g. USART1 TX PA9 / RX PA10, USB DFU DM PA11 / DP PA12.
    Examples:
      stmflash devices
      stmflash devices F407
      stmflash devices 0x450 --json
    """
    from stmflash import devices as table
    from stmflash.errors import UsageError

    if name_or_pid:
        try:
            selected = [table.find(name_or_pid)]
        except KeyError as exc:
            raise UsageError(exc.args[0] if exc.args else f"unknown device {name_or_pid!r}") from None
    else:
        selected = list(table.all_devices())
        if family:
            selected = [d for d in selected if d.family.upper() == family.upper()]
            if not selected:
                raise UsageError(
                    f"unknown family {family!r} (known: {', '.join(table.families())})"
                )
    if as_json:
        click.echo(jsonlib.dumps([_public(d) for d in selected], indent=2))
    elif name_or_pid:
        click.echo(_detail(selected[0]))
    else:
        click.echo(_table(selected))
