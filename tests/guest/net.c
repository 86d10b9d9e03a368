/*
 * amivm test guest: a polling virtio-mmio (version 2) network driver (virtio 1.2, 5.1) and the
 * net= words: `net=dhcp` sends a DHCPDISCOVER (RFC 2131), prints the offer, then ARPs for the
 * router (RFC 826) and prints its MAC. `net_dev=N` picks the N-th virtio_mmio.device= word
 * (default: the last one, where amivm and QEMU put the card after the disks).
 */
#include "virtio_mmio.h"

/* Device ID of a network card (5). */
#define VIRTIO_ID_NET 1
/* The device has a MAC address in its config space (5.1.3). */
#define VIRTIO_NET_F_MAC (1UL << 5)
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

/* The net_dev=N-th (default: the last) virtio_mmio.device= word's device. */
static int find_device(void)
{
	return virtio_mmio_find("net_dev", 1, &mmio, NULL);
}

static void setup_queue(u32 sel, struct ring *q)
{
	q->avail.flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
	virtio_mmio_queue(mmio, sel, NQ, (uptr)q->desc, (uptr)&q->avail, (uptr)&q->used);
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
	wr(MMIO_STATUS, STATUS_ACKNOWLEDGE);
	wr(MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
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
	wr(MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
	if (!(rd(MMIO_STATUS) & STATUS_FEATURES_OK))
		return "features refused";
	for (int i = 0; i < 6; i++)
		mac[i] = mmio_read8(mmio + MMIO_CONFIG + i);
	setup_queue(0, &rxq);
	setup_queue(1, &txq);
	for (u16 i = 0; i < NQ; i++)
		post_rx(i);
	wr(MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
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

static u8 offer_ip[4], router[4], router_mac[6];

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

static int arp(void)
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
		return 0;
	}
	u64 start = rdtsc();
	u32 len;
	u8 *r;
	while ((r = recv(&len, start)) != NULL) {
		if (len < 42 || get16(r + 12) != 0x0806 || get16(r + 20) != 2 ||
		    memcmp(r + 28, router, 4))
			continue;
		memcpy(router_mac, r + 22, 6);
		fact_start();
		put_str("net_arp=");
		put_mac(r + 22);
		put_str("\n");
		return 1;
	}
	fact_str("net_error", "no ARP reply from the router");
	return 0;
}

/* One TCP connection (RFC 793), as small as it can be: no retransmission, no options. */
static struct {
	u8 mac[6], ip[4];
	u32 lport, rport, seq, ack;
} tcp;

#define TCP_FIN 1
#define TCP_SYN 2
#define TCP_PSH 8
#define TCP_ACK 16

static int tcp_send(u32 flags, const char *data, u32 len)
{
	u8 *f = txbuf + NET_HDR;
	memset(txbuf, 0, NET_HDR + 14 + 40);
	memcpy(f, tcp.mac, 6);
	memcpy(f + 6, mac, 6);
	put16(f + 12, 0x0800);
	u8 *ip = f + 14, *t = ip + 20;
	ip[0] = 0x45;
	put16(ip + 2, 40 + len);
	ip[8] = 64;
	ip[9] = 6;
	memcpy(ip + 12, offer_ip, 4);
	memcpy(ip + 16, tcp.ip, 4);
	put16(ip + 10, ip_checksum(ip, 20));
	put16(t, tcp.lport);
	put16(t + 2, tcp.rport);
	put16(t + 4, tcp.seq >> 16);
	put16(t + 6, tcp.seq & 0xffff);
	put16(t + 8, tcp.ack >> 16);
	put16(t + 10, tcp.ack & 0xffff);
	t[12] = 5 << 4;
	t[13] = (u8)flags;
	put16(t + 14, 8192);
	memcpy(t + 20, data, len);
	/* Checksum over the pseudo-header (addresses, protocol, length) and the segment. */
	u32 sum = get16(ip + 12) + get16(ip + 14) + get16(ip + 16) + get16(ip + 18) + 6 + 20 + len;
	if (len & 1)
		t[20 + len] = 0;
	for (u32 i = 0; i < 20 + len; i += 2)
		sum += get16(t + i);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	put16(t + 16, ~sum & 0xffff);
	tcp.seq += len + ((flags & (TCP_SYN | TCP_FIN)) ? 1 : 0);
	return send(14 + 40 + len);
}

/* Answer an ARP request for our address; returns 1 if `r` was one. */
static int answer_arp(const u8 *r, u32 len)
{
	if (len < 42 || get16(r + 12) != 0x0806 || get16(r + 20) != 1 || memcmp(r + 38, offer_ip, 4))
		return 0;
	u8 *f = txbuf + NET_HDR;
	u8 peer_mac[6], peer_ip[4];
	memcpy(peer_mac, r + 22, 6);
	memcpy(peer_ip, r + 28, 4);
	memset(txbuf, 0, NET_HDR + 42);
	memcpy(f, peer_mac, 6);
	memcpy(f + 6, mac, 6);
	put16(f + 12, 0x0806);
	put16(f + 14, 1);
	put16(f + 16, 0x0800);
	f[18] = 6;
	f[19] = 4;
	put16(f + 20, 2);
	memcpy(f + 22, mac, 6);
	memcpy(f + 28, offer_ip, 4);
	memcpy(f + 32, peer_mac, 6);
	memcpy(f + 38, peer_ip, 4);
	send(42);
	return 1;
}

/* The next TCP segment of our connection (any peer when `any`): its flags, payload in *data. */
static int tcp_recv(u64 start, int any, u8 **data, u32 *dlen, u32 *flags)
{
	u32 len;
	u8 *r;
	while ((r = recv(&len, start)) != NULL) {
		if (answer_arp(r, len))
			continue;
		if (len < 54 || get16(r + 12) != 0x0800 || r[23] != 6 || memcmp(r + 30, offer_ip, 4))
			continue;
		u32 ihl = (r[14] & 15) * 4;
		u8 *t = r + 14 + ihl;
		if (get16(t + 2) != tcp.lport)
			continue;
		if (!any && (get16(t) != tcp.rport || memcmp(r + 26, tcp.ip, 4)))
			continue;
		if (any) {
			memcpy(tcp.mac, r + 6, 6);
			memcpy(tcp.ip, r + 26, 4);
			tcp.rport = get16(t);
		}
		u32 off = (t[12] >> 4) * 4;
		u32 total = get16(r + 16);
		*flags = t[13];
		*data = t + off;
		*dlen = total > ihl + off ? total - ihl - off : 0;
		u32 seq = get16(t + 4) << 16 | get16(t + 6);
		if (*flags & TCP_SYN)
			tcp.ack = seq + 1;
		else
			tcp.ack = seq + *dlen + ((*flags & TCP_FIN) ? 1 : 0);
		return 1;
	}
	return 0;
}

/* The last response: its bytes (up to RESP_MAX), their count, and where the body starts. */
#define RESP_MAX 600
static char resp[RESP_MAX + 1];
static u32 resp_len, resp_body;

/* One HTTP/1.0 exchange over a new connection to ip:port (through the router's MAC): send
 * `req`, read the response into resp until the server's FIN. Returns 1 when complete. */
static int http(const u8 *ip, u64 port, const char *req)
{
	static u32 next_port = 40000;
	memcpy(tcp.mac, router_mac, 6);
	memcpy(tcp.ip, ip, 4);
	tcp.lport = next_port++;
	tcp.rport = (u32)port;
	tcp.seq = 0x1000;
	u8 *d;
	u32 n, fl;
	u64 start = rdtsc();
	resp_len = resp_body = 0;
	if (!tcp_send(TCP_SYN, NULL, 0) || !tcp_recv(start, 0, &d, &n, &fl) ||
	    (fl & (TCP_SYN | TCP_ACK)) != (TCP_SYN | TCP_ACK)) {
		fact_str("net_error", "no SYN-ACK");
		return 0;
	}
	/* The handshake's ACK goes alone: passt completes the handshake on it and ignores any
	 * data it carries (a real stack would retransmit that data; this one never does). */
	tcp_send(TCP_ACK, NULL, 0);
	tcp_send(TCP_ACK | TCP_PSH, req, (u32)strlen(req));
	while (tcp_recv(start, 0, &d, &n, &fl)) {
		for (u32 i = 0; i < n && resp_len < RESP_MAX; i++)
			resp[resp_len++] = (char)d[i];
		if (fl & TCP_FIN) {
			tcp_send(TCP_ACK | TCP_FIN, NULL, 0);
			resp[resp_len] = 0;
			for (u32 i = 0; i + 3 < resp_len; i++)
				if (!memcmp(resp + i, "\r\n\r\n", 4)) {
					resp_body = i + 4;
					break;
				}
			return 1;
		}
		if (n)
			tcp_send(TCP_ACK, NULL, 0);
	}
	fact_str("net_error", "HTTP response incomplete");
	return 0;
}

/* Print the status line of resp as KEY. */
static void fact_status(const char *key)
{
	static char first[80];
	u32 i = 0;
	for (; i < resp_len && i < sizeof(first) - 1 && resp[i] != '\r' && resp[i] != '\n'; i++)
		first[i] = resp[i];
	first[i] = 0;
	fact_str(key, first);
}

/* net=http:PORT: GET / from the router (passt maps it to the host's loopback). */
static void http_get(u64 port)
{
	if (!http(router, port, "GET / HTTP/1.0\r\n\r\n"))
		return;
	fact_status("net_http");
	fact_dec("net_http_bytes", resp_len);
}

/* net=imds: an IMDSv2 token from 169.254.169.254, then instance-id, instance-type,
 * public-keys/0/openssh-key and user-data with it (imds_PATH= the body's first line), and
 * instance-id without it (imds_notoken= the status line). */
static void imds(void)
{
	static const u8 ip[4] = {169, 254, 169, 254};
	static char token[128], req[320];
	if (!http(ip, 80, "PUT /latest/api/token HTTP/1.0\r\n"
			  "X-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n"))
		return;
	fact_status("imds_token_status");
	u32 t = 0;
	while (resp_body && resp_body + t < resp_len && t < sizeof(token) - 1) {
		token[t] = resp[resp_body + t];
		t++;
	}
	token[t] = 0;
	static const char *const paths[][2] = {
		{"meta-data/instance-id", "imds_instance_id"},
		{"meta-data/instance-type", "imds_instance_type"},
		{"meta-data/public-keys/0/openssh-key", "imds_openssh_key"},
		{"user-data", "imds_user_data"},
	};
	for (u32 p = 0; p < sizeof(paths) / sizeof(paths[0]); p++) {
		u32 n = 0;
		const char *parts[] = {"GET /latest/", paths[p][0], " HTTP/1.0\r\n",
				       "X-aws-ec2-metadata-token: ", token, "\r\n\r\n"};
		for (u32 k = 0; k < 6; k++)
			for (const char *c = parts[k]; *c && n < sizeof(req) - 1; c++)
				req[n++] = *c;
		req[n] = 0;
		if (!http(ip, 80, req))
			return;
		static char line[200];
		u32 i = 0;
		if (resp_len >= 12 && !memcmp(resp + 9, "200", 3))
			for (; resp_body + i < resp_len && i < sizeof(line) - 1 &&
			       resp[resp_body + i] != '\n'; i++)
				line[i] = resp[resp_body + i];
		else
			for (; i < 12 && i < resp_len; i++)
				line[i] = resp[i];
		line[i] = 0;
		fact_str(paths[p][1], line);
	}
	if (http(ip, 80, "GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\n"))
		fact_status("imds_notoken");
}

/* net=flood:N: after DHCP, print net_flood_ready, wait ~NET_WAIT_TSC/10 (the host kills passt),
 * send N broadcast frames as fast as the device takes them (net_flood_sent= how many), then
 * read instance-id from the metadata service, answered inside amivm (imds_instance_id=). */
static void flood(u64 count)
{
	fact_dec("net_flood_ready", 1);
	u64 start = rdtsc();
	while (rdtsc() - start < NET_WAIT_TSC / 10)
		cpu_relax();
	u64 sent = 0;
	for (u64 i = 0; i < count; i++) {
		u8 *f = txbuf + NET_HDR;
		memset(txbuf, 0, NET_HDR + 60);
		memset(f, 0xff, 6);
		memcpy(f + 6, mac, 6);
		put16(f + 12, 0x88b5);
		sent += (u64)send(60);
	}
	fact_dec("net_flood_sent", sent);
	static const u8 ip[4] = {169, 254, 169, 254};
	if (http(ip, 80, "GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\n") && resp_body)
		fact_str("imds_instance_id", resp + resp_body);
}

/* net=serve:PORT: accept one connection on PORT, read a line, answer and close. */
static void serve(u64 port)
{
	tcp.lport = (u32)port;
	tcp.seq = 0x2000;
	u8 *d;
	u32 n, fl;
	fact_dec("net_listening", port);
	/* Up to ~60 s (6 waits) for the host to connect. */
	u64 start;
	for (int tries = 0;; tries++) {
		if (tries == 6) {
			fact_str("net_error", "nobody connected");
			return;
		}
		if (tcp_recv(rdtsc(), 1, &d, &n, &fl) && (fl & TCP_SYN))
			break;
	}
	tcp_send(TCP_SYN | TCP_ACK, NULL, 0);
	start = rdtsc();
	while (tcp_recv(start, 0, &d, &n, &fl)) {
		if (n == 0 && !(fl & TCP_FIN))
			continue;
		static const char ans[] = "hello from the amivm test guest\n";
		tcp_send(TCP_ACK | TCP_PSH | TCP_FIN, ans, sizeof(ans) - 1);
		fact_dec("net_served", 1);
		tcp_recv(start, 0, &d, &n, &fl);
		return;
	}
	fact_str("net_error", "the connection ended early");
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
	u64 port = 0;
	int http = len > 5 && !memcmp(v, "http:", 5) && parse_u64(v + 5, len - 5, &port);
	int srv = len > 6 && !memcmp(v, "serve:", 6) && parse_u64(v + 6, len - 6, &port);
	int md = len == 4 && !memcmp(v, "imds", 4);
	int fl = len > 6 && !memcmp(v, "flood:", 6) && parse_u64(v + 6, len - 6, &port);
	if (!dhcp() || !arp())
		return;
	if (http)
		http_get(port);
	else if (srv)
		serve(port);
	else if (md)
		imds();
	else if (fl)
		flood(port);
}
