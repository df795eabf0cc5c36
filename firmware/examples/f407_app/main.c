/*
 * STM32F407 example application for stmflash: echoes USART1 (PA9 TX / PA10 RX, 115200
 * 8N1 - the pins the ROM bootloader also listens on, so one cable serves both) and blinks
 * the LED on PD12 (STM32F4DISCOVERY green LED).  Every received byte goes to the stmflash
 * matcher; a valid trigger frame is acknowledged and the chip reboots into its ROM.
 * Register-level, polling, on the 16 MHz HSI the chip starts with.
 */
#include <stdint.h>

#include "stmflash_boot.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

#define RCC_AHB1ENR REG(0x40023830UL)
#define RCC_APB2ENR REG(0x40023844UL)
#define GPIOA_MODER REG(0x40020000UL)
#define GPIOA_AFRH REG(0x40020024UL)
#define GPIOD_MODER REG(0x40020C00UL)
#define GPIOD_ODR REG(0x40020C14UL)
#define USART1_SR REG(0x40011000UL)
#define USART1_DR REG(0x40011004UL)
#define USART1_BRR REG(0x40011008UL)
#define USART1_CR1 REG(0x4001100CUL)

#define SR_RXNE (1UL << 5)
#define SR_TC (1UL << 6)
#define SR_TXE (1UL << 7)
#define HSI_HZ 16000000UL
#define BAUD 115200UL
#define BLINK_LOOPS 400000UL

static void uart_put(uint8_t b)
{
    while ((USART1_SR & SR_TXE) == 0u) {
    }
    USART1_DR = b;
}

static void uart_send(const uint8_t *data, size_t length)
{
    while (length-- != 0u) {
        uart_put(*data++);
    }
}

static void uart_flush(void)
{
    while ((USART1_SR & SR_TC) == 0u) { /* last stop bit on the wire */
    }
}

int main(void)
{
    uint32_t loops = 0u;

    RCC_AHB1ENR |= (1UL << 0) | (1UL << 3); /* GPIOA, GPIOD */
    RCC_APB2ENR |= (1UL << 4);              /* USART1 */
    (void)RCC_APB2ENR;

    GPIOA_MODER = (GPIOA_MODER & ~(0xFUL << 18)) | (0xAUL << 18); /* PA9, PA10: AF */
    GPIOA_AFRH = (GPIOA_AFRH & ~(0xFFUL << 4)) | (0x77UL << 4);   /* AF7 = USART1 */
    GPIOD_MODER = (GPIOD_MODER & ~(0x3UL << 24)) | (0x1UL << 24); /* PD12: output */

    USART1_BRR = (HSI_HZ + BAUD / 2u) / BAUD;
    USART1_CR1 = (1UL << 13) | (1UL << 3) | (1UL << 2); /* UE, TE, RE */

    for (;;) {
        if ((USART1_SR & SR_RXNE) != 0u) {
            uint8_t b = (uint8_t)USART1_DR;
            uart_put(b);
            if (stmflash_boot_feed(b)) {
                stmflash_boot_request(uart_send, uart_flush);
            }
        }
        if (++loops == BLINK_LOOPS) {
            loops = 0u;
            GPIOD_ODR ^= (1UL << 12);
        }
    }
}
