//! Initial register state of the boot vCPU for each entry protocol, as pure functions over the
//! KVM register structures.

use super::gdt::{boot_gdt, segment, BOOT_CS32, BOOT_CS64, BOOT_DS, BOOT_TSS};
use crate::vmm::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START, ZERO_PAGE_START,
};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

/// CR0.PE: protected mode (SDM vol. 3, 2.5).
const X86_CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type, hard-wired to 1 on modern CPUs.
const X86_CR0_ET: u64 = 1 << 4;
/// CR0.PG: paging.
const X86_CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension, required for long mode.
const X86_CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable (SDM vol. 3, 2.2.1).
const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always 1 (SDM vol. 1, 3.4.3).
const RFLAGS_RESERVED: u64 = 0x2;
/// x87 control word after FNINIT (SDM vol. 1, 8.1.5).
const FPU_CONTROL_WORD: u16 = 0x37f;
/// MXCSR power-on value (SDM vol. 1, 10.2.3).
const MXCSR_DEFAULT: u32 = 0x1f80;
/// Size of the GDT in bytes, minus one, for the GDTR limit.
const GDT_LIMIT: u16 = (6 * 8 - 1) as u16;
/// An empty IDT: limit 0 would fault on any interrupt; the kernel loads its own.
const IDT_LIMIT: u16 = 0;

/// Which protocol the boot vCPU enters through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// Linux 64-bit boot protocol: long mode, paging on, RSI = zero page.
    Linux64 { entry: u64 },
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh { entry: u64, start_info: u64 },
}

/// General-purpose registers at entry.
pub fn boot_regs(mode: EntryMode) -> kvm_regs {
    let mut r = kvm_regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 { entry } => {
            r.rip = entry;
            r.rsp = BOOT_STACK_POINTER;
            r.rbp = BOOT_STACK_POINTER;
            r.rsi = ZERO_PAGE_START;
        }
        EntryMode::Pvh { entry, start_info } => {
            r.rip = entry;
            r.rbx = start_info;
        }
    }
    r
}

/// Special registers at entry, starting from what KVM reports (`base`).
pub fn boot_sregs(mode: EntryMode, base: &kvm_sregs) -> kvm_sregs {
    let gdt = boot_gdt();
    let mut s = *base;
    s.gdt.base = BOOT_GDT_START;
    s.gdt.limit = GDT_LIMIT;
    s.idt.base = BOOT_IDT_START;
    s.idt.limit = IDT_LIMIT;
    let data = segment(gdt[(BOOT_DS / 8) as usize], BOOT_DS);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = segment(gdt[(BOOT_TSS / 8) as usize], BOOT_TSS);
    match mode {
        EntryMode::Linux64 { .. } => {
            s.cs = segment(gdt[(BOOT_CS64 / 8) as usize], BOOT_CS64);
            s.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            s.cr3 = PML4_START;
            s.cr4 = X86_CR4_PAE;
            s.efer = EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh { .. } => {
            s.cs = segment(gdt[(BOOT_CS32 / 8) as usize], BOOT_CS32);
            s.cr0 = X86_CR0_PE | X86_CR0_ET;
            s.cr3 = 0;
            s.cr4 = 0;
            s.efer = 0;
        }
    }
    s
}

/// FPU state at entry.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux64_entry_state() {
        let m = EntryMode::Linux64 { entry: 0x100_0000 };
        let r = boot_regs(m);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100_0000, ZERO_PAGE_START, BOOT_STACK_POINTER, 2)
        );
        let s = boot_sregs(m, &kvm_sregs::default());
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.ds.selector, 0x18);
        assert_eq!(s.cs.l, 1);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_START);
    }

    #[test]
    fn pvh_entry_state() {
        let m = EntryMode::Pvh {
            entry: 0x100_0200,
            start_info: 0x6000,
        };
        let r = boot_regs(m);
        assert_eq!((r.rip, r.rbx), (0x100_0200, 0x6000));
        let s = boot_sregs(m, &kvm_sregs::default());
        // PVH: protected mode, paging off, 32-bit flat code segment, no long mode.
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE);
        assert_eq!((s.cs.l, s.cs.db, s.cs.limit), (0, 1, 0xffff_ffff));
        assert_eq!(s.efer, 0);
        assert_eq!((s.tr.type_, s.tr.limit), (0xb, 0x67));
    }
}
