//! Pure x86_64 helpers, unit-tested without KVM: descriptors, page tables, register state,
//! CPUID normalisation, the MP table and boot MSRs.

pub mod acpi;
pub mod cpuid;
pub mod gdt;
pub mod mptable;
pub mod msrs;
pub mod paging;
pub mod regs;
