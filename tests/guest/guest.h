/*
 * amivm test guest: shared declarations. See README.md for what the guest does and the
 * report format.
 */
#ifndef AMIVM_GUEST_H
#define AMIVM_GUEST_H

/* guest_main's first argument: which entry ran. */
#define BOOT_LINUX64 1
#define BOOT_PVH 2

/* Bytes of BSP stack in .bss. */
#define STACK_SIZE 16384

#ifndef __ASSEMBLER__

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef unsigned long uptr;

#define NULL ((void *)0)
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Largest command line kept (the Linux x86 COMMAND_LINE_SIZE is 2048). */
#define CMDLINE_MAX 2048
/* Largest memory map kept (E820_MAX_ENTRIES_ZEROPAGE is 128). */
#define MEM_MAX 128

/* E820 type of usable RAM (ACPI spec, "Address Range Types"; PVH uses the same values). */
#define E820_RAM 1

struct mem_entry {
	u64 base;
	u64 len;
	u32 type;
};

/* What the boot loader told us, copied into the image before anything else runs. */
struct boot_info {
	int kind;
	/* PVH: start_info magic and version; Linux: boot_params.hdr.version. */
	u32 magic;
	u32 version;
	/* Linux: boot_params.hdr.type_of_loader. */
	u32 loader;
	char cmdline[CMDLINE_MAX];
	u32 n_mem;
	struct mem_entry mem[MEM_MAX];
	u64 initrd_base;
	u64 initrd_size;
	/* The ACPI RSDP the loader named (boot_params.acpi_rsdp_addr, start_info.rsdp_paddr); 0: none. */
	u64 rsdp;
};

extern struct boot_info boot;

/* --- io.h-style helpers --- */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline u32 inl(u16 port)
{
	u32 v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline u32 mmio_read32(uptr addr) { return *(volatile u32 *)addr; }
static inline void mmio_write32(uptr addr, u32 v) { *(volatile u32 *)addr = v; }
static inline u16 mmio_read16(uptr addr) { return *(volatile u16 *)addr; }
static inline u8 mmio_read8(uptr addr) { return *(volatile u8 *)addr; }
static inline void mmio_write8(uptr addr, u8 v) { *(volatile u8 *)addr = v; }
static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}
static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}
static inline u64 rdmsr(u32 msr)
{
	u32 lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((u64)hi << 32) | lo;
}
static inline void wrmsr(u32 msr, u64 v)
{
	__asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
__attribute__((noreturn)) static inline void halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* lib.c */
void *memcpy(void *dst, const void *src, uptr n);
void *memset(void *dst, int c, uptr n);
int memcmp(const void *a, const void *b, uptr n);
uptr strlen(const char *s);
int str_starts(const char *s, const char *prefix);
/* Parses an unsigned number (decimal, or hex with 0x) of at most len chars; 0 on error. */
int parse_u64(const char *s, uptr len, u64 *out);
/* FNV-1a 64 over little-endian 64-bit words; len is rounded up with zero bytes. */
u64 sum64(const void *p, uptr len);
/* FNV-1a 64-bit offset basis: the initial value for sum64_update. */
#define FNV64_OFFSET 0xcbf29ce484222325UL
/* Continues sum64 over more bytes (all but the last piece must be multiples of 8 bytes). */
u64 sum64_update(u64 h, const void *p, uptr len);

/* serial.c: COM1 output and the report. */
void serial_init(void);
void put_char(char c);
void put_str(const char *s);
void put_dec(u64 v);
void put_hex(u64 v);
/* Starts a report line: "AMIVM-GUEST ". */
void fact_start(void);
void fact_str(const char *key, const char *v);
void fact_dec(const char *key, u64 v);
void fact_hex(const char *key, u64 v);

/* bootinfo.c */
void read_boot_info(int kind, uptr info);
void report_boot_info(void);

/* cpu.c: CPUID, MP table, APs. */
void report_cpuid(void);
void report_mptable(void);
void start_aps(void);

/* acpi.c: walking the ACPI tables like a kernel; ACPI power-off and the GED power button. */
void report_acpi(void);
/* Writes SLP_TYP(S5) | SLP_EN to the FADT's sleep control register; returns if nothing happened. */
void acpi_poweroff(void);
/* Writes the FADT's RESET_VALUE to its RESET_REG; returns if nothing happened. */
void acpi_reset(void);
/* Polls the GED's event register until an event is latched, and reports it. */
void acpi_wait_ged_event(void);

/* blk.c: the virtio-mmio block driver, run for the command line's blk= words. */
void run_blk_commands(void);

/* Finds the last word `key=` on the command line; returns its value (up to a space) or NULL. */
const char *cmdline_value(const char *key, uptr *len);
/* The same for the n-th (from 0) such word. */
void run_net_commands(void);
const char *cmdline_nth_value(const char *key, u32 n, uptr *len);

#endif /* __ASSEMBLER__ */
#endif
