//! Identity-mapped boot page tables for the 64-bit entry (Intel SDM vol. 3, 4.5 "4-Level
//! Paging"): one PML4 entry, one PDPT with [`PDE_COUNT`] entries, each pointing at a page
//! directory of 512 2-MiB pages. The low 4 GiB are mapped, which covers the kernel, the boot
//! structures, and the local APIC / IOAPIC.

use crate::vmm::layout::{PDE_COUNT, PDE_START, PDPTE_START, PML4_START};

/// Page-table entry bits: present and writable (SDM table 4-14..4-18).
const PRESENT_RW: u64 = 0x3;
/// PDE bit 7 (PS): the entry maps a 2 MiB page.
const PAGE_SIZE_2M_FLAG: u64 = 0x80;
/// 2 MiB.
const PAGE_2M: u64 = 2 << 20;
/// Entries per table.
const ENTRIES: u64 = 512;

/// The (guest-physical address, value) pairs of every non-zero entry of the boot page tables.
pub fn identity_map_entries() -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity((1 + PDE_COUNT + PDE_COUNT * ENTRIES) as usize);
    out.push((PML4_START, PDPTE_START | PRESENT_RW));
    for d in 0..PDE_COUNT {
        let pd = PDE_START + d * 0x1000;
        out.push((PDPTE_START + d * 8, pd | PRESENT_RW));
        for i in 0..ENTRIES {
            let phys = (d * ENTRIES + i) * PAGE_2M;
            out.push((pd + i * 8, phys | PRESENT_RW | PAGE_SIZE_2M_FLAG));
        }
    }
    out
}

/// Translate `va` through the entries, the way the MMU would (for tests and diagnostics).
pub fn walk(entries: &[(u64, u64)], va: u64) -> Option<u64> {
    let read = |addr: u64| entries.iter().find(|e| e.0 == addr).map(|e| e.1);
    let pml4e = read(PML4_START + ((va >> 39) & 0x1ff) * 8)?;
    let pdpte = read((pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8)?;
    let pde = read((pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8)?;
    (pde & PAGE_SIZE_2M_FLAG != 0)
        .then_some((pde & !(PAGE_2M - 1) & 0x000f_ffff_ffff_f000) | (va & (PAGE_2M - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::layout::{LAPIC_ADDR, ZERO_PAGE_START};

    #[test]
    fn identity_maps_low_4g() {
        let e = identity_map_entries();
        for va in [
            0,
            ZERO_PAGE_START,
            0x100_0000,
            0x3fff_ffff,
            0x4000_0000,
            LAPIC_ADDR + 0x300,
            0xffff_ffff,
        ] {
            assert_eq!(walk(&e, va), Some(va), "va {va:#x}");
        }
        assert_eq!(walk(&e, 0x1_0000_0000), None);
    }

    #[test]
    fn tables_do_not_overlap_each_other() {
        let e = identity_map_entries();
        let mut addrs: Vec<u64> = e.iter().map(|x| x.0).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), e.len());
        const { assert!(PDE_START + PDE_COUNT * 0x1000 <= crate::vmm::layout::FREE_TRAMPOLINE_PAGE) };
    }
}
