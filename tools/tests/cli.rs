//! Bad input to the `tools` CLI: a clear error naming the problem, exit code ≠ 0.

use std::path::PathBuf;
use std::process::Command;

fn tools(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tools"))
        .args(args)
        .output()
        .expect("run tools");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// A valid 17×6 blob that the firmware's unit tests also use.
fn fixture_blob() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../firmware/control/tests/data/fixture-17x6.blob")
}

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("flame-tools-{name}-{}.blob", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn inspect_describes_a_valid_blob() {
    let (ok, out, err) = tools(&["inspect", fixture_blob().to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("obs 17") && out.contains("act 6") && out.contains("MACs/action"),
        "{out}"
    );
}

#[test]
fn missing_and_corrupted_blobs_are_named() {
    let (ok, _, err) = tools(&["inspect", "/nonexistent/policy.blob"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/policy.blob"), "{err}");

    let mut bytes = std::fs::read(fixture_blob()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    let flipped = scratch("flipped", &bytes);
    let (ok, _, err) = tools(&["inspect", flipped.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("CRC mismatch"), "{err}");

    let truncated = scratch("truncated", &bytes[..bytes.len() / 2]);
    let (ok, _, err) = tools(&["hil", "--qemu", "--policy", truncated.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("truncated"), "{err}");
}

/// Episode e resets with seed + e: a seed range past u64::MAX is refused before QEMU is
/// started or the firmware built (it was an arithmetic-overflow panic).
#[test]
fn hil_refuses_episode_seeds_past_the_largest() {
    let blob = fixture_blob();
    let (ok, _, err) = tools(&[
        "hil",
        "--qemu",
        "--policy",
        blob.to_str().unwrap(),
        "--seed",
        "18446744073709551615",
        "--episodes",
        "2",
    ]);
    assert!(!ok);
    assert!(
        err.lines().count() == 1 && err.contains("--seed 18446744073709551615 with --episodes 2"),
        "{err}"
    );
}

/// A file that starts like an ELF but is not one: every command that reads firmware
/// refuses it with one line naming the file (before QEMU would start).
#[test]
fn damaged_firmware_images_are_refused() {
    let fake = scratch("fake-elf", b"\x7fELF\x01\x01\x01\0 not really an ELF file");
    let (fake, blob) = (fake.to_str().unwrap(), fixture_blob());
    let blob = blob.to_str().unwrap();
    let runs: [&[&str]; 3] = [
        &["log", fake, blob],
        &["size", "--policy", blob, "--firmware", fake, "--no-run"],
        &["hil", "--qemu", "--policy", blob, "--firmware", fake],
    ];
    for args in runs {
        let (ok, _, err) = tools(args);
        assert!(!ok, "{args:?}");
        assert!(
            err.lines().count() == 1 && err.contains(fake) && err.contains("ELF"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn hil_needs_a_device_and_a_matching_env() {
    let blob = fixture_blob();
    let blob = blob.to_str().unwrap();
    let (ok, _, err) = tools(&["hil", "--policy", blob]);
    assert!(!ok);
    assert!(err.contains("--qemu"), "{err}");
    let (ok, _, err) = tools(&["hil", "--qemu", "--policy", blob, "--env", "Nope-v5"]);
    assert!(!ok);
    assert!(
        err.contains("Nope-v5") && err.contains("HalfCheetah-v5"),
        "{err}"
    );
}
