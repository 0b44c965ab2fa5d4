/* Prints what the guest kernel would see of CPUID leaf 1 ECX and leaf 0x80000008 EBX. */
#include "guest.h"

static void cpuid(u32 leaf, u32 *ebx, u32 *ecx) {
    u32 eax = leaf, edx;
    __asm__ volatile("cpuid" : "+a"(eax), "=b"(*ebx), "=c"(*ecx), "=d"(edx) : "c"(0));
}

void __attribute__((section(".text.start"))) _start(u64 cpu, u64 zero_page) {
    (void)cpu;
    (void)zero_page;
    u32 ebx, ecx;
    cpuid(1, &ebx, &ecx);
    puts("guest: leaf 1 ecx ");
    puthex(ecx);
    puts("\n");
    cpuid(0x80000008, &ebx, &ecx);
    puts("guest: leaf 80000008 ebx ");
    puthex(ebx);
    puts("\n");
    reset();
}
