/* Takes the serial port's interrupt through the VMM's I/O APIC: reads the I/O APIC's
 * version, enables the local APIC, routes pin 4 (COM1) to vector 0x40, has the UART raise
 * its transmitter-empty interrupt, then routes the pin to vector 0x41 and raises it again.
 * Each handler counts and acknowledges the interrupt. */
#include "guest.h"

#define IOAPIC 0xfec00000UL
#define LAPIC 0xfee00000UL
#define LAPIC_EOI 0xb0
#define LAPIC_SVR 0xf0
#define COM1 0x3f8
#define UART_IER 1
#define UART_IIR 2
#define IER_THRE 0x02
#define FIRST_VECTOR 0x40

struct interrupt_frame;

static volatile u32 taken[2];

struct idt_entry {
    u16 offset_low, selector;
    u8 ist, type;
    u16 offset_mid;
    u32 offset_high, zero;
} __attribute__((packed));

static struct idt_entry idt[256] __attribute__((aligned(16)));

static volatile u32 *mmio32(u64 addr) { return (volatile u32 *)addr; }

static void ioapic_write(u32 index, u32 value) {
    *mmio32(IOAPIC) = index;
    *mmio32(IOAPIC + 0x10) = value;
}

static u32 ioapic_read(u32 index) {
    *mmio32(IOAPIC) = index;
    return *mmio32(IOAPIC + 0x10);
}

/* Reading the UART's identification clears its transmitter-empty interrupt; the write
 * to the local APIC ends the interrupt. */
static void acknowledge(void) {
    (void)inb(COM1 + UART_IIR);
    *mmio32(LAPIC + LAPIC_EOI) = 0;
}

__attribute__((interrupt)) static void first(struct interrupt_frame *frame) {
    (void)frame;
    taken[0]++;
    acknowledge();
}

__attribute__((interrupt)) static void second(struct interrupt_frame *frame) {
    (void)frame;
    taken[1]++;
    acknowledge();
}

static void set_gate(u8 vector, void (*handler)(struct interrupt_frame *)) {
    u64 at = (u64)handler;
    idt[vector] = (struct idt_entry){
        .offset_low = (u16)at, .selector = 0x08, .type = 0x8e,
        .offset_mid = (u16)(at >> 16), .offset_high = (u32)(at >> 32),
    };
}

/* Routes pin 4 to `vector` on APIC 0 (fixed, physical, edge), has the UART raise its
 * interrupt and waits for `count` to move. */
static void raise_on(u8 vector, volatile u32 *count) {
    ioapic_write(0x10 + 2 * 4 + 1, 0);
    ioapic_write(0x10 + 2 * 4, vector);
    outb(COM1 + UART_IER, 0);
    outb(COM1 + UART_IER, IER_THRE);
    while (*count == 0) __asm__ volatile("sti; hlt; cli");
    outb(COM1 + UART_IER, 0);
}

void __attribute__((section(".text.start"))) _start(u64 cpu, u64 zero_page) {
    (void)cpu;
    (void)zero_page;
    struct { u16 limit; u64 base; } __attribute__((packed)) idtr = { sizeof idt - 1, (u64)idt };
    set_gate(FIRST_VECTOR, first);
    set_gate(FIRST_VECTOR + 1, second);
    __asm__ volatile("lidt %0" : : "m"(idtr));
    *mmio32(LAPIC + LAPIC_SVR) = 0x1ff;

    puts("irq: ioapic version ");
    puthex(ioapic_read(1));
    putc('\n');
    raise_on(FIRST_VECTOR, &taken[0]);
    raise_on(FIRST_VECTOR + 1, &taken[1]);
    puts("irq: taken ");
    puthex(taken[0]);
    putc(' ');
    puthex(taken[1]);
    putc('\n');
    reset();
}
