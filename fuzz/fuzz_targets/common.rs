//! Shared set-up for the fuzz targets: guest memory with a hole, a real backing file, and a
//! block device over it.

use amivm::vmm::devices::virtio::{BlockConfig, MmioBlockDevice};
use amivm::volume::RawFile;
use std::fs::File;
use std::sync::OnceLock;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest RAM: 64 KiB at 0, a hole, 64 KiB at 128 KiB.
pub const RAM: [(u64, usize); 2] = [(0, 0x1_0000), (0x2_0000, 0x1_0000)];
/// Size of the backing file: 128 sectors.
pub const DISK_LEN: u64 = 64 * 1024;

/// One backing file for the whole run (unlinked; requests may write and discard in it).
fn disk() -> &'static File {
    static DISK: OnceLock<File> = OnceLock::new();
    DISK.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("amivm-fuzz-{}.img", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create fuzz disk");
        let _ = std::fs::remove_file(&path);
        f.set_len(DISK_LEN).expect("size fuzz disk");
        f
    })
}

/// Fresh guest memory, its start filled from `bytes`.
pub fn memory(bytes: &[u8]) -> GuestMemoryMmap {
    let ranges: Vec<(GuestAddress, usize)> =
        RAM.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).expect("guest memory");
    let n = bytes.len().min(RAM[0].1);
    vm_memory::Bytes::write_slice(&mem, &bytes[..n], GuestAddress(0)).expect("fill memory");
    mem
}

/// A block device over the shared disk.
pub fn device(mem: &GuestMemoryMmap, read_only: bool) -> MmioBlockDevice {
    let file = disk().try_clone().expect("dup fuzz disk");
    let raw = RawFile::from_file(file, read_only, "fuzz".into(), "fuzz disk".into())
        .expect("wrap fuzz disk");
    let cfg = BlockConfig {
        read_only,
        serial: "fuzz-serial".into(),
    };
    MmioBlockDevice::new(mem.clone(), Box::new(raw), cfg).expect("device")
}

/// The backing file never changes size, whatever the guest asks.
pub fn check_disk() {
    let len = disk().metadata().expect("stat fuzz disk").len();
    assert_eq!(len, DISK_LEN, "the device changed the disk's size");
}
