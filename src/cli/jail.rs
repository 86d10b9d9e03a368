//! `--jail`, `--jail-uid`, `--jail-gid`: shared by `boot`, `run`, `start` and the detached run.

use crate::vmm::jail::{JailConfig, NOBODY};
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct JailArgs {
    /// Run the VM process jailed: new mount, PID and IPC namespaces (and a user namespace when
    /// not root), a private empty root, and, when started as root, the uid and gid below
    /// instead of root. See docs/security.md.
    #[arg(long)]
    pub jail: bool,
    /// With --jail as root: the uid the VM process runs as (default 65534, nobody).
    #[arg(long, value_name = "UID", default_value_t = NOBODY, requires = "jail")]
    pub jail_uid: u32,
    /// With --jail as root: the gid the VM process runs as (default 65534, nogroup).
    #[arg(long, value_name = "GID", default_value_t = NOBODY, requires = "jail")]
    pub jail_gid: u32,
}

impl JailArgs {
    /// The jail, if asked for: `read_only` stays visible in it (an instance's store, which then
    /// needs `CAP_DAC_READ_SEARCH` to stay readable by a dropped uid).
    pub fn config(&self, read_only: Vec<PathBuf>) -> Option<JailConfig> {
        self.jail.then_some(JailConfig {
            uid: self.jail_uid,
            gid: self.jail_gid,
            keep_read_search: !read_only.is_empty(),
            read_only,
            in_user_ns: false,
        })
    }

    /// The same options on a command line (for the detached run).
    pub fn to_args(&self) -> Vec<String> {
        if !self.jail {
            return Vec::new();
        }
        vec![
            "--jail".into(),
            "--jail-uid".into(),
            self.jail_uid.to_string(),
            "--jail-gid".into(),
            self.jail_gid.to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        jail: JailArgs,
    }

    #[test]
    fn ids_default_to_nobody_need_jail_and_round_trip() {
        let t = T::try_parse_from(["t"]).unwrap();
        assert_eq!(t.jail.config(vec![]), None);
        assert!(t.jail.to_args().is_empty());
        assert!(T::try_parse_from(["t", "--jail-uid", "5"]).is_err());
        let t = T::try_parse_from(["t", "--jail"]).unwrap();
        let c = t.jail.config(vec![]).unwrap();
        assert_eq!((c.uid, c.gid, c.keep_read_search), (NOBODY, NOBODY, false));
        let t = T::try_parse_from(["t", "--jail", "--jail-uid", "7", "--jail-gid", "8"]).unwrap();
        let c = t.jail.config(vec!["/s".into()]).unwrap();
        assert_eq!((c.uid, c.gid, c.keep_read_search), (7, 8, true));
        let mut argv = vec!["t".to_string()];
        argv.extend(t.jail.to_args());
        let again = T::try_parse_from(argv).unwrap();
        assert_eq!(again.jail.config(vec![]), t.jail.config(vec![]));
        assert!(T::try_parse_from(["t", "--jail", "--jail-uid", "-1"]).is_err());
    }
}
