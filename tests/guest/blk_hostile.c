/*
 * amivm test guest: malformed virtio-blk requests a hostile driver could send (blk=hostile).
 * Each is reported as `blk hostile=NAME status=S len=N needs_reset=0|1`; see README.md for
 * what a careful device answers. All requests target a device in the state run_blk_commands
 * left it in; afterwards further blk= words show whether it still works.
 */
#include "blk.h"

/* How long to wait for a hostile request, in TSC ticks (~1 s): a device may drop it silently. */
#define HOSTILE_WAIT_TSC 3000000000UL
/* Guest-physical addresses no guest has RAM at: 64 TiB, and inside the 32-bit MMIO gap. */
#define ADDR_BEYOND_RAM (1UL << 46)
#define ADDR_IN_GAP 0xd0000000UL
/* A buffer whose end wraps around the 64-bit address space. */
#define ADDR_WRAPS 0xfffffffffffffe00UL
/* A sector whose byte offset (sector * 512) is exactly 2^64: 0 if computed carelessly. */
#define SECTOR_OFFSET_WRAPS (1UL << 55)
/* The sector and pattern seed of the write sent without a status descriptor ("hostile!"). */
#define MISSING_STATUS_SECTOR 1
#define MISSING_STATUS_SEED 0x686f7374696c6521UL
/* A request type virtio-blk does not define (5.2.6). */
#define UNKNOWN_TYPE 0x63
/* A data length that is not a multiple of 512. */
#define BAD_LENGTH 100
/* A header shorter than struct virtio_blk_req's 16-byte header. */
#define SHORT_HEADER 8

static void report(const char *name, int used, u32 len)
{
	fact_start();
	put_str("blk hostile=");
	put_str(name);
	blk_put_status(used);
	if (used) {
		put_str(" len=");
		put_dec(len);
	}
	put_str(" needs_reset=");
	put_dec(blk_needs_reset());
	put_char('\n');
}

static void header(u32 type, u64 sector)
{
	blk_hdr.type = type;
	blk_hdr.reserved = 0;
	blk_hdr.sector = sector;
	blk_status = STATUS_UNWRITTEN;
}

/* header -> data -> status, with the data descriptor's address, length and flags given. */
static void send3(const char *name, u32 type, u64 sector, u64 addr, u32 len, u16 data_flags,
		  u16 status_flags)
{
	u32 used_len = 0;
	header(type, sector);
	blk_set_desc(0, (uptr)&blk_hdr, sizeof(blk_hdr), VIRTQ_DESC_F_NEXT, 1);
	blk_set_desc(1, addr, len, data_flags | VIRTQ_DESC_F_NEXT, 2);
	blk_set_desc(2, (uptr)&blk_status, 1, status_flags, 0);
	int used = blk_submit(0, HOSTILE_WAIT_TSC, &used_len);
	report(name, used, used_len);
}

/* Offers the chain already built at descriptor 0. */
static void send_chain(const char *name)
{
	u32 used_len = 0;
	int used = blk_submit(0, HOSTILE_WAIT_TSC, &used_len);
	report(name, used, used_len);
}

void blk_hostile(void)
{
	const u16 W = VIRTQ_DESC_F_WRITE, N = VIRTQ_DESC_F_NEXT;
	const u16 q = blk_queue_size;
	u64 data = (uptr)blk_data;

	send3("addr_beyond_ram", VIRTIO_BLK_T_IN, 0, ADDR_BEYOND_RAM, SECTOR_SIZE, W, W);
	send3("addr_in_gap", VIRTIO_BLK_T_IN, 0, ADDR_IN_GAP, SECTOR_SIZE, W, W);
	send3("addr_wraps", VIRTIO_BLK_T_IN, 0, ADDR_WRAPS, 2 * SECTOR_SIZE, W, W);

	/* header -> data -> status -> data -> status ...: a loop. */
	header(VIRTIO_BLK_T_IN, 0);
	blk_set_desc(0, (uptr)&blk_hdr, sizeof(blk_hdr), N, 1);
	blk_set_desc(1, data, SECTOR_SIZE, W | N, 2);
	blk_set_desc(2, (uptr)&blk_status, 1, W | N, 1);
	send_chain("desc_loop");

	/* Every descriptor of the queue chained, the last pointing back at the head. */
	header(VIRTIO_BLK_T_IN, 0);
	blk_set_desc(0, (uptr)&blk_hdr, sizeof(blk_hdr), N, 1);
	for (u16 i = 1; i < q; i++)
		blk_set_desc(i, data, SECTOR_SIZE, W | N, (u16)((i + 1) % q));
	send_chain("chain_longer_than_queue");

	/* The header's next index is just past the queue. */
	header(VIRTIO_BLK_T_IN, 0);
	blk_set_desc(0, (uptr)&blk_hdr, sizeof(blk_hdr), N, q);
	send_chain("next_out_of_range");

	send3("sector_past_end", VIRTIO_BLK_T_IN, blk_capacity, data, SECTOR_SIZE, W, W);
	send3("write_past_end", VIRTIO_BLK_T_OUT, blk_capacity, data, SECTOR_SIZE, 0, W);
	send3("sector_offset_wraps", VIRTIO_BLK_T_IN, SECTOR_OFFSET_WRAPS, data, SECTOR_SIZE, W, W);

	/* A write with header and data but no status descriptor: nothing to report the result in. */
	header(VIRTIO_BLK_T_OUT, MISSING_STATUS_SECTOR);
	blk_fill_pattern(MISSING_STATUS_SECTOR, 1, MISSING_STATUS_SEED);
	blk_set_desc(0, (uptr)&blk_hdr, sizeof(blk_hdr), N, 1);
	blk_set_desc(1, data, SECTOR_SIZE, 0, 0);
	send_chain("missing_status");

	send3("status_not_writable", VIRTIO_BLK_T_IN, 0, data, SECTOR_SIZE, W, 0);
	send3("in_buffer_not_writable", VIRTIO_BLK_T_IN, 0, data, SECTOR_SIZE, 0, W);
	send3("bad_length", VIRTIO_BLK_T_IN, 0, data, BAD_LENGTH, W, W);

	/* An unknown request type, header and status only. */
	header(UNKNOWN_TYPE, 0);
	blk_set_desc(0, (uptr)&blk_hdr, sizeof(blk_hdr), N, 1);
	blk_set_desc(1, (uptr)&blk_status, 1, W, 0);
	send_chain("unknown_type");

	/* A header descriptor shorter than the header. */
	header(VIRTIO_BLK_T_IN, 0);
	blk_set_desc(0, (uptr)&blk_hdr, SHORT_HEADER, N, 1);
	blk_set_desc(1, data, SECTOR_SIZE, W | N, 2);
	blk_set_desc(2, (uptr)&blk_status, 1, W, 0);
	send_chain("header_too_short");
}
