/* amivm test guest: COM1 output (polled 16550) and the report lines. */
#include "guest.h"

/* 16550 UART at the standard COM1 base (PC/AT I/O map). */
#define COM1 0x3f8
/* Register offsets (National Semiconductor PC16550D datasheet). */
#define UART_THR 0
#define UART_IER 1
#define UART_LCR 3
#define UART_LSR 5
/* LCR: 8 data bits, no parity, 1 stop bit, DLAB clear. */
#define UART_LCR_8N1 0x03
/* LSR: transmit holding register empty. */
#define UART_LSR_THRE 0x20
/* Polls of LSR before writing anyway (a missing UART must not hang the guest). */
#define UART_POLL_MAX 100000

/* Prefix of every report line. */
static const char FACT_PREFIX[] = "AMIVM-GUEST ";

void serial_init(void)
{
	outb(COM1 + UART_IER, 0);
	outb(COM1 + UART_LCR, UART_LCR_8N1);
}

static void raw_char(char c)
{
	for (u32 i = 0; i < UART_POLL_MAX; i++)
		if (inb(COM1 + UART_LSR) & UART_LSR_THRE)
			break;
	outb(COM1 + UART_THR, (u8)c);
}

void put_char(char c)
{
	if (c == '\n')
		raw_char('\r');
	raw_char(c);
}

void put_str(const char *s)
{
	while (*s)
		put_char(*s++);
}

void put_dec(u64 v)
{
	char buf[21];
	int i = 20;
	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	put_str(buf + i);
}

void put_hex(u64 v)
{
	char buf[19];
	int i = 18;
	buf[i] = 0;
	do {
		buf[--i] = "0123456789abcdef"[v & 0xf];
		v >>= 4;
	} while (v);
	buf[--i] = 'x';
	buf[--i] = '0';
	put_str(buf + i);
}

void fact_start(void) { put_str(FACT_PREFIX); }

static void fact_key(const char *key)
{
	fact_start();
	put_str(key);
	put_char('=');
}

void fact_str(const char *key, const char *v)
{
	fact_key(key);
	put_str(v);
	put_char('\n');
}

void fact_dec(const char *key, u64 v)
{
	fact_key(key);
	put_dec(v);
	put_char('\n');
}

void fact_hex(const char *key, u64 v)
{
	fact_key(key);
	put_hex(v);
	put_char('\n');
}
