//! A small, read-only qcow2 reader for importing disk images: it walks only the clusters
//! the image allocates, so the cost follows the file, not the virtual size.
//!
//! - [`header`]: parsing and validating the header (pure).
//! - [`table`]: decoding L1/L2 entries and inflating compressed clusters (pure).
//! - [`Qcow2Image`]: the checks that need the file (tables inside it, data clear of the
//!   metadata, no shared L2 tables, no more data clusters than the file holds) and the walk.
//!
//! Format: QEMU's `docs/interop/qcow2.rst`. Reads v2 and v3 images, zero clusters,
//! deflate-compressed clusters and extended L2 entries (subclusters); refuses backing files,
//! encryption, external data files, zstd compression and the corrupt bit with a message that
//! says how to convert the image. Internal snapshots are ignored (only the active L1 table
//! is read). Memory: the active L1 table (at most 32 MiB, QEMU's own limit), a sorted copy of
//! its L2 offsets, and a few cluster-sized buffers (at most 2 MiB each), whatever the input.

pub mod header;
pub mod table;

use header::{inside, parse_header, Header, ENTRY_BYTES, HEADER_READ_LEN};
use std::io;
use table::{entry_at, inflate_cluster, l1_entry, l2_entry, InflateError, Mapping, SUBCLUSTERS};
use thiserror::Error;

pub use header::QCOW2_MAGIC;

/// Why a qcow2 image cannot be read. One line each.
#[derive(Debug, Error)]
pub enum Qcow2Error {
    /// The file is shorter than a qcow2 header.
    #[error("the file ends inside the qcow2 header")]
    Truncated,
    /// A header field is out of range or inconsistent.
    #[error("invalid qcow2 header: {0}")]
    Header(String),
    /// A feature this reader does not implement, and how to convert the image.
    #[error("the qcow2 image uses {what}, which amivm does not read{hint}")]
    Unsupported { what: String, hint: &'static str },
    /// The virtual size is larger than the caller accepts.
    #[error("qcow2 virtual size {size} bytes exceeds the largest volume amivm takes ({} GiB)", max >> 30)]
    TooLarge { size: u64, max: u64 },
    /// The tables or clusters are inconsistent (what `qemu-img check` calls corruption).
    #[error("invalid qcow2 image: {0}")]
    Layout(String),
    /// A compressed cluster does not inflate to exactly one cluster.
    #[error("invalid qcow2 image: the compressed cluster at guest offset {guest:#x} {source}")]
    Inflate {
        guest: u64,
        #[source]
        source: InflateError,
    },
    /// Reading the file failed.
    #[error("read at byte {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },
}

impl Qcow2Error {
    pub(crate) fn header(why: impl Into<String>) -> Self {
        Qcow2Error::Header(why.into())
    }

    pub(crate) fn unsupported(what: impl Into<String>, hint: &'static str) -> Self {
        Qcow2Error::Unsupported {
            what: what.into(),
            hint,
        }
    }

    pub(crate) fn layout(why: impl Into<String>) -> Self {
        Qcow2Error::Layout(why.into())
    }
}

/// Positioned reads of the image file: a `File`, or bytes in memory (tests, fuzzing).
pub trait ReadAt {
    /// Fill `buf` from `offset`; the caller only asks for bytes inside the file.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// An opened, validated qcow2 image.
pub struct Qcow2Image<R: ReadAt + ?Sized> {
    header: Header,
    file_len: u64,
    /// L2 table offset for each L1 index that maps the virtual disk (0: unallocated).
    l1: Vec<u64>,
    /// Metadata as sorted `[start, end)` file ranges: header cluster, L1 and refcount
    /// tables, L2 tables. Data must not overlap them.
    meta: Vec<(u64, u64)>,
    /// The L2 table last read: its L1 index and bytes.
    l2: Option<(usize, Vec<u8>)>,
    /// The compressed cluster last inflated: its guest cluster index and bytes.
    inflated: Option<(u64, Vec<u8>)>,
    /// Compressed input bytes consumed so far, and the last guest cluster counted: streams
    /// of distinct clusters do not overlap, so their sum cannot exceed the file.
    compressed_in: u64,
    counted_up_to: Option<u64>,
    src: Box<R>,
}

impl<R: ReadAt + ?Sized> Qcow2Image<R> {
    /// Open the image in `src`, a file of `file_len` bytes, refusing virtual sizes above
    /// `max_size`. Validates the header, the active L1 table and every L2 table it names,
    /// so that a structurally invalid image is refused before any data is read.
    pub fn open(src: Box<R>, file_len: u64, max_size: u64) -> Result<Self, Qcow2Error> {
        let mut head =
            vec![0u8; HEADER_READ_LEN.min(usize::try_from(file_len).unwrap_or(usize::MAX))];
        read(&*src, &mut head, 0)?;
        let header = parse_header(&head, file_len)?;
        if header.size > max_size {
            return Err(Qcow2Error::TooLarge {
                size: header.size,
                max: max_size,
            });
        }
        let cs = header.cluster_size();
        // Within QEMU's 32 MiB limit, and inside the file: checked by parse_header.
        let needed = usize::try_from(header.l1_needed())
            .map_err(|_| Qcow2Error::header("L1 table too large"))?;
        let mut raw_l1 = vec![0u8; needed * ENTRY_BYTES as usize];
        read(&*src, &mut raw_l1, header.l1_table_offset)?;
        let mut meta: Vec<(u64, u64)> = header
            .metadata()
            .into_iter()
            .filter(|r| r.0 < r.1)
            .collect();
        let mut l1 = Vec::with_capacity(needed);
        for i in 0..needed {
            let off = l1_entry(entry_at(&raw_l1, i), &header)?.unwrap_or(0);
            if off != 0 {
                if !inside(off, cs, file_len) {
                    return Err(Qcow2Error::layout(format!(
                        "L2 table at {off:#x} lies beyond the end of the file"
                    )));
                }
                if let Some(r) = overlap(&meta, off, off + cs) {
                    return Err(Qcow2Error::layout(format!(
                        "L2 table at {off:#x} overlaps metadata at {:#x}",
                        r.0
                    )));
                }
            }
            l1.push(off);
        }
        drop(raw_l1);
        let mut l2s: Vec<u64> = l1.iter().copied().filter(|o| *o != 0).collect();
        l2s.sort_unstable();
        if let Some(w) = l2s.windows(2).find(|w| w[0] == w[1]) {
            return Err(Qcow2Error::layout(format!(
                "two L1 entries share the L2 table at {:#x}",
                w[0]
            )));
        }
        meta.extend(l2s.into_iter().map(|o| (o, o + cs)));
        meta.sort_unstable();
        let mut img = Qcow2Image {
            header,
            file_len,
            l1,
            meta,
            l2: None,
            inflated: None,
            compressed_in: 0,
            counted_up_to: None,
            src,
        };
        img.check_l2_tables()?;
        Ok(img)
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Virtual disk size in bytes.
    pub fn size(&self) -> u64 {
        self.header.size
    }

    /// Decode every L2 entry of the virtual disk once: data clusters must start inside the
    /// file and keep clear of the metadata, and there cannot be more of them than the file
    /// has clusters (else clusters are shared, and the walk would cost more than the file).
    fn check_l2_tables(&mut self) -> Result<(), Qcow2Error> {
        let cs = self.header.cluster_size();
        let max_data = self.file_len.div_ceil(cs);
        let mut data = 0u64;
        for idx in 0..self.l1.len() {
            if self.l1[idx] == 0 {
                continue;
            }
            let first = idx as u64 * self.header.l2_entries();
            for gc in first..(first + self.header.l2_entries()).min(self.header.guest_clusters()) {
                let (host, end) = match self.mapping(gc)? {
                    Mapping::Zero => continue,
                    Mapping::Data { host, .. } => {
                        data += 1;
                        if data > max_data {
                            return Err(Qcow2Error::layout(format!(
                                "more data clusters than the file's {max_data} clusters (clusters are shared)"
                            )));
                        }
                        (host, host.saturating_add(cs))
                    }
                    Mapping::Compressed { host, len } => (host, host.saturating_add(len)),
                };
                if host >= self.file_len {
                    return Err(Qcow2Error::layout(format!(
                        "guest offset {:#x} maps to {host:#x}, beyond the end of the file",
                        gc << self.header.cluster_bits
                    )));
                }
                if let Some(r) = overlap(&self.meta, host, end.min(self.file_len)) {
                    return Err(Qcow2Error::layout(format!(
                        "guest offset {:#x} maps to {host:#x}, into metadata at {:#x}",
                        gc << self.header.cluster_bits,
                        r.0
                    )));
                }
            }
        }
        Ok(())
    }

    /// What guest cluster `gc` reads as.
    fn mapping(&mut self, gc: u64) -> Result<Mapping, Qcow2Error> {
        let per = self.header.l2_entries();
        let idx = usize::try_from(gc / per).map_err(|_| Qcow2Error::layout("offset"))?;
        let l2_off = self.l1.get(idx).copied().unwrap_or(0);
        if l2_off == 0 {
            return Ok(Mapping::Zero);
        }
        if self.l2.as_ref().is_none_or(|(i, _)| *i != idx) {
            let mut t = self.l2.take().map(|(_, t)| t).unwrap_or_default();
            t.resize(self.header.cluster_size() as usize, 0);
            read(&*self.src, &mut t, l2_off)?;
            self.l2 = Some((idx, t));
        }
        let Some((_, t)) = &self.l2 else {
            return Ok(Mapping::Zero);
        };
        let j = (gc % per) as usize;
        if self.header.extended_l2 {
            l2_entry(entry_at(t, 2 * j), entry_at(t, 2 * j + 1), &self.header)
        } else {
            l2_entry(entry_at(t, j), 0, &self.header)
        }
    }

    /// The guest offset of the first cluster at or after the one holding `from` that maps
    /// data (stored or compressed), or `None`. Unallocated L1 entries are skipped whole, so
    /// the cost is the L1 table plus the L2 tables the image has.
    pub fn next_allocated(&mut self, from: u64) -> Result<Option<u64>, Qcow2Error> {
        let per = self.header.l2_entries();
        let total = self.header.guest_clusters();
        let mut gc = from >> self.header.cluster_bits;
        while gc < total {
            let idx = (gc / per) as usize;
            if self.l1.get(idx).copied().unwrap_or(0) == 0 {
                gc = (gc / per + 1) * per;
                continue;
            }
            if self.mapping(gc)? != Mapping::Zero {
                return Ok(Some(gc << self.header.cluster_bits));
            }
            gc += 1;
        }
        Ok(None)
    }

    /// Fill `buf` with the guest bytes at `offset` (inside the virtual disk). Returns
    /// whether any of them came from stored or compressed clusters (else all are zeros).
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<bool, Qcow2Error> {
        let cs = self.header.cluster_size();
        let bits = self.header.cluster_bits;
        let mut any = false;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let gc = pos >> bits;
            let within = pos & (cs - 1);
            let n = ((cs - within) as usize).min(buf.len() - done);
            let dst = &mut buf[done..done + n];
            match self.mapping(gc)? {
                Mapping::Zero => dst.fill(0),
                Mapping::Data { host, subclusters } => {
                    any = true;
                    self.read_data(dst, host, within, subclusters)?;
                }
                Mapping::Compressed { host, len } => {
                    any = true;
                    let cluster = self.inflate(gc, host, len)?;
                    dst.copy_from_slice(&cluster[within as usize..within as usize + n]);
                }
            }
            done += n;
        }
        Ok(any)
    }

    /// Read `dst` from the stored cluster at `host`, from `within` it: subclusters without
    /// data, and bytes past the end of the file (as QEMU's file driver does), read as zeros.
    fn read_data(
        &self,
        dst: &mut [u8],
        host: u64,
        within: u64,
        subclusters: u32,
    ) -> Result<(), Qcow2Error> {
        let cs = self.header.cluster_size();
        let sub = if self.header.extended_l2 {
            cs / SUBCLUSTERS
        } else {
            cs
        };
        let mut done = 0usize;
        while done < dst.len() {
            let at = within + done as u64;
            let k = at / sub;
            let n = ((sub - at % sub) as usize).min(dst.len() - done);
            let piece = &mut dst[done..done + n];
            let from = host + at;
            let stored = if subclusters & (1u32 << k) != 0 {
                self.file_len.saturating_sub(from).min(n as u64) as usize
            } else {
                0
            };
            read(&*self.src, &mut piece[..stored], from)?;
            piece[stored..].fill(0);
            done += n;
        }
        Ok(())
    }

    /// Guest cluster `gc`, compressed at `host` within `len` bytes, inflated (cached).
    fn inflate(&mut self, gc: u64, host: u64, len: u64) -> Result<&[u8], Qcow2Error> {
        if self.inflated.as_ref().is_none_or(|(g, _)| *g != gc) {
            let cs = self.header.cluster_size() as usize;
            // The last sector may run past the end of the file; QEMU reads zeros there.
            let avail = self.file_len.saturating_sub(host).min(len) as usize;
            let mut input = vec![0u8; avail];
            read(&*self.src, &mut input, host)?;
            let mut out = self.inflated.take().map(|(_, b)| b).unwrap_or_default();
            out.resize(cs, 0);
            let used = inflate_cluster(&input, &mut out).map_err(|source| Qcow2Error::Inflate {
                guest: gc << self.header.cluster_bits,
                source,
            })?;
            if self.counted_up_to.is_none_or(|c| gc > c) {
                self.counted_up_to = Some(gc);
                self.compressed_in += used;
                if self.compressed_in > self.file_len {
                    return Err(Qcow2Error::layout(
                        "compressed clusters consume more input than the file holds (they share data)",
                    ));
                }
            }
            self.inflated = Some((gc, out));
        }
        Ok(self.inflated.as_ref().map_or(&[][..], |(_, b)| &b[..]))
    }
}

/// The range of `sorted` that overlaps `[start, end)`, if any. The ranges are disjoint
/// (the header's tables are checked against each other by `parse_header`, each L2 table
/// against those, and L2 tables are distinct whole clusters), so their ends rise with their
/// starts and only the last one starting before `end` can overlap.
fn overlap(sorted: &[(u64, u64)], start: u64, end: u64) -> Option<(u64, u64)> {
    let i = sorted.partition_point(|r| r.0 < end);
    i.checked_sub(1).map(|i| sorted[i]).filter(|r| r.1 > start)
}

/// Read exactly `buf.len()` bytes at `offset`.
fn read<R: ReadAt + ?Sized>(src: &R, buf: &mut [u8], offset: u64) -> Result<(), Qcow2Error> {
    src.read_exact_at(buf, offset)
        .map_err(|source| Qcow2Error::Io { offset, source })
}

#[cfg(test)]
mod tests {
    use super::table::{L2_COMPRESSED, L2_COPIED};
    use super::*;

    const CS: usize = 65536;

    /// A 1 GiB v3 image in memory: header, refcount table at cluster 1, L1 at cluster 3,
    /// one L2 table at cluster 4 for L1 entry 1, data clusters from cluster 5.
    fn image(l2: &[(usize, u64)], data: &[&[u8]]) -> Vec<u8> {
        let mut f = vec![0u8; (5 + data.len()) * CS];
        f[..4].copy_from_slice(&QCOW2_MAGIC);
        f[4..8].copy_from_slice(&3u32.to_be_bytes());
        f[20..24].copy_from_slice(&16u32.to_be_bytes());
        f[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        f[36..40].copy_from_slice(&2u32.to_be_bytes());
        f[40..48].copy_from_slice(&(3 * CS as u64).to_be_bytes());
        f[48..56].copy_from_slice(&(CS as u64).to_be_bytes());
        f[56..60].copy_from_slice(&1u32.to_be_bytes());
        f[96..100].copy_from_slice(&4u32.to_be_bytes());
        f[100..104].copy_from_slice(&112u32.to_be_bytes());
        let l1 = 3 * CS + 8;
        f[l1..l1 + 8].copy_from_slice(&(L2_COPIED | (4 * CS as u64)).to_be_bytes());
        for &(j, e) in l2 {
            f[4 * CS + 8 * j..4 * CS + 8 * j + 8].copy_from_slice(&e.to_be_bytes());
        }
        for (k, d) in data.iter().enumerate() {
            f[(5 + k) * CS..(5 + k) * CS + d.len()].copy_from_slice(d);
        }
        f
    }

    fn open(f: Vec<u8>) -> Result<Qcow2Image<[u8]>, Qcow2Error> {
        let len = f.len() as u64;
        Qcow2Image::open(f.into_boxed_slice(), len, u64::MAX)
    }

    /// Guest offset of entry `j` of the L2 table behind L1 entry 1.
    fn guest(j: u64) -> u64 {
        (1 << 29) + j * CS as u64
    }

    #[test]
    fn walks_only_allocated_clusters() {
        let a = vec![0xaa; CS];
        let b = vec![0xbb; 100];
        let f = image(
            &[
                (3, L2_COPIED | (5 * CS as u64)),
                (7, table::L2_ZERO),
                (9, L2_COPIED | (6 * CS as u64)),
            ],
            &[&a, &b],
        );
        let mut img = open(f).unwrap();
        assert_eq!(img.next_allocated(0).unwrap(), Some(guest(3)));
        assert_eq!(img.next_allocated(guest(3) + 5).unwrap(), Some(guest(3)));
        assert_eq!(img.next_allocated(guest(4)).unwrap(), Some(guest(9)));
        assert_eq!(img.next_allocated(guest(10)).unwrap(), None);
        let mut buf = vec![1u8; 3 * CS];
        assert!(!img.read_at(&mut buf[..CS], 0).unwrap());
        assert!(buf[..CS].iter().all(|x| *x == 0));
        assert!(img.read_at(&mut buf, guest(2)).unwrap());
        assert!(buf[..CS].iter().all(|x| *x == 0));
        assert_eq!(&buf[CS..2 * CS], &a[..]);
        assert!(img.read_at(&mut buf[..CS], guest(9)).unwrap());
        assert_eq!(&buf[..100], &b[..]);
        assert!(buf[100..CS].iter().all(|x| *x == 0));
    }

    #[test]
    fn compressed_clusters_inflate() {
        use flate2::{Compress, Compression, FlushCompress};
        let want: Vec<u8> = (0..CS).map(|i| (i / 7) as u8).collect();
        let mut z = Vec::with_capacity(CS);
        Compress::new(Compression::default(), false)
            .compress_vec(&want, &mut z, FlushCompress::Finish)
            .unwrap();
        let sectors = z.len().div_ceil(512) as u64;
        let e = L2_COMPRESSED | ((sectors - 1) << 54) | (5 * CS as u64);
        let mut img = open(image(&[(0, e)], &[&z])).unwrap();
        let mut buf = vec![0u8; CS];
        assert!(img.read_at(&mut buf, guest(0)).unwrap());
        assert_eq!(buf, want);
    }

    #[test]
    fn structural_faults_are_refused() {
        let d = vec![1u8; 16];
        let cases: [(&[(usize, u64)], &str); 6] = [
            (&[(0, 0x200)], "not cluster-aligned"),
            // Offset 0 without an external data file is unallocated (QEMU agrees), so only
            // a compressed cluster can point into the header cluster.
            (&[(0, L2_COMPRESSED | 0x68)], "into metadata at 0x0"),
            (&[(0, CS as u64)], "into metadata at 0x10000"),
            (&[(0, 3 * CS as u64)], "into metadata at 0x30000"),
            (&[(0, 4 * CS as u64)], "into metadata at 0x40000"),
            (&[(0, 64 * CS as u64)], "beyond the end of the file"),
        ];
        for (l2, why) in cases {
            let e = open(image(l2, &[&d])).err().expect(why).to_string();
            assert!(e.contains(why), "{e}");
        }
        // Many guest clusters sharing one host cluster: the walk would cost far more than
        // the file.
        let shared: Vec<(usize, u64)> = (0..8).map(|j| (j, 5 * CS as u64)).collect();
        let e = open(image(&shared, &[&d])).err().unwrap().to_string();
        assert!(e.contains("shared"), "{e}");
        // Two L1 entries naming one L2 table.
        assert!(open(image(&[(0, L2_COPIED)], &[])).is_ok());
        let mut f = image(&[], &[]);
        f[3 * CS..3 * CS + 8].copy_from_slice(&(4 * CS as u64).to_be_bytes());
        assert!(open(f).err().unwrap().to_string().contains("share"));
    }
}
