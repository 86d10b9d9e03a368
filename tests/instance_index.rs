//! The instance index `amivm serve` keeps in memory (src/instance/index.rs) follows what other
//! processes do: an instance launched, stopped, killed with SIGKILL (its process records
//! nothing), started again and terminated by the `amivm` CLI shows its real state on the
//! index's very next lookup; a fresh index (a restarted server) finds the same states; and a
//! lookup after no change is served from memory.

mod common;
mod instance_common;

use amivm::instance::index::InstanceIndex;
use amivm::store::{AccountId, Store};
use instance_common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a state change may take here (guests run under KVM's emulator).
const STATE_WAIT: Duration = Duration::from_secs(30);

fn states(index: &InstanceIndex, store: &Store) -> Vec<(String, String)> {
    let owner = AccountId::parse(OWNER).unwrap();
    index
        .list(store, &owner)
        .unwrap()
        .iter()
        .map(|i| (i.instance_id.clone(), i.state.as_str().to_string()))
        .collect()
}

/// Wait until the index shows `id` in state `want` (what a client polling DescribeInstances
/// sees), checking at every look that the CLI, reading the records afresh, agrees with it.
#[track_caller]
fn wait_index_state(env: &Env, index: &InstanceIndex, store: &Store, id: &str, want: &str) {
    let t0 = Instant::now();
    loop {
        let got = states(index, store);
        let mine: Vec<&str> = got
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, s)| s.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{id} listed once: {got:?}");
        if mine[0] == want {
            assert_eq!(env.state(id), want, "the CLI disagrees with the index");
            return;
        }
        assert!(
            t0.elapsed() < STATE_WAIT,
            "{id} is still {} in the index, not {want}",
            mine[0]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_warm_index_follows_other_processes() {
    let env = Env::new();
    let store = Store::open(&env.store).unwrap();
    let owner = AccountId::parse(OWNER).unwrap();
    let index = InstanceIndex::default();
    assert!(states(&index, &store).is_empty());

    // Launched by the CLI in the background: the index sees it running.
    let out = env.ok(&["run", &env.ami, "--detach", "--append", "exit=hang"]);
    let id = out.trim().to_string();
    wait_index_state(&env, &index, &store, &id, "running");
    // Nothing changed: the same records, from memory.
    let a = index.list(&store, &owner).unwrap();
    let b = index.list(&store, &owner).unwrap();
    assert!(Arc::ptr_eq(&a[0], &b[0]), "an unchanged store is re-read");
    // Another account sees none of it.
    let stranger = AccountId::parse(STRANGER).unwrap();
    assert!(index.list(&store, &stranger).unwrap().is_empty());

    // SIGKILL: the process records nothing; the run lock it held tells.
    let pid = env.instance(&id)["Pid"]
        .as_u64()
        .expect("a running instance has a Pid") as i32;
    // SAFETY: kill only reads its arguments; `pid` is the instance's amivm process, which this
    // test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    wait_index_state(&env, &index, &store, &id, "stopped");
    let reason = env.instance(&id)["StateReason"].to_string();
    assert!(reason.contains("died"), "{reason}");

    // Started again and stopped by the CLI.
    env.ok(&["start", &id]);
    wait_index_state(&env, &index, &store, &id, "running");
    env.ok(&["stop", "--force", &id]);
    wait_index_state(&env, &index, &store, &id, "stopped");

    // A second instance runs while the index is warm; a restarted server (a new index) finds
    // both as they are.
    let out = env.ok(&["run", &env.ami, "--detach", "--append", "exit=hang"]);
    let second = out.trim().to_string();
    wait_index_state(&env, &index, &store, &second, "running");
    let mut want = states(&index, &store);
    let mut fresh = states(&InstanceIndex::default(), &Store::open(&env.store).unwrap());
    want.sort();
    fresh.sort();
    assert_eq!(fresh, want);

    // Terminated by the CLI: both.
    env.ok(&["terminate", "--force", &second]);
    env.ok(&["terminate", &id]);
    wait_index_state(&env, &index, &store, &second, "terminated");
    wait_index_state(&env, &index, &store, &id, "terminated");
}
