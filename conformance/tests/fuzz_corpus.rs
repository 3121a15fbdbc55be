//! Replays every seed and crash input of the fuzz targets (`fuzz/corpus/
//! <target>/`, `fuzz/regressions/<target>/`) through the same entry points
//! the fuzzers call, on the stable toolchain, so that CI guards them
//! without nightly or cargo-fuzz (issue 7).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use codervpn_conformance::fuzz_entries::{Entry, TARGETS};

const FUZZ: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz");

/// Generous next to the entries' own bounds (10 s) and a debug build.
const PER_FILE: Duration = Duration::from_secs(60);

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `entry` on `file` in its own thread: a panic or an overrun is
/// reported with the file's name instead of aborting or hanging the test.
fn replay(target: &str, entry: Entry, file: &Path) -> Result<(), String> {
    let data = std::fs::read(file).unwrap();
    let (done, finished) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        entry(&data);
        let _ = done.send(());
    });
    match finished.recv_timeout(PER_FILE) {
        Ok(()) => Ok(()),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "{target}: {} did not finish within {PER_FILE:?}",
            file.display()
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let why = match worker.join() {
                Err(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default(),
                Ok(()) => String::new(),
            };
            Err(format!("{target}: {} panicked: {why}", file.display()))
        }
    }
}

#[test]
fn every_target_has_a_seed_corpus() {
    for (target, _) in TARGETS {
        let seeds = files(&Path::new(FUZZ).join("corpus").join(target));
        assert!(!seeds.is_empty(), "fuzz/corpus/{target}/ is empty");
        let script = Path::new(FUZZ)
            .join("fuzz_targets")
            .join(format!("{target}.rs"));
        assert!(script.is_file(), "no fuzz target {}", script.display());
    }
}

#[test]
fn corpora_and_regressions_replay_cleanly() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (target, entry) in TARGETS {
        for kind in ["corpus", "regressions"] {
            for file in files(&Path::new(FUZZ).join(kind).join(target)) {
                replayed += 1;
                if let Err(failure) = replay(target, *entry, &file) {
                    failures.push(failure);
                }
            }
        }
    }
    assert!(replayed > 0);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
