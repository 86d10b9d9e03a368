//! An instance's files in the store (copy-on-write overlays, console log, locks, the detached
//! run's log) are private to the user whatever the umask (issue 8, item 4): they hold what
//! the guest wrote and printed.

mod common;
mod instance_common;

use instance_common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// `cmd` through `sh -c 'umask 000; exec ...'`, within the test's deadline.
fn with_umask_000(cmd: Command) -> common::RunOutput {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("umask 000; exec \"$@\"")
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_remove("AMIVM_ACCOUNT")
        .env_remove("AMIVM_HOME");
    common::run_with_deadline(sh, DEADLINE)
}

/// Every path under `dir` (itself included) whose mode is not 0700 (directories) or 0600.
fn not_private(dir: &std::path::Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let meta = std::fs::metadata(dir).unwrap();
    if meta.permissions().mode() & 0o777 != 0o700 {
        bad.push(format!("{} {:o}", dir.display(), meta.permissions().mode()));
    }
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let want = if m.is_dir() { 0o700 } else { 0o600 };
            if m.permissions().mode() & 0o777 != want {
                bad.push(format!(
                    "{} {:o}",
                    p.display(),
                    m.permissions().mode() & 0o777
                ));
            }
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    bad
}

#[test]
fn instance_files_are_private_whatever_the_umask() {
    let env = Env::new();
    let args = [
        "run",
        env.ami.as_str(),
        "--timeout",
        GUEST_TIMEOUT,
        "--append",
        "exit_code=0",
    ];
    let out = with_umask_000(env.cmd_as(OWNER, &args));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = launched_id(&out);
    // Detached: its log file is created by the launching process.
    let mut detached = args.to_vec();
    detached.push("--detach");
    let out = with_umask_000(env.cmd_as(OWNER, &detached));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id2 = out.stdout.trim().to_string();
    env.wait_state(&id2, "stopped", std::time::Duration::from_secs(60));

    for i in [&id, &id2] {
        let dir = env.instance_dir(i);
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert!(files >= 2, "{}: {files} files", dir.display());
    }
    let bad = not_private(&env.store);
    assert!(bad.is_empty(), "readable by others: {bad:#?}");
}
