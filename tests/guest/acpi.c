/*
 * amivm test guest: the ACPI tables, read the way a kernel reads them (ACPI 6.5, chapter 5):
 * the RSDP from the boot loader (boot_params.acpi_rsdp_addr or start_info.rsdp_paddr) or found
 * by a scan of the EBDA's first KiB and 0xE0000-0xFFFFF, then RSDP -> XSDT (or RSDT) -> FADT,
 * MADT and the DSDT, every checksum verified. Leaving through ACPI: SLP_TYP of \_S5_ (found by
 * a byte search of the DSDT, like a minimal AML reader) with SLP_EN in the FADT's sleep control
 * register. The Generic Event Device's register is the first OperationRegion after the
 * "ACPI0013" _HID in the DSDT.
 */
#include "guest.h"

/* Everything the guest reads must be below what its page tables map. */
#define MAPPED_LIMIT 0x100000000UL
/* BIOS data area word holding the EBDA segment. */
#define BDA_EBDA_SEGMENT 0x40e
/* 5.2.5.1: the RSDP is on a 16-byte boundary in the EBDA's first KiB or in 0xE0000-0xFFFFF. */
#define RSDP_SCAN_START 0xe0000
#define RSDP_SCAN_END 0x100000
#define EBDA_SCAN_LEN 1024
/* RSDP (5.2.5.3) offsets and sizes. */
#define RSDP_V1_LEN 20
#define RSDP_OEM_ID 9
#define RSDP_REVISION 15
#define RSDP_RSDT 16
#define RSDP_LENGTH 20
#define RSDP_XSDT 24
/* Common table header (5.2.6). */
#define HDR_LEN 36
#define HDR_LENGTH 4
#define HDR_OEM_ID 10
/* FADT (table 5.9) offsets. */
#define FADT_DSDT 40
#define FADT_FLAGS 112
#define FADT_RESET_REG 116
#define FADT_RESET_VALUE 128
#define FADT_X_DSDT 140
#define FADT_SLEEP_CONTROL 244
#define FADT_SLEEP_STATUS 256
/* FADT flags RESET_REG_SUP and HW_REDUCED_ACPI (table 5.10). */
#define FADT_RESET_REG_SUP (1u << 10)
#define FADT_HW_REDUCED (1u << 20)
/* MADT (5.2.12): entries from offset 44; local APIC (type 0) and local x2APIC (type 9). */
#define MADT_ENTRIES 44
#define MADT_LAPIC 0
#define MADT_X2APIC 9
/* Generic Address Structure (5.2.3.2): space id, bit width, bit offset, access size, address. */
#define GAS_SPACE_MEMORY 0
#define GAS_SPACE_IO 1
/* Sleep control register (4.8.3.7): SLP_TYP in bits 2-4, SLP_EN bit 5. */
#define SLP_TYP_SHIFT 2
#define SLP_EN 0x20
/* AML opcodes (20.2): NameOp, PackageOp, the integer prefixes and constants, OpRegionOp. */
#define AML_NAME 0x08
#define AML_PACKAGE 0x12
#define AML_ZERO 0x00
#define AML_ONE 0x01
#define AML_BYTE 0x0a
#define AML_WORD 0x0b
#define AML_DWORD 0x0c
#define AML_EXT 0x5b
#define AML_OPREGION 0x80
/* Largest table the guest checksums (each byte costs a few emulated instructions). */
#define TABLE_MAX (64 * 1024)
/* The GED poll gives up after this many reads (each is a VM exit, some 30 us here). */
#define GED_POLL_MAX 1000000000UL
/* How long the guest waits for the VMM to act on the S5 write before it says it did not:
 * ~1 s at 3 GHz (the VMM stops the vCPU a few exits after the write). */
#define POWEROFF_WAIT_TSC 3000000000UL

struct gas {
	u8 space;
	u64 addr;
};

static struct {
	int found;
	uptr rsdp, fadt, madt, dsdt;
	u32 dsdt_len;
	struct gas sleep_control, ged, reset;
	int have_reset;
	u8 reset_value;
	int have_s5, have_ged;
	u64 s5_typ;
} acpi;

static int mapped(u64 addr, u64 len) { return addr < MAPPED_LIMIT && len <= MAPPED_LIMIT - addr; }

static u8 sum8(uptr p, u32 len)
{
	u8 s = 0;
	for (u32 i = 0; i < len; i++)
		s += *(const u8 *)(p + i);
	return s;
}

static u32 rd32(uptr a) { return *(const u32 *)a; }
static u64 rd64(uptr a) { return *(const u64 *)a; }

static int valid_rsdp(uptr p)
{
	if (memcmp((const void *)p, "RSD PTR ", 8) != 0 || sum8(p, RSDP_V1_LEN) != 0)
		return 0;
	if (*(const u8 *)(p + RSDP_REVISION) >= 2) {
		u32 len = rd32(p + RSDP_LENGTH);
		if (len < RSDP_XSDT + 8 || len > 64 || sum8(p, len) != 0)
			return 0;
	}
	return 1;
}

static uptr scan_rsdp(uptr base, uptr len)
{
	for (uptr p = base; p + RSDP_V1_LEN <= base + len; p += 16)
		if (valid_rsdp(p))
			return p;
	return 0;
}

static void put_sig(uptr p, u32 n)
{
	for (u32 i = 0; i < n; i++) {
		char c = *(const char *)(p + i);
		if (c != ' ')
			put_char(c >= ' ' && c < 0x7f ? c : '?');
	}
}

/* Checks one table's header and checksum; reports it; returns its length or 0. */
static u32 check_table(u64 addr)
{
	if (!mapped(addr, HDR_LEN)) {
		fact_str("acpi_error", "table above 4 GiB");
		return 0;
	}
	u32 len = rd32(addr + HDR_LENGTH);
	if (len < HDR_LEN || len > TABLE_MAX || !mapped(addr, len)) {
		fact_str("acpi_error", "bad table length");
		return 0;
	}
	fact_start();
	put_str("acpi_table sig=");
	put_sig(addr, 4);
	put_str(" addr=");
	put_hex(addr);
	put_str(" len=");
	put_dec(len);
	put_str(" oem=");
	put_sig(addr + HDR_OEM_ID, 6);
	put_str(" checksum=");
	put_str(sum8(addr, len) == 0 ? "ok" : "bad");
	put_char('\n');
	return sum8(addr, len) == 0 ? len : 0;
}

static void read_gas(uptr p, struct gas *g)
{
	g->space = *(const u8 *)p;
	g->addr = rd64(p + 4);
}

static void put_gas(const char *key, const struct gas *g)
{
	fact_start();
	put_str(key);
	put_str(g->space == GAS_SPACE_IO ? "=io:" : g->space == GAS_SPACE_MEMORY ? "=mem:" : "=other:");
	put_hex(g->addr);
	put_char('\n');
}

static void read_fadt(uptr t, u32 len)
{
	acpi.fadt = t;
	u32 flags = len >= FADT_FLAGS + 4 ? rd32(t + FADT_FLAGS) : 0;
	fact_dec("acpi_hw_reduced", (flags & FADT_HW_REDUCED) != 0);
	if ((flags & FADT_RESET_REG_SUP) && len > FADT_RESET_VALUE) {
		acpi.have_reset = 1;
		read_gas(t + FADT_RESET_REG, &acpi.reset);
		acpi.reset_value = *(const u8 *)(t + FADT_RESET_VALUE);
		put_gas("acpi_reset_reg", &acpi.reset);
		fact_hex("acpi_reset_value", acpi.reset_value);
	}
	u64 dsdt = len >= FADT_X_DSDT + 8 ? rd64(t + FADT_X_DSDT) : 0;
	if (!dsdt)
		dsdt = rd32(t + FADT_DSDT);
	if (len >= FADT_SLEEP_STATUS + 12) {
		read_gas(t + FADT_SLEEP_CONTROL, &acpi.sleep_control);
		struct gas status;
		read_gas(t + FADT_SLEEP_STATUS, &status);
		put_gas("acpi_sleep_control", &acpi.sleep_control);
		put_gas("acpi_sleep_status", &status);
	}
	u32 dlen = dsdt ? check_table(dsdt) : 0;
	if (dlen && memcmp((const void *)dsdt, "DSDT", 4) == 0) {
		acpi.dsdt = dsdt;
		acpi.dsdt_len = dlen;
	}
}

static void read_madt(uptr t, u32 len)
{
	u32 cpus = 0;
	for (u32 off = MADT_ENTRIES; off + 2 <= len;) {
		u8 type = *(const u8 *)(t + off), elen = *(const u8 *)(t + off + 1);
		if (elen < 2 || off + elen > len) {
			fact_str("acpi_error", "malformed MADT entry");
			break;
		}
		if (type == MADT_LAPIC && elen >= 8 && (rd32(t + off + 4) & 1))
			cpus++;
		if (type == MADT_X2APIC && elen >= 16 && (rd32(t + off + 8) & 1))
			cpus++;
		off += elen;
	}
	acpi.madt = t;
	fact_dec("acpi_madt_cpus", cpus);
}

/* An AML integer (ZeroOp, OneOp, Byte/Word/DWordPrefix) at p; 0 when it is something else. */
static int aml_integer(const u8 *p, const u8 *end, u64 *v)
{
	if (p >= end)
		return 0;
	switch (*p) {
	case AML_ZERO: *v = 0; return 1;
	case AML_ONE: *v = 1; return 1;
	case AML_BYTE: if (p + 2 > end) return 0; *v = p[1]; return 1;
	case AML_WORD: if (p + 3 > end) return 0; *v = p[1] | (u32)p[2] << 8; return 1;
	case AML_DWORD:
		if (p + 5 > end)
			return 0;
		*v = p[1] | (u32)p[2] << 8 | (u32)p[3] << 16 | (u32)p[4] << 24;
		return 1;
	}
	return 0;
}

/* Name (_S5_, Package (n) { SLP_TYPa, ... }) somewhere in the DSDT. */
static void find_s5(void)
{
	const u8 *d = (const u8 *)acpi.dsdt, *end = d + acpi.dsdt_len;
	for (const u8 *p = d + HDR_LEN + 1; p + 4 + 3 < end; p++) {
		if (memcmp(p, "_S5_", 4) != 0)
			continue;
		if (p[-1] != AML_NAME && !(p[-1] == '\\' && p - 2 >= d && p[-2] == AML_NAME))
			continue;
		const u8 *q = p + 4;
		if (*q++ != AML_PACKAGE)
			continue;
		q += 1 + (*q >> 6); /* PkgLength: the lead byte's bits 6-7 count the bytes after it */
		q++;                /* NumElements */
		if (aml_integer(q, end, &acpi.s5_typ)) {
			acpi.have_s5 = 1;
			return;
		}
	}
}

/* The first OperationRegion after the GED's _HID "ACPI0013": its space and offset. */
static void find_ged(void)
{
	const u8 *d = (const u8 *)acpi.dsdt, *end = d + acpi.dsdt_len;
	const u8 *p = d + HDR_LEN;
	while (p + 8 <= end && memcmp(p, "ACPI0013", 8) != 0)
		p++;
	for (; p + 8 < end; p++) {
		if (p[0] != AML_EXT || p[1] != AML_OPREGION)
			continue;
		const u8 *q = p + 2 + 4; /* a single NameSeg */
		acpi.ged.space = *q++;
		if (aml_integer(q, end, &acpi.ged.addr)) {
			acpi.have_ged = 1;
			return;
		}
	}
}

void report_acpi(void)
{
	if (acpi.found)
		return;
	acpi.found = 1;
	uptr rsdp = 0;
	const char *from = "bootinfo";
	uptr wlen = 0;
	const char *want = cmdline_value("acpi", &wlen);
	int scan_only = want && wlen == 4 && memcmp(want, "scan", 4) == 0;
	if (!scan_only && boot.rsdp && mapped(boot.rsdp, 36) && valid_rsdp(boot.rsdp))
		rsdp = boot.rsdp;
	if (!rsdp) {
		from = "scan";
		uptr ebda = (uptr)mmio_read16(BDA_EBDA_SEGMENT) << 4;
		if (ebda)
			rsdp = scan_rsdp(ebda, EBDA_SCAN_LEN);
		if (!rsdp)
			rsdp = scan_rsdp(RSDP_SCAN_START, RSDP_SCAN_END - RSDP_SCAN_START);
	}
	if (!rsdp) {
		fact_str("acpi_rsdp", "none");
		return;
	}
	acpi.rsdp = rsdp;
	fact_hex("acpi_rsdp", rsdp);
	fact_str("acpi_rsdp_from", from);
	fact_start();
	put_str("acpi_oem=");
	put_sig(rsdp + RSDP_OEM_ID, 6);
	put_char('\n');
	int x = *(const u8 *)(rsdp + RSDP_REVISION) >= 2 && rd64(rsdp + RSDP_XSDT);
	u64 root = x ? rd64(rsdp + RSDP_XSDT) : rd32(rsdp + RSDP_RSDT);
	u32 rlen = check_table(root);
	u32 entry = x ? 8 : 4;
	u32 n = 0;
	for (u32 off = HDR_LEN; rlen && off + entry <= rlen; off += entry, n++) {
		u64 t = x ? rd64(root + off) : rd32(root + off);
		u32 len = check_table(t);
		if (!len)
			continue;
		if (memcmp((const void *)t, "FACP", 4) == 0)
			read_fadt(t, len);
		else if (memcmp((const void *)t, "APIC", 4) == 0)
			read_madt(t, len);
	}
	fact_dec("acpi_root_entries", n);
	if (acpi.dsdt) {
		find_s5();
		find_ged();
	}
	if (acpi.have_s5)
		fact_dec("acpi_s5_slp_typ", acpi.s5_typ);
	else
		fact_str("acpi_s5_slp_typ", "none");
	if (acpi.have_ged)
		put_gas("acpi_ged", &acpi.ged);
}

static int gas_write8(const struct gas *g, u8 v)
{
	if (g->space == GAS_SPACE_IO && g->addr <= 0xffff) {
		outb((u16)g->addr, v);
		return 1;
	}
	if (g->space == GAS_SPACE_MEMORY && g->addr && mapped(g->addr, 1)) {
		mmio_write8(g->addr, v);
		return 1;
	}
	return 0;
}

static int gas_read32(const struct gas *g, u32 *v)
{
	if (g->space == GAS_SPACE_IO && g->addr <= 0xffff) {
		*v = inl((u16)g->addr);
		return 1;
	}
	if (g->space == GAS_SPACE_MEMORY && g->addr && mapped(g->addr, 4)) {
		*v = mmio_read32(g->addr);
		return 1;
	}
	return 0;
}

void acpi_poweroff(void)
{
	report_acpi();
	if (!acpi.fadt || !acpi.have_s5) {
		fact_str("acpi_error", "no FADT or no _S5_");
		return;
	}
	u8 v = (u8)(((acpi.s5_typ & 7) << SLP_TYP_SHIFT) | SLP_EN);
	if (!gas_write8(&acpi.sleep_control, v)) {
		fact_str("acpi_error", "no usable sleep control register");
		return;
	}
	u64 t0 = rdtsc();
	while (rdtsc() - t0 < POWEROFF_WAIT_TSC)
		cpu_relax();
	fact_str("acpi_error", "still running after the S5 write");
}

void acpi_reset(void)
{
	report_acpi();
	if (!acpi.have_reset || !gas_write8(&acpi.reset, acpi.reset_value)) {
		fact_str("acpi_error", "no usable reset register");
		return;
	}
	u64 t0 = rdtsc();
	while (rdtsc() - t0 < POWEROFF_WAIT_TSC)
		cpu_relax();
	fact_str("acpi_error", "still running after the reset write");
}

void acpi_wait_ged_event(void)
{
	report_acpi();
	if (!acpi.have_ged) {
		fact_str("acpi_error", "no GED register");
		return;
	}
	put_gas("ged_polling", &acpi.ged);
	u32 v = 0;
	for (u64 i = 0; i < GED_POLL_MAX; i++) {
		if (!gas_read32(&acpi.ged, &v)) {
			fact_str("acpi_error", "GED register not readable");
			return;
		}
		if (v)
			break;
		cpu_relax();
	}
	fact_hex("ged_event", v);
}
