/* What the test guests' balloon drivers share: bringing up the virtio-mmio balloon at
 * MMIO with VERSION_1 only and its inflate and deflate queues, and handing the device
 * one buffer of page numbers. */
#ifndef MEMPART_TEST_BALLOON_H
#define MEMPART_TEST_BALLOON_H

#define MMIO 0xd0000000UL
#include "virtio.h"

#define INFLATE_Q 0x800000UL
#define DEFLATE_Q 0x810000UL
#define PFNS 0x820000UL
#define PAGES 0x1000000UL

/* Probes the balloon, negotiates VERSION_1 alone and sets up both queues. */
static void balloon_up(void) {
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
}

/* Offers the `count` page numbers at PFNS on queue `index` (rings at `base`) and waits
 * until the device has used them. */
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

#endif
