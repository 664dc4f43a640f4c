//! `turnstile run --config FILE` rejects every kind of mistake with one line
//! on stderr naming the file, the line and the problem, and exits non-zero
//! before touching the network (no root needed). The sample configuration
//! shipped in deploy/ passes the validator.

use std::path::{Path, PathBuf};
use std::process::Command;

use turnstile::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_turnstile");

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("turnstile-config-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const GOOD: &str = r#"interface = "nosuchif7"
queues = 1
metrics = "127.0.0.1:9990"

[[listener]]
port = 8080
balance = "round-robin"
backends = ["10.9.0.5:80", "10.9.0.6:80"]

[upstream]
ports = "61000-61999"
msl_ms = 30000

[health]
interval_ms = 500
fall = 3
rise = 2
"#;

/// Runs the binary on `text`; returns its single stderr line.
fn rejected(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.file(name, text);
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run turnstile");
    assert!(!out.status.success(), "{name}: must exit non-zero");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{name}: exactly one line expected, got {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "{name}: nothing on stdout"
    );
    let line = lines[0].to_string();
    assert!(
        line.contains(&path.display().to_string()),
        "{name}: the file must be named: {line}"
    );
    line
}

fn replace(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replacen(from, to, 1)
}

#[test]
fn each_kind_of_error_is_one_line_naming_file_line_and_problem() {
    let dir = TempDir::new("kinds");
    // (file name, text, "file:LINE:", words the message must contain)
    let cases: Vec<(&str, String, usize, Vec<&str>)> = vec![
        (
            "unknown-key.toml",
            replace("fall = 3", "fall = 3\nfalls = 4"),
            17,
            vec!["unknown field", "falls"],
        ),
        (
            "unknown-table.toml",
            replace("[health]", "[healthcheck]"),
            14,
            vec!["unknown field", "healthcheck"],
        ),
        (
            "bad-address.toml",
            replace("10.9.0.6:80", "10.9.0.666:80"),
            8,
            vec!["10.9.0.666:80", "IPv4 address:port"],
        ),
        (
            "no-port.toml",
            replace("10.9.0.6:80", "10.9.0.6"),
            8,
            vec!["10.9.0.6", "address:port"],
        ),
        (
            "port-range.toml",
            replace("port = 8080", "port = 80800"),
            6,
            vec!["listener.port", "80800"],
        ),
        (
            "port-zero.toml",
            replace("port = 8080", "port = 0"),
            6,
            vec!["listener.port = 0"],
        ),
        (
            "upstream-range.toml",
            replace("61000-61999", "61999-61000"),
            11,
            vec!["upstream.ports", "61999-61000"],
        ),
        (
            "upstream-port.toml",
            replace("61000-61999", "61000-99999"),
            11,
            vec!["upstream.ports", "99999"],
        ),
        (
            "no-backends.toml",
            replace("[\"10.9.0.5:80\", \"10.9.0.6:80\"]", "[]"),
            8,
            vec!["no backends"],
        ),
        (
            "overlap.toml",
            replace("port = 8080", "port = 61500"),
            6,
            vec!["61500", "inside upstream.ports"],
        ),
        (
            "bad-balance.toml",
            replace("round-robin", "fastest"),
            7,
            vec!["fastest", "round-robin", "maglev"],
        ),
        (
            "bad-metrics.toml",
            replace("127.0.0.1:9990", "localhost"),
            3,
            vec!["metrics", "localhost"],
        ),
        (
            "bad-type.toml",
            replace("queues = 1", "queues = \"one\""),
            2,
            vec!["queues"],
        ),
        (
            "fall-zero.toml",
            replace("fall = 3", "fall = 0"),
            16,
            vec!["health.fall = 0"],
        ),
        (
            "duplicate.toml",
            replace("\"10.9.0.6:80\"", "\"10.9.0.5:80\""),
            8,
            vec!["10.9.0.5:80", "twice"],
        ),
        (
            "syntax.toml",
            replace("msl_ms = 30000", "msl_ms = = 30000"),
            12,
            vec!["msl_ms"],
        ),
        (
            "no-interface.toml",
            replace("interface = \"nosuchif7\"\n", ""),
            1,
            vec!["interface"],
        ),
    ];
    for (name, text, line, words) in cases {
        let msg = rejected(&dir, name, &text);
        assert!(
            msg.contains(&format!("{name}:{line}:")),
            "{name}: line {line} expected: {msg}"
        );
        for w in words {
            assert!(msg.contains(w), "{name}: {w:?} expected in: {msg}");
        }
    }
    let no_listener = "interface = \"eth0\"\n";
    let msg = rejected(&dir, "no-listener.toml", no_listener);
    assert!(msg.contains("no [[listener]]"), "{msg}");
}

#[test]
fn a_missing_file_is_named() {
    let out = Command::new(BIN)
        .args(["run", "--config", "/nonexistent/turnstile.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("/nonexistent/turnstile.toml") && stderr.contains("cannot read"),
        "{stderr}"
    );
}

#[test]
fn a_valid_file_gets_past_validation() {
    // The configuration is valid; starting fails on the missing interface,
    // which proves validation passed (and still in one line).
    let dir = TempDir::new("valid");
    let msg = rejected(&dir, "valid.toml", GOOD);
    assert!(
        msg.contains("nosuchif7") && msg.contains("not found"),
        "{msg}"
    );
}

#[test]
fn the_shipped_sample_configuration_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/turnstile.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(!config.listeners.is_empty());
    assert!(config.listeners.iter().all(|l| !l.backends.is_empty()));
    // The Kubernetes manifest embeds a configuration too.
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/turnstile-sidecar.yaml"),
    )
    .unwrap();
    let start = manifest
        .find("turnstile.toml: |")
        .expect("config in the ConfigMap")
        + "turnstile.toml: |".len();
    let body: String = manifest[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or("")))
        .collect();
    let embedded = Config::parse(&body, Path::new("turnstile-sidecar.yaml"))
        .unwrap_or_else(|e| panic!("{e}\n{body}"));
    assert!(!embedded.listeners.is_empty());
}
