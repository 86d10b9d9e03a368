//! The host side of the console: the terminal in raw mode while the guest owns it, and the
//! thread that forwards keystrokes to the UART. `Ctrl-A x` stops the VM (QEMU's escape).

use super::devices::serial::SerialDevice;
use super::events::{EventSink, VmEvent};
use super::sandbox::{self, Role, SandboxConfig};
use std::io::Read;
use std::sync::{Arc, Mutex};

/// Ctrl-A: the escape key.
const ESCAPE: u8 = 0x01;
/// After the escape, 'x' stops the VM.
const ESCAPE_QUIT: u8 = b'x';

/// The terminal's settings before raw mode; restored on drop, on every exit path.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Put stdin in raw mode if it is a terminal.
    pub fn enable() -> Option<RawTerminal> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it and we check the result.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and a valid pointer to a termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        // SAFETY: cfmakeraw only edits the struct we own.
        unsafe { libc::cfmakeraw(&mut t) };
        // Keep output processing so host-side messages still get CR/LF.
        t.c_oflag = saved.c_oflag;
        // SAFETY: valid descriptor and termios.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) } != 0 {
            return None;
        }
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores settings read earlier from the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

/// Forward stdin to the UART until EOF; `Ctrl-A x` asks the VMM to stop.
pub fn spawn_stdin_forwarder(
    serial: Arc<Mutex<SerialDevice>>,
    events: EventSink,
    sandbox: SandboxConfig,
) {
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            if let Err(e) = sandbox::enter_thread(&sandbox, Role::Console) {
                events.send(VmEvent::VmmError(e.to_string()));
                return;
            }
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 64];
            let mut escaped = false;
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut out = Vec::with_capacity(n);
                for &b in &buf[..n] {
                    if escaped {
                        escaped = false;
                        if b == ESCAPE_QUIT {
                            events.send(VmEvent::UserStop);
                            return;
                        }
                        out.push(ESCAPE);
                        if b == ESCAPE {
                            continue;
                        }
                    }
                    if b == ESCAPE {
                        escaped = true;
                    } else {
                        out.push(b);
                    }
                }
                let mut rest: &[u8] = &out;
                while !rest.is_empty() {
                    let took = crate::sync::relock(&serial).input(rest);
                    rest = &rest[took..];
                    if took == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
        });
}
