/*
 * amivm test guest: the virtio-mmio transport's helpers (see virtio_mmio.h).
 */
#include "virtio_mmio.h"

int virtio_mmio_find(const char *selector, int pick_last, uptr *addr, u64 *irq)
{
	uptr len;
	u64 index = 0;
	const char *sel = cmdline_value(selector, &len);
	if (sel) {
		if (!parse_u64(sel, len, &index))
			return 0;
	} else if (pick_last) {
		while (cmdline_nth_value("virtio_mmio.device", (u32)index + 1, &len))
			index++;
	}
	const char *v = cmdline_nth_value("virtio_mmio.device", (u32)index, &len);
	if (!v)
		return 0;
	const char *at = NULL, *colon = NULL;
	for (uptr i = 0; i < len; i++) {
		if (v[i] == '@' && !at)
			at = v + i;
		else if (v[i] == ':' && at && !colon)
			colon = v + i;
	}
	u64 a;
	if (!at || !colon || !parse_u64(at + 1, (uptr)(colon - at - 1), &a))
		return 0;
	if (irq) {
		const char *irq_end = colon + 1;
		while (irq_end < v + len && *irq_end != ':')
			irq_end++;
		if (!parse_u64(colon + 1, (uptr)(irq_end - colon - 1), irq))
			return 0;
	}
	*addr = a;
	return 1;
}

void virtio_mmio_queue(uptr mmio, u32 sel, u16 size, uptr desc, uptr driver, uptr device)
{
	mmio_write32(mmio + MMIO_QUEUE_SEL, sel);
	mmio_write32(mmio + MMIO_QUEUE_NUM, size);
	mmio_write32(mmio + MMIO_QUEUE_DESC_LOW, (u32)desc);
	mmio_write32(mmio + MMIO_QUEUE_DESC_HIGH, (u32)(desc >> 32));
	mmio_write32(mmio + MMIO_QUEUE_DRIVER_LOW, (u32)driver);
	mmio_write32(mmio + MMIO_QUEUE_DRIVER_HIGH, (u32)(driver >> 32));
	mmio_write32(mmio + MMIO_QUEUE_DEVICE_LOW, (u32)device);
	mmio_write32(mmio + MMIO_QUEUE_DEVICE_HIGH, (u32)(device >> 32));
	mmio_write32(mmio + MMIO_QUEUE_READY, 1);
}
