/*
 * Minimal start-up for the STM32G071 example: a vector table (core exceptions only; the
 * example polls, it enables no interrupt) and a Reset_Handler that asks the stmflash
 * companion first - before .data/.bss exist and before any clock is touched - whether
 * the last reset was a request to enter the ROM bootloader.
 */
#include <stdint.h>

#include "stmflash_boot.h"

extern uint32_t _estack, _sidata, _sdata, _edata, _sbss, _ebss;
int main(void);
void Reset_Handler(void);
void Default_Handler(void);

typedef void (*vector_t)(void);
extern const vector_t vectors[16];

void Default_Handler(void)
{
    for (;;) {
    }
}

void Reset_Handler(void)
{
    uint32_t *src, *dst;
    (void)stmflash_boot_check(); /* does not return when a request is pending */
    /* After the ROM's Go command VTOR (and the remap) are whatever the ROM left: point the
     * core back at our own table before anything can raise an exception. */
    *(volatile uint32_t *)0xE000ED08UL = (uint32_t)vectors;
    for (src = &_sidata, dst = &_sdata; dst < &_edata;) {
        *dst++ = *src++;
    }
    for (dst = &_sbss; dst < &_ebss;) {
        *dst++ = 0u;
    }
    (void)main();
    for (;;) {
    }
}

__attribute__((section(".isr_vector"), used)) const vector_t vectors[16] = {
    (vector_t)&_estack, /* initial MSP */
    Reset_Handler,
    Default_Handler, /* NMI */
    Default_Handler, /* HardFault */
    0, 0, 0, 0, 0, 0, 0, /* reserved on Cortex-M0+ */
    Default_Handler, /* SVCall */
    0, 0,
    Default_Handler, /* PendSV */
    Default_Handler, /* SysTick */
};
