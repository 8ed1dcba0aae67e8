//! Build the firmware and boot it in QEMU's `netduinoplus2` (STM32F405), with its UART on
//! a socket the host can talk to.
//!
//! QEMU runs as
//! `timeout -s KILL <limit> qemu-system-arm -M netduinoplus2 -icount shift=0 …` with
//! - serial0 (USART1) on its own unix socket: semihosting output goes to QEMU's stdout, so
//!   `-serial stdio` would mix log text into the binary frames (DESIGN §7); or, with
//!   [`Uart::Pty`], on a pseudo-terminal that a serial-port client opens as it would a
//!   board's USB-serial device (`tools hil --port`);
//! - `-icount shift=0`, so TIM2 counts executed instructions exactly (the cost unit);
//! - semihosting enabled (without it a semihosting call hangs the guest); the firmware's
//!   defmt log frames arrive on QEMU's stdout, kept in their own file and decoded with the
//!   ELF ([`crate::defmt_log`]), while QEMU's own messages go to stderr;
//! - the human monitor on a second socket, for reading guest memory (stack high-water).
//!
//! `timeout` bounds the emulator's life even if the host process is killed before [`Qemu`]
//! is dropped; dropping it stops QEMU at once.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::elf::{ElfSizes, FirmwareElf};

/// The emulator binary; `FLAME_QEMU` overrides it.
pub const QEMU_BIN: &str = "qemu-system-arm";
/// The firmware's Rust target.
pub const FIRMWARE_TARGET: &str = "thumbv7em-none-eabihf";
/// The firmware binary's name (`firmware/Cargo.toml`).
pub const FIRMWARE_BIN: &str = "flame-firmware";
/// The value cortex-m-rt's `paint-stack` feature fills the stack with at reset.
pub const STACK_PAINT: u32 = 0xCCCC_CCCC;

/// The `firmware/` directory of this repository.
pub fn firmware_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware")
}

/// What to build: the blob to embed and the board.
#[derive(Debug, Clone)]
pub struct FirmwareBuild {
    /// The policy blob to embed (`FLAME_POLICY_BLOB`); `None` embeds the firmware's default
    /// (`models/default.blob`, or no policy when that does not exist).
    pub blob: Option<PathBuf>,
    /// Golden vectors to embed (`FLAME_GOLDEN_VECTORS`); `None` takes the exporter's
    /// `<blob>.golden` next to the blob if it exists, else none.
    pub golden: Option<PathBuf>,
    /// Board features; empty means the default board (`qemu`).
    pub features: Vec<String>,
    /// `--config KEY=VALUE` settings for the build (as the board's cargo alias passes them).
    pub cargo_config: Vec<String>,
    /// The firmware workspace; [`firmware_dir`] by default.
    pub firmware_dir: PathBuf,
}

impl FirmwareBuild {
    /// The QEMU board with this blob.
    pub fn qemu(blob: Option<&Path>) -> Self {
        Self {
            blob: blob.map(Path::to_path_buf),
            golden: None,
            features: Vec::new(),
            cargo_config: Vec::new(),
            firmware_dir: firmware_dir(),
        }
    }

    /// The STM32F407 Discovery board with this blob, linked with flip-link, as `cargo
    /// build-f407` builds it.
    pub fn stm32f407(blob: Option<&Path>) -> Self {
        Self {
            features: vec!["stm32f407".to_string()],
            cargo_config: vec![r#"target.thumbv7em-none-eabihf.linker="flip-link""#.to_string()],
            ..Self::qemu(blob)
        }
    }
}

/// Variables that a surrounding cargo (a `cargo test` running this code, or a build
/// script) sets and that would change how the nested firmware build behaves: they point it
/// at the host's target dir, flags, wrappers or profile. The firmware must build with its
/// own `.cargo/config.toml` only.
fn is_outer_cargo_var(name: &str) -> bool {
    (name.starts_with("CARGO") && name != "CARGO_HOME")
        || name.starts_with("__CARGO")
        || name.starts_with("RUSTC")
        || matches!(
            name,
            "RUSTFLAGS"
                | "RUSTDOCFLAGS"
                | "OUT_DIR"
                | "TARGET"
                | "HOST"
                | "PROFILE"
                | "OPT_LEVEL"
                | "DEBUG"
                | "NUM_JOBS"
        )
        || name.starts_with("DEP_")
}

/// Fail with one clear line if the firmware's Rust target is missing. Without rustup (a
/// distribution toolchain) the check is left to cargo.
pub fn check_firmware_target() -> Result<()> {
    let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Ok(());
    };
    if out.status.success()
        && !String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == FIRMWARE_TARGET)
    {
        bail!("the Rust target {FIRMWARE_TARGET} is not installed: run `rustup target add {FIRMWARE_TARGET}`");
    }
    Ok(())
}

/// Build the firmware (`cargo build --release` in `firmware/`) and return the path of a
/// copy of the ELF named after the blob's CRC and the board, so that concurrent builds with
/// other blobs (other tests, other processes) cannot replace it while it is in use.
pub fn build_firmware(build: &FirmwareBuild) -> Result<PathBuf> {
    check_firmware_target()?;
    let dir = build.firmware_dir.canonicalize().with_context(|| {
        format!(
            "firmware directory {} not found",
            build.firmware_dir.display()
        )
    })?;
    let blob = match &build.blob {
        Some(path) => {
            let path = path
                .canonicalize()
                .with_context(|| format!("policy blob {} not found", path.display()))?;
            let bytes = fs::read(&path)
                .with_context(|| format!("reading policy blob {}", path.display()))?;
            Some((path, runtime::blob::blob_hash(&bytes)))
        }
        None => None,
    };
    // Name the golden vectors explicitly, so the build and the ELF's name agree on them.
    let golden = match (&build.golden, &blob) {
        (Some(path), _) => Some(path.clone()),
        (None, Some((path, _))) => Some(path.with_extension("golden")).filter(|p| p.is_file()),
        (None, None) => None,
    };
    let golden = match golden {
        Some(path) => {
            let path = path
                .canonicalize()
                .with_context(|| format!("golden vectors {} not found", path.display()))?;
            let bytes = fs::read(&path)
                .with_context(|| format!("reading golden vectors {}", path.display()))?;
            Some((path, runtime::blob::blob_hash(&bytes)))
        }
        None => None,
    };
    let target_dir = dir.join("target");
    fs::create_dir_all(&target_dir)
        .with_context(|| format!("creating {}", target_dir.display()))?;
    // One firmware build at a time across processes: the build output path is shared.
    let lock = File::create(target_dir.join(".flame-build.lock"))
        .context("creating the firmware build lock")?;
    lock.lock().context("locking the firmware build")?;

    let mut cmd = Command::new("cargo");
    cmd.current_dir(&dir)
        .args(["build", "--release", "--bin", FIRMWARE_BIN]);
    if !build.features.is_empty() {
        cmd.args([
            "--no-default-features",
            "--features",
            &build.features.join(","),
        ]);
    }
    for setting in &build.cargo_config {
        cmd.args(["--config", setting]);
    }
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_outer_cargo_var) {
            cmd.env_remove(&name);
        }
    }
    match &blob {
        Some((path, _)) => cmd.env("FLAME_POLICY_BLOB", path),
        None => cmd.env_remove("FLAME_POLICY_BLOB"),
    };
    match &golden {
        Some((path, _)) => cmd.env("FLAME_GOLDEN_VECTORS", path),
        None => cmd.env_remove("FLAME_GOLDEN_VECTORS"),
    };
    let out = cmd
        .output()
        .context("running cargo to build the firmware (is cargo on PATH?)")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "firmware build failed in {}:\n{}",
            dir.display(),
            tail.join("\n")
        );
    }
    let elf = target_dir
        .join(FIRMWARE_TARGET)
        .join("release")
        .join(FIRMWARE_BIN);
    let board = if build.features.is_empty() {
        "qemu".to_string()
    } else {
        build.features.join("+")
    };
    let tag = match (&blob, &golden) {
        (Some((_, crc)), Some((_, golden))) => format!("{crc:08x}-golden-{golden:08x}"),
        (Some((_, crc)), None) => format!("{crc:08x}"),
        (None, _) => "default".to_string(),
    };
    let copies = target_dir.join("elf");
    fs::create_dir_all(&copies).with_context(|| format!("creating {}", copies.display()))?;
    let copy = copies.join(format!("{FIRMWARE_BIN}-{board}-{tag}.elf"));
    fs::copy(&elf, &copy)
        .with_context(|| format!("copying {} to {}", elf.display(), copy.display()))?;
    drop(lock);
    Ok(copy)
}

/// Where the firmware's UART (serial0) appears on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uart {
    /// A unix socket this process connects to: [`Qemu`]'s `Read`/`Write`.
    Socket,
    /// A pseudo-terminal (`/dev/pts/N`, [`Qemu::pty`]) for a serial-port client.
    Pty,
}

/// How to run QEMU.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    pub elf: PathBuf,
    pub uart: Uart,
    /// Wall-clock limit after which `timeout` kills QEMU whatever happens.
    pub time_limit: Duration,
    /// How long one read of the serial stream waits before returning `TimedOut`.
    pub read_timeout: Duration,
}

impl QemuOptions {
    pub fn new(elf: impl Into<PathBuf>) -> Self {
        Self {
            elf: elf.into(),
            uart: Uart::Socket,
            time_limit: Duration::from_secs(300),
            read_timeout: Duration::from_millis(100),
        }
    }
}

/// A running emulator. `Read`/`Write` go to the firmware's UART; reads time out after
/// [`QemuOptions::read_timeout`] with `ErrorKind::WouldBlock` or `TimedOut`. With the UART
/// on a pseudo-terminal they fail: open [`Qemu::pty`] instead.
pub struct Qemu {
    child: Child,
    /// The UART's socket ([`Uart::Socket`]).
    serial: Option<UnixStream>,
    /// The UART's pseudo-terminal ([`Uart::Pty`]).
    pty: Option<PathBuf>,
    monitor: UnixStream,
    dir: PathBuf,
    elf: Vec<u8>,
}

fn qemu_binary() -> PathBuf {
    std::env::var_os("FLAME_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(QEMU_BIN))
}

/// Find `bin` on PATH (or take it as is when it contains a slash).
fn find_executable(bin: &Path) -> Option<PathBuf> {
    if bin.components().count() > 1 {
        return bin.is_file().then(|| bin.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

impl Qemu {
    /// Boot `options.elf` and connect to its UART.
    pub fn start(options: &QemuOptions) -> Result<Self> {
        let bin = qemu_binary();
        let bin = find_executable(&bin).ok_or_else(|| {
            anyhow!("{} not found: install QEMU with `apt-get install qemu-system-arm` (or set FLAME_QEMU)", bin.display())
        })?;
        if find_executable(Path::new("timeout")).is_none() {
            bail!("`timeout` (coreutils) not found on PATH: it bounds QEMU's run time");
        }
        let elf = fs::read(&options.elf)
            .with_context(|| format!("firmware ELF {} not readable", options.elf.display()))?;
        // Refuse a damaged image here, before QEMU runs it, rather than after the run
        // when its symbols (stack bounds, defmt strings) are read.
        FirmwareElf::parse(&elf).with_context(|| format!("{}", options.elf.display()))?;
        let dir = std::env::temp_dir().join(format!(
            "flame-qemu-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (serial_path, monitor_path, log_path, semihosting_path) = (
            dir.join("serial.sock"),
            dir.join("monitor.sock"),
            dir.join("qemu.log"),
            dir.join("semihosting.bin"),
        );
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let semihosting = File::create(&semihosting_path)
            .with_context(|| format!("creating {}", semihosting_path.display()))?;
        let limit = options.time_limit.as_secs().max(1);
        let uart = match options.uart {
            Uart::Socket => format!(
                "socket,id=uart,path={},server=on,wait=on",
                serial_path.display()
            ),
            Uart::Pty => "pty,id=uart".to_string(),
        };
        let child = Command::new("timeout")
            .args(["-s", "KILL", &limit.to_string()])
            .arg(&bin)
            .args(["-M", "netduinoplus2", "-nographic", "-icount", "shift=0"])
            .args(["-semihosting-config", "enable=on,target=native"])
            .args(["-chardev", &uart, "-serial", "chardev:uart"])
            .arg("-monitor")
            .arg(format!(
                "unix:{},server=on,wait=off",
                monitor_path.display()
            ))
            .arg("-kernel")
            .arg(&options.elf)
            .stdin(Stdio::null())
            .stdout(semihosting)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut qemu = Qemu {
            child,
            serial: None,
            pty: None,
            // A placeholder until the monitor socket exists; replaced below.
            monitor: UnixStream::pair()?.0,
            dir,
            elf,
        };
        if options.uart == Uart::Socket {
            let serial = qemu.connect(&serial_path)?;
            serial.set_read_timeout(Some(options.read_timeout))?;
            qemu.serial = Some(serial);
        }
        qemu.monitor = qemu.connect(&monitor_path)?;
        qemu.monitor
            .set_read_timeout(Some(Duration::from_secs(10)))?;
        qemu.monitor_command(None)?; // the greeting and first prompt
        if options.uart == Uart::Pty {
            let chardevs = qemu.monitor_command(Some("info chardev"))?;
            qemu.pty = Some(pty_of_uart(&chardevs).with_context(|| {
                format!("QEMU did not report the UART's pseudo-terminal:\n{chardevs}")
            })?);
        }
        Ok(qemu)
    }

    /// The UART's pseudo-terminal, when it was started with [`Uart::Pty`].
    pub fn pty(&self) -> Option<&Path> {
        self.pty.as_deref()
    }

    fn uart(&mut self) -> io::Result<&mut UnixStream> {
        self.serial.as_mut().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "the UART is on a pseudo-terminal: open Qemu::pty with a serial-port client",
            )
        })
    }

    /// Wait (up to 10 s) for QEMU to create `path` and accept a connection.
    fn connect(&mut self, path: &Path) -> Result<UnixStream> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "QEMU exited ({status}) before accepting a connection:\n{}",
                    self.log()
                );
            }
            match UnixStream::connect(path) {
                Ok(stream) => return Ok(stream),
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "could not connect to QEMU socket {}: {e}\n{}",
                        path.display(),
                        self.log()
                    )
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// The firmware's log so far (its defmt frames decoded, one line each) followed by
    /// whatever QEMU itself printed.
    pub fn log(&self) -> String {
        let mut text = self.firmware_log().join("\n");
        let qemu = fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default();
        if !qemu.is_empty() {
            text.push_str("\nqemu: ");
            text.push_str(&qemu);
        }
        text
    }

    /// The firmware's defmt log lines so far (`LEVEL message`). Without defmt strings in the
    /// ELF, the raw output is shown as text.
    pub fn firmware_log(&self) -> Vec<String> {
        let raw = fs::read(self.dir.join("semihosting.bin")).unwrap_or_default();
        match crate::defmt_log::Table::from_elf(&self.elf).ok() {
            Some(table) => table.decode_stream(&raw),
            None => String::from_utf8_lossy(&raw)
                .lines()
                .map(str::to_string)
                .collect(),
        }
    }

    /// Whether QEMU is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Set the serial read timeout.
    pub fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.uart()?.set_read_timeout(Some(timeout))
    }

    /// Send one monitor command (or none, to read the greeting) and return its output up
    /// to the next prompt.
    fn monitor_command(&mut self, command: Option<&str>) -> Result<String> {
        if let Some(command) = command {
            self.monitor.write_all(command.as_bytes())?;
            self.monitor.write_all(b"\n")?;
        }
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        // The monitor echoes the command and ends its answer with a fresh prompt.
        while !String::from_utf8_lossy(&text)
            .trim_end()
            .ends_with("(qemu)")
        {
            let n = self
                .monitor
                .read(&mut buf)
                .context("reading the QEMU monitor")?;
            if n == 0 {
                bail!("QEMU monitor closed");
            }
            text.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// Copy `len` bytes of guest physical memory at `addr` (monitor `pmemsave`).
    pub fn read_memory(&mut self, addr: u32, len: u32) -> Result<Vec<u8>> {
        let file = self.dir.join(format!("mem-{addr:08x}-{len}.bin"));
        let answer = self.monitor_command(Some(&format!(
            "pmemsave {addr:#x} {len} \"{}\"",
            file.display()
        )))?;
        let bytes = fs::read(&file)
            .with_context(|| format!("QEMU did not write {}: {answer}", file.display()))?;
        let _ = fs::remove_file(&file);
        if bytes.len() != len as usize {
            bail!("pmemsave returned {} bytes, expected {len}", bytes.len());
        }
        Ok(bytes)
    }

    /// The deepest stack use since reset, in bytes: the stack region (`_stack_end` up to
    /// `_stack_start`, from the ELF's symbols) was painted with [`STACK_PAINT`] at reset,
    /// and every word the stack ever reached has been overwritten.
    pub fn stack_high_water(&mut self) -> Result<u32> {
        let elf = FirmwareElf::parse(&self.elf)?;
        let (start, end) = (elf.address("_stack_start")?, elf.address("_stack_end")?);
        if end >= start {
            bail!("bad stack bounds {end:#x}..{start:#x}");
        }
        let ram = self.read_memory(end, start - end)?;
        let untouched = ram
            .chunks_exact(4)
            .take_while(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) == STACK_PAINT)
            .count() as u32;
        if untouched == 0 {
            bail!("the stack region is not painted: was the firmware built with cortex-m-rt's paint-stack feature?");
        }
        Ok(start - end - 4 * untouched)
    }

    /// The running firmware ELF's static sizes.
    pub fn elf_sizes(&self) -> Result<ElfSizes> {
        FirmwareElf::parse(&self.elf)?.sizes()
    }
}

/// The path in the monitor's `info chardev` line of the UART: `uart: filename=pty:/dev/pts/N`.
fn pty_of_uart(chardevs: &str) -> Option<PathBuf> {
    chardevs.lines().find_map(|line| {
        let path = line.trim().strip_prefix("uart: filename=pty:")?;
        Some(PathBuf::from(path.trim()))
    })
}

impl Read for Qemu {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.uart()?.read(buf)
    }
}

impl Write for Qemu {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.uart()?.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.uart()?.flush()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        // SIGTERM to `timeout` is relayed to QEMU, which exits at once. If that did not
        // happen within a second, kill both.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_cargo_variables_are_recognized() {
        for v in [
            "CARGO",
            "CARGO_TARGET_DIR",
            "CARGO_MANIFEST_DIR",
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTFLAGS",
            "RUSTC_WRAPPER",
            "__CARGO_FIX_PLZ",
            "CARGO_BUILD_TARGET",
        ] {
            assert!(is_outer_cargo_var(v), "{v}");
        }
        for v in [
            "CARGO_HOME",
            "PATH",
            "HOME",
            "RUSTUP_HOME",
            "FLAME_POLICY_BLOB",
        ] {
            assert!(!is_outer_cargo_var(v), "{v}");
        }
    }

    #[test]
    fn the_uart_pty_is_read_from_info_chardev() {
        let answer = "info chardev\r\nparallel0: filename=null\r\nuart: filename=pty:/dev/pts/7\r\ncompat_monitor0: filename=unix:/tmp/m.sock,server=on\r\n(qemu) ";
        assert_eq!(pty_of_uart(answer), Some(PathBuf::from("/dev/pts/7")));
        assert_eq!(pty_of_uart("uart: filename=unix:/tmp/s.sock"), None);
    }

    #[test]
    fn missing_elf_is_a_clear_error() {
        let err = match Qemu::start(&QemuOptions::new("/nonexistent/flame.elf")) {
            Ok(_) => panic!("started without an ELF"),
            Err(e) => e.to_string(),
        };
        // Either QEMU is missing (said first) or the ELF is: both name the thing.
        assert!(
            err.contains("/nonexistent/flame.elf") || err.contains("qemu-system-arm"),
            "{err}"
        );
    }
}
