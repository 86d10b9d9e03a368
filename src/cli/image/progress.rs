//! A progress bar (indicatif) for long store operations, drawn only when stderr is a
//! terminal and only once an operation has taken more than a moment.

use crate::store::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::cell::RefCell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How long an operation runs before its bar appears: quick operations print nothing.
const SHOW_AFTER: Duration = Duration::from_millis(400);

/// A [`Progress`] that draws an indicatif bar on stderr.
pub struct Bar {
    enabled: bool,
    state: RefCell<Option<(ProgressBar, Instant, bool)>>,
}

impl Bar {
    /// A bar if stderr is a terminal, else a silent reporter.
    pub fn stderr() -> Self {
        Bar {
            enabled: std::io::stderr().is_terminal(),
            state: RefCell::new(None),
        }
    }
}

impl Progress for Bar {
    fn start(&self, label: &str, total: u64) {
        if !self.enabled {
            return;
        }
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template(
            "{msg} [{bar:24}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        pb.set_style(style);
        pb.set_message(label.to_string());
        *self.state.borrow_mut() = Some((pb, Instant::now(), false));
    }

    fn advance(&self, n: u64) {
        if let Some((pb, started, shown)) = self.state.borrow_mut().as_mut() {
            pb.inc(n);
            if !*shown && started.elapsed() >= SHOW_AFTER {
                pb.set_draw_target(ProgressDrawTarget::stderr());
                *shown = true;
            }
        }
    }

    fn finish(&self) {
        if let Some((pb, _, shown)) = self.state.borrow_mut().take() {
            if shown {
                pb.finish_and_clear();
            }
        }
    }
}
