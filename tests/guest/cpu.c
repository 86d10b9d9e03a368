/*
 * amivm test guest: CPUID facts, the MP table (Intel MultiProcessor Specification 1.4) and
 * starting the APs it lists with INIT-SIPI-SIPI through the xAPIC.
 */
#include "guest.h"

/* ---- CPUID (Intel SDM vol. 2A, CPUID; KVM: Documentation/virt/kvm/x86/cpuid.rst) ---- */
#define CPUID_1_ECX_HYPERVISOR (1u << 31)
#define CPUID_1_EDX_HTT (1u << 28)
#define CPUID_LEAF_TOPOLOGY 0xb
#define CPUID_LEAF_HYPERVISOR 0x40000000

/* ---- MP spec 1.4, chapter 4 ---- */
/* "_MP_", the floating pointer signature. */
#define MPF_SIGNATURE 0x5f504d5f
/* "PCMP", the configuration table signature. */
#define MPC_SIGNATURE 0x504d4350
/* BIOS data area word holding the EBDA segment (MP spec 4: "40:0E"). */
#define BDA_EBDA_SEGMENT 0x40e
/* BIOS data area word holding the base memory size in KiB ("40:13"). */
#define BDA_BASE_KIB 0x413
/* Last KiB of 640 KiB base memory when the BDA does not say. */
#define BASE_MEM_LAST_KIB 0x9fc00
/* BIOS ROM area scanned for the floating pointer. */
#define BIOS_ROM_BASE 0xf0000
#define BIOS_ROM_SIZE 0x10000
/* MP table entry types and sizes (MP spec 4.3). */
/* Floating pointer fields (MP spec 4.1). */
#define MPF_PHYSPTR 4
#define MPF_LENGTH 8
#define MPF_FEATURE1 11
/* Configuration table header fields (MP spec 4.2). */
#define MPC_LENGTH 4
#define MPC_ENTRY_COUNT 0x22
#define MPC_EXT_LENGTH 0x28
#define MPC_EXT_CHECKSUM 0x2a
#define MPC_HEADER_SIZE 0x2c
#define MP_PROCESSOR 0
#define MP_BUS 1
#define MP_IOAPIC 2
#define MP_IOINTR 3
#define MP_LINTR 4
/* Byte offsets in processor and I/O APIC entries: id, then flags (MP spec 4.3.1, 4.3.3). */
#define MP_ENTRY_ID 1
#define MP_ENTRY_FLAGS 3
#define MP_PROCESSOR_SIZE 20
#define MP_OTHER_SIZE 8
#define MP_CPU_EN 0x01
#define MP_CPU_BP 0x02
/* Processors the guest keeps track of. */
#define MAX_CPUS 256

/* ---- xAPIC (Intel SDM vol. 3A, chapter 11) ---- */
#define MSR_IA32_APIC_BASE 0x1b
#define APIC_BASE_ENABLE (1u << 11)
#define APIC_BASE_MASK 0xfffff000UL
#define APIC_ID 0x20
#define APIC_SVR 0xf0
#define APIC_SVR_ENABLE 0x100
#define APIC_SPURIOUS_VECTOR 0xff
#define APIC_ICR_LO 0x300
#define APIC_ICR_HI 0x310
#define ICR_DELIVERY_PENDING (1u << 12)
#define ICR_INIT 0x500
#define ICR_STARTUP 0x600
#define ICR_LEVEL_ASSERT 0x4000
#define ICR_TRIGGER_LEVEL 0x8000
/* Polls of the ICR delivery-status bit before giving up on one IPI. */
#define ICR_POLL_MAX 10000

/* Where the AP trampoline goes: the VMM leaves [0x10000, 0x11000) free; SIPI vector 0x10. */
#define AP_TRAMPOLINE_PADDR 0x10000UL
#define AP_SIPI_VECTOR (AP_TRAMPOLINE_PADDR >> 12)
/*
 * How long the BSP waits for the APs, in TSC ticks (~10 s at 3 GHz): generous, because on a
 * loaded host an AP's vCPU thread may wait for a core; the wait ends as soon as all are up.
 */
#define AP_WAIT_TSC 30000000000UL

extern const u8 ap_tramp_start[], ap_tramp_end[], ap_tramp_count[], ap_tramp_flags[];

struct mp_cpu {
	u8 apic_id;
	u8 flags;
};

/* What the configuration table holds besides the processors. */
struct mp_counts {
	u32 entries;
	u32 header_count;
	u32 ioapics;
	u32 irqs;
};

static struct mp_cpu mp_cpus[MAX_CPUS];
static u32 n_mp_cpus;

static void put_sig(u32 r)
{
	for (int i = 0; i < 4; i++) {
		char c = (char)(r >> (8 * i));
		if (c)
			put_char(c >= ' ' && c < 0x7f ? c : '?');
	}
}

void report_cpuid(void)
{
	u32 a, b, c, d, max;
	cpuid(0, 0, &max, &b, &c, &d);
	cpuid(1, 0, &a, &b, &c, &d);
	fact_dec("cpuid_apic_id", b >> 24);
	u32 leaf1_cpus = (d & CPUID_1_EDX_HTT) ? (b >> 16) & 0xff : 1;
	int hypervisor = (c & CPUID_1_ECX_HYPERVISOR) != 0;
	u32 topo_cpus = 0;
	if (max >= CPUID_LEAF_TOPOLOGY) {
		/* The last valid level (ECX[15:8] != 0) counts the logical CPUs of the package. */
		for (u32 sub = 0; sub < 8; sub++) {
			cpuid(CPUID_LEAF_TOPOLOGY, sub, &a, &b, &c, &d);
			if (((c >> 8) & 0xff) == 0)
				break;
			topo_cpus = b & 0xffff;
		}
	}
	fact_dec("cpuid_leaf1_cpus", leaf1_cpus);
	fact_dec("cpuid_cpus", topo_cpus ? topo_cpus : leaf1_cpus);
	fact_start();
	put_str("hypervisor=");
	if (hypervisor) {
		cpuid(CPUID_LEAF_HYPERVISOR, 0, &a, &b, &c, &d);
		put_sig(b);
		put_sig(c);
		put_sig(d);
	} else {
		put_str("none");
	}
	put_char('\n');
}

static u8 checksum(uptr p, uptr len)
{
	u8 s = 0;
	for (uptr i = 0; i < len; i++)
		s += mmio_read8(p + i);
	return s;
}

/* Returns the floating pointer's address in [base, base+len), or 0. */
static uptr scan_mpf(uptr base, uptr len)
{
	for (uptr p = base; p + 16 <= base + len; p += 16)
		if (mmio_read32(p) == MPF_SIGNATURE && mmio_read8(p + MPF_LENGTH) == 1 && checksum(p, 16) == 0)
			return p;
	return 0;
}

static uptr find_mpf(void)
{
	uptr p = 0;
	uptr ebda = (uptr)mmio_read16(BDA_EBDA_SEGMENT) << 4;
	if (ebda >= 0x400 && ebda < 0xa0000)
		p = scan_mpf(ebda, 1024);
	uptr base_kib = mmio_read16(BDA_BASE_KIB);
	if (!p && base_kib >= 1 && base_kib <= 640 && (base_kib - 1) * 1024 != BASE_MEM_LAST_KIB)
		p = scan_mpf((base_kib - 1) * 1024, 1024);
	if (!p)
		p = scan_mpf(BASE_MEM_LAST_KIB, 1024);
	if (!p)
		p = scan_mpf(BIOS_ROM_BASE, BIOS_ROM_SIZE);
	return p;
}

/*
 * Walks the base table's entries. Like Linux (smp_read_mpc), the walk is bounded by the base
 * table length, not the header's entry count: qboot (QEMU microvm's firmware) leaves the count
 * at 0. Both figures are reported.
 */
static const char *parse_mpc(uptr mpc, struct mp_counts *n)
{
	if (mpc == 0 || mpc >= 0x100000000UL)
		return "no configuration table";
	if (mmio_read32(mpc) != MPC_SIGNATURE)
		return "bad PCMP signature";
	u16 len = mmio_read16(mpc + MPC_LENGTH);
	if (len < MPC_HEADER_SIZE || checksum(mpc, len) != 0)
		return "bad base table checksum";
	u16 ext_len = mmio_read16(mpc + MPC_EXT_LENGTH);
	if (ext_len && (u8)(checksum(mpc + len, ext_len) + mmio_read8(mpc + MPC_EXT_CHECKSUM)) != 0)
		return "bad extended table checksum";
	n->header_count = mmio_read16(mpc + MPC_ENTRY_COUNT);
	uptr e = mpc + MPC_HEADER_SIZE, end = mpc + len;
	while (e < end) {
		u8 type = mmio_read8(e);
		uptr size = type == MP_PROCESSOR ? MP_PROCESSOR_SIZE : MP_OTHER_SIZE;
		if (type > MP_LINTR || e + size > end)
			return "bad entry";
		if (type == MP_PROCESSOR && (mmio_read8(e + MP_ENTRY_FLAGS) & MP_CPU_EN) && n_mp_cpus < MAX_CPUS) {
			mp_cpus[n_mp_cpus].apic_id = mmio_read8(e + MP_ENTRY_ID);
			mp_cpus[n_mp_cpus].flags = mmio_read8(e + MP_ENTRY_FLAGS);
			n_mp_cpus++;
		} else if (type == MP_IOAPIC && (mmio_read8(e + MP_ENTRY_FLAGS) & MP_CPU_EN)) {
			n->ioapics++;
		} else if (type == MP_IOINTR) {
			n->irqs++;
		}
		n->entries++;
		e += size;
	}
	return NULL;
}

void report_mptable(void)
{
	uptr mpf = find_mpf();
	struct mp_counts n = {0, 0, 0, 0};
	if (!mpf) {
		fact_str("mptable_addr", "none");
	} else {
		fact_hex("mptable_addr", mpf);
		u8 default_config = mmio_read8(mpf + MPF_FEATURE1);
		if (default_config) {
			/* MP spec 5: default configurations have two processors, ids 0 and 1. */
			fact_dec("mptable_default_config", default_config);
			mp_cpus[0] = (struct mp_cpu){0, MP_CPU_EN | MP_CPU_BP};
			mp_cpus[1] = (struct mp_cpu){1, MP_CPU_EN};
			n_mp_cpus = 2;
		} else {
			const char *err = parse_mpc(mmio_read32(mpf + MPF_PHYSPTR), &n);
			if (err)
				fact_str("mptable_error", err);
		}
	}
	for (u32 i = 0; i < n_mp_cpus; i++) {
		fact_start();
		put_str("mpcpu apic_id=");
		put_dec(mp_cpus[i].apic_id);
		put_str(" bsp=");
		put_dec((mp_cpus[i].flags & MP_CPU_BP) ? 1 : 0);
		put_char('\n');
	}
	fact_dec("mptable_cpus", n_mp_cpus);
	fact_dec("mptable_ioapics", n.ioapics);
	fact_dec("mptable_irqs", n.irqs);
	fact_dec("mptable_entries", n.entries);
	fact_dec("mptable_entry_count", n.header_count);
}

static uptr apic_base;

static void apic_send(u8 dest, u32 cmd)
{
	mmio_write32(apic_base + APIC_ICR_HI, (u32)dest << 24);
	mmio_write32(apic_base + APIC_ICR_LO, cmd);
	for (u32 i = 0; i < ICR_POLL_MAX; i++)
		if (!(mmio_read32(apic_base + APIC_ICR_LO) & ICR_DELIVERY_PENDING))
			break;
}

void start_aps(void)
{
	u64 msr = rdmsr(MSR_IA32_APIC_BASE);
	if (!(msr & APIC_BASE_ENABLE))
		wrmsr(MSR_IA32_APIC_BASE, msr | APIC_BASE_ENABLE);
	apic_base = msr & APIC_BASE_MASK;
	fact_hex("lapic_base", apic_base);
	fact_dec("lapic_id", mmio_read32(apic_base + APIC_ID) >> 24);

	u32 n_aps = 0;
	for (u32 i = 0; i < n_mp_cpus; i++)
		if (!(mp_cpus[i].flags & MP_CPU_BP))
			n_aps++;
	if (n_aps) {
		mmio_write32(apic_base + APIC_SVR, APIC_SVR_ENABLE | APIC_SPURIOUS_VECTOR);
		uptr size = (uptr)(ap_tramp_end - ap_tramp_start);
		memcpy((void *)AP_TRAMPOLINE_PADDR, ap_tramp_start, size);
		barrier();
		/* KVM latches INIT and SIPI, so no 10 ms / 200 us delays (MP spec B.4) are needed. */
		for (u32 i = 0; i < n_mp_cpus; i++) {
			if (mp_cpus[i].flags & MP_CPU_BP)
				continue;
			u8 id = mp_cpus[i].apic_id;
			apic_send(id, ICR_INIT | ICR_LEVEL_ASSERT | ICR_TRIGGER_LEVEL);
			apic_send(id, ICR_INIT | ICR_TRIGGER_LEVEL);
			apic_send(id, ICR_STARTUP | AP_SIPI_VECTOR);
			apic_send(id, ICR_STARTUP | AP_SIPI_VECTOR);
		}
	}
	volatile u32 *count = (volatile u32 *)(AP_TRAMPOLINE_PADDR + (uptr)(ap_tramp_count - ap_tramp_start));
	volatile u8 *flags = (volatile u8 *)(AP_TRAMPOLINE_PADDR + (uptr)(ap_tramp_flags - ap_tramp_start));
	u64 start = rdtsc();
	while (n_aps && *count < n_aps && rdtsc() - start < AP_WAIT_TSC)
		cpu_relax();
	for (u32 i = 0; i < n_mp_cpus; i++) {
		if (mp_cpus[i].flags & MP_CPU_BP)
			continue;
		fact_start();
		put_str("ap apic_id=");
		put_dec(mp_cpus[i].apic_id);
		put_str(flags[mp_cpus[i].apic_id] ? " up\n" : " down\n");
	}
	fact_dec("cpus_up", 1 + (n_aps ? *count : 0));
}
