//! Process exit codes, shared by `amivm boot` and `amivm run` and documented in `--help` and
//! the README.

/// The guest asked to stop: ACPI power-off, i8042 or ACPI reset, or the exit port with value 0.
pub const GUEST_STOPPED: i32 = 0;
/// `--timeout` expired and the VM was stopped (the same code as coreutils `timeout`).
pub const TIMEOUT: i32 = 124;
/// amivm itself failed: bad argument, unreadable file, KVM error, store error.
pub const AMIVM_FAILED: i32 = 125;
/// The guest crashed: triple fault, KVM internal error / emulation failure, or a kernel panic.
pub const GUEST_CRASHED: i32 = 126;

/// `amivm store verify` found damaged or missing objects (distinct from [`AMIVM_FAILED`]: the
/// check ran, the store is damaged; like fsck's "errors left uncorrected", a small number).
pub const STORE_DAMAGED: i32 = 1;

/// The VM was stopped from the host: Ctrl-A x on the console, SIGINT or SIGTERM (128 + SIGINT,
/// the shell convention for an interrupted command).
pub const HOST_STOPPED: i32 = 130;

/// The exit-code table printed after `--help`.
pub const EXIT_CODE_HELP: &str = "\
Exit codes:
  0    the guest asked to stop (ACPI power-off, i8042 or ACPI reset, or exit port
       0xf4 written with 0), or the console matched --expect (amivm run)
  N    the guest wrote N (1-255) to the exit port, I/O port 0xf4
  124  --timeout expired; the VM was stopped
  125  amivm itself failed (bad argument, unreadable file, KVM or store error)
  126  the guest crashed (triple fault, KVM emulation failure, kernel panic)
  130  the VM was stopped from the host (Ctrl-A x, SIGINT, SIGTERM)";
