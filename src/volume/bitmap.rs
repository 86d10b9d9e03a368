//! The copy-on-write overlay's on-disk metadata: a header and a dirty-block bitmap.
//!
//! Overlay file layout (all integers little endian):
//!
//! | offset                | size                  | content                                  |
//! |-----------------------|-----------------------|------------------------------------------|
//! | 0                     | [`HEADER_LEN`]        | header, written once when the file is made |
//! | [`HEADER_LEN`]        | bitmap length         | one bit per [`BLOCK_SIZE`] block, 1 = the overlay holds it |
//! | data offset           | base size             | the blocks, at `data offset + volume offset` (sparse) |
//!
//! Header: magic [`MAGIC`] (8 bytes), format version `u32`, block size `u32`, base size `u64`,
//! bitmap offset `u64`, bitmap length `u64`, data offset `u64`, identity length `u32`, identity
//! (UTF-8, at most [`MAX_IDENTITY_LEN`] bytes).
//!
//! Bits only ever go from 0 to 1 (a discard of a clean block marks it dirty and punches a hole),
//! so a bitmap page torn by a crash holds a mix of old and new bits that are each true: a new bit
//! is written only after the data it covers was synced.

use std::collections::BTreeSet;

/// Granularity of the overlay: one bitmap bit covers this many bytes (issue 3: 4 KiB).
pub const BLOCK_SIZE: u64 = 4096;
/// The header occupies the first page of the overlay file.
pub const HEADER_LEN: u64 = 4096;
/// File magic, "AMIVMCOW".
pub const MAGIC: [u8; 8] = *b"AMIVMCOW";
/// Version of the layout described in this module.
pub const FORMAT_VERSION: u32 = 1;
/// Longest base identity the header stores.
pub const MAX_IDENTITY_LEN: usize = 1024;
/// Bitmap pages are written back whole: this many bytes each.
pub const BITMAP_PAGE: usize = 4096;

/// Round `v` up to a multiple of `align` (a power of two).
pub(crate) fn align_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align) * align
}

/// The parsed header of an overlay file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub base_size: u64,
    pub identity: String,
    pub bitmap_offset: u64,
    pub bitmap_len: u64,
    pub data_offset: u64,
}

impl Header {
    /// The layout for a base of `base_size` bytes.
    pub fn for_base(base_size: u64, identity: &str) -> Self {
        let blocks = base_size.div_ceil(BLOCK_SIZE);
        let bitmap_len = align_up(blocks.div_ceil(8), BITMAP_PAGE as u64).max(BITMAP_PAGE as u64);
        Header {
            base_size,
            identity: identity.to_string(),
            bitmap_offset: HEADER_LEN,
            bitmap_len,
            data_offset: HEADER_LEN + bitmap_len,
        }
    }

    /// The header page's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN as usize);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        out.extend_from_slice(&self.base_size.to_le_bytes());
        out.extend_from_slice(&self.bitmap_offset.to_le_bytes());
        out.extend_from_slice(&self.bitmap_len.to_le_bytes());
        out.extend_from_slice(&self.data_offset.to_le_bytes());
        let id = self.identity.as_bytes();
        out.extend_from_slice(&(id.len() as u32).to_le_bytes());
        out.extend_from_slice(id);
        out.resize(HEADER_LEN as usize, 0);
        out
    }

    /// Parse a header page; the error says what is wrong.
    pub fn decode(page: &[u8]) -> Result<Self, String> {
        let mut r = Reader { b: page, at: 0 };
        if r.take(8)? != MAGIC {
            return Err("not an amivm overlay (bad magic)".into());
        }
        let version = r.u32()?;
        if version != FORMAT_VERSION {
            return Err(format!("unsupported overlay version {version}"));
        }
        let bs = r.u32()?;
        if u64::from(bs) != BLOCK_SIZE {
            return Err(format!("unsupported block size {bs}"));
        }
        let base_size = r.u64()?;
        let bitmap_offset = r.u64()?;
        let bitmap_len = r.u64()?;
        let data_offset = r.u64()?;
        let id_len = r.u32()? as usize;
        if id_len > MAX_IDENTITY_LEN {
            return Err("identity too long".into());
        }
        let identity = std::str::from_utf8(r.take(id_len)?)
            .map_err(|_| "identity is not UTF-8".to_string())?
            .to_string();
        let h = Header {
            base_size,
            identity,
            bitmap_offset,
            bitmap_len,
            data_offset,
        };
        let expect = Header::for_base(base_size, &h.identity);
        if h != expect {
            return Err("inconsistent header layout".into());
        }
        Ok(h)
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| "truncated header".to_string())?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

/// One bit per block: set when the overlay holds the block. Remembers which pages of its
/// on-disk form changed since they were last written back.
#[derive(Debug, Clone)]
pub struct DirtyBitmap {
    bytes: Vec<u8>,
    blocks: u64,
    changed_pages: BTreeSet<usize>,
}

impl DirtyBitmap {
    /// All clean, for `blocks` blocks, stored in `len` bytes.
    pub fn new(blocks: u64, len: usize) -> Self {
        DirtyBitmap {
            bytes: vec![0; len],
            blocks,
            changed_pages: BTreeSet::new(),
        }
    }

    /// From its on-disk bytes. Bits beyond `blocks` are ignored.
    pub fn from_bytes(bytes: Vec<u8>, blocks: u64) -> Self {
        let mut bm = DirtyBitmap {
            bytes,
            blocks,
            changed_pages: BTreeSet::new(),
        };
        // Clear stray bits past the end so iteration never yields an out-of-range block.
        for b in blocks..(bm.bytes.len() as u64 * 8) {
            bm.bytes[(b / 8) as usize] &= !(1 << (b % 8));
        }
        bm
    }

    /// Number of blocks covered.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Whether `block` is held by the overlay.
    pub fn get(&self, block: u64) -> bool {
        block < self.blocks && self.bytes[(block / 8) as usize] & (1 << (block % 8)) != 0
    }

    /// Mark `block` as held by the overlay.
    pub fn set(&mut self, block: u64) {
        if block >= self.blocks {
            return;
        }
        let i = (block / 8) as usize;
        let bit = 1 << (block % 8);
        if self.bytes[i] & bit == 0 {
            self.bytes[i] |= bit;
            self.changed_pages.insert(i / BITMAP_PAGE);
        }
    }

    /// From `block`, how many blocks (at most `max`) share its state, and that state.
    pub fn run(&self, block: u64, max: u64) -> (bool, u64) {
        let state = self.get(block);
        let uniform = if state { 0xff } else { 0x00 };
        let mut n = 1;
        while n < max {
            let b = block + n;
            // Skip whole bytes of the same state.
            if b.is_multiple_of(8)
                && n + 8 <= max
                && self.bytes.get((b / 8) as usize) == Some(&uniform)
            {
                n += 8;
                continue;
            }
            if self.get(b) != state {
                break;
            }
            n += 1;
        }
        (state, n)
    }

    /// The blocks held by the overlay, in increasing order.
    pub fn iter_dirty(&self) -> impl Iterator<Item = u64> + '_ {
        self.bytes
            .iter()
            .enumerate()
            .filter(|(_, &b)| b != 0)
            .flat_map(|(i, &b)| {
                (0..8u64)
                    .filter(move |bit| b & (1 << bit) != 0)
                    .map(move |bit| i as u64 * 8 + bit)
            })
    }

    /// Number of blocks held by the overlay.
    pub fn count_dirty(&self) -> u64 {
        self.bytes.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    /// Pages changed since the last [`DirtyBitmap::mark_written`]: (byte offset in the bitmap, bytes).
    pub fn changed_pages(&self) -> Vec<(usize, &[u8])> {
        self.changed_pages
            .iter()
            .map(|&p| {
                let start = p * BITMAP_PAGE;
                let end = (start + BITMAP_PAGE).min(self.bytes.len());
                (start, &self.bytes[start..end])
            })
            .collect()
    }

    /// Whether any page changed since it was last written.
    pub fn has_changes(&self) -> bool {
        !self.changed_pages.is_empty()
    }

    /// Forget the changed pages once they are durable.
    pub fn mark_written(&mut self) {
        self.changed_pages.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = Header::for_base(10 * 1024 * 1024 + 512, "snap-0123");
        assert_eq!(h.bitmap_offset, HEADER_LEN);
        assert_eq!(h.bitmap_len % BITMAP_PAGE as u64, 0);
        assert!(h.bitmap_len * 8 > (10 * 1024 * 1024 + 512) / BLOCK_SIZE);
        let page = h.encode();
        assert_eq!(page.len() as u64, HEADER_LEN);
        assert_eq!(Header::decode(&page).unwrap(), h);
        let mut bad = page.clone();
        bad[0] ^= 1;
        assert!(Header::decode(&bad).unwrap_err().contains("magic"));
        let mut bad = page.clone();
        bad[32] ^= 1; // bitmap length
        assert!(Header::decode(&bad).is_err());
        assert!(Header::decode(&page[..20]).is_err());
    }

    #[test]
    fn bitmap_tracks_bits_runs_and_changed_pages() {
        let mut bm = DirtyBitmap::new(100_000, 16384);
        assert!(!bm.get(5));
        bm.set(5);
        bm.set(6);
        bm.set(40_000);
        bm.set(100_000); // out of range: ignored
        assert!(bm.get(5) && bm.get(6) && bm.get(40_000));
        assert!(!bm.get(100_000));
        assert_eq!(bm.run(4, 10), (false, 1));
        assert_eq!(bm.run(5, 10), (true, 2));
        assert_eq!(bm.run(7, 3), (false, 3));
        assert_eq!(bm.run(7, 50_000), (false, 40_000 - 7));
        assert_eq!(bm.run(99_990, 10), (false, 10));
        assert_eq!(bm.iter_dirty().collect::<Vec<_>>(), vec![5, 6, 40_000]);
        assert_eq!(bm.count_dirty(), 3);
        let pages: Vec<usize> = bm.changed_pages().iter().map(|p| p.0).collect();
        assert_eq!(pages, vec![0, 4096]);
        bm.mark_written();
        assert!(!bm.has_changes());
        bm.set(5);
        assert!(!bm.has_changes(), "setting a set bit changes nothing");
    }

    #[test]
    fn stray_bits_past_the_end_are_dropped() {
        let bm = DirtyBitmap::from_bytes(vec![0xff; 4], 10);
        assert_eq!(
            bm.iter_dirty().collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
    }
}
