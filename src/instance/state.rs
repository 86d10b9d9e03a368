//! Instance states and the transitions between them, as in EC2's instance lifecycle
//! ("Instance state changes" in the Amazon EC2 User Guide):
//!
//! ```text
//! pending → running → stopping → stopped → pending (start)
//!    │         │                    │
//!    └─────────┴──→ shutting-down ←─┘ → terminated
//! ```
//! A guest that powers off or resets goes straight from `running` to `stopped` (or, with
//! `--shutdown-behavior terminate`, to `shutting-down`); an instance whose amivm process died
//! goes from `pending`/`running`/`stopping` to `stopped`.

use serde::{Deserialize, Serialize};

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Volumes ready, the VM is being built.
    Pending,
    /// The guest runs.
    Running,
    /// `amivm stop` asked the guest to shut down.
    Stopping,
    /// Not running; volumes kept; `amivm start` boots it again.
    Stopped,
    /// Being terminated.
    ShuttingDown,
    /// Gone: volumes marked DeleteOnTermination deleted.
    Terminated,
}

impl InstanceState {
    /// EC2's name for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
        }
    }

    /// Whether an amivm process should be running the instance in this state.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            InstanceState::Pending | InstanceState::Running | InstanceState::Stopping
        )
    }

    /// Whether the instance may go from `self` to `next`.
    pub fn can_become(self, next: InstanceState) -> bool {
        use InstanceState::*;
        matches!(
            (self, next),
            (Pending, Running)
                | (Pending, Stopped)
                | (Pending, ShuttingDown)
                | (Running, Stopping)
                | (Running, Stopped)
                | (Running, ShuttingDown)
                | (Stopping, Stopped)
                | (Stopping, ShuttingDown)
                | (Stopped, Pending)
                | (Stopped, ShuttingDown)
                | (ShuttingDown, Terminated)
        )
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the instance does when the guest itself shuts down (EC2's
/// `InstanceInitiatedShutdownBehavior`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownBehavior {
    /// Go to `stopped`: volumes kept.
    Stop,
    /// Go to `terminated`: volumes marked DeleteOnTermination deleted.
    Terminate,
}

#[cfg(test)]
mod tests {
    use super::InstanceState::*;
    use super::*;

    const ALL: [InstanceState; 6] = [
        Pending,
        Running,
        Stopping,
        Stopped,
        ShuttingDown,
        Terminated,
    ];

    #[test]
    fn lifecycle_paths_are_allowed() {
        for path in [
            &[Pending, Running, Stopping, Stopped, Pending][..],
            &[Pending, Running, Stopped, ShuttingDown, Terminated][..],
            &[Pending, Running, ShuttingDown, Terminated][..],
            &[Pending, Stopped][..],
        ] {
            for w in path.windows(2) {
                assert!(w[0].can_become(w[1]), "{} -> {}", w[0], w[1]);
            }
        }
    }

    #[test]
    fn terminated_is_final_and_nothing_skips_pending() {
        for s in ALL {
            assert!(!Terminated.can_become(s), "terminated -> {s}");
            assert!(!s.can_become(s), "{s} -> {s}");
        }
        assert!(!Stopped.can_become(Running));
        assert!(!Stopped.can_become(Terminated));
        assert!(!Running.can_become(Pending));
    }

    #[test]
    fn names_match_ec2() {
        let names: Vec<&str> = ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "pending",
                "running",
                "stopping",
                "stopped",
                "shutting-down",
                "terminated"
            ]
        );
        assert_eq!(
            serde_json::to_string(&ShuttingDown).unwrap(),
            "\"shutting-down\""
        );
        assert!(ALL.iter().filter(|s| s.is_active()).count() == 3);
    }
}
