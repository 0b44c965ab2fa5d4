/* A minimal virtio-mmio balloon driver: probe, negotiate VERSION_1 only, set up the
 * inflate and deflate queues, read the target, inflate that many touched pages (and the
 * same pages REPEATS times more), then deflate them and check they are usable again. The host steps it through MAILBOX. */
#include "balloon.h"

#define REPEATS 20

void __attribute__((section(".text.start"))) _start(u64 cpu, u64 zero_page) {
    (void)cpu;
    (void)zero_page;
    balloon_up();
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
    /* A hostile driver inflates the same pages again: the host must count them once. */
    for (u32 again = 0; again < REPEATS; again++) send_pfns(0, INFLATE_Q, target);
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
