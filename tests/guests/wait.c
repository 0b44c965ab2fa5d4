/* Says it is waiting, spins until the host writes 1 to the mailbox, then resets. */
#include "guest.h"

void __attribute__((section(".text.start"))) _start(u64 cpu, u64 zero_page) {
    (void)cpu;
    (void)zero_page;
    puts("guest: waiting\n");
    while (*word(MAILBOX) != 1) __asm__ volatile("pause");
    reset();
}
