/*
 * stmflash_boot.c - see stmflash_boot.h for how to use it and firmware/README.md for the
 * design decisions (why a reset before the jump, why the software-reset flag, which ROM
 * address per family, why interrupts are re-enabled before the branch).
 */
#include "stmflash_boot.h"
#include "stmflash_boot_regs.h"

#if defined(STMFLASH_BOOT_FLAG_NOINIT) && defined(STMFLASH_BOOT_FLAG_BKP)
#error "stmflash_boot: choose one of STMFLASH_BOOT_FLAG_NOINIT and STMFLASH_BOOT_FLAG_BKP"
#endif
#if !defined(STMFLASH_BOOT_FLAG_BKP) && !defined(STMFLASH_BOOT_FLAG_NOINIT)
#define STMFLASH_BOOT_FLAG_NOINIT
#endif
#if defined(STMFLASH_BOOT_FLAG_BKP)
#ifdef STMFLASH_BOOT_BKP_REG
#undef SB_BKP_REG
#define SB_BKP_REG STMFLASH_BOOT_BKP_REG
#endif
#if !defined(SB_BKP_REG)
#error "stmflash_boot: no backup-register backend for this family; use STMFLASH_BOOT_FLAG_NOINIT"
#endif
#endif

/* ------------------------------------------------------------------------------------
 * Core primitives.  On the host they are the mock's (it records them and longjmps out of
 * the "reset" and the "jump", which never return on a chip).
 * ---------------------------------------------------------------------------------- */
#ifdef STMFLASH_BOOT_HOST_TEST
void stmflash_boot_mock_irq(int enabled);
void stmflash_boot_mock_control_zero(void);
uint32_t stmflash_boot_mock_flag_address(const volatile void *flag);
STMFLASH_BOOT_NORETURN void stmflash_boot_mock_jump(uint32_t sp, uint32_t pc);
STMFLASH_BOOT_NORETURN void stmflash_boot_mock_wait_reset(void);
#define sb_disable_irq() stmflash_boot_mock_irq(0)
#define sb_enable_irq() stmflash_boot_mock_irq(1)
#define sb_dsb() ((void)0)
#define sb_isb() ((void)0)
#define sb_control_zero() stmflash_boot_mock_control_zero()
#define sb_jump(sp, pc) stmflash_boot_mock_jump((sp), (pc))
#define sb_wait_reset() stmflash_boot_mock_wait_reset()
#define sb_read_word(addr) SB_REG32(addr)
#define sb_address_of(p) stmflash_boot_mock_flag_address(p)
#else
static inline void sb_disable_irq(void) { __asm volatile("cpsid i" ::: "memory"); }
static inline void sb_enable_irq(void) { __asm volatile("cpsie i" ::: "memory"); }
static inline void sb_dsb(void) { __asm volatile("dsb 0xF" ::: "memory"); }
static inline void sb_isb(void) { __asm volatile("isb 0xF" ::: "memory"); }
static inline void sb_control_zero(void)
{
    uint32_t zero = 0u;
    __asm volatile("msr control, %0\n\tisb 0xF" : : "r"(zero) : "memory");
}
/* An asm load, so that reading the ROM table at address 0 (F0 alias) is not treated as a
 * null-pointer dereference by the optimiser. */
#if defined(__thumb__) && !defined(__thumb2__)
#define SB_LOREG "l" /* Thumb-1 ldr takes r0-r7 only */
#else
#define SB_LOREG "r"
#endif
static inline uint32_t sb_read_word(uint32_t address)
{
    uint32_t value;
    __asm volatile("ldr %0, [%1]" : "=" SB_LOREG(value) : SB_LOREG(address) : "memory");
    return value;
}
STMFLASH_BOOT_NORETURN static inline void sb_jump(uint32_t sp, uint32_t pc)
{
    __asm volatile("msr msp, %0\n\tisb 0xF\n\tbx %1" : : "r"(sp), "r"(pc) : "memory");
    __builtin_unreachable();
}
STMFLASH_BOOT_NORETURN static inline void sb_wait_reset(void)
{
    for (;;) {
    }
}
#define sb_address_of(p) ((uint32_t)(uintptr_t)(p))
#endif

/* ------------------------------------------------------------------------------------
 * Frame matcher (mirrors stmflash.trigger.frame.Matcher exactly).
 * ---------------------------------------------------------------------------------- */
static const uint8_t *sb_key = (const uint8_t *)STMFLASH_BOOT_KEY;
static size_t sb_key_len = sizeof(STMFLASH_BOOT_KEY) - 1u;
static uint8_t sb_window[STMFLASH_BOOT_FRAME_LEN];
static uint8_t sb_pos;  /* next slot to write = oldest byte once full */
static uint8_t sb_fill; /* bytes held, saturates at FRAME_LEN */
static uint32_t sb_nonce;

/* Bitwise reflected CRC-32 (zlib): small code, no table; at most ~15 bytes per check. */
static uint32_t sb_crc32(uint32_t crc, const uint8_t *p, size_t n)
{
    while (n-- != 0u) {
        unsigned k;
        crc ^= *p++;
        for (k = 0u; k < 8u; k++) {
            crc = (crc >> 1) ^ (0xEDB88320UL & (0u - (crc & 1u)));
        }
    }
    return crc;
}

static uint32_t sb_check_value(uint8_t cmd, uint32_t nonce)
{
    uint8_t head[5];
    uint32_t crc;
    head[0] = cmd;
    head[1] = (uint8_t)nonce;
    head[2] = (uint8_t)(nonce >> 8);
    head[3] = (uint8_t)(nonce >> 16);
    head[4] = (uint8_t)(nonce >> 24);
    crc = sb_crc32(0xFFFFFFFFUL, head, sizeof head);
    crc = sb_crc32(crc, sb_key, sb_key_len);
    return crc ^ 0xFFFFFFFFUL;
}

static uint8_t sb_at(unsigned i)
{
    unsigned j = sb_pos + i;
    if (j >= STMFLASH_BOOT_FRAME_LEN) {
        j -= STMFLASH_BOOT_FRAME_LEN;
    }
    return sb_window[j];
}

static uint32_t sb_le32_at(unsigned i)
{
    return (uint32_t)sb_at(i) | ((uint32_t)sb_at(i + 1u) << 8) | ((uint32_t)sb_at(i + 2u) << 16) |
           ((uint32_t)sb_at(i + 3u) << 24);
}

int stmflash_boot_feed(uint8_t byte)
{
    uint32_t nonce;
    sb_window[sb_pos] = byte;
    sb_pos = (uint8_t)((sb_pos + 1u == STMFLASH_BOOT_FRAME_LEN) ? 0u : sb_pos + 1u);
    if (sb_fill < STMFLASH_BOOT_FRAME_LEN) {
        sb_fill++;
        if (sb_fill < STMFLASH_BOOT_FRAME_LEN) {
            return 0;
        }
    }
    if (sb_at(0) != STMFLASH_BOOT_SYNC0 || sb_at(1) != STMFLASH_BOOT_SYNC1 ||
        sb_at(2) != STMFLASH_BOOT_CMD_ENTER) {
        return 0;
    }
    nonce = sb_le32_at(3);
    if (sb_le32_at(7) != sb_check_value(STMFLASH_BOOT_CMD_ENTER, nonce)) {
        return 0;
    }
    sb_nonce = nonce;
    sb_fill = 0u; /* one request, one trigger */
    return 1;
}

void stmflash_boot_matcher_reset(void)
{
    sb_fill = 0u;
}

uint32_t stmflash_boot_last_nonce(void)
{
    return sb_nonce;
}

void stmflash_boot_set_key(const uint8_t *key, size_t length)
{
    sb_key = (key != NULL) ? key : (const uint8_t *)"";
    sb_key_len = (key != NULL) ? length : 0u;
}

void stmflash_boot_ack_frame(uint8_t out[11])
{
    const uint8_t cmd = (uint8_t)(STMFLASH_BOOT_CMD_ENTER | STMFLASH_BOOT_ACK_FLAG);
    uint32_t check = sb_check_value(cmd, sb_nonce);
    unsigned i;
    out[0] = STMFLASH_BOOT_SYNC0;
    out[1] = STMFLASH_BOOT_SYNC1;
    out[2] = cmd;
    for (i = 0u; i < 4u; i++) {
        out[3u + i] = (uint8_t)(sb_nonce >> (8u * i));
        out[7u + i] = (uint8_t)(check >> (8u * i));
    }
}

/* ------------------------------------------------------------------------------------
 * The request flag that survives the software reset.
 * ---------------------------------------------------------------------------------- */
#if defined(STMFLASH_BOOT_FLAG_NOINIT)
/* 64 bits (magic, ~magic): random RAM at power-on almost never matches both words, and
 * on H7 a 64-bit store fills a whole ECC word, so the write is not left in the AXI SRAM
 * ECC buffer when the reset hits. */
#define SB_FLAG_VALUE                                                                          \
    (((uint64_t)(~(uint32_t)STMFLASH_BOOT_MAGIC) << 32) | (uint64_t)(uint32_t)STMFLASH_BOOT_MAGIC)
static volatile uint64_t sb_flag __attribute__((section(STMFLASH_BOOT_NOINIT_SECTION), aligned(8)));

static int sb_flag_is_set(void)
{
    return sb_flag == SB_FLAG_VALUE;
}

static void sb_flag_clear(void)
{
    sb_flag = 0u;
}

static void sb_flag_set(void)
{
    sb_flag = SB_FLAG_VALUE;
#if SB_HAS_CACHE
    /* The reset does not write the D-cache back: push the line to SRAM. */
    if ((SB_REG32(SB_SCB_CCR) & SB_CCR_DC) != 0u) {
        sb_dsb();
        SB_REG32(SB_SCB_DCCMVAC) = sb_address_of(&sb_flag);
        sb_dsb();
        sb_isb();
    }
#endif
}
#else /* STMFLASH_BOOT_FLAG_BKP */
/* Writing a backup register needs the PWR (and on some parts RTC APB) clock and DBP;
 * both are restored so that the application finds the state it left. */
static void sb_bkp_write(uint32_t value)
{
    uint32_t en = SB_REG32(SB_RCC_BASE + SB_BKP_PWREN_REG);
    uint32_t dbp = SB_REG32(SB_BKP_DBP_REG);
    SB_REG32(SB_RCC_BASE + SB_BKP_PWREN_REG) = en | SB_BKP_PWREN_BIT;
    (void)SB_REG32(SB_RCC_BASE + SB_BKP_PWREN_REG); /* clock-enable delay */
    SB_REG32(SB_BKP_DBP_REG) = dbp | SB_BKP_DBP_BIT;
    (void)SB_REG32(SB_BKP_DBP_REG);
    SB_REG32(SB_BKP_REG) = value;
    (void)SB_REG32(SB_BKP_REG);
    SB_REG32(SB_BKP_DBP_REG) = dbp;
    SB_REG32(SB_RCC_BASE + SB_BKP_PWREN_REG) = en;
}

static int sb_flag_is_set(void)
{
    return SB_REG32(SB_BKP_REG) == (uint32_t)STMFLASH_BOOT_MAGIC;
}

static void sb_flag_clear(void)
{
    sb_bkp_write(0u);
}

static void sb_flag_set(void)
{
    sb_bkp_write((uint32_t)STMFLASH_BOOT_MAGIC);
}
#endif

/* ------------------------------------------------------------------------------------
 * Reset and ROM entry.
 * ---------------------------------------------------------------------------------- */
STMFLASH_BOOT_NORETURN static void sb_system_reset(void)
{
    sb_dsb();
    SB_REG32(SB_SCB_AIRCR) = SB_AIRCR_VECTKEY | (SB_REG32(SB_SCB_AIRCR) & SB_AIRCR_PRIGROUP) |
                             SB_AIRCR_SYSRESETREQ;
    sb_dsb();
    sb_wait_reset();
}

void stmflash_boot_enter(void)
{
    sb_disable_irq();
    sb_flag_set();
    sb_system_reset();
}

void stmflash_boot_dfu_detach(void)
{
    stmflash_boot_enter();
}

void stmflash_boot_request(stmflash_boot_send_fn send, stmflash_boot_flush_fn flush)
{
    uint8_t ack[STMFLASH_BOOT_FRAME_LEN];
    stmflash_boot_ack_frame(ack);
    if (send != NULL) {
        send(ack, sizeof ack);
    }
    if (flush != NULL) {
        flush();
    }
    stmflash_boot_enter();
}

uint32_t stmflash_boot_sysmem_base(void)
{
    return SB_SYSMEM_BASE;
}

/* A plausible ROM vector table: SP word-aligned in SRAM space, reset vector Thumb and in
 * the code region.  Loose on purpose (F7's ROM may use its ITCM alias), but it stops a
 * wrong family setting from branching into garbage. */
static int sb_rom_table(uint32_t base, uint32_t *sp, uint32_t *pc)
{
    *sp = sb_read_word(base);
    *pc = sb_read_word(base + 4u);
    return (*sp & 3u) == 0u && *sp >= 0x10000000UL && *sp <= 0x40000000UL && (*pc & 1u) != 0u &&
           *pc < 0x20000000UL;
}

#if SB_HAS_CACHE
static void sb_caches_off(void)
{
    uint32_t ccr = SB_REG32(SB_SCB_CCR);
    if ((ccr & SB_CCR_DC) != 0u) {
        uint32_t ccsidr, sets, ways;
        SB_REG32(SB_SCB_CSSELR) = 0u; /* level 1 data cache */
        sb_dsb();
        ccsidr = SB_REG32(SB_SCB_CCSIDR);
        SB_REG32(SB_SCB_CCR) = ccr & ~SB_CCR_DC;
        sb_dsb();
        sets = (ccsidr >> 13) & 0x7FFFu;
        do {
            ways = (ccsidr >> 3) & 0x3FFu;
            do {
                SB_REG32(SB_SCB_DCCISW) = ((sets & 0x1FFu) << 5) | ((ways & 0x3u) << 30);
            } while (ways-- != 0u);
        } while (sets-- != 0u);
        sb_dsb();
        sb_isb();
    }
    ccr = SB_REG32(SB_SCB_CCR);
    if ((ccr & SB_CCR_IC) != 0u) {
        sb_dsb();
        sb_isb();
        SB_REG32(SB_SCB_CCR) = ccr & ~SB_CCR_IC;
        SB_REG32(SB_SCB_ICIALLU) = 0u;
        sb_dsb();
        sb_isb();
    }
}
#endif

static int sb_enter_rom(void)
{
    uint32_t base = SB_SYSMEM_BASE;
    uint32_t sp, pc;
    unsigned i;
    int valid;
#if SB_REMAP
    uint32_t clock_en, memrmp;
#endif

    /* Nothing of the application may fire once the ROM owns the vector table. */
    sb_disable_irq();
    SB_REG32(SB_SYST_CSR) = 0u;
    SB_REG32(SB_SYST_RVR) = 0u;
    SB_REG32(SB_SYST_CVR) = 0u;
    SB_REG32(SB_SCB_ICSR) = SB_ICSR_PENDSTCLR | SB_ICSR_PENDSVCLR;
    for (i = 0u; i < SB_NVIC_WORDS; i++) {
        SB_REG32(SB_NVIC_ICER0 + 4u * i) = 0xFFFFFFFFUL;
        SB_REG32(SB_NVIC_ICPR0 + 4u * i) = 0xFFFFFFFFUL;
    }
    sb_dsb();
    sb_isb();
#if SB_HAS_CACHE
    sb_caches_off();
#endif
#if !SB_ARMV6M
    SB_REG32(SB_MPU_CTRL) = 0u;
#endif
#if SB_REMAP
    /* Alias system memory at 0, as BOOT0=1 would: the ROM assumes it on these parts. */
    clock_en = SB_REG32(SB_RCC_BASE + SB_SYSCFG_EN_REG);
    SB_REG32(SB_RCC_BASE + SB_SYSCFG_EN_REG) = clock_en | SB_SYSCFG_EN_BIT;
    (void)SB_REG32(SB_RCC_BASE + SB_SYSCFG_EN_REG);
    memrmp = SB_REG32(SB_SYSCFG_BASE);
    SB_REG32(SB_SYSCFG_BASE) = (memrmp & ~(uint32_t)SB_MEMRMP_MASK) | 1u;
    sb_dsb();
    sb_isb();
#endif

    valid = sb_rom_table(base, &sp, &pc);
#ifdef SB_SYSMEM_FALLBACK
    if (!valid) {
        base = SB_SYSMEM_FALLBACK;
        valid = sb_rom_table(base, &sp, &pc);
    }
#endif
    if (valid) {
#if SB_HAS_VTOR
        SB_REG32(SB_SCB_VTOR) = base;
#endif
        sb_control_zero();
        /* The ROM starts as if from reset, where PRIMASK is 0; its USB DFU relies on
         * interrupts and (unlike the UART loader) does not unmask them itself.  All NVIC
         * lines are disabled and SysTick is off, so nothing of ours can fire. */
        sb_enable_irq();
        sb_jump(sp, pc);
    }

    /* The table does not look like a ROM: undo the remap and boot the application. */
#if SB_REMAP
    SB_REG32(SB_SYSCFG_BASE) = memrmp;
    SB_REG32(SB_RCC_BASE + SB_SYSCFG_EN_REG) = clock_en;
    sb_dsb();
    sb_isb();
#endif
    sb_enable_irq();
    return STMFLASH_BOOT_BAD_ROM_VECTORS;
}

int stmflash_boot_check(void)
{
    uint32_t reset_flags;
    if (!sb_flag_is_set()) {
        return STMFLASH_BOOT_NO_REQUEST;
    }
    reset_flags = SB_REG32(SB_RSTF_REG);
    sb_flag_clear(); /* one shot, whatever happens next */
    if ((reset_flags & SB_RSTF_SFT) == 0u) {
        /* Power-on, NRST or watchdog after a request: stale, boot the application. The
         * reset flags stay for the application to read. */
        return STMFLASH_BOOT_STALE_REQUEST;
    }
    SB_REG32(SB_RSTF_REG) = reset_flags | SB_RSTF_RMVF;
    return sb_enter_rom();
}
