//! Device-model benchmark for virtio-blk (issue 3): drives `MmioBlockDevice` in-process through a
//! real split virtqueue in a `GuestMemoryMmap` (no guest CPU involved) and compares it with plain
//! `pread(2)` of the same file, from page cache, in the same run.
//!
//! - sequential reads of 64 KiB: MB/s
//! - random reads of 4 KiB: IOPS
//!
//! Each figure is the median of several rounds; device and pread rounds alternate so that both
//! see the same machine. Backends: the raw file, and a copy-on-write overlay over it (empty
//! overlay: every read goes through the dirty-bitmap lookup to the base).
//!
//! Environment: `BENCH_FILE_MIB` (default 256), `BENCH_ROUNDS` (default 7), `BENCH_DIR`
//! (default: the system temp directory).

use amivm::vmm::devices::virtio::driver::{
    bring_up, device_features, write_blk_header, DriverQueue,
};
use amivm::vmm::devices::virtio::spec::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use amivm::vmm::devices::virtio::{BlockConfig, MmioBlockDevice};
use amivm::volume::{BlockBackend, CowOverlay, RawFile};
use std::io::Write;
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Requests in flight per batch (what a guest with a deep queue keeps outstanding).
const DEPTH: usize = 32;
const QSIZE: u16 = 256;
const SEQ_BS: usize = 64 * 1024;
const RAND_BS: usize = 4096;
const RAND_OPS: usize = 100_000;
const QUEUE_AT: u64 = 0x1_0000;
const HDRS_AT: u64 = 0x10_0000;
const STATUS_AT: u64 = 0x18_0000;
const DATA_AT: u64 = 0x20_0000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Guest {
    mem: GuestMemoryMmap,
    dev: MmioBlockDevice,
    q: DriverQueue,
    /// Head descriptor of the prepared chain in each slot, per block size.
    heads: Vec<u16>,
    bs: usize,
}

impl Guest {
    fn new(backend: Box<dyn BlockBackend>) -> Guest {
        let mem_len = DATA_AT as usize + DEPTH * SEQ_BS;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_len)]).unwrap();
        let mut dev = MmioBlockDevice::new(mem.clone(), backend, BlockConfig::default()).unwrap();
        let q = DriverQueue::new(&mem, GuestAddress(QUEUE_AT), QSIZE);
        let f = device_features(&mut dev);
        bring_up(&mut dev, &q, f);
        Guest {
            mem,
            dev,
            q,
            heads: Vec::new(),
            bs: 0,
        }
    }

    /// Build one chain per slot (header, `bs` bytes of data, status), as a driver with a fixed
    /// pool of request buffers does; each request then only changes the header's sector.
    fn prepare(&mut self, bs: usize) {
        if self.bs == bs {
            return;
        }
        self.heads.clear();
        for i in 0..DEPTH {
            let hdr = GuestAddress(HDRS_AT + 16 * i as u64);
            write_blk_header(&self.mem, hdr, VIRTIO_BLK_T_IN, 0);
            let data = GuestAddress(DATA_AT + (i * SEQ_BS) as u64);
            let status = GuestAddress(STATUS_AT + i as u64);
            let head =
                self.q
                    .add_chain(&[(hdr, 16, false), (data, bs as u32, true), (status, 1, true)]);
            self.heads.push(head);
        }
        self.bs = bs;
    }

    /// Read `offsets` (bytes) in blocks of `bs`, `DEPTH` requests per notification.
    fn run(&mut self, offsets: &[u64], bs: usize, check: bool) {
        self.prepare(bs);
        for batch in offsets.chunks(DEPTH) {
            for (i, &off) in batch.iter().enumerate() {
                let sector_at = GuestAddress(HDRS_AT + 16 * i as u64 + 8);
                self.mem.write_obj((off / 512).to_le(), sector_at).unwrap();
                if check {
                    self.mem
                        .write_obj(0xffu8, GuestAddress(STATUS_AT + i as u64))
                        .unwrap();
                }
                self.q.publish(self.heads[i]);
            }
            self.dev.process_queue();
            assert_eq!(usize::from(self.q.reap_all()), batch.len());
            if check {
                for i in 0..batch.len() {
                    let st: u8 = self
                        .mem
                        .read_obj(GuestAddress(STATUS_AT + i as u64))
                        .unwrap();
                    assert_eq!(st, VIRTIO_BLK_S_OK);
                }
            }
        }
    }
}

/// The baseline: `pread(2)` of the same offsets into the same guest buffers the device fills
/// (slot i of the request pool), so both sides copy into the very same pages.
fn pread_run(file: &std::fs::File, mem: &GuestMemoryMmap, offsets: &[u64], bs: usize) {
    use std::os::fd::AsRawFd;
    let base = mem.get_host_address(GuestAddress(DATA_AT)).unwrap();
    for batch in offsets.chunks(DEPTH) {
        for (i, &off) in batch.iter().enumerate() {
            // SAFETY: guest memory maps DEPTH * SEQ_BS bytes from DATA_AT; slot i holds
            // bs <= SEQ_BS bytes; nothing else touches that memory during the call.
            let n = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    base.add(i * SEQ_BS).cast::<libc::c_void>(),
                    bs,
                    off as libc::off_t,
                )
            };
            assert_eq!(n as usize, bs);
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Seconds for `f`.
fn time(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let file_mib = env_usize("BENCH_FILE_MIB", 256);
    let rounds = env_usize("BENCH_ROUNDS", 7).max(1);
    let dir = std::env::var_os("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(&dir).unwrap();
    let path = tmp.path().join("bench.img");
    let size = file_mib * 1024 * 1024;
    {
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk: Vec<u8> = (0..1024 * 1024u32)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        for _ in 0..file_mib {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    let file = std::fs::File::open(&path).unwrap();
    let seq: Vec<u64> = (0..size / SEQ_BS).map(|i| (i * SEQ_BS) as u64).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let blocks = (size / RAND_BS) as u64;
    let rand: Vec<u64> = (0..RAND_OPS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % blocks) * RAND_BS as u64
        })
        .collect();
    // Warm the page cache.
    {
        let mut buf = vec![0u8; SEQ_BS];
        for &off in &seq {
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, off).unwrap();
        }
    }

    println!(
        "virtio-blk device model vs pread: {file_mib} MiB file in page cache, queue depth {DEPTH}, \
         {rounds} rounds, medians"
    );
    println!(
        "{:<10} {:>16} {:>16} {:>7}   {:>14} {:>14} {:>7}",
        "backend",
        "seq64k dev MB/s",
        "seq64k pread",
        "ratio",
        "rand4k dev IOPS",
        "rand4k pread",
        "ratio"
    );
    for backend_name in ["raw", "cow-clean"] {
        let overlay_path = tmp.path().join("bench.cow");
        let _ = std::fs::remove_file(&overlay_path);
        let backend: Box<dyn BlockBackend> = {
            let raw = RawFile::open(&path, true).unwrap();
            if backend_name == "raw" {
                Box::new(raw)
            } else {
                Box::new(CowOverlay::open(Box::new(raw), &overlay_path, "bench").unwrap())
            }
        };
        let mut g = Guest::new(backend);
        // Untimed pass that checks every status byte and the data against the file.
        g.run(&seq[..DEPTH], SEQ_BS, true);
        g.run(&rand[..DEPTH], RAND_BS, true);
        g.run(&seq[DEPTH..2 * DEPTH], SEQ_BS, true);
        let mut want = vec![0u8; SEQ_BS];
        let mut got = vec![0u8; SEQ_BS];
        let last = DEPTH - 1;
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut want, seq[DEPTH + last]).unwrap();
        g.mem
            .read_slice(&mut got, GuestAddress(DATA_AT + (last * SEQ_BS) as u64))
            .unwrap();
        assert!(want == got, "device read the wrong bytes");
        let (mut sd, mut sp, mut rd, mut rp) = (vec![], vec![], vec![], vec![]);
        // BENCH_ONLY=device or BENCH_ONLY=pread runs one side alone (for profiling).
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        let (dev_on, pread_on) = (only != "pread", only != "device");
        for round in 0..rounds {
            // Alternate which side goes first, so neither always follows the other.
            for side in [round % 2, 1 - round % 2] {
                if side == 0 && dev_on {
                    sd.push(size as f64 / time(|| g.run(&seq, SEQ_BS, false)) / 1e6);
                    rd.push(RAND_OPS as f64 / time(|| g.run(&rand, RAND_BS, false)));
                }
                if side == 1 && pread_on {
                    let mem = g.mem.clone();
                    sp.push(size as f64 / time(|| pread_run(&file, &mem, &seq, SEQ_BS)) / 1e6);
                    rp.push(RAND_OPS as f64 / time(|| pread_run(&file, &mem, &rand, RAND_BS)));
                }
            }
        }
        for v in [&mut sd, &mut sp, &mut rd, &mut rp] {
            if v.is_empty() {
                v.push(f64::NAN);
            }
        }
        let (sd, sp, rd, rp) = (median(sd), median(sp), median(rd), median(rp));
        println!(
            "{:<10} {:>16.0} {:>16.0} {:>7.3}   {:>14.0} {:>14.0} {:>7.3}",
            backend_name,
            sd,
            sp,
            sd / sp,
            rd,
            rp,
            rd / rp
        );
    }
}
