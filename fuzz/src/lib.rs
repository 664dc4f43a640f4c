//! `turnstile::wire` and `turnstile::tcp` as the fuzz targets see them: the
//! very source files of the main crate (see Cargo.toml for why they are
//! compiled here rather than through a dependency on the whole crate).
#![allow(dead_code, unused_imports, clippy::all)]

#[path = "../../src/wire/mod.rs"]
pub mod wire;

#[path = "../../src/tcp/mod.rs"]
pub mod tcp;
