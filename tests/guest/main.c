/*
 * amivm test guest: the common C entry. Reads the boot information, prints the report (see
 * README.md) and leaves the way the command line asks.
 */
#include "guest.h"

/* The exit port (amivm; QEMU's isa-debug-exit with iobase=0xf4): one byte, the exit status. */
#define EXIT_PORT 0xf4
/* i8042 command port and its "pulse reset line" command (what Linux's reboot=k writes). */
#define I8042_COMMAND 0x64
#define I8042_RESET 0xfe

/* The line amivm (and any log watcher) recognises as a guest kernel panic. */
static const char PANIC_LINE[] = "Kernel panic - not syncing: test\n";

/*
 * An INT3 that KVM's instruction emulator cannot execute (an emulation failure,
 * KVM_EXIT_INTERNAL_ERROR); under hardware virtualisation it raises #BP, which the zero-limit
 * IDT turns into a triple fault. Either way the VMM must report a crash.
 */
extern const char guest_int3[];
__asm__(".pushsection .text\n"
	".globl guest_int3\n"
	"guest_int3:\n"
	"\tint3\n"
	"1:\tcli\n"
	"\thlt\n"
	"\tjmp 1b\n"
	".popsection\n");

const char *cmdline_nth_value(const char *key, u32 n, uptr *len)
{
	uptr klen = strlen(key);
	const char *c = boot.cmdline;
	while (*c) {
		while (*c == ' ')
			c++;
		const char *word = c;
		while (*c && *c != ' ')
			c++;
		if ((uptr)(c - word) > klen && str_starts(word, key) && word[klen] == '=' && n-- == 0) {
			*len = (uptr)(c - word) - klen - 1;
			return word + klen + 1;
		}
	}
	return NULL;
}

const char *cmdline_value(const char *key, uptr *len)
{
	const char *found = NULL, *v;
	uptr l;
	for (u32 n = 0; (v = cmdline_nth_value(key, n, &l)) != NULL; n++) {
		found = v;
		*len = l;
	}
	return found;
}

static int value_is(const char *v, uptr len, const char *want)
{
	return len == strlen(want) && memcmp(v, want, len) == 0;
}

/* A zero-limit IDT turns any exception into #GP, #DF and then a shutdown (triple fault). */
static void load_empty_idt(void)
{
	static const struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) empty_idt = {0, 0};
	__asm__ volatile("lidt %0" : : "m"(empty_idt));
}

__attribute__((noreturn)) static void triple_fault(void)
{
	load_empty_idt();
	/* A non-canonical address raises #GP (Intel SDM vol. 3A, 3.3.7.1). */
	*(volatile u64 *)0x8000000000000000UL = 0;
	halt_forever();
}

__attribute__((noreturn)) static void leave(u64 tsc_start)
{
	fact_dec("tsc_ticks", rdtsc() - tsc_start);
	uptr len = 0;
	const char *action = cmdline_value("exit", &len);
	uptr code_len = 0;
	const char *code_str = cmdline_value("exit_code", &code_len);
	u64 code = 0;
	if (code_str && !parse_u64(code_str, code_len, &code))
		fact_str("cmdline_error", "bad exit_code");
	if (action && value_is(action, len, "reset")) {
		fact_str("exit", "reset");
		outb(I8042_COMMAND, I8042_RESET);
	} else if (action && value_is(action, len, "hang")) {
		fact_str("exit", "hang");
		for (;;)
			cpu_relax();
	} else if (action && value_is(action, len, "halt")) {
		fact_str("exit", "halt");
	} else if (action && value_is(action, len, "triple")) {
		fact_str("exit", "triple");
		triple_fault();
	} else if (action && value_is(action, len, "int3")) {
		fact_hex("int3_rip", (uptr)guest_int3);
		fact_str("exit", "int3");
		load_empty_idt();
		__asm__ volatile("jmp guest_int3");
	} else if (action && (value_is(action, len, "poweroff") || value_is(action, len, "ged"))) {
		if (value_is(action, len, "ged"))
			acpi_wait_ged_event();
		else
			report_acpi();
		fact_str("exit", "poweroff");
		acpi_poweroff();
	} else if (action && value_is(action, len, "acpi-reset")) {
		report_acpi();
		fact_str("exit", "acpi-reset");
		acpi_reset();
	} else if (action && value_is(action, len, "panic")) {
		fact_str("exit", "panic");
		put_str(PANIC_LINE);
	} else {
		if (action)
			fact_str("cmdline_error", "unknown exit action");
		fact_dec("exit", code & 0xff);
		outb(EXIT_PORT, (u8)code);
	}
	halt_forever();
}

void guest_main(int kind, uptr info)
{
	u64 tsc_start = rdtsc();
	read_boot_info(kind, info);
	serial_init();
	report_boot_info();
	report_cpuid();
	report_mptable();
	start_aps();
	run_blk_commands();
	run_net_commands();
	uptr alen = 0;
	if (cmdline_value("acpi", &alen))
		report_acpi();
	leave(tsc_start);
}
