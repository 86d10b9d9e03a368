/* amivm test guest: the few libc-style helpers it needs (gcc may also call memcpy/memset). */
#include "guest.h"

void *memcpy(void *dst, const void *src, uptr n)
{
	u8 *d = dst;
	const u8 *s = src;
	while (n--)
		*d++ = *s++;
	return dst;
}

void *memset(void *dst, int c, uptr n)
{
	u8 *d = dst;
	while (n--)
		*d++ = (u8)c;
	return dst;
}

int memcmp(const void *a, const void *b, uptr n)
{
	const u8 *x = a, *y = b;
	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x < *y ? -1 : 1;
	return 0;
}

uptr strlen(const char *s)
{
	uptr n = 0;
	while (s[n])
		n++;
	return n;
}

int str_starts(const char *s, const char *prefix)
{
	while (*prefix)
		if (*s++ != *prefix++)
			return 0;
	return 1;
}

int parse_u64(const char *s, uptr len, u64 *out)
{
	u64 v = 0;
	u32 base = 10;
	uptr i = 0;
	if (len >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		i = 2;
	}
	if (i == len)
		return 0;
	for (; i < len; i++) {
		char c = s[i];
		u32 d;
		if (c >= '0' && c <= '9')
			d = (u32)(c - '0');
		else if (base == 16 && c >= 'a' && c <= 'f')
			d = (u32)(c - 'a' + 10);
		else if (base == 16 && c >= 'A' && c <= 'F')
			d = (u32)(c - 'A' + 10);
		else
			return 0;
		if (v > (~0UL - d) / base)
			return 0;
		v = v * base + d;
	}
	*out = v;
	return 1;
}

/* FNV-1a 64-bit offset basis and prime (http://www.isthe.com/chongo/tech/comp/fnv/). */
#define FNV64_PRIME 0x100000001b3UL

u64 sum64_update(u64 h, const void *p, uptr len)
{
	const u8 *b = p;
	uptr i = 0;
	for (; i + 8 <= len; i += 8) {
		h ^= *(const u64 *)(b + i);
		h *= FNV64_PRIME;
	}
	if (i < len) {
		u64 w = 0;
		for (uptr j = 0; i + j < len; j++)
			w |= (u64)b[i + j] << (8 * j);
		h ^= w;
		h *= FNV64_PRIME;
	}
	return h;
}

u64 sum64(const void *p, uptr len) { return sum64_update(FNV64_OFFSET, p, len); }
