/*
 * amivm test guest: reading what the boot loader handed over (Linux boot_params or PVH
 * hvm_start_info) and reporting it. read_boot_info copies everything into the image before
 * the guest writes anything below 1 MiB.
 */
#include "guest.h"

struct boot_info boot;

/* Highest physical address this image maps (its own page tables cover [0, 4 GiB)). */
#define MAPPED_LIMIT 0x100000000UL

/* struct boot_params offsets (Linux Documentation/arch/x86/zero-page.rst and boot.rst). */
#define BP_ACPI_RSDP_ADDR 0x070
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES 0x1e8
#define BP_HDR_HEADER 0x202	/* "HdrS" */
#define BP_HDR_VERSION 0x206
#define BP_HDR_TYPE_OF_LOADER 0x210
#define BP_HDR_RAMDISK_IMAGE 0x218
#define BP_HDR_RAMDISK_SIZE 0x21c
#define BP_HDR_CMD_LINE_PTR 0x228
#define BP_E820_TABLE 0x2d0
/* struct boot_e820_entry: u64 addr, u64 size, u32 type (packed, 20 bytes). */
#define BP_E820_ENTRY_SIZE 20
/* Entries in boot_params.e820_table (E820_MAX_ENTRIES_ZEROPAGE). */
#define BP_E820_MAX 128
/* "HdrS", the setup header magic. */
#define SETUP_HDR_MAGIC 0x53726448

/* struct hvm_start_info offsets (xen/include/public/arch-x86/hvm/start_info.h). */
#define SI_MAGIC 0
#define SI_VERSION 4
#define SI_NR_MODULES 12
#define SI_MODLIST_PADDR 16
#define SI_CMDLINE_PADDR 24
#define SI_RSDP_PADDR 32
#define SI_MEMMAP_PADDR 40
#define SI_MEMMAP_ENTRIES 48
/* XEN_HVM_START_MAGIC_VALUE. */
#define SI_MAGIC_VALUE 0x336ec578
/* struct hvm_memmap_table_entry: u64 addr, u64 size, u32 type, u32 reserved. */
#define SI_MEMMAP_ENTRY_SIZE 24
/* struct hvm_modlist_entry: u64 paddr, u64 size, u64 cmdline_paddr, u64 reserved. */
#define SI_MOD_PADDR 0
#define SI_MOD_SIZE 8

/* Largest initrd the guest checksums (each 8 bytes cost a few emulated instructions). */
#define INITRD_SUM_MAX (1UL << 20)

static const char *boot_error;

static u64 rd64(uptr a) { return *(const u64 *)a; }
static u32 rd32(uptr a) { return *(const u32 *)a; }
static u16 rd16(uptr a) { return *(const u16 *)a; }
static u8 rd8(uptr a) { return *(const u8 *)a; }

static int phys_ok(u64 addr, u64 len) { return addr < MAPPED_LIMIT && len <= MAPPED_LIMIT - addr; }

static void copy_cmdline(u64 paddr)
{
	if (paddr == 0)
		return;
	if (!phys_ok(paddr, 1)) {
		boot_error = "cmdline above 4 GiB";
		return;
	}
	const char *src = (const char *)paddr;
	uptr i = 0;
	while (i < CMDLINE_MAX - 1 && paddr + i < MAPPED_LIMIT && src[i]) {
		boot.cmdline[i] = src[i];
		i++;
	}
	boot.cmdline[i] = 0;
}

static void add_mem(u64 base, u64 len, u32 type)
{
	if (boot.n_mem >= MEM_MAX) {
		boot_error = "memory map too long";
		return;
	}
	boot.mem[boot.n_mem].base = base;
	boot.mem[boot.n_mem].len = len;
	boot.mem[boot.n_mem].type = type;
	boot.n_mem++;
}

static void read_zero_page(uptr bp)
{
	if (!phys_ok(bp, 4096)) {
		boot_error = "boot_params above 4 GiB";
		return;
	}
	boot.magic = rd32(bp + BP_HDR_HEADER);
	boot.version = rd16(bp + BP_HDR_VERSION);
	boot.loader = rd8(bp + BP_HDR_TYPE_OF_LOADER);
	copy_cmdline((u64)rd32(bp + BP_HDR_CMD_LINE_PTR) | (u64)rd32(bp + BP_EXT_CMD_LINE_PTR) << 32);
	u32 n = rd8(bp + BP_E820_ENTRIES);
	if (n > BP_E820_MAX) {
		boot_error = "e820_entries above 128";
		n = BP_E820_MAX;
	}
	for (u32 i = 0; i < n; i++) {
		uptr e = bp + BP_E820_TABLE + i * BP_E820_ENTRY_SIZE;
		add_mem(rd64(e), rd64(e + 8), rd32(e + 16));
	}
	boot.initrd_base = (u64)rd32(bp + BP_HDR_RAMDISK_IMAGE) | (u64)rd32(bp + BP_EXT_RAMDISK_IMAGE) << 32;
	boot.initrd_size = (u64)rd32(bp + BP_HDR_RAMDISK_SIZE) | (u64)rd32(bp + BP_EXT_RAMDISK_SIZE) << 32;
	boot.rsdp = rd64(bp + BP_ACPI_RSDP_ADDR);
}

static void read_start_info(uptr si)
{
	if (!phys_ok(si, 56)) {
		boot_error = "start_info above 4 GiB";
		return;
	}
	boot.magic = rd32(si + SI_MAGIC);
	boot.version = rd32(si + SI_VERSION);
	if (boot.magic != SI_MAGIC_VALUE) {
		boot_error = "bad start_info magic";
		return;
	}
	copy_cmdline(rd64(si + SI_CMDLINE_PADDR));
	boot.rsdp = rd64(si + SI_RSDP_PADDR);
	if (boot.version >= 1) {
		u64 map = rd64(si + SI_MEMMAP_PADDR);
		u32 n = rd32(si + SI_MEMMAP_ENTRIES);
		if (n > MEM_MAX || !phys_ok(map, (u64)n * SI_MEMMAP_ENTRY_SIZE)) {
			boot_error = "memmap too long or above 4 GiB";
			n = 0;
		}
		for (u32 i = 0; i < n; i++) {
			uptr e = map + i * SI_MEMMAP_ENTRY_SIZE;
			add_mem(rd64(e), rd64(e + 8), rd32(e + 16));
		}
	}
	u64 mods = rd64(si + SI_MODLIST_PADDR);
	if (rd32(si + SI_NR_MODULES) >= 1 && phys_ok(mods, 32)) {
		boot.initrd_base = rd64(mods + SI_MOD_PADDR);
		boot.initrd_size = rd64(mods + SI_MOD_SIZE);
	}
}

void read_boot_info(int kind, uptr info)
{
	boot.kind = kind;
	if (kind == BOOT_LINUX64)
		read_zero_page(info);
	else
		read_start_info(info);
}

static void report_cmdline(void)
{
	fact_start();
	put_str("cmdline=");
	for (const char *c = boot.cmdline; *c; c++)
		put_char(*c >= ' ' && *c < 0x7f ? *c : '?');
	put_char('\n');
}

void report_boot_info(void)
{
	if (boot.kind == BOOT_LINUX64) {
		fact_str("boot", "linux64");
		fact_str("setup_header", boot.magic == SETUP_HDR_MAGIC ? "HdrS" : "missing");
		fact_hex("boot_protocol", boot.version);
		fact_hex("type_of_loader", boot.loader);
	} else {
		fact_str("boot", "pvh");
		fact_hex("start_info_magic", boot.magic);
		fact_dec("start_info_version", boot.version);
	}
	if (boot_error)
		fact_str("boot_error", boot_error);
	report_cmdline();
	u64 ram = 0;
	for (u32 i = 0; i < boot.n_mem; i++) {
		const struct mem_entry *m = &boot.mem[i];
		fact_start();
		put_str("mem base=");
		put_hex(m->base);
		put_str(" len=");
		put_hex(m->len);
		put_str(" type=");
		put_dec(m->type);
		put_char('\n');
		if (m->type == E820_RAM)
			ram += m->len;
	}
	fact_dec("mem_entries", boot.n_mem);
	fact_dec("ram_kib", ram >> 10);
	if (boot.initrd_size) {
		fact_hex("initrd_base", boot.initrd_base);
		fact_dec("initrd_size", boot.initrd_size);
		if (!phys_ok(boot.initrd_base, boot.initrd_size))
			fact_str("initrd_sum", "unmapped");
		else if (boot.initrd_size > INITRD_SUM_MAX)
			fact_str("initrd_sum", "skipped");
		else
			fact_hex("initrd_sum", sum64((const void *)boot.initrd_base, boot.initrd_size));
	}
}
