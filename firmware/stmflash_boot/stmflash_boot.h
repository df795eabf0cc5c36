/*
 * stmflash_boot - let a running STM32 application reboot into its ROM bootloader on a
 * framed command from the host (stmflash), so boards can be reflashed without BOOT0.
 *
 * Add stmflash_boot.c to the build, select the family (-DSTMFLASH_BOOT_FAMILY_F4 or let a
 * CMSIS device header define STM32F4), then:
 *
 *   1. call stmflash_boot_check() first thing in Reset_Handler (before .data/.bss init and
 *      before clocks are touched) or first in SystemInit();
 *   2. feed every received byte of the command link (UART or USB CDC) to
 *      stmflash_boot_feed(); when it returns non-zero, call
 *      stmflash_boot_request(send, flush) - it acknowledges, waits for the ack to leave,
 *      stores the request and resets;
 *   3. (USB DFU runtime) call stmflash_boot_dfu_detach() from the DFU_DETACH handler,
 *      after the status stage.
 *
 * Wire format (must match stmflash/trigger/frame.py), little-endian:
 *   request  B0 07 | 01 | nonce[4] | crc32(01 || nonce || key)[4]
 *   ack      B0 07 | 81 | nonce[4] | crc32(81 || nonce || key)[4]
 * crc32 = zlib/IEEE CRC-32.  The key (default empty) is STMFLASH_BOOT_KEY or set at run
 * time with stmflash_boot_set_key().
 *
 * Where the request survives the reset (choose one):
 *   STMFLASH_BOOT_FLAG_NOINIT (default): a 64-bit word in section STMFLASH_BOOT_NOINIT_SECTION
 *     (".noinit.stmflash_boot"); the linker script must place it in RAM as NOLOAD, outside
 *     .bss and .data (see firmware/README.md).
 *   STMFLASH_BOOT_FLAG_BKP: backup register 0 (RTC_BKP0R / TAMP_BKP0R, F2 F4 F7 G0 G4 L4 H7);
 *     STMFLASH_BOOT_BKP_REG overrides the address.
 */
#ifndef STMFLASH_BOOT_H
#define STMFLASH_BOOT_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__) || defined(__ICCARM__)
#define STMFLASH_BOOT_NORETURN __attribute__((noreturn))
#else
#define STMFLASH_BOOT_NORETURN
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define STMFLASH_BOOT_SYNC0 0xB0u
#define STMFLASH_BOOT_SYNC1 0x07u
#define STMFLASH_BOOT_CMD_ENTER 0x01u
#define STMFLASH_BOOT_ACK_FLAG 0x80u
#define STMFLASH_BOOT_FRAME_LEN 11u

/* Value stored across the reset ("STMB" + its complement for the RAM variant). */
#ifndef STMFLASH_BOOT_MAGIC
#define STMFLASH_BOOT_MAGIC 0x424D5453UL
#endif

#ifndef STMFLASH_BOOT_KEY
#define STMFLASH_BOOT_KEY ""
#endif

#ifndef STMFLASH_BOOT_NOINIT_SECTION
#define STMFLASH_BOOT_NOINIT_SECTION ".noinit.stmflash_boot"
#endif

/* Return values of stmflash_boot_check() (it does not return when it enters the ROM). */
#define STMFLASH_BOOT_NO_REQUEST 0      /* normal boot: no (valid) request stored */
#define STMFLASH_BOOT_STALE_REQUEST 1   /* request found without a software reset: dropped */
#define STMFLASH_BOOT_BAD_ROM_VECTORS 2 /* request honoured but the ROM table looked wrong */

typedef void (*stmflash_boot_send_fn)(const uint8_t *data, size_t length);
typedef void (*stmflash_boot_flush_fn)(void);

/* Matcher: feed every received byte; non-zero when a valid request has just completed.
 * Keeps the last 11 bytes, so it resynchronises on any input. Not reentrant: feed from
 * one context (main loop or one ISR). */
int stmflash_boot_feed(uint8_t byte);
void stmflash_boot_matcher_reset(void);
uint32_t stmflash_boot_last_nonce(void);

/* Shared key (raw bytes, not NUL-terminated); the storage must stay valid. */
void stmflash_boot_set_key(const uint8_t *key, size_t length);

/* The 11-byte acknowledgement for the last matched nonce. */
void stmflash_boot_ack_frame(uint8_t out[11]);

/* Acknowledge with send(), wait with flush() (TC set / CDC FIFO drained), store the
 * request and reset.  Either callback may be NULL.  Does not return. */
void stmflash_boot_request(stmflash_boot_send_fn send, stmflash_boot_flush_fn flush) STMFLASH_BOOT_NORETURN;

/* Store the request and reset (no acknowledgement): DFU_DETACH, buttons, shells. */
void stmflash_boot_enter(void) STMFLASH_BOOT_NORETURN;

/* DFU runtime: call from the DFU_DETACH handler once the status stage is done. */
void stmflash_boot_dfu_detach(void) STMFLASH_BOOT_NORETURN;

/* Early hook: if a request is stored AND the last reset was a software reset, clear both
 * (one shot) and enter the ROM.  Needs no .data/.bss and no clock set-up. */
int stmflash_boot_check(void);

/* Address the ROM vector table is read from on this build (family table or override). */
uint32_t stmflash_boot_sysmem_base(void);

#ifdef __cplusplus
}
#endif

#endif /* STMFLASH_BOOT_H */
