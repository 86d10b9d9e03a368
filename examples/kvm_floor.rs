//! The floor for `scripts/bench-boot.sh`: the least a VMM must do to run the test guest — create
//! the VM, irqchip and PIT, one memory region, load the ELF and the boot tables, one vCPU in long
//! mode, run, answer port I/O (COM1 output, the exit port) — with kvm-ioctls directly and none of
//! amivm's devices, threads or checks. amivm's launch-to-exit time is compared against it.
//!
//! Usage: `kvm_floor GUEST.elf [CMDLINE]`; exits with the byte the guest writes to port 0xf4.

use amivm::vmm::boot::{self, BootProtocol};
use amivm::vmm::x86_64::{cpuid, mptable, regs};
use amivm::vmm::{layout, memory};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit};
use std::io::Write;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// Guest memory: 128 MiB, amivm's default.
const MEM_BYTES: u64 = 128 << 20;
/// COM1 data and line-status registers.
const COM1: u16 = 0x3f8;
const COM1_LSR: u16 = 0x3fd;
/// LSR: transmitter empty and holding register empty.
const LSR_IDLE: u8 = 0x60;
/// The exit port.
const EXIT_PORT: u16 = 0xf4;

fn main() {
    let mut args = std::env::args().skip(1);
    let guest = args.next().expect("usage: kvm_floor GUEST.elf [CMDLINE]");
    let cmdline = args.next().unwrap_or_else(|| "console=ttyS0".into());
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .expect("TSS");
    vm.create_irq_chip().expect("irqchip");
    vm.create_pit2(kvm_pit_config::default()).expect("PIT");
    let mem = memory::create_guest_memory(MEM_BYTES).expect("guest memory");
    for (slot, r) in mem.iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: r.start_addr().0,
            memory_size: r.len(),
            userspace_addr: r.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the mapping is owned by `mem`, which lives until the process exits.
        unsafe { vm.set_user_memory_region(region) }.expect("memory region");
    }
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("CPUID");
    let (signature, features) = cpuid::signature_and_features(supported.as_slice());
    let setup = boot::setup(
        &mem,
        &boot::BootInputs {
            kernel: std::path::Path::new(&guest),
            initrd: None,
            cmdline: &cmdline,
            protocol: BootProtocol::Linux,
            vcpus: 1,
            mem_bytes: MEM_BYTES,
            cpu_signature: mptable::CpuSignature {
                signature,
                features,
            },
            dsdt: &[],
        },
    )
    .expect("boot setup");
    let mut vcpu = vm.create_vcpu(0).expect("vCPU");
    let table = cpuid::normalize(supported.as_slice(), 0, 1, cpuid::CpuidOptions::default());
    vcpu.set_cpuid2(&kvm_bindings::CpuId::from_entries(&table).expect("CPUID table"))
        .expect("set CPUID");
    let base = vcpu.get_sregs().expect("sregs");
    vcpu.set_sregs(&regs::boot_sregs(setup.entry, &base))
        .expect("set sregs");
    vcpu.set_regs(&regs::boot_regs(setup.entry))
        .expect("set regs");
    let mut out = std::io::stdout().lock();
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(COM1, data) => {
                let _ = out.write_all(data);
            }
            VcpuExit::IoOut(EXIT_PORT, data) => {
                let _ = out.flush();
                std::process::exit(i32::from(data[0]));
            }
            VcpuExit::IoIn(port, data) => data.fill(if port == COM1_LSR { LSR_IDLE } else { 0xff }),
            VcpuExit::IoOut(..) | VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => {}
            other => {
                eprintln!("kvm_floor: unexpected exit {other:?}");
                std::process::exit(126);
            }
        }
    }
}
