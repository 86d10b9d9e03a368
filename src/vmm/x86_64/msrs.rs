//! Model-specific registers set on every vCPU at creation (Intel SDM vol. 4 for the indices).

use kvm_bindings::kvm_msr_entry;

/// IA32_SYSENTER_CS.
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_STAR: SYSCALL segment selectors.
const MSR_STAR: u32 = 0xc000_0081;
/// IA32_LSTAR: SYSCALL target in 64-bit mode.
const MSR_LSTAR: u32 = 0xc000_0082;
/// IA32_CSTAR: SYSCALL target in compatibility mode.
const MSR_CSTAR: u32 = 0xc000_0083;
/// IA32_FMASK: SYSCALL flag mask.
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// IA32_KERNEL_GS_BASE.
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_TSC.
const MSR_IA32_TSC: u32 = 0x10;
/// IA32_MISC_ENABLE.
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MISC_ENABLE bit 0: fast-string operations enabled (what firmware sets).
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// IA32_MTRR_DEF_TYPE.
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRR default type: bit 11 enables MTRRs, type 6 is write-back (SDM vol. 3, 11.11.2.1).
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// The MSRs and values for a freshly reset vCPU, as firmware would leave them.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_list_is_unique_and_enables_mtrrs() {
        let m = boot_msr_entries();
        let mut idx: Vec<u32> = m.iter().map(|e| e.index).collect();
        idx.sort();
        idx.dedup();
        assert_eq!(idx.len(), m.len());
        let def = m.iter().find(|e| e.index == MSR_MTRR_DEF_TYPE).unwrap();
        assert_eq!(def.data, 0x806);
    }
}
