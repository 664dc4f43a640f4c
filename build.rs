//! Compiles the XDP program in bpf/ into a libbpf-rs skeleton.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/turnstile.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"))
        .join("turnstile.skel.rs");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    // Debian keeps asm/types.h under the multiarch directory, which clang's
    // BPF target does not search by default.
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    SkeletonBuilder::new()
        .source(SRC)
        .clang_args(["-O2", "-g", "-Wall", multiarch.as_str()])
        .build_and_generate(&out)
        .unwrap_or_else(|e| {
            panic!("building {SRC} failed: {e:#}\nneeds clang, libbpf-dev and linux-libc-dev (see README)")
        });
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed=bpf/syncookie.h");
}
