use std::path::{Path, PathBuf};
use std::process::Command;

/// The sources the trainer binary is built from, relative to the workspace root: an edit
/// to any of them reruns this script, and a tracked change in them marks the revision
/// `-dirty`.
const SOURCES: [&str; 5] = ["Cargo.toml", "Cargo.lock", ".cargo", "trainer", "runtime"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest
        .ancestors()
        .nth(2)
        .expect("trainer/build-revision sits two levels below the workspace root");
    for source in SOURCES {
        watch(&root.join(source));
    }
    let revision = match git(root, &["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) => {
            // A commit moves the branch's ref (or HEAD itself when detached).
            if let Some(git_dir) = git(root, &["rev-parse", "--absolute-git-dir"]) {
                let git_dir = PathBuf::from(git_dir);
                watch(&git_dir.join("HEAD"));
                if let Some(branch) = git(root, &["symbolic-ref", "-q", "HEAD"]) {
                    watch(&git_dir.join(branch));
                }
                watch(&git_dir.join("packed-refs"));
            }
            let mut status = vec!["status", "--porcelain", "--untracked-files=no", "--"];
            status.extend(SOURCES);
            let dirty = git(root, &status).is_none_or(|changes| !changes.is_empty());
            if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            }
        }
        None => "unknown".into(),
    };
    println!("cargo:rustc-env=FLAME_BUILD_REVISION={revision}");
}

/// Reruns this script when `path` (a file, or any file under a directory) changes; a
/// path that does not exist is left out, since cargo would rerun the script on every
/// build for it.
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// `git args…` in `dir`: its trimmed output, or none when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
