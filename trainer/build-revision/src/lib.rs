//! The git revision this build's sources came from: the short commit, with `-dirty` when
//! a tracked source file of the trainer (its crates, `runtime`, the workspace manifests
//! and `.cargo/`) differed from that commit at build time; "unknown" outside a git
//! checkout.
//!
//! It is read when the binary is built, not when it runs: a run started from a copied
//! binary names that binary's sources, whatever the checkout holds later. The build
//! script sits in its own crate because it must rerun on every source edit and commit,
//! and the trainer's own build script compiles the libtorch shims.

/// The revision, e.g. `111cfedd0304` or `111cfedd0304-dirty`.
pub const REVISION: &str = env!("FLAME_BUILD_REVISION");

/// The workspace version with the revision, e.g. `0.1.0 (111cfedd0304)`: what
/// `trainer --version` prints.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("FLAME_BUILD_REVISION"),
    ")"
);
