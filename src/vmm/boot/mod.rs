//! The boot path: load the kernel (and initrd), write the command line, the memory map, the MP
//! table, the GDT, the page tables and the zero page or PVH start info, and say where the boot
//! vCPU enters.

pub mod check;
pub mod cmdline;
pub mod e820;
pub mod loader;
pub mod pvh;
pub mod zeropage;

use crate::files::{self, Mode};
use crate::vmm::layout::{
    BOOT_GDT_START, CMDLINE_START, MMIO_GAP_START, PVH_INFO_START, PVH_MEMMAP_START,
    PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::vmm::memory::ram_ranges;
use crate::vmm::x86_64::{acpi, gdt, mptable, paging, regs::EntryMode};
use std::path::Path;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Protocol 2.03 introduced `initrd_addr_max`; before it the limit is 0x37ffffff (boot.rst).
const PROTOCOL_INITRD_ADDR_MAX: u16 = 0x0203;
const OLD_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Which entry to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BootProtocol {
    /// The Linux 64-bit boot protocol (zero page in RSI): ELF e_entry, or bzImage entry + 0x200.
    #[default]
    Linux,
    /// PVH (hvm_start_info in EBX), for ELF kernels with a XEN_ELFNOTE_PHYS32_ENTRY note.
    Pvh,
}

/// Errors on the boot path.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    ZeroPage(#[from] zeropage::ZeroPageError),
    #[error(transparent)]
    Pvh(#[from] pvh::PvhError),
    /// An image's drives or command line (see [`check_image`]).
    #[error(transparent)]
    Check(#[from] check::CheckError),
    #[error("cannot write {what} into guest memory: {source}")]
    Write {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// What the boot path needs to know.
#[derive(Debug, Clone)]
pub struct BootInputs<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub protocol: BootProtocol,
    pub vcpus: u32,
    pub mem_bytes: u64,
    pub cpu_signature: mptable::CpuSignature,
    /// The DSDT's definition block (the devices' AML, `platform::Board::dsdt_body`).
    pub dsdt: &'a [u8],
}

/// What the boot path produced.
#[derive(Debug, Clone)]
pub struct BootSetup {
    pub entry: EntryMode,
    pub kernel: loader::LoadedKernel,
    pub e820: Vec<e820::E820Entry>,
    pub initrd: Option<(u64, u64)>,
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    what: &'static str,
    v: T,
    addr: u64,
) -> Result<(), BootError> {
    mem.write_obj(v, GuestAddress(addr))
        .map_err(|source| BootError::Write { what, source })
}

fn write_bytes(
    mem: &GuestMemoryMmap,
    what: &'static str,
    b: &[u8],
    addr: u64,
) -> Result<(), BootError> {
    mem.write_slice(b, GuestAddress(addr))
        .map_err(|source| BootError::Write { what, source })
}

/// Check an image before it is made (`amivm image create`), with the rules `amivm boot`
/// applies: the kernel at `kernel` can boot (see [`check`]), `drives` drives are not too many,
/// and `cmdline`, with the arguments the VMM adds for the drives, fits the kernel's limit.
pub fn check_image(
    kernel: &Path,
    cmdline: &str,
    drives: usize,
) -> Result<check::KernelInfo, BootError> {
    let path = kernel.display().to_string();
    let mut f = files::open(kernel, "kernel", files::REGULAR, Mode::Read)
        .map_err(loader::LoaderError::from)?;
    let len = f
        .metadata()
        .map_err(|source| loader::LoaderError::ReadKernel {
            path: path.clone(),
            source,
        })?
        .len();
    let info = check::check_kernel(&mut f, len)
        .map_err(|source| loader::LoaderError::Check { path, source })?;
    check::check_drive_count(drives)?;
    check::check_cmdline(cmdline, drives, info.cmdline_max)?;
    Ok(info)
}

/// Run the whole boot path into `mem`.
pub fn setup(mem: &GuestMemoryMmap, inp: &BootInputs) -> Result<BootSetup, BootError> {
    let kernel = loader::load_kernel(mem, inp.kernel, inp.mem_bytes)?;
    let path = inp.kernel.display().to_string();

    // Command line, NUL-terminated, within the kernel's limit.
    cmdline::validate(inp.cmdline, kernel.info.cmdline_max)?;
    let mut c = inp.cmdline.as_bytes().to_vec();
    c.push(0);
    write_bytes(mem, "command line", &c, CMDLINE_START)?;

    // Initrd, high below the gap (and below the kernel's stated maximum).
    let ram_low_end = ram_ranges(inp.mem_bytes)[0].1.min(MMIO_GAP_START);
    let initrd = match inp.initrd {
        Some(p) => {
            let max_addr = match &kernel.setup_header {
                Some(h) if h.version >= PROTOCOL_INITRD_ADDR_MAX => ({ h.initrd_addr_max }) as u64,
                Some(_) => OLD_INITRD_ADDR_MAX,
                None => u64::MAX - 1,
            };
            Some(loader::load_initrd(
                mem,
                p,
                kernel.kernel_end,
                ram_low_end.min(max_addr + 1),
            )?)
        }
        None => None,
    };

    // MP table and the memory map that reserves it.
    let mp = mptable::build(inp.vcpus, inp.cpu_signature)?;
    write_bytes(mem, "MP table", &mp.bytes, mp.start)?;
    let map = e820::build_e820(&ram_ranges(inp.mem_bytes), mp.start);
    // ACPI tables: CPUs for kernels that only read the MADT, devices for ACPI kernels.
    let tables = acpi::build(inp.vcpus, inp.dsdt)?;
    write_bytes(mem, "ACPI tables", &tables.bytes, tables.rsdp_addr)?;

    // GDT and identity page tables (used by the 64-bit entry; harmless for PVH).
    for (i, d) in gdt::boot_gdt().iter().enumerate() {
        write(mem, "GDT", *d, BOOT_GDT_START + 8 * i as u64)?;
    }
    for (addr, val) in paging::identity_map_entries() {
        write(mem, "page tables", val, addr)?;
    }

    let entry = match inp.protocol {
        BootProtocol::Linux => {
            let zp = zeropage::build(
                kernel.setup_header,
                zeropage::ZeroPageInputs {
                    cmdline_addr: CMDLINE_START,
                    cmdline_len: inp.cmdline.len() as u32,
                    initrd: initrd.map(|(a, s)| (a, s as u32)),
                    rsdp_addr: tables.rsdp_addr,
                },
                &map,
            )?;
            write(mem, "zero page", zp, ZERO_PAGE_START)?;
            EntryMode::Linux64 {
                entry: kernel.entry64,
            }
        }
        BootProtocol::Pvh => {
            let entry = kernel
                .pvh_entry
                .ok_or_else(|| loader::LoaderError::NoPvhNote { path: path.clone() })?;
            if !kernel.info.loads(entry) {
                return Err(loader::LoaderError::Check {
                    path,
                    source: check::CheckError::EntryOutside { entry },
                }
                .into());
            }
            let info = pvh::build(CMDLINE_START, initrd, tables.rsdp_addr, &map)?;
            write(mem, "PVH start info", info.start_info, PVH_INFO_START)?;
            for (i, e) in info.memmap.iter().enumerate() {
                write(mem, "PVH memory map", *e, PVH_MEMMAP_START + 24 * i as u64)?;
            }
            for (i, m) in info.modules.iter().enumerate() {
                write(
                    mem,
                    "PVH module list",
                    *m,
                    PVH_MODLIST_START + 32 * i as u64,
                )?;
            }
            EntryMode::Pvh {
                entry,
                start_info: PVH_INFO_START,
            }
        }
    };
    Ok(BootSetup {
        entry,
        kernel,
        e820: map,
        initrd,
    })
}
