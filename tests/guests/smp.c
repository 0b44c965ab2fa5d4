/* Every vCPU checks in; vCPU 0 waits for all of them, reports and resets. */
#include "guest.h"

void __attribute__((section(".text.start"))) _start(u64 cpu, u64 zero_page) {
    (void)zero_page;
    __atomic_fetch_add(word(MAILBOX + 8), 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_or(word(MAILBOX + 16), 1UL << cpu, __ATOMIC_SEQ_CST);
    if (cpu != 0) for (;;) __asm__ volatile("cli; hlt");
    while (*word(MAILBOX + 8) < *word(MAILBOX)) __asm__ volatile("pause");
    puts("guest: cpus seen ");
    puthex(*word(MAILBOX + 16));
    puts("\n");
    reset();
}
