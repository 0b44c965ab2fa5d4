/* Shared helpers of the freestanding test guests: serial output, i8042 reset, e820. */
#ifndef MEMPART_TEST_GUEST_H
#define MEMPART_TEST_GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

/* Where the host and the guest exchange words in sysram (below the EBDA, above the
 * boot page tables). */
#define MAILBOX 0x80000UL

static inline void outb(u16 port, u8 value) { __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static void putc(char c) {
    while (!(inb(0x3f8 + 5) & 0x20)) { }
    outb(0x3f8, (u8)c);
}

static void puts(const char *s) { while (*s) putc(*s++); }

static void puthex(u64 v) {
    puts("0x");
    for (int shift = 60; shift >= 0; shift -= 4) putc("0123456789abcdef"[(v >> shift) & 0xf]);
}

static volatile u64 *word(u64 addr) { return (volatile u64 *)addr; }

/* Resets through the i8042 controller: the VMM's clean way out. */
static void __attribute__((noreturn)) reset(void) {
    outb(0x64, 0xfe);
    for (;;) __asm__ volatile("cli; hlt");
}

/* The first reserved e820 range at or above 4 GiB: the first typed-memory class. */
static u64 first_class_base(u64 zero_page) {
    u8 entries = *(volatile u8 *)(zero_page + 0x1e8);
    for (u8 i = 0; i < entries; i++) {
        u64 entry = zero_page + 0x2d0 + 20UL * i;
        u64 addr = *(volatile u64 *)entry;
        u32 type = *(volatile u32 *)(entry + 16);
        if (type == 2 && addr >= (4UL << 30)) return addr;
    }
    return 0;
}

#endif
