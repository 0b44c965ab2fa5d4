/* The benchmark guest: one ELF for every VMM. A PVH note gives QEMU a 32-bit entry that
 * builds page tables and enters long mode; the ELF entry (_start) is the 64-bit entry
 * mempart-vmm jumps to, as for a vmlinux. Both print a line and reset through the i8042. */

    .section .note.Xen, "a", @note
    .align 4
    .long 4
    .long 4
    .long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32
    .align 4

    .text
    .code32
    .globl pvh_start32
pvh_start32:
    mov $pd, %edi
    mov $0x83, %eax
    xor %ecx, %ecx
1:  mov %eax, (%edi,%ecx,8)
    movl $0, 4(%edi,%ecx,8)
    add $0x200000, %eax
    inc %ecx
    cmp $512, %ecx
    jne 1b
    mov $pdpt, %eax
    or $3, %eax
    mov %eax, pml4
    movl $0, pml4+4
    mov $pd, %eax
    or $3, %eax
    mov %eax, pdpt
    movl $0, pdpt+4
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax
    mov %eax, %cr0
    lgdt gdt_ptr
    ljmp $0x08, $_start

    .code64
    .globl _start
_start:
    out %al, $0x80                  /* the first instruction: a mark the VMM can time */
    lea msg(%rip), %rsi
    mov $0x3f8, %dx
2:  movb (%rsi), %al
    test %al, %al
    jz 3f
    out %al, %dx
    inc %rsi
    jmp 2b
3:  mov $0xfe, %al
    out %al, $0x64
4:  hlt
    jmp 4b

    .data
    .align 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
gdt_ptr:
    .word 23
    .long gdt
msg:
    .asciz "bench guest: hello\n"

    .bss
    .align 4096
pml4: .skip 4096
pdpt: .skip 4096
pd:   .skip 4096
