/*
 * amivm test guest: the two boot entries, the guest's own GDT and page tables, and the AP
 * real-mode trampoline.
 *
 *  - linux64_entry (e_entry): the Linux x86_64 64-bit boot protocol
 *    (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"): long mode, paging on with an
 *    identity map of the loaded kernel, interrupts off, RSI = physical address of boot_params.
 *  - pvh_entry (ELF note XEN_ELFNOTE_PHYS32_ENTRY): the Xen PVH boot ABI
 *    (xen/include/public/arch-x86/hvm/start_info.h, docs/misc/pvh.pandoc): 32-bit protected
 *    mode, paging off, flat CS/DS, EBX = physical address of struct hvm_start_info.
 *
 * Both switch to this image's GDT and identity page tables (all 4 GiB, 2 MiB pages, so the
 * LAPIC at 0xfee00000 is reachable), zero .bss, set a stack in the image and call
 * guest_main(kind, boot_info_paddr). Nothing below 1 MiB is written here.
 */
#include "guest.h"

/* GDT selectors: see gdt below. */
#define SEL_CODE64 0x08
#define SEL_DATA 0x10

/* Control-register and MSR bits (Intel SDM vol. 3A, 2.5 and 2.2.1). */
#define CR0_PE (1 << 0)
#define CR0_PG (1 << 31)
#define CR4_PAE (1 << 5)
#define MSR_EFER 0xc0000080
#define EFER_LME (1 << 8)

/* Page-table entry bits (Intel SDM vol. 3A, 4.5). */
#define PTE_P 0x001
#define PTE_W 0x002
#define PTE_PCD 0x010
#define PTE_PS 0x080

/* XEN_ELFNOTE_PHYS32_ENTRY (xen/include/public/elfnote.h). */
#define XEN_ELFNOTE_PHYS32_ENTRY 18

/* ---------------------------------------------------------------- PVH ELF note */
	.section .note.Xen, "a", @note
	.balign 4
	.long 2f - 1f		/* namesz */
	.long 4f - 3f		/* descsz: 8 bytes like Linux (QEMU reads a 64-bit value) */
	.long XEN_ELFNOTE_PHYS32_ENTRY
1:	.asciz "Xen"
2:	.balign 4
3:	.quad pvh_entry
4:	.balign 4

/* ---------------------------------------------------------------- 64-bit entry */
	.section .text.entry, "ax"
	.code64
	.globl linux64_entry
linux64_entry:
	cli
	cld
	/* RSI = boot_params: rep stos below leaves RSI alone. */
	lgdt gdt_ptr(%rip)
	pushq $SEL_CODE64
	leaq 1f(%rip), %rax
	pushq %rax
	lretq
1:	movl $SEL_DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs
	leaq __bss_start(%rip), %rdi
	leaq __bss_end(%rip), %rcx
	subq %rdi, %rcx
	shrq $3, %rcx
	xorl %eax, %eax
	rep stosq
	leaq pml4(%rip), %rax
	movq %rax, %cr3
	movl $BOOT_LINUX64, %edi
	jmp common64

/* ---------------------------------------------------------------- PVH entry */
	.code32
	.globl pvh_entry
pvh_entry:
	cli
	cld
	movl %ebx, %esi			/* start_info; rep stos below leaves ESI alone */
	lgdt gdt_ptr
	movl $SEL_DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	shrl $2, %ecx
	xorl %eax, %eax
	rep stosl
	movl %cr4, %eax
	orl $CR4_PAE, %eax
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	movl %cr0, %eax
	orl $(CR0_PG | CR0_PE), %eax
	movl %eax, %cr0
	ljmp $SEL_CODE64, $1f
	.code64
1:	movl %esi, %esi			/* zero-extend start_info into RSI */
	movl $BOOT_PVH, %edi

common64:
	leaq stack_top(%rip), %rsp
	xorl %ebp, %ebp
	call guest_main
2:	cli
	hlt
	jmp 2b

/* ---------------------------------------------------------------- AP trampoline */
/*
 * Copied by the BSP to AP_TRAMPOLINE_PADDR (0x10000) and entered by each AP in real mode after
 * INIT-SIPI-SIPI with CS = vector << 8 = 0x1000, IP = 0. It records that the AP came up (its
 * initial APIC id from CPUID leaf 1 EBX[31:24]) and halts forever with interrupts off.
 */
	.section .rodata.tramp, "a"
	.code16
	.globl ap_tramp_start, ap_tramp_end, ap_tramp_count, ap_tramp_flags
ap_tramp_start:
	cli
	movw %cs, %ax
	movw %ax, %ds
	movl $1, %eax
	cpuid
	shrl $24, %ebx
	movb $1, (ap_tramp_flags - ap_tramp_start)(%bx)
	lock incl (ap_tramp_count - ap_tramp_start)
1:	cli
	hlt
	jmp 1b
	.balign 4
ap_tramp_count:
	.long 0
ap_tramp_flags:
	.fill 256, 1, 0
ap_tramp_end:
	.code64

/* ---------------------------------------------------------------- GDT */
	.section .rodata, "a"
	.balign 16
gdt:
	.quad 0				/* null */
	.quad 0x00af9a000000ffff	/* 0x08: 64-bit code, DPL 0 */
	.quad 0x00cf92000000ffff	/* 0x10: flat 4 GiB data, DPL 0 */
gdt_end:
	.balign 8
	.word 0
gdt_ptr:				/* lgdt reads 6 bytes in 32-bit mode, 10 in 64-bit mode */
	.word gdt_end - gdt - 1
	.quad gdt

/* ---------------------------------------------------------------- page tables */
/*
 * Identity map of [0, 4 GiB) with 2 MiB pages, built at assembly time so that neither entry
 * spends instructions on it. [3 GiB, 4 GiB) (the MMIO gap: LAPIC, IOAPIC, virtio-mmio) is
 * mapped cache-disabled.
 */
	.section .data.pagetables, "aw"
	.balign 4096
	.globl pml4
pml4:
	.quad pdpt + PTE_P + PTE_W
	.fill 511, 8, 0
pdpt:
	.quad pd + 0x0000 + PTE_P + PTE_W
	.quad pd + 0x1000 + PTE_P + PTE_W
	.quad pd + 0x2000 + PTE_P + PTE_W
	.quad pd + 0x3000 + PTE_P + PTE_W
	.fill 508, 8, 0
pd:
	.set i, 0
	.rept 1536
	.quad (i << 21) + PTE_P + PTE_W + PTE_PS
	.set i, i + 1
	.endr
	.rept 512
	.quad (i << 21) + PTE_P + PTE_W + PTE_PS + PTE_PCD
	.set i, i + 1
	.endr

/* ---------------------------------------------------------------- stack */
	.section .bss.stack, "aw", @nobits
	.balign 16
	.space STACK_SIZE
stack_top:

	.section .note.GNU-stack, "", @progbits
