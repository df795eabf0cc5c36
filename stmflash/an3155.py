"""AN3155 wire constants, shared by the client (``stmflash.uart``) and the virtual ROM
(``stmflash.sim.an3155``) so that both sides speak from one definition."""

from __future__ import annotations

ACK = 0x79
NACK = 0x1F
SYNC = 0x7F

GET, GET_VERSION, GET_ID = 0x00, 0x01, 0x02
READ, GO, WRITE = 0x11, 0x21, 0x31
ERASE, EXT_ERASE = 0x43, 0x44
WRITE_PROTECT, WRITE_UNPROTECT = 0x63, 0x73
READOUT_PROTECT, READOUT_UNPROTECT = 0x82, 0x92
GET_CHECKSUM = 0xA1

# Get Checksum (v3.3) parameters: the STM32 CRC unit's polynomial and reset value
CRC_POLY = 0x04C11DB7
CRC_INIT = 0xFFFFFFFF

COMMAND_NAMES = {
    GET: "Get",
    GET_VERSION: "Get Version",
    GET_ID: "Get ID",
    READ: "Read Memory",
    GO: "Go",
    WRITE: "Write Memory",
    ERASE: "Erase",
    EXT_ERASE: "Extended Erase",
    WRITE_PROTECT: "Write Protect",
    WRITE_UNPROTECT: "Write Unprotect",
    READOUT_PROTECT: "Readout Protect",
    READOUT_UNPROTECT: "Readout Unprotect",
    GET_CHECKSUM: "Get Checksum",
    0x32: "No-Stretch Write Memory",
    0x45: "No-Stretch Erase",
    0x50: "Special",
    0x51: "Extended Special",
}

# Extended Erase special codes (0x44); legacy Erase (0x43) has only 0xFF = global
MASS_ERASE, BANK1_ERASE, BANK2_ERASE = 0xFFFF, 0xFFFE, 0xFFFD
