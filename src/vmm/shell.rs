//! [`VmShell`]: the part of a VM that needs nothing but its size (KVM, the VM, its interrupt
//! controllers and guest memory), made first so that a launch can do it while the kernel and
//! the volumes' manifests are still on their way ([`super::Vmm::from_shell`] finishes it).

use super::layout::{KVM_TSS_ADDRESS, MIN_MEMORY_MIB};
use super::memory::{create_guest_memory, ram_end};
use super::x86_64::{cpuid, mptable};
use super::VmmError;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Open /dev/kvm with a helpful error.
pub fn open_kvm() -> Result<Kvm, VmmError> {
    Kvm::new().map_err(|e| {
        let hint = match e.errno() {
            libc::ENOENT => "/dev/kvm does not exist: enable virtualisation in the firmware and load kvm_intel or kvm_amd (modprobe kvm_intel), or use a host/CI runner with nested virtualisation",
            libc::EACCES | libc::EPERM => "no permission on /dev/kvm: add yourself to the kvm group (sudo usermod -aG kvm $USER, then log in again) or run as root",
            _ => "cannot open /dev/kvm",
        };
        VmmError::KvmOpen { hint, source: e }
    })
}

/// A VM with its memory and interrupt controllers, without kernel, devices or vCPUs yet.
pub struct VmShell {
    pub(super) kvm: Kvm,
    pub(super) vm: VmFd,
    /// What KVM offers in CPUID (the vCPUs get a filtered copy).
    pub(super) supported: Vec<kvm_cpuid_entry2>,
    pub(super) mem: GuestMemoryMmap,
    pub(super) mem_bytes: u64,
    pub(super) vcpus: u32,
    pub(super) mem_mib: u64,
}

impl VmShell {
    /// Check `vcpus` and `mem_mib` against this host's KVM and make the VM and its memory.
    pub fn new(vcpus: u32, mem_mib: u64) -> Result<VmShell, VmmError> {
        let kvm = open_kvm()?;
        let kerr = |step: &'static str| move |source| VmmError::Kvm { step, source };
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
            (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmmError::MissingCap(name));
            }
        }
        let max_vcpus = (kvm.get_max_vcpus() as u32).min(mptable::MAX_CPUS);
        if vcpus == 0 || vcpus > max_vcpus {
            return Err(VmmError::Config(format!(
                "--vcpus {} is out of range: this host allows 1 to {max_vcpus}",
                vcpus
            )));
        }
        if mem_mib < MIN_MEMORY_MIB {
            return Err(VmmError::Config(format!(
                "--memory {} MiB is too small: at least {MIN_MEMORY_MIB} MiB",
                mem_mib
            )));
        }
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kerr("KVM_GET_SUPPORTED_CPUID"))?;
        let supported = supported.as_slice().to_vec();
        let phys_bits = cpuid::phys_addr_bits(&supported)
            .unwrap_or(36)
            .clamp(32, 52);
        let mem_bytes = mem_mib
            .checked_mul(1 << 20)
            .filter(|&b| ram_end(b) <= 1u64 << phys_bits)
            .ok_or_else(|| {
                VmmError::Config(format!(
                    "--memory {} MiB is beyond what the guest can address ({phys_bits}-bit physical addresses)",
                    mem_mib
                ))
            })?;

        let vm = kvm.create_vm().map_err(kerr("KVM_CREATE_VM"))?;
        vm.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kerr("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip().map_err(kerr("KVM_CREATE_IRQCHIP"))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kerr("KVM_CREATE_PIT2"))?;

        let mem = create_guest_memory(mem_bytes)?;
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_bindings::kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the Vmm keeps for
            // as long as the VM exists; its address and length come from the mapping itself.
            unsafe { vm.set_user_memory_region(r) }.map_err(kerr("KVM_SET_USER_MEMORY_REGION"))?;
        }

        Ok(VmShell {
            kvm,
            vm,
            supported,
            mem,
            mem_bytes,
            vcpus,
            mem_mib,
        })
    }
}
