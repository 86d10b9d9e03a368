//! CPUID normalisation: start from what KVM supports (KVM_GET_SUPPORTED_CPUID) and make each
//! vCPU describe the virtual machine truthfully: its own APIC id, the number of logical CPUs,
//! the topology, and the hypervisor bit. References: Intel SDM vol. 2A, "CPUID"; AMD APM
//! vol. 3, appendix E.

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf 1: version and feature information.
const LEAF_FEATURES: u32 = 0x1;
/// Leaf 4: deterministic cache parameters (Intel).
const LEAF_CACHE: u32 = 0x4;
/// Leaf 7: structured extended features.
const LEAF_EXT_FEATURES: u32 = 0x7;
/// Leaf 0xb: extended topology enumeration (Intel).
const LEAF_TOPOLOGY: u32 = 0xb;
/// Leaf 0x1f: V2 extended topology enumeration (Intel).
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
/// Leaf 0x40000000: hypervisor vendor signature (KVM: "KVMKVMKVM\0\0\0").
pub const LEAF_HYPERVISOR: u32 = 0x4000_0000;
/// Leaf 0x80000008: address sizes and (AMD) core count.
const LEAF_ADDR_SIZES: u32 = 0x8000_0008;

/// Leaf 1 ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX bit 13: CMPXCHG16B.
const ECX_CX16: u32 = 1 << 13;
/// Leaf 1 ECX bit 26: XSAVE/XRSTOR.
const ECX_XSAVE: u32 = 1 << 26;
/// Leaf 1 ECX bit 27: OSXSAVE (reflects CR4.OSXSAVE).
const ECX_OSXSAVE: u32 = 1 << 27;
/// Leaf 1 ECX bit 28: AVX (needs XSAVE).
const ECX_AVX: u32 = 1 << 28;
/// Leaf 1 EDX bit 28: HTT, the logical-processor count field is valid.
const EDX_HTT: u32 = 1 << 28;
/// Leaf 7 EBX bit 5: AVX2 (needs XSAVE).
const EBX7_AVX2: u32 = 1 << 5;
/// Leaf 7 EBX bit 16: AVX512F (needs XSAVE).
const EBX7_AVX512F: u32 = 1 << 16;
/// Leaf 7 EBX bit 20: SMAP (the CLAC/STAC instructions).
const EBX7_SMAP: u32 = 1 << 20;
/// Leaf 0xb/0x1f ECX[15:8] level types (SDM: 1 = SMT, 2 = core).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// What to change besides topology.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuidOptions {
    /// Hide the features KVM's instruction emulator cannot execute (XSAVE and what needs it,
    /// CMPXCHG16B, SMAP). Used on hosts without hardware virtualisation, where every guest
    /// instruction goes through the emulator (see the README's "KVM without VT-x" note). PVM
    /// keeps CPUID.1:ECX.XSAVE set whatever the table says, so Linux guests there also need
    /// `noxsave`; CMPXCHG16B and SMAP do disappear.
    pub hide_emulator_gaps: bool,
}

/// Number of bits needed to hold ids 0..n-1 (ceil(log2 n)).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// The CPUID table for vCPU `apic_id` of `nvcpus`, from KVM's supported entries.
pub fn normalize(
    supported: &[kvm_cpuid_entry2],
    apic_id: u32,
    nvcpus: u32,
    opts: CpuidOptions,
) -> Vec<kvm_cpuid_entry2> {
    let mut out: Vec<kvm_cpuid_entry2> = supported.to_vec();
    for e in out.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((nvcpus.min(255)) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if nvcpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
                if opts.hide_emulator_gaps {
                    e.ecx &= !(ECX_XSAVE | ECX_OSXSAVE | ECX_AVX | ECX_CX16);
                }
            }
            LEAF_CACHE => {
                // EAX[31:26]: addressable core ids per package - 1; EAX[25:14]: logical
                // processors sharing this cache - 1 (one thread per core here).
                let cores = (nvcpus.max(1) - 1).min(63);
                e.eax = (e.eax & 0x03ff_ffff) | (cores << 26);
                e.eax &= !(0xfff << 14);
            }
            LEAF_EXT_FEATURES if e.index == 0 && opts.hide_emulator_gaps => {
                e.ebx &= !(EBX7_AVX2 | EBX7_AVX512F | EBX7_SMAP);
            }
            LEAF_ADDR_SIZES => {
                // AMD: ECX[7:0] = number of physical cores - 1.
                e.ecx = (e.ecx & !0xff) | (nvcpus.max(1) - 1).min(255);
            }
            _ => {}
        }
    }
    // Topology leaves: KVM may list only some sub-leaves, so rebuild them whole: SMT level
    // (one thread per core), core level (n cores), then the invalid level that ends the list.
    let max_basic = out.iter().find(|e| e.function == 0).map_or(0, |e| e.eax);
    for leaf in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        let present = out.iter().any(|e| e.function == leaf);
        out.retain(|e| e.function != leaf);
        if max_basic >= leaf && (present || leaf == LEAF_TOPOLOGY) {
            out.extend(topology_leaf(leaf, apic_id, nvcpus));
        }
    }
    if opts.hide_emulator_gaps {
        // Leaf 0xd describes XSAVE state components: without XSAVE it must be empty.
        out.retain(|e| e.function != 0xd);
    }
    out
}

/// The three sub-leaves of an extended topology leaf (0xb or 0x1f) for `nvcpus` cores.
fn topology_leaf(leaf: u32, apic_id: u32, nvcpus: u32) -> [kvm_cpuid_entry2; 3] {
    let sub = |index: u32, eax: u32, ebx: u32, level: u32| kvm_cpuid_entry2 {
        function: leaf,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    [
        sub(0, 0, 1, LEVEL_TYPE_SMT),
        sub(1, bits_for(nvcpus), nvcpus, LEVEL_TYPE_CORE),
        sub(2, 0, 0, 0),
    ]
}

/// The hypervisor signature (12 bytes of EBX, ECX, EDX) in a CPUID table, if any.
pub fn hypervisor_signature(entries: &[kvm_cpuid_entry2]) -> Option<String> {
    let e = entries.iter().find(|e| e.function == LEAF_HYPERVISOR)?;
    let mut b = Vec::with_capacity(12);
    for r in [e.ebx, e.ecx, e.edx] {
        b.extend_from_slice(&r.to_le_bytes());
    }
    Some(
        String::from_utf8_lossy(&b)
            .trim_end_matches('\0')
            .to_string(),
    )
}

/// The guest physical address width (CPUID 0x80000008 EAX[7:0]), if reported.
pub fn phys_addr_bits(entries: &[kvm_cpuid_entry2]) -> Option<u32> {
    entries
        .iter()
        .find(|e| e.function == LEAF_ADDR_SIZES)
        .map(|e| e.eax & 0xff)
}

/// CPUID.1 EAX (signature) and EDX (features), for the MP table's processor entries.
pub fn signature_and_features(entries: &[kvm_cpuid_entry2]) -> (u32, u32) {
    entries
        .iter()
        .find(|e| e.function == LEAF_FEATURES)
        .map(|e| (e.eax, e.edx))
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn sample() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(0, 0, 0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            leaf(
                1,
                0,
                0x000906ea,
                0x00ff_0800,
                ECX_XSAVE | ECX_CX16,
                0x0789_fbff,
            ),
            leaf(4, 0, 0xfc00_4121, 0, 0, 0),
            leaf(7, 0, 0, EBX7_AVX2 | EBX7_SMAP | 1, 0, 0),
            leaf(0xb, 0, 1, 2, 0x100, 9),
            leaf(0x1f, 0, 1, 2, 0x100, 9),
            leaf(0xd, 0, 7, 0, 0, 0),
            leaf(
                LEAF_HYPERVISOR,
                0,
                0x4000_0001,
                0x4b4d_564b,
                0x564b_4d56,
                0x4d,
            ),
            leaf(LEAF_ADDR_SIZES, 0, 0x3027, 0, 0, 0),
        ]
    }

    fn get(t: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *t.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn apic_id_count_and_hypervisor_bit() {
        let t = normalize(&sample(), 3, 4, CpuidOptions::default());
        let l1 = get(&t, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
        // Features kept without the emulator option.
        assert_ne!(l1.ecx & ECX_XSAVE, 0);
        let one = normalize(&sample(), 0, 1, CpuidOptions::default());
        assert_eq!(get(&one, 1, 0).edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaves_describe_n_cores() {
        let t = normalize(&sample(), 2, 4, CpuidOptions::default());
        let smt = get(&t, 0xb, 0);
        let core = get(&t, 0xb, 1);
        let end = get(&t, 0xb, 2);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 2));
        assert_eq!((end.ebx, (end.ecx >> 8) & 0xff), (0, 0));
        // Leaf 0x1f rebuilt the same way, since KVM listed it.
        assert_eq!(get(&t, 0x1f, 1).ebx, 4);
        assert_ne!(get(&t, 0xb, 1).flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0);
        assert_eq!(get(&t, 4, 0).eax >> 26, 3);
        assert_eq!(get(&t, LEAF_ADDR_SIZES, 0).ecx & 0xff, 3);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(5), 3);
    }

    #[test]
    fn emulator_gaps_are_hidden_on_request() {
        let t = normalize(
            &sample(),
            0,
            1,
            CpuidOptions {
                hide_emulator_gaps: true,
            },
        );
        let l1 = get(&t, 1, 0);
        assert_eq!(l1.ecx & (ECX_XSAVE | ECX_CX16), 0);
        assert_eq!(get(&t, 7, 0).ebx, 1);
        assert!(t.iter().all(|e| e.function != 0xd));
    }

    #[test]
    fn reads_signature_and_address_width() {
        assert_eq!(
            hypervisor_signature(&sample()).as_deref(),
            Some("KVMKVMKVM")
        );
        assert_eq!(phys_addr_bits(&sample()), Some(0x27));
        assert_eq!(signature_and_features(&sample()), (0x000906ea, 0x0789_fbff));
    }
}
