/* A minimal virtio-blk driver for the third virtio-mmio device (balloon, console, then
 * the first disk): probe, negotiate VERSION_1 only, set up the one queue, then write
 * sector 1, read sectors 0 and 1 back, ask the device id, read past the end and flush,
 * printing each status; then waits for the host's word in the mailbox and resets. */
#define MMIO 0xd0002000UL
#include "virtio.h"

#define QUEUE 0x800000UL
#define HEADER 0x810000UL
#define DATA 0x811000UL
#define STATUS 0x812000UL

/* One request: header (type, sector), `len` bytes of data at DATA (device-writable when
 * `in`), status; returns the status byte the device wrote. */
static u8 request(u32 type, u64 sector, u32 len, int in) {
    volatile struct desc *d = (volatile struct desc *)QUEUE;
    volatile struct avail *a = (volatile struct avail *)(QUEUE + 0x100);
    volatile struct used *u = (volatile struct used *)(QUEUE + 0x1000);
    *(volatile u32 *)HEADER = type;
    *(volatile u32 *)(HEADER + 4) = 0;
    *(volatile u64 *)(HEADER + 8) = sector;
    *(volatile u8 *)STATUS = 0xee;
    u16 n = 0;
    d[n].addr = HEADER;
    d[n].len = 16;
    d[n].flags = 1;
    d[n].next = n + 1;
    n++;
    if (len) {
        d[n].addr = DATA;
        d[n].len = len;
        d[n].flags = in ? 3 : 1;
        d[n].next = n + 1;
        n++;
    }
    d[n].addr = STATUS;
    d[n].len = 1;
    d[n].flags = 2;
    d[n].next = 0;
    u16 before = u->idx;
    a->ring[a->idx % QSIZE] = 0;
    barrier();
    a->idx = a->idx + 1;
    barrier();
    *reg(0x50) = 0;
    while (u->idx == before) __asm__ volatile("pause");
    return *(volatile u8 *)STATUS;
}

static u8 pattern(u32 i) { return (u8)((i * 3) ^ 0x5a); }

void __attribute__((section(".text.start"))) _start(u64 cpu, u64 zero_page) {
    (void)cpu;
    (void)zero_page;
    if (*reg(0) != 0x74726976 || *reg(4) != 2 || *reg(8) != 2) fail("no disk");
    *reg(0x70) = 0;
    *reg(0x70) = 1;
    *reg(0x70) = 3;
    *reg(0x14) = 1;
    if (!(*reg(0x10) & 1)) fail("no VERSION_1");
    *reg(0x24) = 0;
    *reg(0x20) = 0;
    *reg(0x24) = 1;
    *reg(0x20) = 1;
    *reg(0x70) = 11;
    if (!(*reg(0x70) & 8)) fail("features refused");
    set_up_queue(0, QUEUE);
    *reg(0x70) = 15;
    u64 capacity = *reg(0x100) | ((u64)*reg(0x104) << 32);
    puts("guest: capacity ");
    puthex(capacity);
    puts("\n");
    volatile u8 *data = (volatile u8 *)DATA;
    for (u32 i = 0; i < 512; i++) data[i] = pattern(i);
    u8 wrote = request(1, 1, 512, 0);
    for (u32 i = 0; i < 1024; i++) data[i] = 0;
    u8 read = request(0, 0, 1024, 1);
    u32 same = 0;
    for (u32 i = 0; i < 512; i++) same += data[512 + i] == pattern(i);
    puts("guest: write ");
    puthex(wrote);
    puts(" read ");
    puthex(read);
    puts(" sector 1 matches ");
    puthex(same);
    puts(" sector 0 starts ");
    for (u32 i = 0; i < 8; i++) putc((char)data[i]);
    puts("\n");
    for (u32 i = 0; i < 20; i++) data[i] = 0;
    u8 id = request(8, 0, 20, 1);
    puts("guest: id ");
    puthex(id);
    puts(" ");
    for (u32 i = 0; i < 20 && data[i]; i++) putc((char)data[i]);
    puts("\n");
    u8 past = request(0, capacity, 512, 1);
    u8 flush = request(4, 0, 0, 0);
    puts("guest: past the end ");
    puthex(past);
    puts(" flush ");
    puthex(flush);
    puts("\n");
    while (*word(MAILBOX) != 1) __asm__ volatile("pause");
    reset();
}
