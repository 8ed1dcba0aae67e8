//! The lab bench installs no torch (DESIGN §2): `tools` depends on neither tch nor
//! torch-sys, and its binary loads MuJoCo but no libtorch. A dependency that drags the
//! trainer back in fails here, not on a bench machine without the torch venv.

use std::process::Command;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tools_depends_on_no_tch() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let tree = run(
        env!("CARGO"),
        &[
            "tree",
            "--manifest-path",
            manifest,
            "-p",
            "tools",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ],
    );
    assert!(
        tree.lines().any(|l| l.starts_with("runtime ")),
        "cargo tree did not list the runtime: {tree}"
    );
    let torch: Vec<&str> = tree
        .lines()
        .filter(|l| {
            l.starts_with("tch ") || l.starts_with("torch-sys ") || l.starts_with("trainer ")
        })
        .collect();
    assert!(torch.is_empty(), "tools depends on {torch:?}");
}

#[test]
fn tools_binary_loads_mujoco_and_no_libtorch() {
    let libs = run("ldd", &[env!("CARGO_BIN_EXE_tools")]);
    assert!(
        libs.lines()
            .any(|l| l.contains("libmujoco") && l.contains("=> /")),
        "the tools binary does not find libmujoco: {libs}"
    );
    let torch: Vec<&str> = libs
        .lines()
        .filter(|l| l.contains("torch") || l.contains("libc10"))
        .collect();
    assert!(torch.is_empty(), "the tools binary loads {torch:?}");
}
