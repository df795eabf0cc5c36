/*
 * stmflash RAM flasher stub: uploaded into RAM with AN3155 Write Memory, started with Go.
 *
 * It takes over the USART the ROM bootloader was using and speaks the framed protocol
 * described in stmflash/stub/protocol.py (SLIP framing, sequence number and CRC-32 per
 * frame, several frames in flight). One build per family group (STUB_GROUP_*): the flash
 * controller is programmed at register level from the reference manuals
 *   F2/F4/F7  RM0033 / RM0090 / RM0385 section 3 (FLASH_KEYR/SR/CR, sectors, PSIZE x32),
 *   G0/G4/L4/WB/WL  RM0444 / RM0440 / RM0351 / RM0434 / RM0453 section 3 (64-bit
 *           double-word programming, PER + PNB page erase, BKER on dual-bank parts),
 *   F0/F1/F3  RM0091 / RM0008 / RM0316 section 3 (half-word programming, PER + AR),
 *   L0/L1  RM0377 / RM0367 / RM0038 section 3 (PEKEYR then PRGKEYR unlock, half-page
 *           programming with PECR.FPRG + PROG where a frame covers whole half-pages, words
 *           elsewhere, page erase by writing a word with PECR.ERASE + PROG; erased flash
 *           reads 0x00).
 * The USART is found from its state (the enabled candidate the host lists) and uses the
 * USART v1 (F1/F2/F4/L1) or v2 (all others) register map; both keep RXNE/TXE/TC/ORE/FE at
 * the same bit positions.
 *
 * Design rules (each one is what a 1-byte USART receive register demands):
 *   - one main loop that never blocks: it reads one received byte, sends one byte and
 *     advances the current job by a small step per turn, so a byte is never overrun while
 *     the flash is busy or a CRC is running;
 *   - no .data/.bss: all state lives on the stack, buffers in RAM above the code, placed
 *     from the parameter block the host fills in before Go;
 *   - a flash read (CRC, READ) never overlaps an erase/program: jobs run in order and a
 *     flash job waits until responses that stream flash bytes are sent.
 */
#include <stddef.h>
#include <stdint.h>

#define REG(a) (*(volatile uint32_t *)(uintptr_t)(a))

/* ---- parameter block (offset 8 of the binary; the host fills it in) -------------------- */
struct params {
    uint32_t magic;       /* STUB_MAGIC: the host patched a matching block */
    uint32_t flash_regs;  /* FLASH controller base */
    uint32_t usart[4];    /* candidate USART bases, 0 = none */
    uint32_t rom_baud;    /* the baud the ROM was synced at (BRR * rom_baud = clock) */
    uint32_t buf_base;    /* first free RAM byte after the stub */
    uint32_t buf_end;     /* end of usable RAM (the stack grows down from here) */
    uint32_t bank_units;  /* erase units in bank 1; 0 = single bank */
    uint32_t bank_code;   /* F4: SNB of the first bank-2 sector; G0/L4: BKER bit number;
                             F1: FLASH register offset of bank 2 (0x40);
                             L0/L1: half-page bytes (0 = word programming only) */
    uint32_t sysmem;      /* ROM vector table (leave into the ROM) */
    uint32_t iwdg_kr;     /* IWDG key register (refreshed every turn) */
    uint32_t flags;       /* bit 0: USART v2 register map */
};

struct header {
    uint32_t sp;
    void (*entry)(void);
    struct params p;
};

#define STUB_MAGIC 0x53544231u /* "1BTS": host and stub agree on this layout */
#define STUB_VERSION 1u

void stub_main(void) __attribute__((noreturn, used));
__attribute__((section(".header"), used)) struct header stub_header = {
    0u, stub_main, {0u, 0u, {0u, 0u, 0u, 0u}, 0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u}};

/* ---- protocol constants (stmflash/stub/protocol.py) ------------------------------------ */
enum { SLIP_END = 0xC0, SLIP_ESC = 0xDB, SLIP_ESC_END = 0xDC, SLIP_ESC_ESC = 0xDD };
enum {
    CMD_HELLO = 0x01, CMD_ERASE = 0x02, CMD_WRITE = 0x03, CMD_READ = 0x04, CMD_CRC = 0x05,
    CMD_BAUD = 0x06, CMD_LEAVE = 0x07, RSP_NAK = 0x7F, RSP_READY = 0x70
};
enum { ST_OK = 0, ST_FLASH = 1, ST_ARGS = 2, ST_CMD = 3 };
#define MAX_DATA 1024u
#define SLOT_SIZE (MAX_DATA + 16u)
#define MAX_SLOTS 8u
#define RESP_N 16u
#define TXQ_N 32u
#define STACK_RESERVE 768u

#if defined(STUB_GROUP_F7) /* the F2/F4 controller (RM0385 3.7), linked above F7's 16 KiB */
#define STUB_GROUP_F4 1
#define GROUP_ID 4u
#define PROG_UNIT 4u
#elif defined(STUB_GROUP_F4)
#define GROUP_ID 1u
#define PROG_UNIT 4u
#elif defined(STUB_GROUP_G0L4)
#define GROUP_ID 2u
#define PROG_UNIT 8u
#elif defined(STUB_GROUP_F1)
#define GROUP_ID 3u
#define PROG_UNIT 2u
#elif defined(STUB_GROUP_L0L1)
#define GROUP_ID 5u
#define PROG_UNIT 4u
#else
#error "define STUB_GROUP_F4, STUB_GROUP_F7, STUB_GROUP_G0L4, STUB_GROUP_F1 or STUB_GROUP_L0L1"
#endif

struct resp {
    uint8_t seq, cmd, status, len, done, pad[3];
    uint8_t data[16];
    uint32_t bulk, bulk_len;
};

struct slot {
    uint32_t len;
    uint8_t seq, cmd, used, pad;
    uint8_t buf[SLOT_SIZE];
};

struct usart {
    uint32_t base, sr, rd, td, brr, cr1, ue;
};

struct state {
    const struct params *p;
    uint32_t *crc_table;
    struct slot *slots;
    uint32_t nslots;
    uint8_t byseq[RESP_N]; /* received, not yet executed: slot index + 1 by seq % RESP_N */
    uint8_t exec, rx_slot; /* next seq to execute; slot being received into (+1, 0 none) */
    struct usart u;
    uint32_t rom_brr, clock;
    /* receiver */
    uint32_t rx_len, rx_crc, rx_esc, rx_bad;
    uint8_t expect, nak_pending;
    /* responses and transmitter */
    struct resp resp[RESP_N];
    uint8_t txq[TXQ_N];
    uint32_t txq_head, txq_tail, tx_stage, tx_pos, tx_crc, tx_esc_byte, tx_bulk_busy;
    uint8_t tx_cur, tx_byte_pending, tx_special;
    /* current job */
    uint32_t job_active, job_step, job_addr, job_end, job_src, job_crc, job_sr;
    /* deferred actions once the line is quiet */
    uint32_t pending_brr, old_brr, probation, leave_mode, leave_addr;
};

/* gcc may emit calls to these for struct copies and clears (-nostdlib: ours) */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *src, size_t n);
void *memset(void *d, int c, size_t n)
{
    uint8_t *p = d;
    while (n--)
        *p++ = (uint8_t)c;
    return d;
}
void *memcpy(void *d, const void *src, size_t n)
{
    uint8_t *p = d;
    const uint8_t *q = src;
    while (n--)
        *p++ = *q++;
    return d;
}

/* ---- CRC-32/MPEG-2 (poly 0x04C11DB7, MSB first, init 0xFFFFFFFF, no final XOR) -------- */
static void crc_init(uint32_t *t)
{
    for (uint32_t i = 0; i < 256u; i++) {
        uint32_t c = i << 24;
        for (int k = 0; k < 8; k++)
            c = (c & 0x80000000u) ? (c << 1) ^ 0x04C11DB7u : c << 1;
        t[i] = c;
    }
}

static inline uint32_t crc_byte(const uint32_t *t, uint32_t crc, uint32_t b)
{
    return (crc << 8) ^ t[((crc >> 24) ^ b) & 0xFFu];
}

static uint32_t rd32(const uint8_t *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static void wr32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)v; b[1] = (uint8_t)(v >> 8); b[2] = (uint8_t)(v >> 16); b[3] = (uint8_t)(v >> 24);
}

/* ---- USART ------------------------------------------------------------------------------ */
#define SR_PE (1u << 0)
#define SR_FE (1u << 1)
#define SR_NE (1u << 2)
#define SR_ORE (1u << 3)
#define SR_RXNE (1u << 5)
#define SR_TC (1u << 6)
#define SR_TXE (1u << 7)

static int find_usart(struct state *s)
{
    int v2 = (s->p->flags & 1u) != 0;
    for (int i = 0; i < 4; i++) {
        uint32_t b = s->p->usart[i];
        if (b == 0u)
            break;
        struct usart u = {b, v2 ? 0x1Cu : 0x00u, v2 ? 0x24u : 0x04u, v2 ? 0x28u : 0x04u,
                          v2 ? 0x0Cu : 0x08u, v2 ? 0x00u : 0x0Cu, v2 ? 1u : (1u << 13)};
        /* the ROM's USART: enabled, with a baud rate programmed */
        if ((REG(b + u.cr1) & u.ue) && REG(b + u.brr) != 0u) {
            s->u = u;
            return 1;
        }
    }
    return 0;
}

static void clear_rx_errors(struct state *s)
{
    /* v1 clears them by the SR read followed by the DR read the main loop does */
    if (s->p->flags & 1u)
        REG(s->u.base + 0x20u) = SR_PE | SR_FE | SR_NE | SR_ORE; /* ICR */
}

static void set_brr(struct state *s, uint32_t brr)
{
    if (s->p->flags & 1u) { /* v2: BRR is writable only while UE = 0 */
        uint32_t cr1 = REG(s->u.base + s->u.cr1);
        REG(s->u.base + s->u.cr1) = cr1 & ~s->u.ue;
        REG(s->u.base + s->u.brr) = brr;
        REG(s->u.base + s->u.cr1) = cr1;
    } else {
        REG(s->u.base + s->u.brr) = brr;
    }
}

/* ---- responses -------------------------------------------------------------------------- */
static struct resp *resp_for(struct state *s, uint8_t seq)
{
    return &s->resp[seq % RESP_N];
}

static void txq_push(struct state *s, uint8_t seq)
{
    if (s->txq_head - s->txq_tail < TXQ_N)
        s->txq[s->txq_head++ % TXQ_N] = seq;
}

static void respond(struct state *s, uint8_t seq, uint8_t status, const uint8_t *data, uint32_t n)
{
    struct resp *r = resp_for(s, seq);
    r->status = status;
    r->len = (uint8_t)n;
    for (uint32_t i = 0; i < n; i++)
        r->data[i] = data[i];
    r->done = 1;
    txq_push(s, seq);
}

/* a free frame buffer (slot index + 1), 0 when all hold unanswered frames */
static uint32_t slot_free(const struct state *s)
{
    for (uint32_t i = 0; i < s->nslots; i++)
        if (!s->slots[i].used)
            return i + 1u;
    return 0u;
}

/* one byte out of the current response: 0x100 + byte when a byte was produced, 0 if idle */
static uint32_t tx_next(struct state *s)
{
    if (s->tx_byte_pending) {
        s->tx_byte_pending = 0;
        return 0x100u | s->tx_esc_byte;
    }
    for (;;) {
        if (s->tx_stage == 0u) {
            s->tx_special = s->nak_pending != 0;
            if (s->tx_special) {
                s->tx_cur = 0u;
            } else if (s->txq_tail != s->txq_head) {
                s->tx_cur = s->txq[s->txq_tail++ % TXQ_N];
            } else {
                s->tx_bulk_busy = 0;
                return 0u;
            }
            s->tx_stage = 1u;
            s->tx_pos = 0u;
            s->tx_crc = 0xFFFFFFFFu;
            return 0x100u | SLIP_END;
        }
        uint32_t b;
        int raw = 0;
        if (s->tx_special) { /* NAK / READY: seq = expected, type, status */
            uint8_t hdr[3] = {s->expect, s->nak_pending, 0u};
            if (s->tx_stage == 1u && s->tx_pos < 3u) {
                b = hdr[s->tx_pos++];
                if (s->tx_pos == 3u) { s->tx_stage = 3u; s->tx_pos = 0u; }
            } else if (s->tx_stage == 3u && s->tx_pos < 4u) {
                b = (s->tx_crc >> (24u - 8u * s->tx_pos)) & 0xFFu;
                s->tx_pos++;
                raw = 1;
                if (s->tx_pos == 4u) s->tx_stage = 4u;
            } else {
                s->tx_stage = 0u;
                s->nak_pending = 0;
                return 0x100u | SLIP_END;
            }
        } else {
            struct resp *r = resp_for(s, s->tx_cur);
            if (s->tx_stage == 1u) {
                uint32_t n = 3u + r->len;
                if (s->tx_pos < n) {
                    uint32_t i = s->tx_pos++;
                    b = i == 0u ? r->seq : i == 1u ? (uint32_t)(r->cmd | 0x80u) : i == 2u ? r->status : r->data[i - 3u];
                } else {
                    s->tx_stage = 2u; s->tx_pos = 0u;
                    continue;
                }
            } else if (s->tx_stage == 2u) {
                if (r->status == ST_OK && s->tx_pos < r->bulk_len) {
                    b = *(volatile const uint8_t *)(uintptr_t)(r->bulk + s->tx_pos++);
                } else {
                    s->tx_stage = 3u; s->tx_pos = 0u;
                    continue;
                }
            } else if (s->tx_stage == 3u) {
                if (s->tx_pos < 4u) {
                    b = (s->tx_crc >> (24u - 8u * s->tx_pos)) & 0xFFu;
                    s->tx_pos++;
                    raw = 1;
                } else {
                    s->tx_stage = 4u;
                    continue;
                }
            } else {
                s->tx_stage = 0u;
                return 0x100u | SLIP_END;
            }
        }
        if (!raw)
            s->tx_crc = crc_byte(s->crc_table, s->tx_crc, b);
        if (b == SLIP_END || b == SLIP_ESC) {
            s->tx_esc_byte = b == SLIP_END ? SLIP_ESC_END : SLIP_ESC_ESC;
            s->tx_byte_pending = 1;
            return 0x100u | SLIP_ESC;
        }
        return 0x100u | b;
    }
}

/* ---- flash controller ------------------------------------------------------------------- */
#define KEY1 0x45670123u
#define KEY2 0xCDEF89ABu

#if defined(STUB_GROUP_F4)
/* RM0090 3.9: KEYR 0x04, SR 0x0C, CR 0x10 */
#define F_KEYR 0x04u
#define F_SR 0x0Cu
#define F_CR 0x10u
#define SR_BSY (1u << 16)
#define SR_ERR 0x1F2u /* OPERR WRPERR PGAERR PGPERR PGSERR RDERR */
#define CR_LOCK (1u << 31)
#define CR_PG (1u << 0)
#define CR_SER (1u << 1)
#define CR_STRT (1u << 16)
#define CR_PSIZE32 (2u << 8)
#define F_BASE(s, a) ((void)(a), (s)->p->flash_regs)
#elif defined(STUB_GROUP_G0L4)
/* RM0444/RM0351 3.7: KEYR 0x08, SR 0x10, CR 0x14 */
#define F_KEYR 0x08u
#define F_SR 0x10u
#define F_CR 0x14u
#define SR_BSY ((1u << 16) | (1u << 18)) /* BSY(1), CFGBSY (reads 0 where absent) */
#define SR_ERR 0xC3FAu /* OPERR PROGERR WRPERR PGAERR SIZERR PGSERR MISERR FASTERR RDERR OPTVERR */
#define CR_LOCK (1u << 31)
#define CR_PG (1u << 0)
#define CR_PER (1u << 1)
#define CR_STRT (1u << 16)
#define F_BASE(s, a) ((void)(a), (s)->p->flash_regs)
#elif defined(STUB_GROUP_L0L1)
/* RM0377/RM0367/RM0038 3.7 (CMSIS stm32l0xx.h / stm32l1xx.h FLASH_TypeDef): PECR 0x04,
   PEKEYR 0x0C, PRGKEYR 0x10, SR 0x18; one register set for both banks (L07x, L1 Cat.4/5) */
#define F_PECR 0x04u
#define F_PEKEYR 0x0Cu
#define F_PRGKEYR 0x10u
#define F_SR 0x18u
#define SR_BSY (1u << 0)
#define SR_EOP (1u << 1)
#define SR_ERR 0x33F00u /* WRPERR PGAERR SIZERR OPTVERR OPTVERRUSR(L1) RDERR NOTZEROERR FWWERR(L0) */
#define PECR_PELOCK (1u << 0)
#define PECR_PRGLOCK (1u << 1)
#define PECR_PROG (1u << 3)
#define PECR_ERASE (1u << 9)
#define PECR_FPRG (1u << 10)
#define PEKEY1 0x89ABCDEFu /* RM0377 3.3.4 unlocking the PECR and the program memory */
#define PEKEY2 0x02030405u
#define PRGKEY1 0x8C9DAEBFu
#define PRGKEY2 0x13141516u
#define F_BASE(s, a) ((void)(a), (s)->p->flash_regs)
#else
/* RM0008 3.4: KEYR 0x04, SR 0x0C, CR 0x10, AR 0x14; bank 2 (XL) at +bank_code */
#define F_KEYR 0x04u
#define F_SR 0x0Cu
#define F_CR 0x10u
#define F_AR 0x14u
#define SR_BSY (1u << 0)
#define SR_ERR 0x14u /* PGERR WRPRTERR */
#define SR_EOP (1u << 5)
#define CR_LOCK (1u << 7)
#define CR_PG (1u << 0)
#define CR_PER (1u << 1)
#define CR_STRT (1u << 6)
#endif

#if defined(STUB_GROUP_F1)
static uint32_t f_base(const struct state *s, uint32_t addr)
{
    /* XL density: addresses in bank 2 use the second register set */
    if (s->p->bank_units && addr >= 0x08080000u)
        return s->p->flash_regs + s->p->bank_code;
    return s->p->flash_regs;
}
#define F_BASE(s, a) f_base((s), (a))
#endif

/* STUB_FAULT_SKIP_UNLOCK / STUB_FAULT_WIDTH build deliberately broken stubs: the tests show
   that the simulator fails them as the silicon would (PGSERR, PGPERR/SIZERR, bus fault). */
#if defined(STUB_GROUP_L0L1)
static void flash_unlock(uint32_t base)
{
#if !defined(STUB_FAULT_SKIP_UNLOCK)
    if (REG(base + F_PECR) & PECR_PELOCK) { /* PECR first, then the program memory */
        REG(base + F_PEKEYR) = PEKEY1;
        REG(base + F_PEKEYR) = PEKEY2;
    }
    if (REG(base + F_PECR) & PECR_PRGLOCK) {
        REG(base + F_PRGKEYR) = PRGKEY1;
        REG(base + F_PRGKEYR) = PRGKEY2;
    }
#else
    (void)base;
#endif
}

static void flash_lock(uint32_t base) { REG(base + F_PECR) = PECR_PELOCK; /* locks PRG too */ }
#else
static void flash_unlock(uint32_t base)
{
#if defined(STUB_FAULT_SKIP_UNLOCK)
    if (0) {
#else
    if (REG(base + F_CR) & CR_LOCK) {
#endif
        REG(base + F_KEYR) = KEY1;
        REG(base + F_KEYR) = KEY2;
    }
}

static void flash_lock(uint32_t base) { REG(base + F_CR) |= CR_LOCK; }
#endif

static int flash_busy(uint32_t base) { return (REG(base + F_SR) & SR_BSY) != 0u; }

/* start erasing unit `index` at `addr`; returns the controller used */
static uint32_t flash_erase_start(struct state *s, uint32_t index, uint32_t addr)
{
    uint32_t base = F_BASE(s, addr);
    flash_unlock(base);
#if defined(STUB_GROUP_L0L1)
    (void)index;
    REG(base + F_SR) = SR_ERR | SR_EOP; /* rc_w1: clear stale errors and EOP */
    REG(base + F_PECR) = PECR_ERASE | PECR_PROG;
    REG(addr) = 0u; /* a word written into the page starts its erase */
#else
    REG(base + F_SR) = SR_ERR | 1u; /* clear stale errors (and EOP) */
#endif
#if defined(STUB_GROUP_L0L1)
#elif defined(STUB_GROUP_F4)
    uint32_t snb = index;
    if (s->p->bank_units && index >= s->p->bank_units)
        snb = index - s->p->bank_units + s->p->bank_code;
    REG(base + F_CR) = CR_SER | CR_PSIZE32 | (snb << 3);
    REG(base + F_CR) = CR_SER | CR_PSIZE32 | (snb << 3) | CR_STRT;
#elif defined(STUB_GROUP_G0L4)
    uint32_t cr = CR_PER;
    if (s->p->bank_units && index >= s->p->bank_units) {
        index -= s->p->bank_units;
        cr |= 1u << s->p->bank_code;
    }
    cr |= index << 3;
    REG(base + F_CR) = cr;
    REG(base + F_CR) = cr | CR_STRT;
#else
    (void)index;
    REG(base + F_SR) = SR_ERR | SR_EOP;
    REG(base + F_CR) = CR_PER;
    REG(base + F_AR) = addr;
    REG(base + F_CR) = CR_PER | CR_STRT;
#endif
    return base;
}

static void flash_prog_begin(struct state *s, uint32_t addr)
{
    uint32_t base = F_BASE(s, addr);
    flash_unlock(base);
#if defined(STUB_GROUP_F1) || defined(STUB_GROUP_L0L1)
    REG(base + F_SR) = SR_ERR | SR_EOP;
#else
    REG(base + F_SR) = SR_ERR | 1u;
#endif
#if defined(STUB_GROUP_L0L1)
    REG(base + F_PECR) = 0u; /* word programming: neither PROG nor FPRG (RM0377 3.3.4) */
#elif defined(STUB_GROUP_F4) && defined(STUB_FAULT_WIDTH)
    REG(base + F_CR) = CR_PG; /* PSIZE x8, but words are written */
#elif defined(STUB_GROUP_F4)
    REG(base + F_CR) = CR_PG | CR_PSIZE32;
#else
    REG(base + F_CR) = CR_PG;
#endif
}

/* program one unit (PROG_UNIT bytes) from src (a RAM buffer, any alignment) */
static void flash_prog_unit(uint32_t addr, const uint8_t *src)
{
#if defined(STUB_FAULT_WIDTH) && defined(STUB_GROUP_F1)
    REG(addr) = rd32(src) | 0xFFFF0000u; /* a word where the controller takes half-words */
#elif defined(STUB_FAULT_WIDTH) && defined(STUB_GROUP_L0L1)
    for (uint32_t i = 0; i < 4u; i += 2u) /* half-words where program memory takes words */
        *(volatile uint16_t *)(uintptr_t)(addr + i) = (uint16_t)(src[i] | src[i + 1] << 8);
#elif defined(STUB_FAULT_WIDTH) && defined(STUB_GROUP_G0L4)
    for (uint32_t i = 0; i < 8u; i += 2u) /* half-words where it takes 32-bit words */
        *(volatile uint16_t *)(uintptr_t)(addr + i) = (uint16_t)(src[i] | src[i + 1] << 8);
#elif defined(STUB_GROUP_F1)
    *(volatile uint16_t *)(uintptr_t)addr = (uint16_t)(src[0] | src[1] << 8);
#elif defined(STUB_GROUP_F4) || defined(STUB_GROUP_L0L1)
    REG(addr) = rd32(src);
#else
    REG(addr) = rd32(src);
    REG(addr + 4u) = rd32(src + 4);
#endif
}

#if defined(STUB_GROUP_L0L1)
/* one half-page (RM0377 3.3.4 "program a half-page"): FPRG + PROG, then every word of the
   half-page in order, with no flash access in between (this code runs from RAM; interrupts
   are held off so that no vector fetch from flash aborts it) */
static void flash_prog_half(uint32_t base, uint32_t addr, const uint8_t *src, uint32_t n)
{
    uint32_t primask;
    __asm volatile("mrs %0, primask\n\tcpsid i" : "=r"(primask) : : "memory");
    REG(base + F_PECR) = PECR_FPRG | PECR_PROG;
    for (uint32_t i = 0; i < n; i += 4u) {
#if defined(STUB_FAULT_WIDTH)
        *(volatile uint16_t *)(uintptr_t)(addr + i) = (uint16_t)(src[i] | src[i + 1] << 8);
        *(volatile uint16_t *)(uintptr_t)(addr + i + 2u) = (uint16_t)(src[i + 2] | src[i + 3] << 8);
#else
        REG(addr + i) = rd32(src + i);
#endif
    }
    __asm volatile("msr primask, %0" : : "r"(primask) : "memory");
}
#endif

static uint32_t flash_errors(uint32_t base) { return REG(base + F_SR) & SR_ERR; }

static void flash_end(struct state *s, uint32_t addr)
{
    uint32_t base = F_BASE(s, addr);
#if defined(STUB_GROUP_L0L1)
    REG(base + F_PECR) = 0u;
#else
    REG(base + F_CR) = 0u;
#endif
    flash_lock(base);
}

/* ---- jobs -------------------------------------------------------------------------------- */
enum { JOB_NONE, JOB_ERASE, JOB_WRITE, JOB_CRC, JOB_WAIT_TX };

static void job_fail(struct state *s, struct slot *sl, uint32_t sr, uint32_t addr)
{
    uint8_t d[8];
    wr32(d, sr);
    wr32(d + 4, addr);
    respond(s, sl->seq, ST_FLASH, d, 8u);
}

static void slot_release(struct state *s)
{
    uint32_t k = s->exec % RESP_N;
    s->slots[s->byseq[k] - 1u].used = 0;
    s->byseq[k] = 0;
    s->exec++;
    s->job_active = JOB_NONE;
}

/* start the job of the oldest received frame */
static void job_start(struct state *s)
{
    struct slot *sl = &s->slots[s->byseq[s->exec % RESP_N] - 1u];
    const uint8_t *a = sl->buf + 2;
    uint32_t n = sl->len;
    struct resp *r = resp_for(s, sl->seq);
    r->seq = sl->seq;
    r->cmd = sl->cmd;
    r->len = 0;
    r->bulk = 0;
    r->bulk_len = 0;
    r->done = 0;
    switch (sl->cmd) {
    case CMD_HELLO: {
        uint8_t d[16];
        d[0] = (uint8_t)STUB_VERSION;
        d[1] = (uint8_t)GROUP_ID;
        d[2] = (uint8_t)s->nslots;
        d[3] = (uint8_t)PROG_UNIT;
        wr32(d + 4, s->u.base);
        wr32(d + 8, s->clock);
        wr32(d + 12, REG(s->u.base + s->u.brr) & 0xFFFFu); /* the divider in use now */
        respond(s, sl->seq, ST_OK, d, 16u);
        slot_release(s);
        return;
    }
    case CMD_READ:
        if (n != 8u || rd32(a + 4) > MAX_DATA) {
            respond(s, sl->seq, ST_ARGS, 0, 0u);
        } else {
            r->bulk = rd32(a);
            r->bulk_len = rd32(a + 4);
            s->tx_bulk_busy = 1;
            respond(s, sl->seq, ST_OK, 0, 0u);
        }
        slot_release(s);
        return;
    case CMD_CRC:
        if (n != 8u || (rd32(a) | rd32(a + 4)) & 3u) {
            respond(s, sl->seq, ST_ARGS, 0, 0u);
            slot_release(s);
            return;
        }
        s->job_addr = rd32(a);
        s->job_end = s->job_addr + rd32(a + 4);
        s->job_crc = 0xFFFFFFFFu;
        s->job_active = JOB_CRC;
        return;
    case CMD_ERASE:
    case CMD_WRITE:
        if ((sl->cmd == CMD_ERASE && n != 8u) ||
            (sl->cmd == CMD_WRITE && (n < 4u || (rd32(a) % PROG_UNIT) || ((n - 4u) % PROG_UNIT)))) {
            respond(s, sl->seq, ST_ARGS, 0, 0u);
            slot_release(s);
            return;
        }
        s->job_active = sl->cmd == CMD_ERASE ? JOB_ERASE : JOB_WRITE;
        s->job_step = 0u;
        s->job_addr = rd32(a);
        s->job_src = 6u; /* data after seq, cmd and the address */
        s->job_end = n + 2u;
        return;
    case CMD_BAUD: {
        uint32_t baud = n == 4u ? rd32(a) : 0u;
        uint32_t brr = baud ? (s->clock + baud / 2u) / baud : 0u;
        uint8_t d[12];
        if (brr < 16u || brr > 0xFFFFu) {
            wr32(d, s->clock / 16u);
            respond(s, sl->seq, ST_ARGS, d, 4u);
        } else {
            /* the host works out the error against what it asked for */
            wr32(d, s->clock / brr);
            wr32(d + 4, brr);
            wr32(d + 8, s->clock);
            respond(s, sl->seq, ST_OK, d, 12u);
            s->pending_brr = brr;
        }
        slot_release(s);
        return;
    }
    case CMD_LEAVE:
        if (n != 5u || a[0] > 2u) {
            respond(s, sl->seq, ST_ARGS, 0, 0u);
        } else {
            respond(s, sl->seq, ST_OK, 0, 0u);
            s->leave_mode = 1u + a[0];
            s->leave_addr = rd32(a + 1);
        }
        slot_release(s);
        return;
    default:
        respond(s, sl->seq, ST_CMD, 0, 0u);
        slot_release(s);
        return;
    }
}

/* one small step of the running job */
static void job_step(struct state *s)
{
    struct slot *sl = &s->slots[s->byseq[s->exec % RESP_N] - 1u];
    if (s->job_active == JOB_CRC) {
        /* one word per turn, in the CRC unit's order (each word MSB first) */
        for (int k = 0; k < 1 && s->job_addr < s->job_end; k++) {
            uint32_t w = REG(s->job_addr);
            uint32_t c = s->job_crc;
            c = crc_byte(s->crc_table, c, w >> 24);
            c = crc_byte(s->crc_table, c, (w >> 16) & 0xFFu);
            c = crc_byte(s->crc_table, c, (w >> 8) & 0xFFu);
            s->job_crc = crc_byte(s->crc_table, c, w & 0xFFu);
            s->job_addr += 4u;
        }
        if (s->job_addr >= s->job_end) {
            uint8_t d[4];
            wr32(d, s->job_crc);
            respond(s, sl->seq, ST_OK, d, 4u);
            slot_release(s);
        }
        return;
    }
    /* flash jobs: never while a response still streams flash bytes */
    if (s->job_step == 0u && s->tx_bulk_busy)
        return;
    if (s->job_active == JOB_ERASE) {
        uint32_t base = F_BASE(s, s->job_addr);
        if (s->job_step == 0u) {
            flash_erase_start(s, rd32(sl->buf + 6), s->job_addr);
            s->job_step = 1u;
            return;
        }
        if (flash_busy(base))
            return;
        uint32_t err = flash_errors(base);
        flash_end(s, s->job_addr);
        if (err)
            job_fail(s, sl, err, s->job_addr);
        else
            respond(s, sl->seq, ST_OK, 0, 0u);
        slot_release(s);
        return;
    }
    /* JOB_WRITE: step 0 begin, then one unit per turn once the controller is idle */
    uint32_t base = F_BASE(s, s->job_addr);
    if (s->job_step == 0u) {
        flash_prog_begin(s, s->job_addr);
        s->job_step = 1u;
    } else {
        if (flash_busy(base))
            return;
        uint32_t err = flash_errors(base);
        if (err) {
            flash_end(s, s->job_addr);
            job_fail(s, sl, err, s->job_addr - PROG_UNIT);
            slot_release(s);
            return;
        }
    }
    if (s->job_src >= s->job_end) {
        flash_end(s, s->job_addr);
        respond(s, sl->seq, ST_OK, 0, 0u);
        slot_release(s);
        return;
    }
#if defined(STUB_GROUP_L0L1)
    uint32_t hp = s->p->bank_code;
    if (hp && s->job_addr % hp == 0u && s->job_end - s->job_src >= hp) {
        flash_prog_half(base, s->job_addr, sl->buf + s->job_src, hp);
        s->job_addr += hp;
        s->job_src += hp;
        return;
    }
    REG(base + F_PECR) = 0u; /* word programming (a half-page left FPRG + PROG set) */
#endif
    flash_prog_unit(s->job_addr, sl->buf + s->job_src);
    s->job_addr += PROG_UNIT;
    s->job_src += PROG_UNIT;
}

/* ---- receiver ---------------------------------------------------------------------------- */
static void nak(struct state *s)
{
    if (!s->nak_pending)
        s->nak_pending = RSP_NAK;
}

/* A complete frame in slot `sl`. Frames may arrive out of order after a loss (selective
   repeat): each is kept by its seq until the gap before it is filled; `expect` is the first
   seq not received yet, and a gap or a damaged frame earns a NAK(expect). */
static void frame_done(struct state *s, struct slot *sl)
{
    uint32_t n = s->rx_len;
    if (s->rx_bad || n < 6u || s->rx_crc != 0u) { /* CRC residue 0 over data + CRC (BE) */
        if (n || s->rx_bad)
            nak(s);
        return;
    }
    uint8_t seq = sl->buf[0];
    uint8_t ahead = (uint8_t)(seq - s->expect);
    uint8_t behind = (uint8_t)(s->expect - seq);
    s->probation = 0u; /* a good frame: the line rate works */
    if (ahead < s->nslots) {
        uint32_t k = seq % RESP_N;
        if (!s->byseq[k]) { /* new: keep it */
            sl->seq = seq;
            sl->cmd = sl->buf[1];
            sl->len = n - 6u; /* payload at buf + 2, CRC after it */
            sl->used = 1u;
            s->byseq[k] = (uint8_t)(sl - s->slots + 1);
        }
        if (ahead)
            nak(s); /* something before it went missing */
        while (s->byseq[s->expect % RESP_N] && (uint8_t)(s->expect - s->exec) < s->nslots)
            s->expect++;
    } else if (behind >= 1u && behind <= RESP_N - 2u) {
        struct resp *r = resp_for(s, seq);
        if (r->seq == seq && r->done) /* our answer was lost: send it again */
            txq_push(s, seq);
    } else {
        nak(s);
    }
}

static void rx_byte(struct state *s, uint32_t status, uint32_t b)
{
    if (!s->rx_slot)
        s->rx_slot = (uint8_t)slot_free(s);
    struct slot *sl = s->rx_slot ? &s->slots[s->rx_slot - 1u] : 0;
    if (status & (SR_FE | SR_PE | SR_NE | SR_ORE)) {
        s->rx_bad = 1u;
        if (s->probation && ++s->probation > 4u) { /* the new rate does not work: back */
            set_brr(s, s->old_brr);
            s->probation = 0u;
        }
    }
    if (b == SLIP_END) {
        if (sl)
            frame_done(s, sl);
        else if (s->rx_bad)
            nak(s); /* no room (a retransmission beyond the credits): ask again later */
        s->rx_slot = 0;
        s->rx_len = 0u;
        s->rx_crc = 0xFFFFFFFFu;
        s->rx_esc = 0u;
        s->rx_bad = 0u;
        return;
    }
    if (b == SLIP_ESC) {
        s->rx_esc = 1u;
        return;
    }
    if (s->rx_esc) {
        s->rx_esc = 0u;
        if (b == SLIP_ESC_END)
            b = SLIP_END;
        else if (b == SLIP_ESC_ESC)
            b = SLIP_ESC;
        else
            s->rx_bad = 1u;
    }
    if (!sl || s->rx_len >= SLOT_SIZE) {
        s->rx_bad = 1u;
        return;
    }
    sl->buf[s->rx_len++] = (uint8_t)b;
    s->rx_crc = crc_byte(s->crc_table, s->rx_crc, b);
}

/* ---- leaving ------------------------------------------------------------------------------ */
__attribute__((noreturn)) static void jump(uint32_t vectors)
{
    uint32_t sp = REG(vectors), pc = REG(vectors + 4u);
    __asm volatile("msr msp, %0\n\tbx %1" : : "r"(sp), "r"(pc) : "memory");
    for (;;) {
    }
}

__attribute__((noreturn)) static void leave(struct state *s)
{
    if (s->leave_mode == 1u) { /* system reset (SYSRESETREQ) */
        __asm volatile("dsb" ::: "memory");
        REG(0xE000ED0Cu) = 0x05FA0004u;
        for (;;) {
        }
    }
    jump(s->leave_mode == 2u ? s->p->sysmem : s->leave_addr);
}

/* ---- main loop ---------------------------------------------------------------------------- */
void stub_main(void)
{
    struct state st;
    struct state *s = &st;
    uint8_t *z = (uint8_t *)s;
    for (uint32_t i = 0; i < sizeof st; i++)
        z[i] = 0;
    const struct params *p = &stub_header.p;
    __asm volatile("" : "+r"(p)); /* the host patched the block: never constant-fold it */
    s->p = p;
    if (s->p->magic != STUB_MAGIC || !find_usart(s))
        jump(s->p->sysmem); /* not set up by the host: back into the ROM */
    uint32_t base = (s->p->buf_base + 7u) & ~7u;
    s->crc_table = (uint32_t *)(uintptr_t)base;
    crc_init(s->crc_table);
    base += 1024u;
    s->slots = (struct slot *)(uintptr_t)base;
    uint32_t room = s->p->buf_end - STACK_RESERVE - (uint32_t)sizeof st - base;
    s->nslots = room / (uint32_t)sizeof(struct slot);
    if (s->nslots > MAX_SLOTS)
        s->nslots = MAX_SLOTS;
    s->rom_brr = REG(s->u.base + s->u.brr) & 0xFFFFu;
    s->clock = s->rom_brr * s->p->rom_baud; /* OVER8 = 0: baud = clock / BRR */
    s->rx_crc = 0xFFFFFFFFu;
    for (uint32_t i = 0; i < RESP_N; i++)
        s->resp[i].seq = (uint8_t)(i + 1u); /* no record matches seq i before its answer */
    clear_rx_errors(s);
    s->nak_pending = RSP_READY; /* announce ourselves: "ready", expect = 0 */
    for (;;) {
        if (s->p->iwdg_kr)
            REG(s->p->iwdg_kr) = 0xAAAAu; /* IWDG refresh (no effect when it is not running) */
        uint32_t sr = REG(s->u.base + s->u.sr);
        if (sr & (SR_RXNE | SR_ORE | SR_FE)) {
            uint32_t b = REG(s->u.base + s->u.rd) & 0xFFu;
            if (sr & (SR_ORE | SR_FE | SR_PE | SR_NE))
                clear_rx_errors(s);
            if (sr & SR_RXNE)
                rx_byte(s, sr, b);
            else
                s->rx_bad = 1u;
        }
        if (sr & SR_TXE) {
            uint32_t o = tx_next(s);
            if (o)
                REG(s->u.base + s->u.td) = o & 0xFFu;
            else if ((s->pending_brr || s->leave_mode) && (sr & SR_TC)) {
                if (s->leave_mode)
                    leave(s);
                s->old_brr = REG(s->u.base + s->u.brr) & 0xFFFFu;
                set_brr(s, s->pending_brr);
                s->pending_brr = 0u;
                s->probation = 1u;
            }
        }
        if (s->job_active)
            job_step(s);
        else if (s->byseq[s->exec % RESP_N])
            job_start(s);
    }
}
