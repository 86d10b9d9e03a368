//! How the guest, its devices and the console tell the VMM that the VM should end.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

/// Why the guest crashed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CrashReason {
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    TripleFault { rip: u64 },
    /// KVM_EXIT_INTERNAL_ERROR with suberror 1: the instruction emulator could not execute an
    /// instruction.
    EmulationFailure { rip: u64, bytes: Vec<u8> },
    /// Another KVM internal error.
    InternalError { suberror: u32, rip: u64 },
    /// KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest.
    FailEntry { reason: u64 },
    /// KVM_SYSTEM_EVENT_CRASH.
    SystemCrash,
    /// "Kernel panic - not syncing" on the console.
    KernelPanic { line: String },
}

impl std::fmt::Display for CrashReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CrashReason::TripleFault { rip } => {
                write!(f, "triple fault (KVM_EXIT_SHUTDOWN) at RIP {rip:#x}")
            }
            CrashReason::EmulationFailure { rip, bytes } => {
                let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                write!(
                    f,
                    "KVM emulation failure at RIP {rip:#x}, instruction bytes: {}",
                    if hex.is_empty() {
                        "unreadable".into()
                    } else {
                        hex.join(" ")
                    }
                )
            }
            CrashReason::InternalError { suberror, rip } => {
                write!(
                    f,
                    "KVM internal error (suberror {suberror}) at RIP {rip:#x}"
                )
            }
            CrashReason::FailEntry { reason } => {
                write!(
                    f,
                    "KVM could not enter the guest (hardware entry failure reason {reason:#x})"
                )
            }
            CrashReason::SystemCrash => {
                write!(f, "the guest reported a crash (KVM_SYSTEM_EVENT_CRASH)")
            }
            CrashReason::KernelPanic { line } => write!(f, "kernel panic: {line}"),
        }
    }
}

/// An event that ends the VM (the first one wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest reset the machine (i8042 0xFE, the ACPI reset register, or
    /// KVM_SYSTEM_EVENT_RESET/SHUTDOWN).
    Reset,
    /// The guest powered the machine off (ACPI S5 through the sleep control register).
    PowerOff,
    /// The guest wrote a byte to the exit port.
    ExitPort(u8),
    /// The guest crashed.
    Crash(CrashReason),
    /// The console matched the `--expect` pattern.
    ExpectMatched,
    /// The VMM itself failed while running (a device or KVM error).
    VmmError(String),
    /// The user stopped the VM (Ctrl-A x on the console, or SIGTERM/SIGINT to amivm).
    UserStop,
}

/// A cloneable handle to send [`VmEvent`]s to the VMM's main thread.
#[derive(Clone)]
pub struct EventSink(Arc<Mutex<Sender<VmEvent>>>);

impl EventSink {
    /// Wrap a channel sender.
    pub fn new(tx: Sender<VmEvent>) -> Self {
        EventSink(Arc::new(Mutex::new(tx)))
    }

    /// Send an event; a closed channel (the VM already ended) is ignored.
    pub fn send(&self, ev: VmEvent) {
        let tx = crate::sync::relock(&self.0);
        let _ = tx.send(ev);
    }
}
