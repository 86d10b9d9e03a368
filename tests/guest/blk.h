/*
 * amivm test guest: the virtio-mmio (version 2) block driver's shared parts. Spec references
 * are to virtio 1.2 (https://docs.oasis-open.org/virtio/virtio/v1.2/virtio-v1.2.html).
 */
#ifndef AMIVM_GUEST_BLK_H
#define AMIVM_GUEST_BLK_H

#include "virtio_mmio.h"

/* virtio-blk request types and statuses (5.2.6). */
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
/* GET_ID returns up to 20 bytes (5.2.6, VIRTIO_BLK_ID_BYTES). */
#define VIRTIO_BLK_ID_BYTES 20
/* Sector size of virtio-blk requests (5.2.6: "sector ... 512-byte"). */
#define SECTOR_SIZE 512

/* Descriptors the driver uses: the queue size is min(QueueNumMax, this). */
#define QUEUE_SIZE 8
/* Data buffer: requests larger than this are split. */
#define DATA_SECTORS 64
/* The status byte before the device writes it: not a status the spec defines. */
#define STATUS_UNWRITTEN 0xff

struct blk_req_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
};

/* The driver's state; the rings and buffers live in the image's .bss. */
extern volatile struct virtq_desc blk_desc[QUEUE_SIZE];
extern struct blk_req_hdr blk_hdr;
extern volatile u8 blk_status;
extern u8 blk_data[DATA_SECTORS * SECTOR_SIZE];
extern u16 blk_queue_size;
extern u64 blk_capacity;

/* Sets descriptor i. */
void blk_set_desc(u16 i, u64 addr, u32 len, u16 flags, u16 next);
/*
 * Offers the chain starting at head and polls the used ring for up to wait_tsc TSC ticks.
 * Returns 1 with the used length in *len when the device returned a chain, 0 on timeout.
 */
int blk_submit(u16 head, u64 wait_tsc, u32 *len);
/* Prints " status=N" (or "none" if the device did not write it, "timeout" if not returned). */
void blk_put_status(int used);
/* Reads the device status register: whether DEVICE_NEEDS_RESET is set. */
int blk_needs_reset(void);
/* Fills count sectors of blk_data with the pattern for disk sector `sector` and `seed`. */
void blk_fill_pattern(u64 sector, u32 count, u64 seed);

/* blk_hostile.c */
void blk_hostile(void);

#endif
