//! The BIOS e820 memory map handed to the guest (zero page `e820_table`, or the PVH memmap).
//!
//! Entry types from the ACPI spec (table 15-374, "Address Range Types") as Linux uses them in
//! arch/x86/include/asm/e820/types.h.

use crate::vmm::layout::{EBDA_END, HIMEM_START};

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved, not for the OS to use.
pub const E820_RESERVED: u32 = 2;

/// One memory-map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// Build the memory map for the guest.
///
/// `ram` are the guest RAM ranges (from `memory::ram_ranges`), `low_ram_end` is where the MP
/// table area starts (the end of usable base memory). The result lists: base memory
/// `[0, low_ram_end)`, the MP-table area `[low_ram_end, 0xa0000)` as reserved, then RAM from
/// 1 MiB in each range (the legacy hole 640 KiB - 1 MiB is left out, as on a PC).
pub fn build_e820(ram: &[(u64, u64)], low_ram_end: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: low_ram_end,
            kind: E820_RAM,
        },
        E820Entry {
            addr: low_ram_end,
            size: EBDA_END - low_ram_end,
            kind: E820_RESERVED,
        },
    ];
    for &(start, len) in ram {
        let start_hi = start.max(HIMEM_START);
        let end = start + len;
        if end > start_hi {
            map.push(E820Entry {
                addr: start_hi,
                size: end - start_hi,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Total usable RAM in a map.
pub fn usable_bytes(map: &[E820Entry]) -> u64 {
    map.iter()
        .filter(|e| e.kind == E820_RAM)
        .map(|e| e.size)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::layout::{MMIO_GAP_END, MMIO_GAP_START, MPTABLE_START};
    use crate::vmm::memory::ram_ranges;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_guest_map() {
        let map = build_e820(&ram_ranges(128 * MIB), MPTABLE_START);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x100000,
                    size: 127 * MIB,
                    kind: E820_RAM
                },
            ]
        );
        assert_eq!(usable_bytes(&map), 128 * MIB - 0x60400);
    }

    #[test]
    fn large_guest_map_skips_the_gap() {
        let map = build_e820(&ram_ranges(5120 * MIB), MPTABLE_START);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_GAP_START);
        assert_eq!(
            map[3],
            E820Entry {
                addr: MMIO_GAP_END,
                size: 2048 * MIB,
                kind: E820_RAM
            }
        );
        // No RAM entry overlaps the gap, entries are sorted and disjoint.
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr);
        }
    }

    #[test]
    fn bigger_mp_area_shrinks_base_memory() {
        let map = build_e820(&ram_ranges(64 * MIB), 0x9f000);
        assert_eq!(map[0].size, 0x9f000);
        assert_eq!(
            map[1],
            E820Entry {
                addr: 0x9f000,
                size: 0x1000,
                kind: E820_RESERVED
            }
        );
    }
}
