/*
 * Host-side mock of the few Cortex-M/STM32 registers stmflash_boot touches, so that its
 * decision logic (flag + software-reset flag, one shot, ROM address, ordering of ack,
 * flush and reset) runs unchanged on a PC.  Built with STMFLASH_BOOT_HOST_TEST into a
 * shared library that tests/test_firmware_logic.py drives through ctypes.
 *
 * "Reset" and "jump" never return on a chip; here they longjmp back to the mock_run_*
 * wrapper that called into the library.
 */
#include <setjmp.h>
#include <stdint.h>
#include <string.h>

#include "stmflash_boot.h"

#define MOCK_REGS 256
#define MOCK_LOG 256

static struct {
    uint32_t address;
    uint32_t value;
} regs[MOCK_REGS];
static unsigned nregs;
static uint32_t spill; /* writes once the table is full (a test bug; visible as a count) */

static jmp_buf env;
static char events[MOCK_LOG + 1]; /* D/E irq off/on, S send, F flush, R reset, J jump, C control */
static unsigned nevents;
static uint32_t jump_sp, jump_pc;
static uint8_t sent[64];
static unsigned nsent;
static int primask;

static void log_event(char c)
{
    if (nevents < MOCK_LOG) {
        events[nevents++] = c;
        events[nevents] = '\0';
    }
}

volatile uint32_t *stmflash_boot_mock_reg(uint32_t address)
{
    unsigned i;
    for (i = 0; i < nregs; i++) {
        if (regs[i].address == address) {
            return &regs[i].value;
        }
    }
    if (nregs == MOCK_REGS) {
        return &spill;
    }
    regs[nregs].address = address;
    regs[nregs].value = 0;
    return &regs[nregs++].value;
}

void stmflash_boot_mock_irq(int enabled)
{
    primask = !enabled;
    log_event(enabled ? 'E' : 'D');
}

void stmflash_boot_mock_control_zero(void)
{
    log_event('C');
}

uint32_t stmflash_boot_mock_flag_address(const volatile void *flag)
{
    return (uint32_t)(uintptr_t)flag;
}

void stmflash_boot_mock_jump(uint32_t sp, uint32_t pc)
{
    jump_sp = sp;
    jump_pc = pc;
    log_event('J');
    longjmp(env, 1);
}

void stmflash_boot_mock_wait_reset(void)
{
    log_event('R');
    longjmp(env, 2);
}

/* ---- API for the Python test ---------------------------------------------------------- */
void mock_clear(void)
{
    nregs = 0;
    nevents = 0;
    events[0] = '\0';
    nsent = 0;
    jump_sp = jump_pc = 0;
    primask = 0;
}

void mock_set(uint32_t address, uint32_t value) { *stmflash_boot_mock_reg(address) = value; }
uint32_t mock_get(uint32_t address) { return *stmflash_boot_mock_reg(address); }
const char *mock_events(void) { return events; }
uint32_t mock_jump_sp(void) { return jump_sp; }
uint32_t mock_jump_pc(void) { return jump_pc; }
int mock_primask(void) { return primask; }
unsigned mock_sent(uint8_t *out)
{
    memcpy(out, sent, nsent);
    return nsent;
}

static void mock_send(const uint8_t *data, size_t length)
{
    log_event('S');
    if (nsent + length <= sizeof sent) {
        memcpy(sent + nsent, data, length);
        nsent += (unsigned)length;
    }
}

static void mock_flush(void) { log_event('F'); }

/* 0..2: stmflash_boot_check() returned that value; 101: jumped to the ROM; 102: reset. */
int mock_run_check(void)
{
    int how = setjmp(env);
    if (how != 0) {
        return 100 + how;
    }
    return stmflash_boot_check();
}

int mock_run_request(int with_callbacks)
{
    int how = setjmp(env);
    if (how != 0) {
        return 100 + how;
    }
    if (with_callbacks) {
        stmflash_boot_request(mock_send, mock_flush);
    } else {
        stmflash_boot_request(NULL, NULL);
    }
    return 0; /* not reached */
}

int mock_run_dfu_detach(void)
{
    int how = setjmp(env);
    if (how != 0) {
        return 100 + how;
    }
    stmflash_boot_dfu_detach();
    return 0; /* not reached */
}
