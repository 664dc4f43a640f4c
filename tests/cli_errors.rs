//! Operator mistakes get one clear line and a non-zero exit, never a panic.

mod common;

use std::process::{Command, Output};

use common::*;

fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "must exit non-zero");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line expected, got: {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0].to_string()
}

#[test]
fn port_out_of_range_and_zero() {
    for bad in ["70000", "0", "80,abc"] {
        let out = Command::new(BIN)
            .args(["serve", "--iface", "lo", "--port", bad])
            .output()
            .unwrap();
        let line = one_line_error(&out);
        assert!(line.contains("--port"), "{line}");
    }
}

#[test]
fn missing_interface_is_named() {
    let out = Command::new(BIN)
        .args(["serve", "--iface", "nosuchif9", "--port", "80"])
        .output()
        .unwrap();
    let line = one_line_error(&out);
    assert!(
        line.contains("nosuchif9") && line.contains("not found"),
        "{line}"
    );
}

#[test]
fn no_privileges_is_explained() {
    if !need_root() {
        return;
    }
    let mut topo = Topology::new(TopologyConfig::default()).expect("topology");
    let _ = &mut topo;
    let out = topo
        .server
        .command("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            BIN,
            "serve",
            "--iface",
            &topo.server.dev,
            "--port",
            "80",
        ])
        .output()
        .unwrap();
    let line = one_line_error(&out);
    assert!(
        line.contains("permission") && line.contains("CAP_"),
        "{line}"
    );
}

#[test]
fn interface_without_native_xdp_is_explained() {
    if !need_root() {
        return;
    }
    let topo = Topology::new(TopologyConfig::default()).expect("topology");
    // Loopback has no driver (native) XDP support, only generic.
    let out = topo
        .server
        .command(BIN)
        .args([
            "serve",
            "--iface",
            "lo",
            "--port",
            "80",
            "--xdp-mode",
            "native",
        ])
        .output()
        .unwrap();
    let line = one_line_error(&out);
    assert!(
        line.contains("\"lo\"") && line.contains("native XDP"),
        "{line}"
    );
}
