//! The serial-port path a user with a board takes, on every test run: the QEMU firmware's
//! UART on a pseudo-terminal (`-serial pty`), and `tools hil --port /dev/pts/N` driving a
//! full HalfCheetah-v5 episode of the shipped policy through it (the `serialport` crate,
//! termios and all), every step checked bit for bit against the host runtime.

use std::path::PathBuf;
use std::process::Command;

use tools::qemu::{build_firmware, FirmwareBuild, Qemu, QemuOptions, Uart};

#[test]
fn hil_over_a_pseudo_terminal_runs_a_bit_exact_episode() {
    let blob = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/default.blob");
    let elf = build_firmware(&FirmwareBuild::qemu(Some(&blob))).unwrap_or_else(|e| panic!("{e:#}"));
    let mut options = QemuOptions::new(&elf);
    options.uart = Uart::Pty;
    let qemu = Qemu::start(&options).unwrap_or_else(|e| panic!("{e:#}"));
    let pty = qemu.pty().expect("a pty UART").to_path_buf();
    assert!(pty.starts_with("/dev/pts"), "{}", pty.display());

    let report_path =
        std::env::temp_dir().join(format!("flame-pty-hil-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_tools"))
        .args(["hil", "--policy", blob.to_str().unwrap(), "--port"])
        .arg(&pty)
        .args(["--episodes", "1", "--seed", "4", "--report"])
        .arg(&report_path)
        .output()
        .expect("run tools hil");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{stdout}\n{stderr}\nfirmware: {}",
        qemu.log()
    );
    assert!(stdout.contains("bit-exact: yes"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let episode = &report["episodes"][0];
    assert_eq!(episode["steps"], 1000, "{report}");
    assert_eq!(episode["bit_exact_steps"], 1000, "{report}");
    assert_eq!(episode["link_errors"], 0, "{report}");
    assert_eq!(report["cost_unit"], "instructions", "{report}");
    let _ = std::fs::remove_file(&report_path);
}
