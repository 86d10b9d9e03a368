//! EC2 instance types: vCPUs and memory, compiled in from `data/ec2-instance-types.tsv`.
//!
//! The table is the x86_64 subset of the Amazon EC2 User Guide's instance-type tables (its
//! source is cited in the file's `#` comment lines). Lookups are exact; an unknown name gets an
//! error naming the closest known types.

use super::InstanceError;

/// The table, tab-separated: `type vcpus memory_mib family`, `#` comments, one header line.
const TABLE: &str = include_str!("../../data/ec2-instance-types.tsv");

/// The type `amivm run` uses without `--instance-type` (EC2's free-tier type).
pub const DEFAULT_TYPE: &str = "t3.micro";

/// How many suggestions an unknown-type error lists.
const SUGGESTIONS: usize = 3;

/// One instance type.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceType {
    /// `t3.micro`.
    pub name: String,
    /// Default vCPU count.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// `t3`.
    pub family: String,
}

/// Every instance type, in the table's order.
pub fn all() -> Vec<InstanceType> {
    parse(TABLE).unwrap_or_else(|e| panic!("data/ec2-instance-types.tsv is malformed: {e}"))
}

/// Parse the table text. Errors name the line.
pub fn parse(text: &str) -> Result<Vec<InstanceType>, String> {
    let mut out = Vec::new();
    let mut header_seen = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !header_seen {
            header_seen = true;
            if line.starts_with("type\t") {
                continue;
            }
        }
        let f: Vec<&str> = line.split('\t').collect();
        let bad = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if f.len() != 4 {
            return Err(bad("expected 4 tab-separated fields"));
        }
        let vcpus = f[1].parse().map_err(|_| bad("bad vcpus"))?;
        let memory_mib = f[2].parse().map_err(|_| bad("bad memory_mib"))?;
        out.push(InstanceType {
            name: f[0].to_string(),
            vcpus,
            memory_mib,
            family: f[3].to_string(),
        });
    }
    Ok(out)
}

/// The instance type called `name` (case-insensitive), or an error naming the closest ones.
pub fn lookup(name: &str) -> Result<InstanceType, InstanceError> {
    let types = all();
    let want = name.trim().to_ascii_lowercase();
    if let Some(t) = types.iter().find(|t| t.name == want) {
        return Ok(t.clone());
    }
    Err(InstanceError::UnknownType {
        name: name.to_string(),
        closest: closest(&types, &want, SUGGESTIONS),
    })
}

/// The `n` type names nearest to `name`: fewest edits, ties broken by a shared family, then
/// table order.
pub fn closest(types: &[InstanceType], name: &str, n: usize) -> Vec<String> {
    let want_family = name.split('.').next().unwrap_or("");
    let mut scored: Vec<(usize, bool, usize, &str)> = types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                edit_distance(&t.name, name),
                t.family != want_family,
                i,
                t.name.as_str(),
            )
        })
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(n)
        .map(|s| s.3.to_string())
        .collect()
}

/// Levenshtein distance over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The host's memory in MiB (`MemTotal` in /proc/meminfo), if readable.
pub fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&text)
}

/// `MemTotal:  24592412 kB` → MiB.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// A warning when the type has more memory than the host (guest memory is mapped lazily, so
/// the instance still runs until the guest touches more than the host can give).
pub fn memory_warning(t: &InstanceType, host_mib: Option<u64>) -> Option<String> {
    let host = host_mib?;
    (t.memory_mib > host).then(|| {
        format!(
            "instance type {} has {} MiB of memory, more than this host's {host} MiB; \
             guest memory is allocated lazily, so it runs until the guest touches more than the host has",
            t.name, t.memory_mib
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_parses_and_has_the_documented_types() {
        let types = all();
        assert!(types.len() > 40);
        for (name, vcpus, mib) in [
            ("t2.nano", 1, 512),
            ("t3.micro", 2, 1024),
            ("c5.xlarge", 4, 8192),
            ("m5.large", 2, 8192),
        ] {
            let t = lookup(name).unwrap();
            assert_eq!((t.vcpus, t.memory_mib), (vcpus, mib), "{name}");
        }
        assert_eq!(lookup("T3.Micro").unwrap().name, "t3.micro");
        assert!(lookup(DEFAULT_TYPE).is_ok());
    }

    #[test]
    fn names_are_unique() {
        let types = all();
        let mut names: Vec<&str> = types.iter().map(|t| t.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), types.len());
    }

    #[test]
    fn unknown_type_names_the_closest() {
        let err = lookup("t3.micor").unwrap_err();
        match &err {
            InstanceError::UnknownType { closest, .. } => {
                assert_eq!(closest[0], "t3.micro");
                assert_eq!(closest.len(), SUGGESTIONS);
            }
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("t3.micor") && msg.contains("t3.micro"),
            "{msg}"
        );
        let types = all();
        assert_eq!(closest(&types, "c5.xlarg", 1), vec!["c5.xlarge"]);
        assert_eq!(closest(&types, "m5.larg", 1), vec!["m5.large"]);
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("t3.micro", "t3.micro"), 0);
    }

    #[test]
    fn parse_rejects_bad_lines() {
        assert!(parse("type\tvcpus\tmemory_mib\tfamily\nx.y\t1\n").is_err());
        assert!(parse("x.y\tone\t512\tx\n").is_err());
        let t = parse("# c\ntype\tvcpus\tmemory_mib\tfamily\na.b\t2\t64\ta\n").unwrap();
        assert_eq!(t[0].memory_mib, 64);
    }

    #[test]
    fn memory_warning_only_when_bigger_than_host() {
        let t = lookup("r5.2xlarge").unwrap();
        assert!(memory_warning(&t, Some(1024))
            .unwrap()
            .contains("65536 MiB"));
        assert!(memory_warning(&t, Some(1 << 20)).is_none());
        assert!(memory_warning(&t, None).is_none());
        assert_eq!(
            parse_mem_total("MemTotal:       24592412 kB\nMemFree: 1 kB\n"),
            Some(24016)
        );
    }
}
