//! The console on a terminal: amivm puts it in raw mode while the guest runs, restores it on
//! every exit path, and `Ctrl-A x` stops the VM (exit 130). A real pseudo-terminal comes from
//! util-linux's `script`.

mod common;

use common::build_guest;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run `shell` inside `script` (a new pty as the controlling terminal), feeding `input` to the
/// pty after `delay`; returns when the shell ends (bounded).
fn in_pty(shell: &str, input: &[u8], delay: Duration) {
    let mut child = Command::new("script")
        .args(["-qec", shell, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("script(1) from util-linux");
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::sleep(delay);
    use std::io::Write;
    let _ = stdin.write_all(input);
    let _ = stdin.flush();
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the pty session did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("console-tty-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn terminal_is_raw_while_running_and_restored_after() {
    let guest = build_guest();
    let (before, during, after) = (tmp("before"), tmp("during"), tmp("after"));
    let shell = format!(
        "stty -g > {b}; {amivm} boot --kernel {g} --append exit=hang --timeout 2 </dev/tty >/dev/null 2>&1 & \
         sleep 1; stty -g > {d}; wait; stty -g > {a}",
        amivm = env!("CARGO_BIN_EXE_amivm"),
        g = guest.display(),
        b = before.display(),
        d = during.display(),
        a = after.display(),
    );
    in_pty(&shell, b"", Duration::ZERO);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let (b, d, a) = (read(&before), read(&during), read(&after));
    assert!(
        !b.is_empty() && !d.is_empty() && !a.is_empty(),
        "stty ran: {b:?} {d:?} {a:?}"
    );
    assert_ne!(
        b, d,
        "the terminal should be in raw mode while the guest runs"
    );
    assert_eq!(
        b, a,
        "the terminal settings should be restored after the timeout"
    );
}

#[test]
fn ctrl_a_x_stops_the_vm() {
    let guest = build_guest();
    let rc = tmp("rc");
    let shell = format!(
        "{amivm} boot --kernel {g} --append exit=hang --timeout 30; echo $? > {r}",
        amivm = env!("CARGO_BIN_EXE_amivm"),
        g = guest.display(),
        r = rc.display(),
    );
    let start = Instant::now();
    in_pty(&shell, b"\x01x", Duration::from_secs(1));
    let code = std::fs::read_to_string(&rc).unwrap_or_default();
    assert_eq!(code.trim(), "130", "Ctrl-A x should stop the VM with 130");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "stopped long before the timeout"
    );
}
