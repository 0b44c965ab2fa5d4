/* A balloon driver that follows the target, as Linux's does: it touches POOL pages,
 * then keeps inflating or deflating until the balloon holds what the host asks, and
 * reports each new size. The host stops it through MAILBOX (value 3). */
#define MMIO 0xd0000000UL
#include "virtio.h"

#define INFLATE_Q 0x800000UL
#define DEFLATE_Q 0x810000UL
#define PFNS 0x820000UL
#define PAGES 0x1000000UL
#define POOL 1024
#define CHUNK 256

/* Offers `count` page numbers starting at page `first` of the pool on queue `index`
 * and waits until the device has used them. */
static void send_pfns(u32 index, u64 base, u32 first, u32 count) {
    volatile struct desc *d = (volatile struct desc *)base;
    volatile struct avail *a = (volatile struct avail *)(base + 0x100);
    volatile struct used *u = (volatile struct used *)(base + 0x1000);
    for (u32 i = 0; i < count; i++)
        *(volatile u32 *)(PFNS + 4UL * i) = (u32)(PAGES >> 12) + first + i;
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
    for (u32 i = 0; i < POOL; i++) *word(PAGES + 4096UL * i) = i + 1;
    puts("guest: touched\n");
    u32 actual = 0;
    while (*word(MAILBOX) != 3) {
        u32 target = *reg(0x100);
        if (target > POOL) target = POOL;
        if (target == actual) {
            for (int i = 0; i < 20000; i++) __asm__ volatile("pause");
            continue;
        }
        while (actual < target) {
            u32 n = target - actual > CHUNK ? CHUNK : target - actual;
            send_pfns(0, INFLATE_Q, actual, n);
            actual += n;
        }
        while (actual > target) {
            u32 n = actual - target > CHUNK ? CHUNK : actual - target;
            send_pfns(1, DEFLATE_Q, actual - n, n);
            actual -= n;
        }
        *reg(0x104) = actual;
        puts("guest: holds ");
        puthex(actual);
        puts("\n");
    }
    reset();
}
