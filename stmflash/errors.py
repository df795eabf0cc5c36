"""One exception hierarchy whose classes carry the process exit code.

The CLI turns any :class:`StmflashError` into one line on stderr and its ``exit_code``;
scripts on a production line rely on these codes, so they are part of the public contract
and documented in the README.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # anything not covered below (NACK we cannot explain, internal error)
EXIT_USAGE = 2  # bad command line or bad input file / image
EXIT_NO_ANSWER = 3  # port missing, chip silent, timeout, device not found, disconnect
EXIT_PROTECTED = 4  # readout/write protection in the way
EXIT_VERIFY = 5  # flash content differs from the image
EXIT_BATCH = 6  # batch: at least one board failed (see the report)
EXIT_INTERRUPTED = 130


class StmflashError(Exception):
    """Base class: a failure we can explain in one line."""

    exit_code = EXIT_FAILURE


class UsageError(StmflashError):
    """The user asked for something impossible (bad option, image outside flash...)."""

    exit_code = EXIT_USAGE


class ImageError(UsageError):
    """A firmware file could not be read; the message names the file and the line/offset."""


class LinkError(StmflashError):
    """The chip cannot be reached: missing port, no answer, timeout, disconnect."""

    exit_code = EXIT_NO_ANSWER


class TimeoutError_(LinkError):
    """The chip stopped answering in the middle of an operation."""


class IdentityError(LinkError):
    """The chip's identity (PID, bootloader, flash size, UID) could not be confirmed: two
    answers never agreed, or they contradict the device table. Nothing was erased."""


class NackError(StmflashError):
    """The bootloader refused a command (NACK) for a reason we could not pin down."""


class ProtectionError(StmflashError):
    """Readout or write protection prevents the operation."""

    exit_code = EXIT_PROTECTED


class VerifyError(StmflashError):
    """Read-back or checksum disagrees with the image: the flash is NOT what was asked."""

    exit_code = EXIT_VERIFY


class BatchError(StmflashError):
    """Not every board of a batch passed."""

    exit_code = EXIT_BATCH
