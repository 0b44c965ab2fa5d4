/* What the test guests' virtio-mmio drivers share: split-ring layouts, register access
 * for the device at MMIO (defined by the includer), and queue set-up. Each queue at
 * `base`: descriptors at base, the available ring at +0x100, the used ring at +0x1000. */
#ifndef MEMPART_TEST_VIRTIO_H
#define MEMPART_TEST_VIRTIO_H

#include "guest.h"

#define QSIZE 16

struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct avail { u16 flags; u16 idx; u16 ring[QSIZE]; };
struct used { u16 flags; u16 idx; struct { u32 id; u32 len; } ring[QSIZE]; };

static volatile u32 *reg(u64 offset) { return (volatile u32 *)(MMIO + offset); }
static void barrier(void) { __asm__ volatile("mfence" : : : "memory"); }

static void fail(const char *why) {
    puts("guest: fail ");
    puts(why);
    puts("\n");
    reset();
}

/* Zeroes the rings of queue `index` at `base` and hands them to the device. */
static void set_up_queue(u32 index, u64 base) {
    for (u64 i = 0; i < 0x2000; i += 8) *word(base + i) = 0;
    *reg(0x30) = index;
    if (*reg(0x34) < QSIZE) fail("queue too small");
    *reg(0x38) = QSIZE;
    *reg(0x80) = (u32)base;
    *reg(0x84) = 0;
    *reg(0x90) = (u32)(base + 0x100);
    *reg(0x94) = 0;
    *reg(0xa0) = (u32)(base + 0x1000);
    *reg(0xa4) = 0;
    *reg(0x44) = 1;
}

#endif
