//! Opening the backend a `--network`/`--publish` pair asks for: shared by `amivm boot` and
//! the instances (`run`/`start`), so both check and start passt the same way.

use super::tap::TapBackend;
use super::{passt, FrameBackend, NetError, NetworkSpec, NoNetwork, Publish};
use std::path::{Path, PathBuf};
use std::process::Child;

/// An opened backend and the passt process behind it, if any (kill it when the VM ends).
pub struct OpenedNetwork {
    pub backend: Box<dyn FrameBackend>,
    pub passt: Option<Child>,
}

/// Whether `name` is an executable file in one of `path`'s directories.
fn on_path(name: &str, path: Option<&std::ffi::OsStr>) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = path else { return false };
    std::env::split_paths(path).any(|d: PathBuf| {
        std::fs::metadata(d.join(name))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Check, without starting anything, what [`open`] would refuse: `--publish` without
/// `--network user`, passt missing, a published host port already taken, a bad tap name
/// (checked by [`NetworkSpec`]'s parser already).
pub fn check(spec: &NetworkSpec, publish: &[Publish]) -> Result<(), NetError> {
    if !publish.is_empty() && *spec != NetworkSpec::User {
        return Err(NetError::Syntax("--publish needs --network user".into()));
    }
    if *spec == NetworkSpec::User {
        if !on_path(passt::PASST, std::env::var_os("PATH").as_deref()) {
            return Err(NetError::PasstMissing);
        }
        passt::check_ports(publish)?;
    }
    Ok(())
}

/// Open the backend of `spec`; passt's own messages go to `passt_log` when given.
pub fn open(
    spec: &NetworkSpec,
    publish: &[Publish],
    passt_log: Option<&Path>,
) -> Result<OpenedNetwork, NetError> {
    if !publish.is_empty() && *spec != NetworkSpec::User {
        return Err(NetError::Syntax("--publish needs --network user".into()));
    }
    Ok(match spec {
        NetworkSpec::None => OpenedNetwork {
            backend: Box::new(NoNetwork),
            passt: None,
        },
        NetworkSpec::Tap(name) => OpenedNetwork {
            backend: Box::new(TapBackend::open(name)?),
            passt: None,
        },
        NetworkSpec::User => {
            let p = passt::start(&passt::PasstOptions {
                publish: publish.to_vec(),
                log: passt_log.map(Path::to_path_buf),
            })?;
            OpenedNetwork {
                backend: Box::new(p.backend),
                passt: Some(p.child),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_a_path() {
        let sh = std::ffi::OsString::from("/nonexistent:/bin:/usr/bin");
        assert!(on_path("sh", Some(&sh)));
        assert!(!on_path("no-such-program-amivm", Some(&sh)));
        assert!(!on_path("sh", None));
    }

    #[test]
    fn publish_needs_user_networking() {
        let p: Publish = "8080:80".parse().unwrap();
        let e = check(&NetworkSpec::None, std::slice::from_ref(&p)).unwrap_err();
        assert_eq!(e.to_string(), "--publish needs --network user");
        assert!(open(&NetworkSpec::None, &[p], None).is_err());
        assert!(check(&NetworkSpec::None, &[]).is_ok());
    }
}
