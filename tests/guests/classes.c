/* Touches typed memory: a granted extent is written and read, an ungranted one is
 * refused, and after the host revokes the extent it is refused too; then a flood of
 * ungranted reads. */
#include "guest.h"

#define FLOOD 10000

void __attribute__((section(".text.start"))) _start(u64 cpu, u64 zero_page) {
    (void)cpu;
    puts("guest: hello\n");
    u64 base = first_class_base(zero_page);
    puts("guest: class at ");
    puthex(base);
    puts("\n");
    if (!base) reset();
    for (u64 i = 0; i < 16; i++) *word(base + 4096 * i) = 0x6d656d7061727400UL | i;
    u64 sum = 0;
    for (u64 i = 0; i < 16; i++) sum += *word(base + 4096 * i) & 0xff;
    puts("guest: granted sum ");
    puthex(sum);
    puts("\n");
    u64 outside = *word(base + (1UL << 20));
    puts("guest: ungranted read ");
    puthex(outside);
    puts("\n");
    *word(base + (1UL << 20) + 8) = 1;
    puts("guest: waiting for revoke\n");
    while (*word(MAILBOX) != 1) __asm__ volatile("pause");
    u64 after = *word(base);
    puts("guest: after revoke ");
    puthex(after);
    puts("\n");
    /* A hostile kernel reads ungranted memory in a loop: the host must stay bounded. */
    u64 flood = 0;
    for (u64 i = 0; i < FLOOD; i++) flood |= *word(base + (2UL << 20) + 8 * (i % 512));
    puts("guest: flooded ");
    puthex(flood);
    puts("\n");
    reset();
}
