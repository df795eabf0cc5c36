"""Software trigger: make a running application reboot its STM32 into the ROM bootloader.

:mod:`stmflash.trigger.frame` defines the wire format shared with the C companion in
``firmware/stmflash_boot``; the host sequences that use it live next to it.
"""

from stmflash.trigger.frame import (
    CMD_ENTER_BOOTLOADER,
    FRAME_LEN,
    SYNC,
    Matcher,
    decode_frame,
    encode_ack,
    encode_request,
    find_ack,
    new_nonce,
)

__all__ = [
    "CMD_ENTER_BOOTLOADER",
    "FRAME_LEN",
    "SYNC",
    "Matcher",
    "decode_frame",
    "encode_ack",
    "encode_request",
    "find_ack",
    "new_nonce",
]
