/*
 * stmflash_boot_regs.h - the few STM32 registers the stmflash companion touches.
 *
 * Why this file exists: the companion must build in projects that do not use the ST HAL
 * and on machines without ST's CMSIS device headers.  It carries only the addresses and
 * bits it needs, per family.  When a CMSIS device header (stm32f4xx.h, ...) was included
 * before stmflash_boot.c is compiled (add -include stm32f4xx.h, or define
 * STMFLASH_BOOT_DEVICE_HEADER="stm32f4xx.h"), its RCC_BASE / SYSCFG_BASE and RCC reset-flag
 * bits take precedence over the values below.
 *
 * Family selection: define one STMFLASH_BOOT_FAMILY_xxx, or let the CMSIS family macro
 * (STM32F4, STM32G0, ... which the device header defines) select it.
 *
 * Sources: ST reference manuals (RCC_CSR / RCC_RSR, SYSCFG memory remap), AN2606
 * (system memory), cross-checked against the jump-to-bootloader code of MicroPython,
 * stm32duino, QMK and Betaflight.  NOT verified on
 * hardware for every family: the jump validates the ROM vector table before using it.
 */
#ifndef STMFLASH_BOOT_REGS_H
#define STMFLASH_BOOT_REGS_H

#include <stdint.h>

#if defined(STMFLASH_BOOT_DEVICE_HEADER) && !defined(STMFLASH_BOOT_HOST_TEST)
#include STMFLASH_BOOT_DEVICE_HEADER
#endif

/* ------------------------------------------------------------------------------------
 * Register access.  The host unit tests (STMFLASH_BOOT_HOST_TEST) route every access
 * through a mock so that the decision logic runs unchanged on a PC.
 * ---------------------------------------------------------------------------------- */
#ifdef STMFLASH_BOOT_HOST_TEST
volatile uint32_t *stmflash_boot_mock_reg(uint32_t address);
#define SB_REG32(addr) (*stmflash_boot_mock_reg((uint32_t)(addr)))
#else
#define SB_REG32(addr) (*(volatile uint32_t *)(uintptr_t)(addr))
#endif

/* ------------------------------------------------------------------------------------
 * Family selection from the CMSIS family macro when none was given explicitly.
 * ---------------------------------------------------------------------------------- */
#if !defined(STMFLASH_BOOT_FAMILY_F0) && !defined(STMFLASH_BOOT_FAMILY_F1) &&            \
    !defined(STMFLASH_BOOT_FAMILY_F2) && !defined(STMFLASH_BOOT_FAMILY_F3) &&            \
    !defined(STMFLASH_BOOT_FAMILY_F4) && !defined(STMFLASH_BOOT_FAMILY_F7) &&            \
    !defined(STMFLASH_BOOT_FAMILY_G0) && !defined(STMFLASH_BOOT_FAMILY_G4) &&            \
    !defined(STMFLASH_BOOT_FAMILY_H7) && !defined(STMFLASH_BOOT_FAMILY_H7AB) &&          \
    !defined(STMFLASH_BOOT_FAMILY_L0) && !defined(STMFLASH_BOOT_FAMILY_L1) &&            \
    !defined(STMFLASH_BOOT_FAMILY_L4) && !defined(STMFLASH_BOOT_FAMILY_C0) &&            \
    !defined(STMFLASH_BOOT_FAMILY_L5) && !defined(STMFLASH_BOOT_FAMILY_CUSTOM)
#if defined(STM32H7A3xx) || defined(STM32H7A3xxQ) || defined(STM32H7B3xx) ||             \
    defined(STM32H7B3xxQ) || defined(STM32H7B0xx) || defined(STM32H7B0xxQ)
#define STMFLASH_BOOT_FAMILY_H7AB
#elif defined(STM32H7)
#define STMFLASH_BOOT_FAMILY_H7
#elif defined(STM32F0)
#define STMFLASH_BOOT_FAMILY_F0
#elif defined(STM32F1)
#define STMFLASH_BOOT_FAMILY_F1
#elif defined(STM32F2)
#define STMFLASH_BOOT_FAMILY_F2
#elif defined(STM32F3)
#define STMFLASH_BOOT_FAMILY_F3
#elif defined(STM32F4)
#define STMFLASH_BOOT_FAMILY_F4
#elif defined(STM32F7)
#define STMFLASH_BOOT_FAMILY_F7
#elif defined(STM32G0)
#define STMFLASH_BOOT_FAMILY_G0
#elif defined(STM32G4)
#define STMFLASH_BOOT_FAMILY_G4
#elif defined(STM32L0)
#define STMFLASH_BOOT_FAMILY_L0
#elif defined(STM32L1)
#define STMFLASH_BOOT_FAMILY_L1
#elif defined(STM32L4)
#define STMFLASH_BOOT_FAMILY_L4
#elif defined(STM32C0)
#define STMFLASH_BOOT_FAMILY_C0
#elif defined(STM32L5)
#define STMFLASH_BOOT_FAMILY_L5
#else
#error "stmflash_boot: define STMFLASH_BOOT_FAMILY_xxx (F0 F1 F2 F3 F4 F7 G0 G4 H7 H7AB L0 L1 L4 C0 L5 CUSTOM)"
#endif
#endif

/* ------------------------------------------------------------------------------------
 * Per-family facts.
 *   SB_RCC_BASE / SB_RSTF_OFFSET : register holding the reset flags (RCC_CSR, RCC_RSR)
 *   SB_RSTF_SFT / SB_RSTF_RMVF   : software-reset flag(s) / "remove reset flags" bit
 *   SB_SYSMEM_BASE               : where the ROM's vector table is read (SP, reset vector)
 *   SB_REMAP                     : 1 if SYSCFG can alias system memory at 0x00000000
 *   SB_HAS_VTOR / SB_HAS_CACHE   : core features (Cortex-M0 has no VTOR; M7 has caches)
 *   SB_BKP_*                     : backup register backend (STMFLASH_BOOT_FLAG_BKP)
 * ---------------------------------------------------------------------------------- */
#define SB_BIT(n) (1UL << (n))

#if defined(STMFLASH_BOOT_FAMILY_F0)
/* Sub-family bases differ (F03x/F05x 0x1FFFEC00, F030xC/F09x 0x1FFFD800, F04x/F070x6
 * 0x1FFFC400, F07x 0x1FFFC800); after the SYSCFG remap system memory is aliased at 0,
 * which is the same on every F0, so that is the default. */
#define SB_RCC_BASE        0x40021000UL
#define SB_RSTF_OFFSET     0x24UL
#define SB_RSTF_SFT        SB_BIT(28)
#define SB_RSTF_RMVF       SB_BIT(24)
#define SB_SYSMEM_DEFAULT  0x00000000UL
#define SB_REMAP           1
#define SB_SYSCFG_BASE     0x40010000UL
#define SB_MEMRMP_MASK     0x3UL
#define SB_SYSCFG_EN_REG   0x18UL /* RCC_APB2ENR */
#define SB_SYSCFG_EN_BIT   SB_BIT(0)
#define SB_HAS_VTOR        0
#elif defined(STMFLASH_BOOT_FAMILY_F1)
#define SB_RCC_BASE        0x40021000UL
#define SB_RSTF_OFFSET     0x24UL
#define SB_RSTF_SFT        SB_BIT(28)
#define SB_RSTF_RMVF       SB_BIT(24)
#if defined(STM32F105xC) || defined(STM32F107xC) || defined(STM32F10X_CL)
#define SB_SYSMEM_DEFAULT  0x1FFFB000UL /* connectivity line */
#elif defined(STM32F101xG) || defined(STM32F103xG) || defined(STM32F10X_XL)
#define SB_SYSMEM_DEFAULT  0x1FFFE000UL /* XL density */
#else
#define SB_SYSMEM_DEFAULT  0x1FFFF000UL
#endif
#define SB_REMAP           0
#define SB_HAS_VTOR        1
#elif defined(STMFLASH_BOOT_FAMILY_F2) || defined(STMFLASH_BOOT_FAMILY_F4)
#define SB_RCC_BASE        0x40023800UL
#define SB_RSTF_OFFSET     0x74UL
#define SB_RSTF_SFT        SB_BIT(28)
#define SB_RSTF_RMVF       SB_BIT(24)
#define SB_SYSMEM_DEFAULT  0x1FFF0000UL
#define SB_REMAP           1
#define SB_SYSCFG_BASE     0x40013800UL
#define SB_MEMRMP_MASK     0x3UL /* F42x/43x have 3 bits; 01 = system flash on all */
#define SB_SYSCFG_EN_REG   0x44UL /* RCC_APB2ENR */
#define SB_SYSCFG_EN_BIT   SB_BIT(14)
#define SB_HAS_VTOR        1
#define SB_BKP_REG         0x40002850UL /* RTC_BKP0R */
#define SB_BKP_PWREN_REG   0x40UL       /* RCC_APB1ENR.PWREN */
#define SB_BKP_PWREN_BIT   SB_BIT(28)
#define SB_BKP_DBP_REG     0x40007000UL /* PWR_CR.DBP */
#define SB_BKP_DBP_BIT     SB_BIT(8)
#elif defined(STMFLASH_BOOT_FAMILY_F3)
#define SB_RCC_BASE        0x40021000UL
#define SB_RSTF_OFFSET     0x24UL
#define SB_RSTF_SFT        SB_BIT(28)
#define SB_RSTF_RMVF       SB_BIT(24)
#define SB_SYSMEM_DEFAULT  0x1FFFD800UL
#define SB_REMAP           1
#define SB_SYSCFG_BASE     0x40010000UL
#define SB_MEMRMP_MASK     0x3UL
#define SB_SYSCFG_EN_REG   0x18UL
#define SB_SYSCFG_EN_BIT   SB_BIT(0)
#define SB_HAS_VTOR        1
#elif defined(STMFLASH_BOOT_FAMILY_F7)
/* No SYSCFG remap: the ROM is entered through its absolute address (BOOT_ADD1 default
 * 0x0040 boots the same ROM through the ITCM alias 0x00100000). */
#define SB_RCC_BASE        0x40023800UL
#define SB_RSTF_OFFSET     0x74UL
#define SB_RSTF_SFT        SB_BIT(28)
#define SB_RSTF_RMVF       SB_BIT(24)
#define SB_SYSMEM_DEFAULT  0x1FF00000UL
#define SB_REMAP           0
#define SB_HAS_VTOR        1
#define SB_HAS_CACHE       1
#define SB_BKP_REG         0x40002850UL
#define SB_BKP_PWREN_REG   0x40UL
#define SB_BKP_PWREN_BIT   SB_BIT(28)
#define SB_BKP_DBP_REG     0x40007000UL /* PWR_CR1.DBP */
#define SB_BKP_DBP_BIT     SB_BIT(8)
#elif defined(STMFLASH_BOOT_FAMILY_H7) || defined(STMFLASH_BOOT_FAMILY_H7AB)
/* RCC_RSR: bit 24 SFTRSTF (SFT1RSTF on dual-core parts), bit 25 SFT2RSTF on dual-core
 * parts (reserved, reads 0, elsewhere); both mean "software reset".  RMVF is bit 16.
 * ROM vector table: ST's KB "jump to bootloader" table and Betaflight give 0x1FF09800 for
 * H72x/73x/74x/75x and 0x1FF0A000 for H7A3/B3/B0 (one AN2606-derived list claims
 * 0x1FF0A800 for H7A: rejected, two sources agree on 0x1FF0A000).  MicroPython and
 * stm32duino use 0x1FF00000 (the BOOT_ADD1 default entry) on H74x/75x; when the primary
 * table does not look valid we fall back to that entry. */
#define SB_RCC_BASE        0x58024400UL
#define SB_RSTF_OFFSET     0xD0UL
#define SB_RSTF_SFT        (SB_BIT(24) | SB_BIT(25))
#define SB_RSTF_RMVF       SB_BIT(16)
#if defined(STMFLASH_BOOT_FAMILY_H7AB)
#define SB_SYSMEM_DEFAULT  0x1FF0A000UL
#else
#define SB_SYSMEM_DEFAULT  0x1FF09800UL
#endif
#define SB_SYSMEM_FALLBACK 0x1FF00000UL
#define SB_REMAP           0
#define SB_HAS_VTOR        1
#define SB_HAS_CACHE       1
#define SB_BKP_REG         0x58004050UL /* RTC_BKP0R */
#define SB_BKP_PWREN_REG   0xF4UL       /* RCC_APB4ENR.RTCAPBEN (PWR is always clocked) */
#define SB_BKP_PWREN_BIT   SB_BIT(16)
#define SB_BKP_DBP_REG     0x58024800UL /* PWR_CR1.DBP */
#define SB_BKP_DBP_BIT     SB_BIT(8)
#elif defined(STMFLASH_BOOT_FAMILY_G0) || defined(STMFLASH_BOOT_FAMILY_C0)
#define SB_RCC_BASE        0x40021000UL
#define SB_RSTF_OFFSET     0x60UL /* RCC_CSR (G0), RCC_CSR2 (C0) */
#define SB_RSTF_SFT        SB_BIT(28)
#define SB_RSTF_RMVF       SB_BIT(23)
#define SB_SYSMEM_DEFAULT  0x1FFF0000UL
#define SB_REMAP           1
#define SB_SYSCFG_BASE     0x40010000UL
#define SB_MEMRMP_MASK     0x3UL
#define SB_SYSCFG_EN_REG   0x40UL /* RCC_APBENR2.SYSCFGEN */
#define SB_SYSCFG_EN_BIT   SB_BIT(0)
#define SB_HAS_VTOR        1
#if defined(STMFLASH_BOOT_FAMILY_G0)
#define SB_BKP_REG         0x4000B100UL /* TAMP_BKP0R */
#define SB_BKP_PWREN_REG   0x3CUL       /* RCC_APBENR1: PWREN | RTCAPBEN */
#define SB_BKP_PWREN_BIT   (SB_BIT(28) | SB_BIT(10))
#define SB_BKP_DBP_REG     0x40007000UL /* PWR_CR1.DBP */
#define SB_BKP_DBP_BIT     SB_BIT(8)
#endif
#elif defined(STMFLASH_BOOT_FAMILY_G4) || defined(STMFLASH_BOOT_FAMILY_L4)
#define SB_RCC_BASE        0x40021000UL
#define SB_RSTF_OFFSET     0x94UL
#define SB_RSTF_SFT        SB_BIT(28)
#define SB_RSTF_RMVF       SB_BIT(23)
#define SB_SYSMEM_DEFAULT  0x1FFF0000UL
#define SB_REMAP           1
#define SB_SYSCFG_BASE     0x40010000UL
#define SB_MEMRMP_MASK     0x7UL
#define SB_SYSCFG_EN_REG   0x60UL /* RCC_APB2ENR.SYSCFGEN */
#define SB_SYSCFG_EN_BIT   SB_BIT(0)
#define SB_HAS_VTOR        1
#if defined(STMFLASH_BOOT_FAMILY_G4)
#define SB_BKP_REG         0x40002500UL /* TAMP_BKP0R (TAMP at 0x40002400) */
#define SB_BKP_PWREN_BIT   (SB_BIT(28) | SB_BIT(10)) /* PWREN | RTCAPBEN */
#else
#define SB_BKP_REG         0x40002850UL /* RTC_BKP0R */
#define SB_BKP_PWREN_BIT   SB_BIT(28)
#endif
#define SB_BKP_PWREN_REG   0x58UL /* RCC_APB1ENR1 */
#define SB_BKP_DBP_REG     0x40007000UL
#define SB_BKP_DBP_BIT     SB_BIT(8)
#elif defined(STMFLASH_BOOT_FAMILY_L0)
#define SB_RCC_BASE        0x40021000UL
#define SB_RSTF_OFFSET     0x50UL
#define SB_RSTF_SFT        SB_BIT(28)
#define SB_RSTF_RMVF       SB_BIT(23)
#define SB_SYSMEM_DEFAULT  0x1FF00000UL
#define SB_REMAP           1
#define SB_SYSCFG_BASE     0x40010000UL
#define SB_MEMRMP_MASK     0x3UL
#define SB_SYSCFG_EN_REG   0x34UL
#define SB_SYSCFG_EN_BIT   SB_BIT(0)
#define SB_HAS_VTOR        1
#elif defined(STMFLASH_BOOT_FAMILY_L1)
#define SB_RCC_BASE        0x40023800UL
#define SB_RSTF_OFFSET     0x34UL
#define SB_RSTF_SFT        SB_BIT(28)
#define SB_RSTF_RMVF       SB_BIT(24)
#define SB_SYSMEM_DEFAULT  0x1FF00000UL
#define SB_REMAP           1
#define SB_SYSCFG_BASE     0x40010000UL
#define SB_MEMRMP_MASK     0x3UL
#define SB_SYSCFG_EN_REG   0x20UL
#define SB_SYSCFG_EN_BIT   SB_BIT(0)
#define SB_HAS_VTOR        1
#elif defined(STMFLASH_BOOT_FAMILY_L5)
/* TrustZone disabled (TZEN=0) only: non-secure alias of system memory, no remap. */
#define SB_RCC_BASE        0x40021000UL
#define SB_RSTF_OFFSET     0x94UL
#define SB_RSTF_SFT        SB_BIT(28)
#define SB_RSTF_RMVF       SB_BIT(23)
#define SB_SYSMEM_DEFAULT  0x0BF90000UL
#define SB_REMAP           0
#define SB_HAS_VTOR        1
#elif defined(STMFLASH_BOOT_FAMILY_CUSTOM)
/* Everything comes from the build: SB_RCC_BASE, SB_RSTF_OFFSET, SB_RSTF_SFT, SB_RSTF_RMVF,
 * SB_SYSMEM_DEFAULT, SB_REMAP (+ SB_SYSCFG_*), SB_HAS_VTOR. */
#if !defined(SB_RCC_BASE) || !defined(SB_RSTF_OFFSET) || !defined(SB_RSTF_SFT) ||        \
    !defined(SB_RSTF_RMVF) || !defined(SB_SYSMEM_DEFAULT) || !defined(SB_REMAP) ||        \
    !defined(SB_HAS_VTOR)
#error "STMFLASH_BOOT_FAMILY_CUSTOM needs SB_RCC_BASE SB_RSTF_OFFSET SB_RSTF_SFT SB_RSTF_RMVF SB_SYSMEM_DEFAULT SB_REMAP SB_HAS_VTOR"
#endif
#endif

#ifndef SB_HAS_CACHE
#define SB_HAS_CACHE 0
#endif

/* A CMSIS device header, when present, wins for the RCC base and the flag bits. */
#if !defined(STMFLASH_BOOT_HOST_TEST) && defined(RCC_BASE)
#undef SB_RCC_BASE
#define SB_RCC_BASE ((uint32_t)RCC_BASE)
#endif
#if !defined(STMFLASH_BOOT_HOST_TEST) && defined(SYSCFG_BASE) && SB_REMAP
#undef SB_SYSCFG_BASE
#define SB_SYSCFG_BASE ((uint32_t)SYSCFG_BASE)
#endif

/* The build may move the ROM entry (e.g. -DSTMFLASH_BOOT_SYSMEM_BASE=0x1FFFC800 on F072). */
#ifdef STMFLASH_BOOT_SYSMEM_BASE
#define SB_SYSMEM_BASE ((uint32_t)(STMFLASH_BOOT_SYSMEM_BASE))
#else
#define SB_SYSMEM_BASE ((uint32_t)SB_SYSMEM_DEFAULT)
#endif

#define SB_RSTF_REG (SB_RCC_BASE + SB_RSTF_OFFSET)

/* ------------------------------------------------------------------------------------
 * Cortex-M core registers (architectural; identical on every STM32).
 * ---------------------------------------------------------------------------------- */
#define SB_SYST_CSR   0xE000E010UL
#define SB_SYST_RVR   0xE000E014UL
#define SB_SYST_CVR   0xE000E018UL
#define SB_NVIC_ICER0 0xE000E180UL
#define SB_NVIC_ICPR0 0xE000E280UL
#define SB_SCB_ICSR   0xE000ED04UL
#define SB_ICSR_PENDSTCLR SB_BIT(25)
#define SB_ICSR_PENDSVCLR SB_BIT(27)
#define SB_SCB_VTOR   0xE000ED08UL
#define SB_SCB_AIRCR  0xE000ED0CUL
#define SB_AIRCR_VECTKEY   (0x05FAUL << 16)
#define SB_AIRCR_PRIGROUP  (0x7UL << 8)
#define SB_AIRCR_SYSRESETREQ SB_BIT(2)
#define SB_SCB_CCR    0xE000ED14UL
#define SB_CCR_DC     SB_BIT(16)
#define SB_CCR_IC     SB_BIT(17)
#define SB_SCB_CCSIDR 0xE000ED80UL
#define SB_SCB_CSSELR 0xE000ED84UL
#define SB_MPU_CTRL   0xE000ED94UL
#define SB_SCB_ICIALLU 0xE000EF50UL
#define SB_SCB_DCCMVAC 0xE000EF68UL
#define SB_SCB_DCCISW  0xE000EF74UL

/* Number of NVIC enable/pending words: ARMv6-M 1, ARMv7-M 8, ARMv8-M mainline 16. */
#if defined(__ARM_ARCH_6M__) || defined(__ARM_ARCH_8M_BASE__)
#define SB_NVIC_WORDS 1
#define SB_ARMV6M 1
#elif defined(__ARM_ARCH_8M_MAIN__) || defined(__ARM_ARCH_8_1M_MAIN__)
#define SB_NVIC_WORDS 16
#define SB_ARMV6M 0
#else
#define SB_NVIC_WORDS 8
#define SB_ARMV6M 0
#endif

#endif /* STMFLASH_BOOT_REGS_H */
