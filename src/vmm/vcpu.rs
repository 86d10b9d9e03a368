//! vCPU creation and the per-vCPU exit loop: one thread per vCPU, port I/O and MMIO dispatched
//! to the buses, crashes and stops reported as [`VmEvent`]s.

use super::devices::bus::Bus;
use super::events::{CrashReason, EventSink, VmEvent};
use super::x86_64::{cpuid, msrs, regs};
use kvm_bindings::{kvm_cpuid_entry2, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// LAPIC register offsets of LVT LINT0 and LINT1 (Intel SDM vol. 3, table 10-1).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
/// LVT delivery mode field, bits 8-10 (SDM 10.5.1): ExtINT = 7, NMI = 4.
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;
/// KVM_INTERNAL_ERROR_EMULATION: the instruction emulator failed (linux/kvm.h).
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;
/// KVM_SYSTEM_EVENT_SHUTDOWN / RESET / CRASH (linux/kvm.h).
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;
/// Longest x86 instruction (SDM vol. 2, 2.3.11).
const MAX_INSN_LEN: usize = 15;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
#[error("vCPU {id}: {step}: {source}")]
pub struct VcpuError {
    pub id: u32,
    pub step: &'static str,
    #[source]
    pub source: kvm_ioctls::Error,
}

/// Everything a vCPU thread needs.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Bus,
    pub mmio: Bus,
    pub events: EventSink,
    pub stop: Arc<AtomicBool>,
    pub mem: GuestMemoryMmap,
}

fn set_lint(lapic: &mut kvm_bindings::kvm_lapic_state, reg: usize, mode: u32) {
    let bytes: &mut [u8] = {
        // kvm_lapic_state.regs is [c_char; 1024]; view it as bytes.
        let regs = &mut lapic.regs;
        // SAFETY: c_char and u8 have the same size and alignment; the slice covers exactly the
        // array we borrow mutably.
        unsafe { std::slice::from_raw_parts_mut(regs.as_mut_ptr() as *mut u8, regs.len()) }
    };
    let mut v = u32::from_le_bytes([bytes[reg], bytes[reg + 1], bytes[reg + 2], bytes[reg + 3]]);
    v = (v & !0x700) | (mode << 8);
    bytes[reg..reg + 4].copy_from_slice(&v.to_le_bytes());
}

/// Create and configure vCPU `id` of `n`. The boot vCPU (0) also gets the entry registers.
pub fn create_vcpu(
    vm: &VmFd,
    id: u32,
    n: u32,
    supported: &[kvm_cpuid_entry2],
    opts: cpuid::CpuidOptions,
    entry: regs::EntryMode,
) -> Result<VcpuFd, VcpuError> {
    let err = |step| move |source| VcpuError { id, step, source };
    let vcpu = vm.create_vcpu(id as u64).map_err(err("KVM_CREATE_VCPU"))?;
    let table = cpuid::normalize(supported, id, n, opts);
    if let Some(l1) = table.iter().find(|e| e.function == 1) {
        log::debug!(
            "vCPU {id}: CPUID.1 ecx={:#x} edx={:#x} ({opts:?}, {} leaves)",
            l1.ecx,
            l1.edx,
            table.len()
        );
    }
    let cpuid =
        CpuId::from_entries(&table[..table.len().min(KVM_MAX_CPUID_ENTRIES)]).map_err(|_| {
            VcpuError {
                id,
                step: "building CPUID",
                source: kvm_ioctls::Error::new(libc::E2BIG),
            }
        })?;
    vcpu.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
    let entries = msrs::boot_msr_entries();
    let m = Msrs::from_entries(&entries).map_err(|_| VcpuError {
        id,
        step: "building MSRs",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    let set = vcpu.set_msrs(&m).map_err(err("KVM_SET_MSRS"))?;
    if set != entries.len() {
        log::debug!(
            "vCPU {id}: KVM accepted {set} of {} boot MSRs",
            entries.len()
        );
    }
    vcpu.set_fpu(&regs::boot_fpu())
        .map_err(err("KVM_SET_FPU"))?;
    let mut lapic = vcpu.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
    set_lint(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_lint(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;
    if id == 0 {
        let base = vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?;
        vcpu.set_sregs(&regs::boot_sregs(entry, &base))
            .map_err(err("KVM_SET_SREGS"))?;
        vcpu.set_regs(&regs::boot_regs(entry))
            .map_err(err("KVM_SET_REGS"))?;
    }
    Ok(vcpu)
}

/// RIP and the instruction bytes there, read through the guest's own translation.
fn fault_site(vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> (u64, Vec<u8>) {
    let Ok(r) = vcpu.get_regs() else {
        return (0, vec![]);
    };
    let cs_base = vcpu.get_sregs().map(|s| s.cs.base).unwrap_or(0);
    let linear = cs_base.wrapping_add(r.rip);
    let mut bytes = vec![];
    if let Ok(t) = vcpu.translate_gva(linear) {
        if t.valid != 0 {
            let mut buf = [0u8; MAX_INSN_LEN];
            for (i, b) in buf.iter_mut().enumerate() {
                match mem.read_obj::<u8>(GuestAddress(t.physical_address + i as u64)) {
                    Ok(v) => *b = v,
                    Err(_) => break,
                }
                bytes.push(*b);
            }
        }
    }
    (r.rip, bytes)
}

/// The vCPU thread body: run until the guest ends the VM or `ctx.stop` is set.
pub fn run_vcpu(mut vcpu: VcpuFd, id: u32, ctx: VcpuContext) {
    while !ctx.stop.load(Ordering::Acquire) {
        let end = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !ctx.pio.read(port as u64, data) {
                    data.fill(0xff);
                    log::debug!("vCPU {id}: read of unclaimed port {port:#x}");
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !ctx.pio.write(port as u64, data) {
                    log::debug!("vCPU {id}: write {data:02x?} to unclaimed port {port:#x}");
                }
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !ctx.mmio.read(addr, data) {
                    data.fill(0xff);
                    log::debug!("vCPU {id}: read of unclaimed MMIO {addr:#x}");
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !ctx.mmio.write(addr, data) {
                    log::debug!("vCPU {id}: write to unclaimed MMIO {addr:#x}");
                }
                None
            }
            Ok(VcpuExit::Hlt) => {
                std::thread::yield_now();
                None
            }
            Ok(VcpuExit::Shutdown) => {
                let (rip, _) = fault_site(&vcpu, &ctx.mem);
                Some(VmEvent::Crash(CrashReason::TripleFault { rip }))
            }
            Ok(VcpuExit::InternalError) => {
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                // active member of the kvm_run union.
                let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                let (rip, bytes) = fault_site(&vcpu, &ctx.mem);
                Some(VmEvent::Crash(
                    if suberror == KVM_INTERNAL_ERROR_EMULATION {
                        CrashReason::EmulationFailure { rip, bytes }
                    } else {
                        CrashReason::InternalError { suberror, rip }
                    },
                ))
            }
            Ok(VcpuExit::FailEntry(reason, _cpu)) => {
                Some(VmEvent::Crash(CrashReason::FailEntry { reason }))
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => Some(VmEvent::Reset),
                KVM_SYSTEM_EVENT_CRASH => Some(VmEvent::Crash(CrashReason::SystemCrash)),
                other => {
                    log::debug!("vCPU {id}: ignoring system event {other}");
                    None
                }
            },
            Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => None,
            Ok(other) => {
                log::warn!("vCPU {id}: unexpected exit {other:?}");
                let (rip, _) = fault_site(&vcpu, &ctx.mem);
                Some(VmEvent::Crash(CrashReason::InternalError {
                    suberror: 0,
                    rip,
                }))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(VmEvent::VmmError(format!("vCPU {id}: KVM_RUN failed: {e}"))),
        };
        if let Some(ev) = end {
            ctx.events.send(ev);
            break;
        }
    }
}
