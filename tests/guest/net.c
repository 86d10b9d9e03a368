/*
 * amivm test guest: a polling virtio-mmio (version 2) network driver (virtio 1.2, 5.1) and the
 * net= words: `net=dhcp` sends a DHCPDISCOVER (RFC 2131), prints the offer, then ARPs for the
 * router (RFC 826) and prints its MAC. `net_dev=N` picks the N-th virtio_mmio.device= word
 * (default: the last one, where amivm and QEMU put the card after the disks).
 */
#include "blk.h"

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
#define MMIO_CONFIG 0x100
#define MMIO_MAGIC_VALUE 0x74726976
/* Device ID of a network card (5). */
#define VIRTIO_ID_NET 1
#define VIRTIO_F_VERSION_1 (1UL << 32)
#define VIRTIO_NET_F_MAC (1UL << 5)
#define ST_ACK 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FEATURES_OK 8
/* struct virtio_net_hdr with VERSION_1 (5.1.6). */
#define NET_HDR 12
#define NQ 8
#define BUF 2048
/* How long to wait for an answer, in TSC ticks (~10 s at 3 GHz). */
#define NET_WAIT_TSC 30000000000UL
/* DHCP transaction id (ours, any value). */
#define XID 0x616d6976

struct ring {
	volatile struct virtq_desc desc[NQ] __attribute__((aligned(16)));
	volatile struct {
		u16 flags, idx, ring[NQ], used_event;
	} avail __attribute__((aligned(2)));
	volatile struct {
		u16 flags, idx;
		struct {
			u32 id, len;
		} ring[NQ];
		u16 avail_event;
	} used __attribute__((aligned(4)));
	u16 last_used;
};

static struct ring rxq __attribute__((aligned(4096))), txq __attribute__((aligned(4096)));
static u8 rxbuf[NQ][BUF] __attribute__((aligned(64)));
static u8 txbuf[BUF] __attribute__((aligned(64)));
static uptr mmio;
static u8 mac[6];

static u32 rd(u32 off) { return mmio_read32(mmio + off); }
static void wr(u32 off, u32 v) { mmio_write32(mmio + off, v); }

static void put_ip(const u8 *p)
{
	for (int i = 0; i < 4; i++) {
		if (i)
			put_char('.');
		put_dec(p[i]);
	}
}

static void put_mac(const u8 *p)
{
	static const char hex[] = "0123456789abcdef";
	for (int i = 0; i < 6; i++) {
		if (i)
			put_char(':');
		put_char(hex[p[i] >> 4]);
		put_char(hex[p[i] & 15]);
	}
}

static int find_device(void)
{
	uptr len;
	u64 index = 0;
	const char *sel = cmdline_value("net_dev", &len);
	if (sel) {
		if (!parse_u64(sel, len, &index))
			return 0;
	} else {
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
	u64 addr;
	if (!at || !colon || !parse_u64(at + 1, (uptr)(colon - at - 1), &addr))
		return 0;
	mmio = addr;
	return 1;
}

static void setup_queue(u32 sel, struct ring *q)
{
	wr(MMIO_QUEUE_SEL, sel);
	wr(MMIO_QUEUE_NUM, NQ);
	wr(MMIO_QUEUE_DESC_LOW, (u32)(uptr)q->desc);
	wr(MMIO_QUEUE_DESC_HIGH, 0);
	wr(MMIO_QUEUE_DRIVER_LOW, (u32)(uptr)&q->avail);
	wr(MMIO_QUEUE_DRIVER_HIGH, 0);
	wr(MMIO_QUEUE_DEVICE_LOW, (u32)(uptr)&q->used);
	wr(MMIO_QUEUE_DEVICE_HIGH, 0);
	q->avail.flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
	wr(MMIO_QUEUE_READY, 1);
}

static void post_rx(u16 i)
{
	rxq.desc[i].addr = (uptr)rxbuf[i];
	rxq.desc[i].len = BUF;
	rxq.desc[i].flags = VIRTQ_DESC_F_WRITE;
	rxq.avail.ring[rxq.avail.idx % NQ] = i;
	barrier();
	rxq.avail.idx = (u16)(rxq.avail.idx + 1);
}

static const char *init_device(void)
{
	if (rd(MMIO_MAGIC) != MMIO_MAGIC_VALUE || rd(MMIO_VERSION) != 2)
		return "not a version 2 virtio-mmio device";
	if (rd(MMIO_DEVICE_ID) != VIRTIO_ID_NET)
		return "not a network card";
	wr(MMIO_STATUS, 0);
	wr(MMIO_STATUS, ST_ACK);
	wr(MMIO_STATUS, ST_ACK | ST_DRIVER);
	wr(MMIO_DEVICE_FEATURES_SEL, 0);
	u64 dev = rd(MMIO_DEVICE_FEATURES);
	wr(MMIO_DEVICE_FEATURES_SEL, 1);
	dev |= (u64)rd(MMIO_DEVICE_FEATURES) << 32;
	u64 want = dev & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC);
	if (want != (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC))
		return "device lacks VERSION_1 or MAC";
	wr(MMIO_DRIVER_FEATURES_SEL, 0);
	wr(MMIO_DRIVER_FEATURES, (u32)want);
	wr(MMIO_DRIVER_FEATURES_SEL, 1);
	wr(MMIO_DRIVER_FEATURES, (u32)(want >> 32));
	wr(MMIO_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK);
	if (!(rd(MMIO_STATUS) & ST_FEATURES_OK))
		return "features refused";
	for (int i = 0; i < 6; i++)
		mac[i] = mmio_read8(mmio + MMIO_CONFIG + i);
	setup_queue(0, &rxq);
	setup_queue(1, &txq);
	for (u16 i = 0; i < NQ; i++)
		post_rx(i);
	wr(MMIO_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
	wr(MMIO_QUEUE_NOTIFY, 0);
	return NULL;
}

/* Send txbuf's frame of `len` bytes (after the zero virtio header) and wait for it to be used. */
static int send(u32 len)
{
	txq.desc[0].addr = (uptr)txbuf;
	txq.desc[0].len = NET_HDR + len;
	txq.desc[0].flags = 0;
	txq.avail.ring[txq.avail.idx % NQ] = 0;
	barrier();
	txq.avail.idx = (u16)(txq.avail.idx + 1);
	wr(MMIO_QUEUE_NOTIFY, 1);
	u64 start = rdtsc();
	while (txq.used.idx == txq.last_used) {
		if (rdtsc() - start > NET_WAIT_TSC)
			return 0;
		cpu_relax();
	}
	txq.last_used = (u16)(txq.last_used + 1);
	return 1;
}

/* The next received frame (after the virtio header), or NULL at the deadline. The previous
 * frame's buffer is given back first. */
static u8 *recv(u32 *len, u64 start)
{
	static int held = -1;
	if (held >= 0) {
		post_rx((u16)held);
		wr(MMIO_QUEUE_NOTIFY, 0);
		held = -1;
	}
	while (rxq.used.idx == rxq.last_used) {
		if (rdtsc() - start > NET_WAIT_TSC)
			return NULL;
		cpu_relax();
	}
	barrier();
	u32 id = rxq.used.ring[rxq.last_used % NQ].id % NQ;
	u32 n = rxq.used.ring[rxq.last_used % NQ].len;
	rxq.last_used = (u16)(rxq.last_used + 1);
	u32 isr = rd(MMIO_INTERRUPT_STATUS);
	if (isr)
		wr(MMIO_INTERRUPT_ACK, isr);
	held = (int)id;
	*len = n > NET_HDR ? n - NET_HDR : 0;
	return rxbuf[id] + NET_HDR;
}

static void put16(u8 *p, u32 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static u32 get16(const u8 *p) { return (u32)p[0] << 8 | p[1]; }

static u32 ip_checksum(const u8 *p, u32 len)
{
	u32 s = 0;
	for (u32 i = 0; i < len; i += 2)
		s += get16(p + i);
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return ~s & 0xffff;
}

static u8 offer_ip[4], router[4];

static int dhcp(void)
{
	u8 *f = txbuf + NET_HDR;
	memset(txbuf, 0, sizeof(txbuf));
	memset(f, 0xff, 6);
	memcpy(f + 6, mac, 6);
	put16(f + 12, 0x0800);
	u8 *ip = f + 14, *udp = ip + 20, *b = udp + 8;
	/* BOOTP (RFC 951): op, htype, hlen, xid, flags (broadcast), chaddr; magic; options. */
	b[0] = 1;
	b[1] = 1;
	b[2] = 6;
	put16(b + 4, XID >> 16);
	put16(b + 6, XID & 0xffff);
	put16(b + 10, 0x8000);
	memcpy(b + 28, mac, 6);
	static const u8 opts[] = {99, 130, 83, 99, 53, 1, 1, 55, 2, 1, 3, 255};
	memcpy(b + 236, opts, sizeof(opts));
	u32 blen = 236 + sizeof(opts);
	put16(udp, 68);
	put16(udp + 2, 67);
	put16(udp + 4, 8 + blen);
	ip[0] = 0x45;
	put16(ip + 2, 20 + 8 + blen);
	ip[8] = 64;
	ip[9] = 17;
	memset(ip + 16, 0xff, 4);
	put16(ip + 10, ip_checksum(ip, 20));
	if (!send(14 + 20 + 8 + blen)) {
		fact_str("net_error", "DHCPDISCOVER not sent");
		return 0;
	}
	u64 start = rdtsc();
	u32 len;
	u8 *r;
	while ((r = recv(&len, start)) != NULL) {
		if (len < 14 + 20 + 8 + 240 || get16(r + 12) != 0x0800 || r[14 + 9] != 17)
			continue;
		u8 *rb = r + 14 + (r[14] & 15) * 4 + 8;
		if (get16(r + 14 + (r[14] & 15) * 4 + 2) != 68 || rb[0] != 2 ||
		    get16(rb + 4) != (XID >> 16) || get16(rb + 6) != (XID & 0xffff))
			continue;
		memcpy(offer_ip, rb + 16, 4);
		int type = 0;
		for (u32 i = 240; i + 1 < len - 14 - 28 && rb[i] != 255;) {
			if (rb[i] == 0) {
				i++;
				continue;
			}
			if (rb[i] == 53)
				type = rb[i + 2];
			if (rb[i] == 3 && rb[i + 1] >= 4)
				memcpy(router, rb + i + 2, 4);
			i += 2 + rb[i + 1];
		}
		fact_str("net_dhcp", type == 2 ? "offer" : "other");
		fact_start();
		put_str("net_ip=");
		put_ip(offer_ip);
		put_str("\n");
		fact_start();
		put_str("net_router=");
		put_ip(router);
		put_str("\n");
		return 1;
	}
	fact_str("net_error", "no DHCP offer");
	return 0;
}

static void arp(void)
{
	u8 *f = txbuf + NET_HDR;
	memset(txbuf, 0, sizeof(txbuf));
	memset(f, 0xff, 6);
	memcpy(f + 6, mac, 6);
	put16(f + 12, 0x0806);
	u8 *a = f + 14;
	put16(a, 1);
	put16(a + 2, 0x0800);
	a[4] = 6;
	a[5] = 4;
	put16(a + 6, 1);
	memcpy(a + 8, mac, 6);
	memcpy(a + 14, offer_ip, 4);
	memcpy(a + 24, router, 4);
	if (!send(14 + 28)) {
		fact_str("net_error", "ARP request not sent");
		return;
	}
	u64 start = rdtsc();
	u32 len;
	u8 *r;
	while ((r = recv(&len, start)) != NULL) {
		if (len < 42 || get16(r + 12) != 0x0806 || get16(r + 20) != 2 ||
		    memcmp(r + 28, router, 4))
			continue;
		fact_start();
		put_str("net_arp=");
		put_mac(r + 22);
		put_str("\n");
		return;
	}
	fact_str("net_error", "no ARP reply from the router");
}

void run_net_commands(void)
{
	uptr len;
	const char *v = cmdline_value("net", &len);
	if (!v)
		return;
	if (!find_device()) {
		fact_str("net_error", "no virtio_mmio.device= on the command line");
		return;
	}
	const char *err = init_device();
	if (err) {
		fact_str("net_error", err);
		return;
	}
	fact_start();
	put_str("net_mac=");
	put_mac(mac);
	put_str("\n");
	if (len == 4 && !memcmp(v, "dhcp", 4) && dhcp())
		arp();
}
