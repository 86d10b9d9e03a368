//! PVH boot: `struct hvm_start_info`, its memory map and module list
//! (xen/include/public/arch-x86/hvm/start_info.h; Linux arch/x86/platform/pvh/).

use super::e820::E820Entry;
use crate::vmm::layout::{PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START, PVH_MODLIST_START};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};

/// `XEN_HVM_START_MAGIC_VALUE` from start_info.h.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// start_info version 1 has the memory map fields.
pub const START_INFO_VERSION: u32 = 1;

/// Errors building PVH structures.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    /// More memory-map entries than fit in the reserved area.
    #[error("memory map has {0} entries; the PVH area holds {PVH_MEMMAP_MAX_ENTRIES}")]
    TooManyEntries(usize),
}

/// The start info, the memory map and the module list to write at their layout addresses.
pub struct PvhInfo {
    pub start_info: hvm_start_info,
    pub memmap: Vec<hvm_memmap_table_entry>,
    pub modules: Vec<hvm_modlist_entry>,
}

/// Build the PVH boot structures.
pub fn build(
    cmdline_addr: u64,
    initrd: Option<(u64, u64)>,
    rsdp_addr: u64,
    e820: &[E820Entry],
) -> Result<PvhInfo, PvhError> {
    if e820.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(PvhError::TooManyEntries(e820.len()));
    }
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: START_INFO_VERSION,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            PVH_MODLIST_START
        },
        cmdline_paddr: cmdline_addr,
        rsdp_paddr: rsdp_addr,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    Ok(PvhInfo {
        start_info,
        memmap,
        modules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::boot::e820::build_e820;
    use crate::vmm::layout::{MPTABLE_START, PVH_INFO_START, ZERO_PAGE_START};
    use crate::vmm::memory::ram_ranges;

    #[test]
    fn start_info_points_at_memmap_and_initrd() {
        let map = build_e820(&ram_ranges(5120 << 20), MPTABLE_START);
        let p = build(0x20000, Some((0x8000_0000, 4096)), 0xe0000, &map).unwrap();
        assert_eq!(p.start_info.magic, 0x336ec578);
        assert_eq!(p.start_info.rsdp_paddr, 0xe0000);
        assert_eq!(p.start_info.memmap_entries as usize, map.len());
        assert_eq!(p.memmap[3].addr, 1 << 32);
        assert_eq!(p.start_info.nr_modules, 1);
        assert_eq!(p.modules[0].paddr, 0x8000_0000);
        // The structures fit in their areas without overlapping the zero page.
        const { assert!(PVH_INFO_START + 56 <= PVH_MEMMAP_START) };
        const { assert!(PVH_MEMMAP_START + 24 * PVH_MEMMAP_MAX_ENTRIES as u64 <= PVH_MODLIST_START) };
        const { assert!(PVH_MODLIST_START + 32 <= ZERO_PAGE_START) };
        let none = build(0x20000, None, 0, &map).unwrap();
        assert_eq!(
            (none.start_info.nr_modules, none.start_info.modlist_paddr),
            (0, 0)
        );
    }
}
