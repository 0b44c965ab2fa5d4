/* A minimal virtio-mem driver: reads the zone's region from the device, touches an
 * unplugged block (the host refuses it), plugs the requested size, writes and sums every
 * plugged block, asks their state, then at the host's word unplugs them, touches the
 * first block again, and sends one misaligned request. The host steps it through MAILBOX. */
#define MMIO 0xd0002000UL
#include "virtio.h"

#define QUEUE 0x800000UL
#define REQ 0x810000UL
#define RESP 0x810100UL

static u64 config64(u64 offset) {
    return (u64)*reg(0x100 + offset) | ((u64)*reg(0x104 + offset) << 32);
}

/* Sends one request and returns the response type (state in the high half). */
static u32 request(u16 type, u64 addr, u16 blocks) {
    volatile struct desc *d = (volatile struct desc *)QUEUE;
    volatile struct avail *a = (volatile struct avail *)(QUEUE + 0x100);
    volatile struct used *u = (volatile struct used *)(QUEUE + 0x1000);
    for (u64 i = 0; i < 32; i += 8) *word(REQ + i) = 0;
    *(volatile u16 *)REQ = type;
    *word(REQ + 8) = addr;
    *(volatile u16 *)(REQ + 16) = blocks;
    *word(RESP) = 0xffffffffffffffffUL;
    *word(RESP + 8) = 0xffffffffffffffffUL;
    d[0].addr = REQ;
    d[0].len = 24;
    d[0].flags = 1;
    d[0].next = 1;
    d[1].addr = RESP;
    d[1].len = 10;
    d[1].flags = 2;
    d[1].next = 0;
    u16 before = u->idx;
    a->ring[a->idx % QSIZE] = 0;
    barrier();
    a->idx = a->idx + 1;
    barrier();
    *reg(0x50) = 0;
    while (u->idx == before) __asm__ volatile("pause");
    return *(volatile u16 *)RESP | ((u32) * (volatile u16 *)(RESP + 8) << 16);
}

static void say(const char *what, u64 value) {
    puts("guest: ");
    puts(what);
    puts(" ");
    puthex(value);
    puts("\n");
}

void __attribute__((section(".text.start"))) _start(u64 cpu, u64 zero_page) {
    (void)cpu;
    (void)zero_page;
    if (*reg(0) != 0x74726976 || *reg(4) != 2 || *reg(8) != 24) fail("no virtio-mem");
    *reg(0x70) = 0;
    *reg(0x70) = 1;
    *reg(0x70) = 3;
    *reg(0x14) = 0;
    if ((*reg(0x10) & 3) != 3) fail("no ACPI_PXM and UNPLUGGED_INACCESSIBLE");
    *reg(0x14) = 1;
    if (!(*reg(0x10) & 1)) fail("no VERSION_1");
    *reg(0x24) = 0;
    *reg(0x20) = 3;
    *reg(0x24) = 1;
    *reg(0x20) = 1;
    *reg(0x70) = 11;
    if (!(*reg(0x70) & 8)) fail("features refused");
    set_up_queue(0, QUEUE);
    *reg(0x70) = 15;
    u64 block = config64(0);
    u64 addr = config64(0x10);
    u64 requested = config64(0x30);
    say("block", block);
    say("requested", requested);
    say("unplugged read", *word(addr));
    u64 blocks = requested / block;
    say("plug", request(0, addr, (u16)blocks));
    u64 sum = 0;
    for (u64 b = 0; b < blocks; b++)
        for (u64 off = 0; off < block; off += 4096) *word(addr + b * block + off) = b + 1;
    for (u64 b = 0; b < blocks; b++)
        for (u64 off = 0; off < block; off += 4096) sum += *word(addr + b * block + off);
    say("plugged sum", sum);
    say("state", request(3, addr, (u16)blocks));
    say("plugged size", config64(0x28));
    while (*word(MAILBOX) != 1) __asm__ volatile("pause");
    say("unplug", request(1, addr, (u16)blocks));
    say("after unplug read", *word(addr));
    say("misaligned plug", request(0, addr + 4096, 1));
    reset();
}
