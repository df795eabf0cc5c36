"""Settings people retype: the port, baud rate and ``--enter`` chain, per profile.

Looked up in this order when the command line does not say (``stmflash uart`` only):

1. ``STMFLASH_PORT`` for the port;
2. the user's config file, ``$XDG_CONFIG_HOME/stmflash/config.toml`` (default
   ``~/.config/stmflash/config.toml``), table ``[profile.NAME]`` chosen by ``--profile`` or
   ``STMFLASH_PROFILE`` (default ``default``), keys ``port``, ``baud``, ``enter``::

       [profile.default]
       port = "/dev/ttyUSB0"
       baud = 230400

       [profile.bench]
       port = "/dev/serial/by-id/usb-FTDI_FT232R-if00-port0"
       enter = "pins:rts,dtr,-dtr:-rts,dtr,-dtr"

3. for the port, the only USB serial adapter present (said on stderr); with several, the
   candidates are listed (exit 2).
"""

from __future__ import annotations

import os
from typing import Any

KEYS = {"port": str, "baud": int, "enter": str}


def config_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "stmflash", "config.toml")


def profile(name: str | None = None) -> dict[str, Any]:
    """The settings of one profile (empty when there is no config file)."""
    from stmflash.errors import UsageError

    name = name or os.environ.get("STMFLASH_PROFILE") or "default"
    path = config_path()
    if not os.path.exists(path):
        if name != "default":
            raise UsageError(f"profile {name!r}: no config file {path}")
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the config file: {exc}") from None
    profiles = data.get("profile", {})
    if not isinstance(profiles, dict) or (name not in profiles and name != "default"):
        known = ", ".join(sorted(profiles)) if isinstance(profiles, dict) else ""
        raise UsageError(f"{path}: no [profile.{name}] (profiles: {known or 'none'})")
    table = profiles.get(name, {})
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in KEYS:
            raise UsageError(f"{path}: profile.{name}.{key}: unknown key (known: {', '.join(KEYS)})")
        if not isinstance(value, KEYS[key]) or isinstance(value, bool):
            raise UsageError(f"{path}: profile.{name}.{key}: expected {KEYS[key].__name__}, got {value!r}")
        out[key] = value
    return out


def only_adapter() -> str:
    """The one USB serial adapter present, else a UsageError listing what there is."""
    from serial.tools import list_ports

    from stmflash.errors import UsageError

    usb = [p for p in list_ports.comports() if p.vid is not None]
    if len(usb) == 1:
        return usb[0].device
    if not usb:
        raise UsageError("no PORT given, none in STMFLASH_PORT or the config file, and no USB serial "
                         "adapter is connected (stmflash list shows the ports)")
    names = ", ".join(f"{p.device} ({p.description})" for p in usb)
    raise UsageError(f"no PORT given and several USB serial adapters are connected: {names}; name one")


def default_port(settings: dict[str, Any]) -> tuple[str, str]:
    """(port, where it came from)."""
    env = os.environ.get("STMFLASH_PORT")
    if env:
        return env, "STMFLASH_PORT"
    if settings.get("port"):
        return settings["port"], config_path()
    return only_adapter(), "the only USB serial adapter present"


__all__ = ["config_path", "default_port", "only_adapter", "profile"]
