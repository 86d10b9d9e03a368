//! Fuzz the bundle importer (`amivm image import`): the input is the tar bundle, imported into a
//! real store in a temporary directory. Nothing may panic, and a refused bundle must leave the
//! store unchanged: no image, snapshot, chunk or blob appears, and the staging area is emptied.
//!
//! Each execution is cheap: one store for the whole run, the input written to one file, and
//! libFuzzer's `-max_len` (scripts/fuzz.sh) keeping bundles small. A bundle that imports (the
//! fuzzer can rebuild a valid one from the seed) is removed again by resetting the store.

#![no_main]

use amivm::store::{AccountId, NoProgress, Store};
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The store's object directories that a refused import must leave empty.
const OBJECT_DIRS: [&str; 4] = ["images", "snapshots", "chunks", "blobs"];

struct Fixture {
    dir: PathBuf,
    bundle: PathBuf,
    account: AccountId,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("amivm-fuzz-bundle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create fuzz directory");
        Fixture {
            bundle: dir.join("bundle.tar"),
            dir,
            account: AccountId::parse("123456789012").expect("account id"),
        }
    })
}

/// Files under `dir` (recursively), 0 if it does not exist.
fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    std::fs::write(&f.bundle, data).expect("write bundle");
    let root = f.dir.join("store");
    let store = Store::open(&root).expect("open store");
    match store.import_bundle(&f.account, &f.bundle, &NoProgress) {
        Ok(_) => {
            // A valid bundle: start the next run from an empty store again.
            drop(store);
            std::fs::remove_dir_all(&root).expect("reset store");
        }
        Err(_) => {
            for d in OBJECT_DIRS {
                assert_eq!(
                    count_files(&root.join(d)),
                    0,
                    "a refused bundle left files in {d}/"
                );
            }
            assert_eq!(
                count_files(&root.join("tmp")),
                0,
                "a refused bundle left staging files"
            );
        }
    }
});
