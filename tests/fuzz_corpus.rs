//! The fuzz targets' corpora (fuzz/corpus/<target>/), replayed on stable
//! through the same harness the cargo-fuzz binaries run (fuzz/harness.rs):
//! an input that crashed a target once stays a regression test here. Pure
//! computation, no root needed.

#[allow(dead_code)]
#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    // The seeds alone are five or more per target: an emptied corpus fails.
    assert!(files.len() >= 5, "{}: {} files", dir.display(), files.len());
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let r = std::panic::catch_unwind(|| run(&data));
        assert!(r.is_ok(), "{target} crashes on {}", f.display());
    }
    eprintln!("{target}: {} inputs replayed", files.len());
}

#[test]
fn parse_frame_corpus() {
    replay("parse_frame", harness::parse_frame);
}

#[test]
fn tcp_options_corpus() {
    replay("tcp_options", harness::tcp_options);
}

#[test]
fn engine_corpus() {
    replay("engine", harness::engine);
}
