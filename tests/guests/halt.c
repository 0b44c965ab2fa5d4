/* Halts at once with interrupts off: a guest that costs the host nothing while it sits. */
#include "guest.h"

void __attribute__((section(".text.start"))) _start(u64 cpu, u64 zero_page) {
    (void)cpu;
    (void)zero_page;
    for (;;) __asm__ volatile("cli; hlt");
}
