//! Puts `memory.x` on the linker path and embeds the policy blob.
//!
//! The blob comes from `FLAME_POLICY_BLOB` (a path; relative paths are taken from this
//! `firmware/` directory, where cargo runs build scripts) or defaults to the shipped model
//! `../models/default.blob`. If that default does not exist yet, an empty blob is embedded:
//! the firmware then boots into its safe state and answers every request with `NoPolicy`,
//! which is the right behaviour for an image without a model. An explicitly named blob that
//! is missing is a build error, never a silent fallback.
//!
//! Golden vectors (the exporter's `<blob>.golden`, re-run on `SelfTest`) come from
//! `FLAME_GOLDEN_VECTORS`, or else from the file next to the blob with the extension
//! `.golden` if there is one; without them `SelfTest` answers `NoGoldenVectors`.
use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    // Linker script: cortex-m-rt's link.x includes memory.x from the search path.
    fs::copy(manifest.join("memory.x"), out.join("memory.x")).expect("copy memory.x to OUT_DIR");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");

    println!("cargo:rerun-if-env-changed=FLAME_POLICY_BLOB");
    let (blob, blob_path) = match env::var_os("FLAME_POLICY_BLOB").filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = manifest.join(path);
            println!("cargo:rerun-if-changed={}", path.display());
            match fs::read(&path) {
                Ok(bytes) => (bytes, path),
                Err(e) => fail(&format!("FLAME_POLICY_BLOB={}: {e}", path.display())),
            }
        }
        None => {
            let path = manifest.join("../models/default.blob");
            // Watching a missing file makes cargo re-run this script on every build, so the
            // firmware picks the model up as soon as it is committed.
            println!("cargo:rerun-if-changed={}", path.display());
            match fs::read(&path) {
                Ok(bytes) => (bytes, path),
                Err(_) => {
                    println!(
                        "cargo:warning=no policy blob: {} does not exist and FLAME_POLICY_BLOB is not set; \
                         the firmware will answer every request with NoPolicy",
                        path.display()
                    );
                    (Vec::new(), path)
                }
            }
        }
    };
    fs::write(out.join("policy.blob"), &blob).expect("write policy.blob to OUT_DIR");

    println!("cargo:rerun-if-env-changed=FLAME_GOLDEN_VECTORS");
    let golden = match env::var_os("FLAME_GOLDEN_VECTORS").filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = manifest.join(path);
            println!("cargo:rerun-if-changed={}", path.display());
            fs::read(&path)
                .unwrap_or_else(|e| fail(&format!("FLAME_GOLDEN_VECTORS={}: {e}", path.display())))
        }
        None => {
            let path = blob_path.with_extension("golden");
            println!("cargo:rerun-if-changed={}", path.display());
            // Only with a blob: golden vectors without their policy test nothing.
            match fs::read(&path) {
                Ok(bytes) if !blob.is_empty() => bytes,
                _ => Vec::new(),
            }
        }
    };
    fs::write(out.join("golden.bin"), &golden).expect("write golden.bin to OUT_DIR");
}

/// Stop the build with one clear line.
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
