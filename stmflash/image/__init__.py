"""Firmware images: one model (:class:`Image`), loaders for every format, writers, tools.

``load`` and the writers are imported lazily so that ``import stmflash.image`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from stmflash.image.model import Image, Segment

__all__ = ["Image", "Segment", "load", "save"]


def load(path: str, **kwargs: Any) -> Image:
    """Load a firmware file of any supported format (see :mod:`stmflash.image.loaders`)."""
    from stmflash.image.loaders import load as _load

    return _load(path, **kwargs)


def save(image: Image, path: str, **kwargs: Any) -> None:
    """Write an image; the format comes from the extension (see :mod:`stmflash.image.writers`)."""
    from stmflash.image.writers import save as _save

    _save(image, path, **kwargs)
