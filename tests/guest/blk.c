/*
 * amivm test guest: a polling virtio-mmio (version 2) block driver, driven by blk= words on
 * the command line (see README.md). Spec references are to virtio 1.2.
 */
#include "blk.h"

/* Device ID of a block device (5). */
#define VIRTIO_ID_BLOCK 2
/* virtio_blk_config.capacity, in 512-byte sectors (5.2.4). */
#define BLK_CONFIG_CAPACITY 0

/* Feature bits (5.2.3). */
#define VIRTIO_BLK_F_SEG_MAX (1UL << 2)
#define VIRTIO_BLK_F_RO (1UL << 5)
#define VIRTIO_BLK_F_BLK_SIZE (1UL << 6)
#define VIRTIO_BLK_F_FLUSH (1UL << 9)
/* What this driver accepts when offered; it needs VERSION_1. */
#define DRIVER_FEATURES (VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_RO | \
			 VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH)

/* How long a request may take, in TSC ticks (~10 s at 3 GHz: the device thread may wait). */
#define BLK_WAIT_TSC 30000000000UL
/* Generations the crash loop writes before it stops by itself. */
#define CRASHLOOP_MAX_GENS 1000000

volatile struct virtq_desc blk_desc[QUEUE_SIZE] __attribute__((aligned(16)));
static volatile struct {
	u16 flags;
	u16 idx;
	u16 ring[QUEUE_SIZE];
	u16 used_event;
} avail __attribute__((aligned(2)));
static volatile struct {
	u16 flags;
	u16 idx;
	struct {
		u32 id;
		u32 len;
	} ring[QUEUE_SIZE];
	u16 avail_event;
} used __attribute__((aligned(4)));
struct blk_req_hdr blk_hdr __attribute__((aligned(16)));
volatile u8 blk_status;
u8 blk_data[DATA_SECTORS * SECTOR_SIZE] __attribute__((aligned(4096)));
u16 blk_queue_size;
u64 blk_capacity;

static uptr mmio;
/* A well-formed request was not answered in time: later blk= words are skipped. */
static int dead;
static u16 last_used;
static u64 features;

static u32 rd(u32 off) { return mmio_read32(mmio + off); }
static void wr(u32 off, u32 v) { mmio_write32(mmio + off, v); }

void blk_set_desc(u16 i, u64 addr, u32 len, u16 flags, u16 next)
{
	blk_desc[i].addr = addr;
	blk_desc[i].len = len;
	blk_desc[i].flags = flags;
	blk_desc[i].next = next;
}

int blk_submit(u16 head, u64 wait_tsc, u32 *len)
{
	avail.ring[avail.idx % blk_queue_size] = head;
	barrier();
	avail.idx = (u16)(avail.idx + 1);
	barrier();
	wr(MMIO_QUEUE_NOTIFY, 0);
	u64 start = rdtsc();
	while (used.idx == last_used) {
		if (rdtsc() - start > wait_tsc)
			return 0;
		cpu_relax();
	}
	barrier();
	u32 id = used.ring[last_used % blk_queue_size].id;
	*len = used.ring[last_used % blk_queue_size].len;
	last_used = (u16)(last_used + 1);
	u32 isr = rd(MMIO_INTERRUPT_STATUS);
	if (isr)
		wr(MMIO_INTERRUPT_ACK, isr);
	if (id != head)
		fact_str("blk_error", "used ring returned another chain");
	return 1;
}

void blk_put_status(int used_ok)
{
	put_str(" status=");
	if (!used_ok)
		put_str("timeout");
	else if (blk_status == STATUS_UNWRITTEN)
		put_str("none");
	else
		put_dec(blk_status);
}

int blk_needs_reset(void) { return (rd(MMIO_STATUS) & STATUS_DEVICE_NEEDS_RESET) != 0; }

void blk_fill_pattern(u64 sector, u32 count, u64 seed)
{
	u64 *w = (u64 *)blk_data;
	u64 first = seed + sector * (SECTOR_SIZE / 8);
	for (u32 i = 0; i < count * (SECTOR_SIZE / 8); i++)
		w[i] = first + i;
}

/* One request of up to DATA_SECTORS sectors: header, optional data, status. */
static int request(u32 type, u64 sector, u32 data_len, int data_writable, u32 *len)
{
	blk_hdr.type = type;
	blk_hdr.reserved = 0;
	blk_hdr.sector = sector;
	blk_status = STATUS_UNWRITTEN;
	u16 n = 0;
	blk_set_desc(n, (uptr)&blk_hdr, sizeof(blk_hdr), VIRTQ_DESC_F_NEXT, (u16)(n + 1));
	n++;
	if (data_len) {
		blk_set_desc(n, (uptr)blk_data, data_len,
			     VIRTQ_DESC_F_NEXT | (data_writable ? VIRTQ_DESC_F_WRITE : 0), (u16)(n + 1));
		n++;
	}
	blk_set_desc(n, (uptr)&blk_status, 1, VIRTQ_DESC_F_WRITE, 0);
	int ok = blk_submit(0, BLK_WAIT_TSC, len);
	if (!ok)
		dead = 1;
	return ok;
}

/* The blk_dev=N-th (default first) virtio_mmio.device= word's device and interrupt. */
static int find_device(u64 *irq)
{
	return virtio_mmio_find("blk_dev", 0, &mmio, irq);
}

static const char *init_device(void)
{
	if (rd(MMIO_MAGIC) != MMIO_MAGIC_VALUE)
		return "no virtio-mmio magic";
	fact_dec("blk_version", rd(MMIO_VERSION));
	if (rd(MMIO_VERSION) != MMIO_VERSION_MODERN)
		return "not a version 2 (modern) virtio-mmio device";
	fact_dec("blk_device_id", rd(MMIO_DEVICE_ID));
	if (rd(MMIO_DEVICE_ID) != VIRTIO_ID_BLOCK)
		return "not a block device";
	/* 3.1.1: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queues, DRIVER_OK. */
	wr(MMIO_STATUS, 0);
	if (rd(MMIO_STATUS) != 0)
		return "device did not reset";
	wr(MMIO_STATUS, STATUS_ACKNOWLEDGE);
	wr(MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
	wr(MMIO_DEVICE_FEATURES_SEL, 0);
	u64 dev = rd(MMIO_DEVICE_FEATURES);
	wr(MMIO_DEVICE_FEATURES_SEL, 1);
	dev |= (u64)rd(MMIO_DEVICE_FEATURES) << 32;
	fact_hex("blk_features", dev);
	if (!(dev & VIRTIO_F_VERSION_1))
		return "device does not offer VIRTIO_F_VERSION_1";
	features = dev & DRIVER_FEATURES;
	wr(MMIO_DRIVER_FEATURES_SEL, 0);
	wr(MMIO_DRIVER_FEATURES, (u32)features);
	wr(MMIO_DRIVER_FEATURES_SEL, 1);
	wr(MMIO_DRIVER_FEATURES, (u32)(features >> 32));
	wr(MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
	if (!(rd(MMIO_STATUS) & STATUS_FEATURES_OK))
		return "device refused the features";
	u32 gen;
	do {
		gen = rd(MMIO_CONFIG_GENERATION);
		blk_capacity = rd(MMIO_CONFIG + BLK_CONFIG_CAPACITY) |
			       (u64)rd(MMIO_CONFIG + BLK_CONFIG_CAPACITY + 4) << 32;
	} while (gen != rd(MMIO_CONFIG_GENERATION));
	wr(MMIO_QUEUE_SEL, 0);
	if (rd(MMIO_QUEUE_READY) != 0)
		return "queue 0 already ready";
	u32 max = rd(MMIO_QUEUE_NUM_MAX);
	fact_dec("blk_queue_max", max);
	if (max == 0)
		return "queue 0 not available";
	blk_queue_size = max < QUEUE_SIZE ? (u16)max : QUEUE_SIZE;
	avail.flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
	virtio_mmio_queue(mmio, 0, blk_queue_size, (uptr)blk_desc, (uptr)&avail, (uptr)&used);
	wr(MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
	if (rd(MMIO_STATUS) & (STATUS_DEVICE_NEEDS_RESET | STATUS_FAILED))
		return "device failed after DRIVER_OK";
	fact_dec("blk_capacity", blk_capacity);
	fact_dec("blk_ro", (features & VIRTIO_BLK_F_RO) ? 1 : 0);
	fact_dec("blk_flush", (features & VIRTIO_BLK_F_FLUSH) ? 1 : 0);
	return NULL;
}

static void blk_line(const char *what)
{
	fact_start();
	put_str("blk ");
	put_str(what);
}

static void put_range(u64 sector, u64 count)
{
	put_str(" sector=");
	put_dec(sector);
	put_str(" count=");
	put_dec(count);
}

/* Reads or writes [sector, sector+count) in DATA_SECTORS pieces; returns the first bad status. */
static int rw(int write, u64 sector, u64 count, u64 seed, u64 *sum, u32 *total_len)
{
	u64 h = FNV64_OFFSET;
	*total_len = 0;
	for (u64 done = 0; done < count;) {
		u32 n = count - done > DATA_SECTORS ? DATA_SECTORS : (u32)(count - done);
		u32 len = 0;
		if (write)
			blk_fill_pattern(sector + done, n, seed);
		int ok = request(write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, sector + done, n * SECTOR_SIZE,
				 !write, &len);
		if (!ok || blk_status != VIRTIO_BLK_S_OK)
			return ok ? 1 : 0;
		*total_len += len;
		if (!write)
			h = sum64_update(h, blk_data, n * SECTOR_SIZE);
		done += n;
	}
	*sum = h;
	return 2;
}

static void cmd_rw(int write, u64 sector, u64 count, u64 seed)
{
	u64 sum = 0;
	u32 len = 0;
	int r = rw(write, sector, count, seed, &sum, &len);
	blk_line(write ? "write" : "read");
	put_range(sector, count);
	blk_put_status(r != 0);
	if (r == 2 && !write) {
		put_str(" len=");
		put_dec(len);
		put_str(" sum=");
		put_hex(sum);
	}
	put_char('\n');
}

static void cmd_flush(void)
{
	u32 len;
	int ok = request(VIRTIO_BLK_T_FLUSH, 0, 0, 0, &len);
	blk_line("flush");
	blk_put_status(ok);
	put_char('\n');
}

static void cmd_getid(void)
{
	u32 len;
	memset(blk_data, 0, VIRTIO_BLK_ID_BYTES);
	int ok = request(VIRTIO_BLK_T_GET_ID, 0, VIRTIO_BLK_ID_BYTES, 1, &len);
	blk_line("getid");
	blk_put_status(ok);
	if (ok && blk_status == VIRTIO_BLK_S_OK) {
		put_str(" id=");
		for (int i = 0; i < VIRTIO_BLK_ID_BYTES && blk_data[i]; i++)
			put_char(blk_data[i] > ' ' && blk_data[i] < 0x7f ? (char)blk_data[i] : '?');
	}
	put_char('\n');
}

/* Writes generation after generation of a pattern over the range, flushing after each. */
static void cmd_crashloop(u64 sector, u64 count, u64 seed)
{
	for (u64 gen = 1; gen <= CRASHLOOP_MAX_GENS; gen++) {
		u64 sum;
		u32 len;
		if (rw(1, sector, count, seed + (gen << 32), &sum, &len) != 2) {
			fact_str("blk_error", "crashloop write failed");
			return;
		}
		if (!request(VIRTIO_BLK_T_FLUSH, 0, 0, 0, &len) || blk_status != VIRTIO_BLK_S_OK) {
			fact_str("blk_error", "crashloop flush failed");
			return;
		}
		blk_line("crashloop gen=");
		put_dec(gen);
		put_str(" flushed\n");
	}
}

/* Splits "a:b:c" into up to n numbers; returns how many were parsed, -1 on a bad number. */
static int parse_fields(const char *s, uptr len, u64 *out, int n)
{
	int k = 0;
	uptr start = 0;
	for (uptr i = 0; i <= len && k < n; i++) {
		if (i == len || s[i] == ':') {
			if (!parse_u64(s + start, i - start, &out[k]))
				return -1;
			k++;
			start = i + 1;
		}
	}
	return k;
}

/* One blk= word: "op" or "op:args". */
static void run_word(const char *v, uptr len)
{
	uptr op_len = 0;
	while (op_len < len && v[op_len] != ':')
		op_len++;
	const char *args = v + op_len + 1;
	uptr args_len = op_len < len ? len - op_len - 1 : 0;
	u64 a[3];
	int n = args_len ? parse_fields(args, args_len, a, 3) : 0;
	if (op_len == 4 && !memcmp(v, "read", 4) && n == 2)
		cmd_rw(0, a[0], a[1], 0);
	else if (op_len == 5 && !memcmp(v, "write", 5) && n == 3)
		cmd_rw(1, a[0], a[1], a[2]);
	else if (op_len == 5 && !memcmp(v, "flush", 5) && n == 0)
		cmd_flush();
	else if (op_len == 5 && !memcmp(v, "getid", 5) && n == 0)
		cmd_getid();
	else if (op_len == 7 && !memcmp(v, "hostile", 7) && n == 0)
		blk_hostile();
	else if (op_len == 9 && !memcmp(v, "crashloop", 9) && n == 3)
		cmd_crashloop(a[0], a[1], a[2]);
	else
		fact_str("blk_error", "bad blk= word");
}

void run_blk_commands(void)
{
	static const char KEY[] = "blk=";
	const char *c = boot.cmdline;
	int ready = 0;
	while (*c) {
		while (*c == ' ')
			c++;
		const char *word = c;
		while (*c && *c != ' ')
			c++;
		if (!str_starts(word, KEY) || (uptr)(c - word) < sizeof(KEY))
			continue;
		if (dead) {
			fact_str("blk_error", "device stopped answering; remaining blk= words skipped");
			return;
		}
		if (!ready) {
			u64 irq;
			if (!find_device(&irq)) {
				fact_str("blk_error", "no (or bad) virtio_mmio.device= on the command line");
				return;
			}
			fact_hex("blk_mmio", mmio);
			fact_dec("blk_irq", irq);
			const char *err = init_device();
			if (err) {
				fact_str("blk_error", err);
				return;
			}
			ready = 1;
		}
		run_word(word + sizeof(KEY) - 1, (uptr)(c - word) - (sizeof(KEY) - 1));
	}
}
