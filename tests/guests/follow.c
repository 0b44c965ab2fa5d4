/* A balloon driver that follows the target, as Linux's does: it touches POOL pages,
 * then keeps inflating or deflating until the balloon holds what the host asks, and
 * reports each new size. The host stops it through MAILBOX (value 3). */
#include "balloon.h"

#define POOL 1024
#define CHUNK 256

/* Hands the device `count` page numbers of the pool, from page `first`, on queue `index`. */
static void send_pool(u32 index, u64 base, u32 first, u32 count) {
    for (u32 i = 0; i < count; i++)
        *(volatile u32 *)(PFNS + 4UL * i) = (u32)(PAGES >> 12) + first + i;
    send_pfns(index, base, count);
}

void __attribute__((section(".text.start"))) _start(u64 cpu, u64 zero_page) {
    (void)cpu;
    (void)zero_page;
    balloon_up();
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
            send_pool(0, INFLATE_Q, actual, n);
            actual += n;
        }
        while (actual > target) {
            u32 n = actual - target > CHUNK ? CHUNK : actual - target;
            send_pool(1, DEFLATE_Q, actual - n, n);
            actual -= n;
        }
        *reg(0x104) = actual;
        puts("guest: holds ");
        puthex(actual);
        puts("\n");
    }
    reset();
}
