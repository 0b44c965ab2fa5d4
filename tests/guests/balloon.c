/* A minimal virtio-mmio balloon driver: probe, negotiate VERSION_1 only, set up the
 * inflate and deflate queues, read the target, inflate that many touched pages, then
 * deflate them and check they are usable again. The host steps it through MAILBOX. */
#define MMIO 0xd0000000UL
#include "virtio.h"

#define INFLATE_Q 0x800000UL
#define DEFLATE_Q 0x810000UL
#define PFNS 0x820000UL
#define PAGES 0x1000000UL

/* Offers one buffer of `count` page numbers on queue `index` and waits until it is used. */
static void send_pfns(u32 index, u64 base, u32 count) {
    volatile struct desc *d = (volatile struct desc *)base;
    volatile struct avail *a = (volatile struct avail *)(base + 0x100);
    volatile struct used *u = (volatile struct used *)(base + 0x1000);
    u16 before = u->idx;
    d[0].addr = PFNS;
    d[0].len = 4 * count;
    d[0].flags = 0;
    d[0].next = 0;
    a->ring[a->idx % QSIZE] = 0;
    barrier();
    a->idx = a->idx + 1;
    barrier();
    *reg(0x50) = index;
    while (u->idx == before) __asm__ volatile("pause");
}

void __attribute__((section(".text.start"))) _start(u64 cpu, u64 zero_page) {
    (void)cpu;
    (void)zero_page;
    if (*reg(0) != 0x74726976 || *reg(4) != 2 || *reg(8) != 5) fail("no balloon");
    *reg(0x70) = 0;
    *reg(0x70) = 1;
    *reg(0x70) = 3;
    *reg(0x14) = 1;
    if (!(*reg(0x10) & 1)) fail("no VERSION_1");
    *reg(0x24) = 0;
    *reg(0x20) = 0;
    *reg(0x24) = 1;
    *reg(0x20) = 1;
    *reg(0x70) = 11;
    if (!(*reg(0x70) & 8)) fail("features refused");
    set_up_queue(0, INFLATE_Q);
    set_up_queue(1, DEFLATE_Q);
    *reg(0x70) = 15;
    if (*reg(0x70) & 0x40) fail("device needs reset");
    u32 target = *reg(0x100);
    puts("guest: balloon target ");
    puthex(target);
    puts("\n");
    if (target > 1024) fail("target too large");
    for (u32 i = 0; i < target; i++) {
        *word(PAGES + 4096UL * i) = i + 1;
        *(volatile u32 *)(PFNS + 4UL * i) = (u32)(PAGES >> 12) + i;
    }
    puts("guest: touched\n");
    while (*word(MAILBOX) != 1) __asm__ volatile("pause");
    send_pfns(0, INFLATE_Q, target);
    *reg(0x104) = target;
    puts("guest: inflated\n");
    while (*word(MAILBOX) != 2) __asm__ volatile("pause");
    send_pfns(1, DEFLATE_Q, target);
    *reg(0x104) = 0;
    u64 zeroed = 0;
    for (u32 i = 0; i < target; i++) zeroed += *word(PAGES + 4096UL * i) == 0;
    for (u32 i = 0; i < target; i++) *word(PAGES + 4096UL * i) = 0x100 + i;
    u64 good = 0;
    for (u32 i = 0; i < target; i++) good += *word(PAGES + 4096UL * i) == 0x100 + i;
    puts("guest: deflated, zeroed ");
    puthex(zeroed);
    puts(" usable ");
    puthex(good);
    puts("\n");
    reset();
}
