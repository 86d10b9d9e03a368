//! Reading the test guest's report (format: tests/guest/README.md) and the checks that hold for
//! every VMM that boots it correctly.

/// Prefix of every report line.
pub const PREFIX: &str = "AMIVM-GUEST ";

/// End of the usable base memory below the EBDA/MP-table area when the MP table fits in its
/// last KiB (MP spec 1.4, 4: "the last kilobyte of system base memory"): 639 KiB.
pub const BASE_RAM_END: u64 = 0x9_fc00;
/// Where RAM resumes above the legacy hole: 1 MiB.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap: both amivm and QEMU microvm stop low RAM at 3 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// RAM beyond the gap continues at 4 GiB.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type "reserved".
pub const E820_RESERVED: u32 = 2;
/// The PVH start_info magic (XEN_HVM_START_MAGIC_VALUE).
pub const PVH_MAGIC: u64 = 0x336e_c578;
/// KVM's CPUID 0x40000000 signature.
pub const KVM_SIGNATURE: &str = "KVMKVMKVM";

const MIB: u64 = 1 << 20;

/// One `mem` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemEntry {
    pub base: u64,
    pub len: u64,
    pub kind: u32,
}

impl MemEntry {
    pub fn end(&self) -> u64 {
        self.base + self.len
    }
}

/// A multi-field line: `AMIVM-GUEST <name> key=value ... word`.
#[derive(Debug, Clone)]
pub struct Record {
    pub fields: Vec<(String, String)>,
    pub words: Vec<String>,
}

impl Record {
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse `123` or `0x7b`.
pub fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The guest's `sum64`: FNV-1a 64 over little-endian 64-bit words, the tail zero-padded.
pub fn sum64(bytes: &[u8]) -> u64 {
    /// FNV-1a 64-bit offset basis and prime (http://www.isthe.com/chongo/tech/comp/fnv/).
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x100_0000_01b3;
    bytes.chunks(8).fold(OFFSET, |h, chunk| {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        (h ^ u64::from_le_bytes(w)).wrapping_mul(PRIME)
    })
}

/// The usable RAM ranges `(base, len)` a VMM with a 3 GiB low-memory limit reports for
/// `mem_mib` MiB: base memory below the MP-table area, RAM from 1 MiB to the gap, the rest at
/// 4 GiB. amivm (src/vmm/layout.rs) and QEMU microvm agree on this shape.
pub fn expected_usable_ram(mem_mib: u64) -> Vec<(u64, u64)> {
    let mem = mem_mib * MIB;
    let low_end = mem.min(MMIO_GAP_START);
    let mut ram = vec![
        (0, BASE_RAM_END),
        (HIGH_RAM_START, low_end - HIGH_RAM_START),
    ];
    if mem > MMIO_GAP_START {
        ram.push((MMIO_GAP_END, mem - MMIO_GAP_START));
    }
    ram
}

/// The guest's report.
#[derive(Debug, Clone)]
pub struct Report {
    /// The whole console output, for failure messages.
    pub raw: String,
    /// Report lines without the prefix and line ending.
    pub lines: Vec<String>,
}

impl Report {
    pub fn parse(output: &str) -> Report {
        let lines = output
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix(PREFIX))
            .map(str::to_owned)
            .collect();
        Report {
            raw: output.to_owned(),
            lines,
        }
    }

    /// Parse a run's stdout; failure messages show its exit code, stdout and stderr.
    pub fn from_run(out: &super::RunOutput) -> Report {
        Report {
            raw: out.describe(),
            ..Report::parse(&out.stdout)
        }
    }

    /// Panic with `msg` and the guest's whole output.
    #[track_caller]
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n--- guest output ---\n{}", self.raw)
    }

    /// The value of the last `key=value` line for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines.iter().rev().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k == key).then_some(v)
        })
    }

    /// The value of `key`, which must be present.
    #[track_caller]
    pub fn str(&self, key: &str) -> &str {
        match self.get(key) {
            Some(v) => v,
            None => self.fail(&format!("the report has no `{key}=` line")),
        }
    }

    /// The numeric value of `key`, which must be present.
    #[track_caller]
    pub fn num(&self, key: &str) -> u64 {
        let v = self.str(key);
        match parse_num(v) {
            Some(n) => n,
            None => self.fail(&format!("`{key}={v}` is not a number")),
        }
    }

    /// Assert `key` has value `want`.
    #[track_caller]
    pub fn expect_str(&self, key: &str, want: &str) {
        let got = self.str(key);
        if got != want {
            self.fail(&format!("`{key}`: expected {want:?}, got {got:?}"));
        }
    }

    /// Assert `key` has numeric value `want`.
    #[track_caller]
    pub fn expect_num(&self, key: &str, want: u64) {
        let got = self.num(key);
        if got != want {
            self.fail(&format!("`{key}`: expected {want}, got {got}"));
        }
    }

    /// Assert something about the report, showing the guest output when it does not hold.
    #[track_caller]
    pub fn check(&self, ok: bool, msg: &str) {
        if !ok {
            self.fail(msg);
        }
    }

    /// All `<name> ...` record lines.
    pub fn records(&self, name: &str) -> Vec<Record> {
        self.lines
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
                let mut rec = Record {
                    fields: Vec::new(),
                    words: Vec::new(),
                };
                for part in rest.split(' ') {
                    match part.split_once('=') {
                        Some((k, v)) => rec.fields.push((k.to_owned(), v.to_owned())),
                        None => rec.words.push(part.to_owned()),
                    }
                }
                Some(rec)
            })
            .collect()
    }

    #[track_caller]
    fn rec_num(&self, rec: &Record, key: &str) -> u64 {
        match rec.field(key).and_then(parse_num) {
            Some(n) => n,
            None => self.fail(&format!("record {rec:?} lacks a numeric `{key}`")),
        }
    }

    /// The memory map, in the order the guest received it.
    #[track_caller]
    pub fn mem(&self) -> Vec<MemEntry> {
        self.records("mem")
            .iter()
            .map(|r| MemEntry {
                base: self.rec_num(r, "base"),
                len: self.rec_num(r, "len"),
                kind: self.rec_num(r, "type") as u32,
            })
            .collect()
    }

    /// `(apic_id, is_bsp)` for each processor of the MP table.
    #[track_caller]
    pub fn mp_cpus(&self) -> Vec<(u64, bool)> {
        self.records("mpcpu")
            .iter()
            .map(|r| (self.rec_num(r, "apic_id"), self.rec_num(r, "bsp") == 1))
            .collect()
    }

    /// `(apic_id, up)` for each AP the BSP tried to start.
    #[track_caller]
    pub fn aps(&self) -> Vec<(u64, bool)> {
        self.records("ap")
            .iter()
            .map(|r| {
                (
                    self.rec_num(r, "apic_id"),
                    r.words.iter().any(|w| w == "up"),
                )
            })
            .collect()
    }

    /// The memory-map entry of `kind` that contains `addr`, if any.
    pub fn mem_containing(&self, addr: u64, kind: u32) -> Option<MemEntry> {
        self.mem()
            .into_iter()
            .find(|m| m.kind == kind && m.base <= addr && addr < m.end())
    }
}

/// What a correct boot of the guest must report, whatever the VMM.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// `linux64` or `pvh`.
    pub boot: &'a str,
    pub vcpus: u32,
    pub mem_mib: u64,
    /// The command line exactly as the guest must see it.
    pub cmdline: &'a str,
}

impl Report {
    /// Check every figure that does not depend on which VMM booted the guest: the entry, the
    /// command line, the usable RAM entries and total, the MP table's processors, CPUID, and
    /// that every AP came up.
    #[track_caller]
    pub fn check_common(&self, want: &Expect) {
        self.expect_str("boot", want.boot);
        self.check(
            self.get("boot_error").is_none(),
            "the guest reported a boot_error",
        );
        if want.boot == "pvh" {
            self.expect_num("start_info_magic", PVH_MAGIC);
            self.expect_num("start_info_version", 1);
        }
        self.expect_str("cmdline", want.cmdline);

        // Memory: exactly the expected usable ranges, nothing else usable, no overlaps.
        let mem = self.mem();
        self.expect_num("mem_entries", mem.len() as u64);
        let usable: Vec<(u64, u64)> = mem
            .iter()
            .filter(|m| m.kind == E820_RAM)
            .map(|m| (m.base, m.len))
            .collect();
        let want_ram = expected_usable_ram(want.mem_mib);
        self.check(
            usable == want_ram,
            &format!("usable RAM entries {usable:x?}, expected {want_ram:x?}"),
        );
        let total: u64 = want_ram.iter().map(|r| r.1).sum();
        self.expect_num("ram_kib", total / 1024);
        let nonempty: Vec<&MemEntry> = mem.iter().filter(|m| m.len > 0).collect();
        for (i, a) in nonempty.iter().enumerate() {
            for b in &nonempty[i + 1..] {
                self.check(
                    a.end() <= b.base || b.end() <= a.base,
                    &format!("memory map entries overlap: {a:x?} and {b:x?}"),
                );
            }
        }

        // CPUs: the MP table lists vCPUs processors with APIC ids 0..N, 0 the BSP; each AP up.
        let cpus = u64::from(want.vcpus);
        self.check(
            self.get("mptable_addr") != Some("none"),
            "no MP floating pointer found",
        );
        self.check(
            self.get("mptable_error").is_none(),
            "the MP table is malformed",
        );
        self.expect_num("mptable_cpus", cpus);
        let ids: Vec<(u64, bool)> = (0..cpus).map(|i| (i, i == 0)).collect();
        self.check(
            self.mp_cpus() == ids,
            &format!("MP table processors (apic_id, bsp) should be {ids:?}"),
        );
        self.expect_num("mptable_ioapics", 1);
        self.expect_num("cpuid_cpus", cpus);
        self.expect_num("cpuid_apic_id", 0);
        self.expect_str("hypervisor", KVM_SIGNATURE);
        self.expect_num("lapic_base", 0xfee0_0000);
        self.expect_num("lapic_id", 0);
        let aps: Vec<(u64, bool)> = (1..cpus).map(|i| (i, true)).collect();
        self.check(
            self.aps() == aps,
            &format!("every AP should come up: expected {aps:?}"),
        );
        self.expect_num("cpus_up", cpus);
    }
}
