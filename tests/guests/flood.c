/* A hostile kernel: reads ungranted class memory in a loop, forever, each read at
 * another address of the first class's first 2 MiB (scripts/bench-violations). */
#include "guest.h"

void __attribute__((section(".text.start"))) _start(u64 cpu, u64 zero_page) {
    (void)cpu;
    u64 base = first_class_base(zero_page);
    puts("guest: flooding\n");
    if (!base) reset();
    u64 sink = 0;
    for (u64 i = 0;; i++) sink |= *word(base + 8 * (i % (1UL << 18)));
}
