//! The blob specification is complete: `tests/spec/blob_v2.py`, an implementation of
//! docs/blob.md written from that page alone (standard-library Python, no Rust), parses
//! blobs and golden vectors and reproduces every golden action bit for bit — on the
//! shipped policy, and on fixtures that reach what the shipped one does not (several
//! flow steps and bias sets, asymmetric action bounds, inputs saturated at ±32767, left
//! shifts, every shift, extreme biases, random tables, int8 and int16 weights).

use std::path::Path;
use std::process::Command;

use tests::{
    fixture_blob, golden_vectors, repo_root, with_edge_output_stages, with_input_gain,
    with_int16_edge_layers, FixtureSpec,
};

/// Run the independent implementation on a blob and its golden vectors; returns its
/// summary line ("N of M records bit-exact") after checking it succeeded.
fn reproduce(blob: &Path, golden: &Path) -> String {
    let script = repo_root().join("tests/spec/blob_v2.py");
    // The venv python that `scripts/setup.sh` installs (the env conformance test's).
    let out = Command::new(sim::env::reference_python())
        .arg(&script)
        .arg(blob)
        .arg(golden)
        .output()
        .unwrap_or_else(|e| panic!("python (needed to run {}): {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} {} failed:\n{stdout}\n{}",
        script.display(),
        blob.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().last().unwrap_or_default().to_string()
}

#[test]
fn the_shipped_blob_is_reproduced_from_the_spec() {
    let models = repo_root().join("models");
    let summary = reproduce(&models.join("default.blob"), &models.join("default.golden"));
    assert_eq!(summary, "64 of 64 records bit-exact");
}

#[test]
fn multi_step_and_edge_fixtures_are_reproduced_from_the_spec() {
    let shape = |obs_dim, act_dim, hidden: &[usize], nfe, seed| FixtureSpec {
        obs_dim,
        act_dim,
        hidden: hidden.to_vec(),
        nfe,
        seed,
    };
    let blobs = [
        fixture_blob(&FixtureSpec::large()),
        with_edge_output_stages(
            &with_input_gain(&fixture_blob(&shape(13, 3, &[37, 20, 33], 3, 301)), 40.0),
            4,
        ),
        with_edge_output_stages(&fixture_blob(&shape(5, 2, &[9, 4], 2, 302)), 5),
        with_int16_edge_layers(&fixture_blob(&shape(11, 4, &[24, 16], 2, 303)), 6),
    ];
    let dir = std::env::temp_dir().join(format!("flame-spec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, blob) in blobs.iter().enumerate() {
        let (blob_path, golden_path) = (
            dir.join(format!("{i}.blob")),
            dir.join(format!("{i}.golden")),
        );
        std::fs::write(&blob_path, blob).unwrap();
        std::fs::write(&golden_path, golden_vectors(blob, 24, 900 + i as u64)).unwrap();
        assert_eq!(
            reproduce(&blob_path, &golden_path),
            "24 of 24 records bit-exact"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
