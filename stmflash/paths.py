"""Output paths checked before anything touches a chip.

A ``--read`` that fails to save after a minute of reading, or a batch that programs every
board and then cannot write its report, wastes work and (for serial numbers) leaves the
ledger and the report disagreeing. So every output path is checked first: these helpers
raise a :class:`~stmflash.errors.UsageError` (exit 2, nothing touched) naming the option
and the path. They leave nothing behind (what they create to test is removed at once), so a
request that fails later leaves no stray files or directories.
"""

from __future__ import annotations

import os


def _usage(msg: str) -> Exception:
    from stmflash.errors import UsageError

    return UsageError(msg)


def _nearest_existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def _probe(directory: str) -> str | None:
    """Why no file can be created in ``directory`` (None: it can). ``os.access`` is not
    enough: root passes it everywhere, also on /proc and read-only mounts."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix=".stmflash-probe-", dir=directory)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    try:
        os.unlink(name)
    except OSError:  # pragma: no cover - we just created it
        pass
    return None


def check_output_file(path: str, what: str) -> None:
    """``path`` can be created or overwritten as a regular file."""
    if not path:
        raise _usage(f"{what}: empty file name")
    if os.path.isdir(path):
        raise _usage(f"{what} {path}: is a directory (give a file name, e.g. {os.path.join(path, 'dump.bin')})")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise _usage(f"{what} {path}: directory {parent} does not exist")
    if os.path.exists(path):
        try:
            with open(path, "ab"):
                pass
        except OSError as exc:
            raise _usage(f"{what} {path}: not writable ({exc.strerror})") from None
    else:
        try:  # the file itself, not only its directory: its name may be too long, say
            with open(path, "xb"):
                pass
            os.unlink(path)
        except OSError as exc:
            raise _usage(f"{what} {path}: cannot create it ({exc.strerror or exc})") from None


def check_output_dir(path: str, what: str) -> None:
    """``path`` is a writable directory, or one that ``os.makedirs`` can create."""
    if not path:
        raise _usage(f"{what}: empty directory name")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise _usage(f"{what} {path}: exists and is not a directory")
        why = _probe(path)
        if why is not None:
            raise _usage(f"{what} {path}: cannot write there ({why})")
        return
    base = _nearest_existing(path)
    if not os.path.isdir(base):
        raise _usage(f"{what} {path}: {base} is not a directory")
    # create the missing directories and remove them again: the real test (a name may be
    # too long, a mount read-only, /proc refuses everything), leaving nothing behind
    created: list[str] = []
    p = os.path.abspath(path)
    missing: list[str] = []
    while p != base:
        missing.append(p)
        p = os.path.dirname(p)
    try:
        for d in reversed(missing):
            os.mkdir(d)
            created.append(d)
    except OSError as exc:
        raise _usage(f"{what} {path}: cannot create it ({exc.strerror or exc})") from None
    finally:
        for d in reversed(created):
            try:
                os.rmdir(d)
            except OSError:  # pragma: no cover - someone else filled it meanwhile
                pass


__all__ = ["check_output_dir", "check_output_file"]
