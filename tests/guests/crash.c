/* Prints, then triple-faults: loads an empty IDT and raises an exception. */
#include "guest.h"

void __attribute__((section(".text.start"))) _start(u64 cpu, u64 zero_page) {
    (void)cpu;
    (void)zero_page;
    puts("guest: about to crash\n");
    struct __attribute__((packed)) { u16 limit; u64 base; } idt = {0, 0};
    __asm__ volatile("lidt %0; ud2" : : "m"(idt));
    for (;;) { }
}
