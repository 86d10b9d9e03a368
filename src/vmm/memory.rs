//! Guest RAM: one region below the 32-bit MMIO gap and, for larger guests, a second one from
//! 4 GiB. Anonymous, private, `MAP_NORESERVE` mappings (vm-memory's default), so a large
//! instance type costs the host only the pages the guest touches.

use super::layout::{MMIO_GAP_END, MMIO_GAP_START};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of guest RAM failed.
    #[error("cannot map {mib} MiB of guest memory: {source}")]
    Map {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The guest-physical RAM ranges `(start, length)` for `mem_bytes` of memory: RAM stops at the
/// MMIO gap and whatever is left continues at 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
        ]
    }
}

/// The highest guest-physical address (exclusive) that RAM of `mem_bytes` reaches.
pub fn ram_end(mem_bytes: u64) -> u64 {
    ram_ranges(mem_bytes)
        .last()
        .map(|&(start, len)| start + len)
        .unwrap_or(0)
}

/// Map guest RAM for `mem_bytes` bytes.
pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mem_bytes)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map {
        mib: mem_bytes >> 20,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_ranges(128 * MIB), vec![(0, 128 * MIB)]);
        assert_eq!(ram_ranges(3072 * MIB), vec![(0, 3072 * MIB)]);
        assert_eq!(ram_end(128 * MIB), 128 * MIB);
    }

    #[test]
    fn large_guest_is_split_around_the_gap() {
        let r = ram_ranges(5120 * MIB);
        assert_eq!(r, vec![(0, 3072 * MIB), (4096 * MIB, 2048 * MIB)]);
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 5120 * MIB);
        assert_eq!(ram_end(5120 * MIB), 6144 * MIB);
    }

    #[test]
    fn mapping_is_lazy_and_has_the_regions() {
        // 8 GiB of guest memory must map instantly without touching host memory.
        let mem = create_guest_memory(8192 * MIB).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert!(mem.address_in_range(GuestAddress(MMIO_GAP_END + 5000 * MIB)));
        assert!(!mem.address_in_range(GuestAddress(MMIO_GAP_START + 4096)));
    }
}
