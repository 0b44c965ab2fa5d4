/* A minimal multiport virtio-console driver: the control handshake, the agent port's
 * name, a ping sent to the host and the host's reply received. */
#define MMIO 0xd0001000UL
#include "virtio.h"

#define QUEUES 0x900000UL
#define BUFS 0xa00000UL

static u64 qbase(u32 q) { return QUEUES + 0x4000UL * q; }
static volatile struct desc *descs(u32 q) { return (volatile struct desc *)qbase(q); }
static volatile struct avail *avail(u32 q) { return (volatile struct avail *)(qbase(q) + 0x100); }
static volatile struct used *used(u32 q) { return (volatile struct used *)(qbase(q) + 0x1000); }

/* Offers descriptor `slot` of queue `q` as one buffer and notifies. */
static void offer(u32 q, u16 slot, u64 addr, u32 len, u16 flags) {
    descs(q)[slot].addr = addr;
    descs(q)[slot].len = len;
    descs(q)[slot].flags = flags;
    descs(q)[slot].next = 0;
    avail(q)->ring[avail(q)->idx % QSIZE] = slot;
    barrier();
    avail(q)->idx = avail(q)->idx + 1;
    barrier();
    *reg(0x50) = q;
}

static u16 ctrl_sent;

static void control(u32 id, u16 event, u16 value) {
    u64 at = BUFS + 0x8000 + 16UL * ctrl_sent;
    *(volatile u32 *)at = id;
    *(volatile u16 *)(at + 4) = event;
    *(volatile u16 *)(at + 6) = value;
    u16 before = used(3)->idx;
    offer(3, ctrl_sent % QSIZE, at, 8, 0);
    ctrl_sent++;
    while (used(3)->idx == before) __asm__ volatile("pause");
}

void __attribute__((section(".text.start"))) _start(u64 cpu, u64 zero_page) {
    (void)cpu;
    (void)zero_page;
    if (*reg(0) != 0x74726976 || *reg(8) != 3) fail("no console");
    *reg(0x70) = 0;
    *reg(0x70) = 3;
    *reg(0x24) = 0;
    *reg(0x20) = 2;
    *reg(0x24) = 1;
    *reg(0x20) = 1;
    *reg(0x70) = 11;
    if (!(*reg(0x70) & 8)) fail("features refused");
    for (u32 q = 0; q < 6; q++) set_up_queue(q, qbase(q));
    *reg(0x70) = 15;
    if (*reg(0x70) & 0x40) fail("device needs reset");
    for (u16 i = 0; i < 8; i++) offer(2, i, BUFS + 0x100UL * i, 64, 2);
    control(0, 0, 1);
    u16 seen = 0;
    int open = 0;
    while (!open) {
        while (used(2)->idx == seen) __asm__ volatile("pause");
        u32 slot = used(2)->ring[seen % QSIZE].id;
        u32 len = used(2)->ring[seen % QSIZE].len;
        seen++;
        u64 msg = BUFS + 0x100UL * slot;
        u32 id = *(volatile u32 *)msg;
        u16 event = *(volatile u16 *)(msg + 4);
        u16 value = *(volatile u16 *)(msg + 6);
        if (event == 1) control(id, 3, 1);
        if (event == 7) {
            puts("guest: port ");
            for (u32 i = 8; i < len; i++) putc(*(volatile char *)(msg + i));
            puts("\n");
        }
        if (event == 6 && id == 1 && value == 1) open = 1;
    }
    control(1, 6, 1);
    offer(4, 0, BUFS + 0x4000, 64, 2);
    const char *ping = "ping from guest\n";
    u32 n = 0;
    while (ping[n]) { *(volatile char *)(BUFS + 0x5000 + n) = ping[n]; n++; }
    u16 before = used(5)->idx;
    offer(5, 0, BUFS + 0x5000, n, 0);
    while (used(5)->idx == before) __asm__ volatile("pause");
    puts("guest: sent ping\n");
    while (used(4)->idx == 0) __asm__ volatile("pause");
    u32 got = used(4)->ring[0].len;
    puts("guest: got ");
    for (u32 i = 0; i < got; i++) putc(*(volatile char *)(BUFS + 0x4000 + i));
    reset();
}
