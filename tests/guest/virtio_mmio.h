/*
 * amivm test guest: the virtio-mmio (version 2) transport shared by the block and network
 * drivers. Spec references are to virtio 1.2
 * (https://docs.oasis-open.org/virtio/virtio/v1.2/virtio-v1.2.html).
 */
#ifndef AMIVM_GUEST_VIRTIO_MMIO_H
#define AMIVM_GUEST_VIRTIO_MMIO_H

#include "guest.h"

/* virtio-mmio register offsets (4.2.2). */
#define MMIO_MAGIC 0x000
#define MMIO_VERSION 0x004
#define MMIO_DEVICE_ID 0x008
#define MMIO_DEVICE_FEATURES 0x010
#define MMIO_DEVICE_FEATURES_SEL 0x014
#define MMIO_DRIVER_FEATURES 0x020
#define MMIO_DRIVER_FEATURES_SEL 0x024
#define MMIO_QUEUE_SEL 0x030
#define MMIO_QUEUE_NUM_MAX 0x034
#define MMIO_QUEUE_NUM 0x038
#define MMIO_QUEUE_READY 0x044
#define MMIO_QUEUE_NOTIFY 0x050
#define MMIO_INTERRUPT_STATUS 0x060
#define MMIO_INTERRUPT_ACK 0x064
#define MMIO_STATUS 0x070
#define MMIO_QUEUE_DESC_LOW 0x080
#define MMIO_QUEUE_DESC_HIGH 0x084
#define MMIO_QUEUE_DRIVER_LOW 0x090
#define MMIO_QUEUE_DRIVER_HIGH 0x094
#define MMIO_QUEUE_DEVICE_LOW 0x0a0
#define MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define MMIO_CONFIG_GENERATION 0x0fc
#define MMIO_CONFIG 0x100
/* "virt" in little endian (4.2.2, MagicValue). */
#define MMIO_MAGIC_VALUE 0x74726976
/* Version 2: the non-legacy interface. */
#define MMIO_VERSION_MODERN 2

/* Device status bits (2.1). */
#define STATUS_ACKNOWLEDGE 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4
#define STATUS_FEATURES_OK 8
#define STATUS_DEVICE_NEEDS_RESET 64
#define STATUS_FAILED 128

/* The non-legacy interface (6). */
#define VIRTIO_F_VERSION_1 (1UL << 32)

/* Split virtqueue descriptor flags (2.7.5). */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
/* Available ring flag: the driver polls and wants no interrupts (2.7.7). */
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

struct virtq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

/*
 * Finds a device in "SIZE@ADDR:IRQ" virtio_mmio.device= words (Linux
 * drivers/virtio/virtio_mmio.c syntax): the one the command line's `selector`=N word names,
 * else the first (or, with pick_last, the last). Sets *addr and, when irq is not NULL, *irq.
 * Returns 0 when there is no such word or it does not parse.
 */
int virtio_mmio_find(const char *selector, int pick_last, uptr *addr, u64 *irq);

/*
 * Programs virtqueue `sel` of the device at `mmio` (4.2.3.2): its size, the addresses of its
 * descriptor table, driver (available) and device (used) rings, then QueueReady.
 */
void virtio_mmio_queue(uptr mmio, u32 sel, u16 size, uptr desc, uptr driver, uptr device);

#endif
