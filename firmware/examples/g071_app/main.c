/*
 * STM32G071 example application for stmflash: echoes USART2 (PA2 TX / PA3 RX, 115200
 * 8N1 - the NUCLEO-G071RB virtual COM port, and a USART the ROM bootloader listens on)
 * and blinks the LED on PA5.  Every received byte goes to the stmflash matcher; a valid
 * trigger frame is acknowledged and the chip reboots into its ROM.
 * Register-level, polling, on the 16 MHz HSI the chip starts with.
 */
#include <stdint.h>

#include "stmflash_boot.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

#define RCC_IOPENR REG(0x40021034UL)
#define RCC_APBENR1 REG(0x4002103CUL)
#define GPIOA_MODER REG(0x50000000UL)
#define GPIOA_ODR REG(0x50000014UL)
#define GPIOA_AFRL REG(0x50000020UL)
#define USART2_CR1 REG(0x40004400UL)
#define USART2_BRR REG(0x4000440CUL)
#define USART2_ISR REG(0x4000441CUL)
#define USART2_RDR REG(0x40004424UL)
#define USART2_TDR REG(0x40004428UL)

#define ISR_RXNE (1UL << 5)
#define ISR_TC (1UL << 6)
#define ISR_TXE (1UL << 7)
#define HSI_HZ 16000000UL
#define BAUD 115200UL
#define BLINK_LOOPS 400000UL

static void uart_put(uint8_t b)
{
    while ((USART2_ISR & ISR_TXE) == 0u) {
    }
    USART2_TDR = b;
}

static void uart_send(const uint8_t *data, size_t length)
{
    while (length-- != 0u) {
        uart_put(*data++);
    }
}

static void uart_flush(void)
{
    while ((USART2_ISR & ISR_TC) == 0u) { /* last stop bit on the wire */
    }
}

int main(void)
{
    uint32_t loops = 0u;

    RCC_IOPENR |= (1UL << 0);   /* GPIOA */
    RCC_APBENR1 |= (1UL << 17); /* USART2 */
    (void)RCC_APBENR1;

    GPIOA_MODER = (GPIOA_MODER & ~(0xFFUL << 4)) | (0xAUL << 4); /* PA2, PA3: AF */
    GPIOA_MODER = (GPIOA_MODER & ~(0x3UL << 10)) | (0x1UL << 10); /* PA5: output */
    GPIOA_AFRL = (GPIOA_AFRL & ~(0xFFUL << 8)) | (0x11UL << 8);   /* AF1 = USART2 */

    USART2_BRR = (HSI_HZ + BAUD / 2u) / BAUD;
    USART2_CR1 = (1UL << 3) | (1UL << 2) | (1UL << 0); /* TE, RE, UE */

    for (;;) {
        if ((USART2_ISR & ISR_RXNE) != 0u) {
            uint8_t b = (uint8_t)USART2_RDR;
            uart_put(b);
            if (stmflash_boot_feed(b)) {
                stmflash_boot_request(uart_send, uart_flush);
            }
        }
        if (++loops == BLINK_LOOPS) {
            loops = 0u;
            GPIOA_ODR ^= (1UL << 5);
        }
    }
}
