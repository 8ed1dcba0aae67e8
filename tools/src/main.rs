//! `tools` CLI: host-in-the-loop runs and blob inspection.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tools::hil::{run_hil, FaultPlan, HilOptions, ModeArg};
use tools::link::DeviceLink;
use tools::qemu::{build_firmware, FirmwareBuild, Qemu, QemuOptions};
use tools::size::SizeReport;

#[derive(Parser)]
#[command(
    name = "tools",
    version,
    about = "Host-in-the-loop runner and blob inspector for FLAME MCU policies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the `Hil` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run MuJoCo episodes on the host with the policy on the device (QEMU or a board).
    Hil {
        /// The policy blob (the device must run the same blob; with --qemu it is built in).
        #[arg(long)]
        policy: PathBuf,
        /// Task id; must match the blob's (defaults to it).
        #[arg(long)]
        env: Option<String>,
        /// Boot the QEMU netduinoplus2 firmware with this blob.
        #[arg(long, conflicts_with = "port")]
        qemu: bool,
        /// Use a prebuilt firmware ELF with --qemu instead of building one.
        #[arg(long, requires = "qemu")]
        firmware: Option<PathBuf>,
        /// Serial port of a real board (e.g. /dev/ttyACM0).
        #[arg(long, conflicts_with = "connect")]
        port: Option<String>,
        /// TCP address of an already running emulator's UART (the firmware's
        /// `cargo run --release` listens on 127.0.0.1:4321).
        #[arg(long, conflicts_with = "qemu")]
        connect: Option<String>,
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
        #[arg(long, default_value_t = 1)]
        episodes: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value = "deterministic")]
        mode: ModeArg,
        /// Cap each episode at this many steps.
        #[arg(long)]
        max_steps: Option<usize>,
        /// Attempts per step before giving up on a faulty link.
        #[arg(long, default_value_t = 5)]
        attempts: usize,
        /// Run directory of the float policy, rolled out on the same seeds for comparison.
        #[arg(long)]
        float_run: Option<PathBuf>,
        /// Corrupt the host→device traffic on a random fraction of steps (random bytes,
        /// dropped bytes, bit flips, oversized frames, floods), report what the firmware
        /// answered to each, and retry the step: SEED or SEED:RATE (default rate 0.05).
        #[arg(long, value_name = "SEED[:RATE]")]
        inject_faults: Option<FaultPlan>,
        /// Also write the report as JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Describe a policy blob: metadata, provenance, layer shapes and sizes.
    Inspect { blob: PathBuf },
    /// Decode the firmware's defmt log (semihosting output of a QEMU run, e.g.
    /// `cargo run --release | tools log ELF`) into text lines.
    Log {
        /// The firmware ELF that produced the log (its `.defmt` strings).
        elf: PathBuf,
        /// The raw log; standard input when left out.
        input: Option<PathBuf>,
    },
    /// Firmware memory: flash and static RAM from the ELF, no heap, and the peak stack
    /// measured in QEMU after a workload of every request kind; exit ≠ 0 over budget
    /// (flash ≤ 256 KiB, static RAM + stack ≤ 16 KiB).
    Size {
        /// The policy blob to build in (and to check the firmware's actions against).
        #[arg(long, default_value = "models/default.blob")]
        policy: PathBuf,
        /// A prebuilt QEMU firmware ELF with this blob instead of building one.
        #[arg(long)]
        firmware: Option<PathBuf>,
        /// `Act` requests in the workload before the stack is read.
        #[arg(long, default_value_t = 20)]
        acts: usize,
        /// Only the ELF's static sizes (no QEMU run, no stack measurement).
        #[arg(long)]
        no_run: bool,
        /// Also write the report as JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

fn run(cli: Cli) -> Result<bool> {
    match cli.command {
        Command::Hil {
            policy,
            env,
            qemu,
            firmware,
            port,
            connect,
            baud,
            episodes,
            seed,
            mode,
            max_steps,
            attempts,
            float_run,
            inject_faults,
            report,
        } => {
            anyhow::ensure!(episodes > 0, "--episodes must be at least 1");
            let blob = std::fs::read(&policy)
                .with_context(|| format!("reading policy blob {}", policy.display()))?;
            let parsed = runtime::Policy::from_bytes(&blob)
                .map_err(|e| anyhow::anyhow!("{}: {e}", policy.display()))?;
            let blob_env = parsed.blob().meta.env_id.to_string();
            if let Some(env) = &env {
                sim::env::spec(env)?;
                if *env != blob_env {
                    bail!("--env {env} does not match the blob's task {blob_env}");
                }
            }
            let opts = HilOptions {
                episodes,
                seed,
                mode,
                max_steps,
                attempts,
                float_run,
                faults: inject_faults,
            };
            opts.check_episode_seeds()?;
            let result = if qemu {
                let elf = match firmware {
                    Some(elf) => elf,
                    None => {
                        eprintln!("building the QEMU firmware with {} ...", policy.display());
                        build_firmware(&FirmwareBuild::qemu(Some(&policy)))?
                    }
                };
                let emulator = Qemu::start(&QemuOptions::new(&elf))?;
                let mut link = DeviceLink::new(emulator).with_timeout(Duration::from_secs(5));
                let result = run_hil(&mut link, &blob, &opts)?;
                let mut memory = SizeReport::from_elf(&elf, blob.len())?;
                memory.peak_stack = link.get_mut().stack_high_water().ok();
                let log = link.get_ref().firmware_log();
                if let Some(boot) = log.first() {
                    eprintln!("firmware log: {boot} (+{} more lines)", log.len() - 1);
                }
                eprintln!(
                    "firmware memory: flash {} B, static RAM {} B, peak stack {} B (this run)",
                    memory.flash,
                    memory.static_ram,
                    memory.peak_stack.map_or("?".to_string(), |s| s.to_string())
                );
                result
            } else if let Some(port) = port {
                let serial = serialport::new(&port, baud)
                    .timeout(Duration::from_millis(100))
                    .open()
                    .with_context(|| format!("opening serial port {port}"))?;
                let mut link = DeviceLink::new(serial).with_timeout(Duration::from_secs(1));
                run_hil(&mut link, &blob, &opts)?
            } else if let Some(addr) = connect {
                let stream = std::net::TcpStream::connect(&addr)
                    .with_context(|| format!("connecting to {addr}"))?;
                stream.set_read_timeout(Some(Duration::from_millis(100)))?;
                let mut link = DeviceLink::new(stream).with_timeout(Duration::from_secs(5));
                run_hil(&mut link, &blob, &opts)?
            } else {
                bail!("say where the device is: --qemu, --port PATH or --connect HOST:PORT");
            };
            println!("{result}");
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_string_pretty(&result)? + "\n")
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if !result.bit_exact() {
                eprintln!("tools: error: the device's actions differ from the host runtime's");
            }
            if !result.faults_handled() {
                eprintln!(
                    "tools: error: the firmware did not answer every injected fault as expected"
                );
            }
            Ok(result.passed())
        }
        Command::Size {
            policy,
            firmware,
            acts,
            no_run,
            report,
        } => {
            let blob = std::fs::read(&policy)
                .with_context(|| format!("reading policy blob {}", policy.display()))?;
            let elf = match firmware {
                Some(elf) => elf,
                None => {
                    eprintln!("building the QEMU firmware with {} ...", policy.display());
                    build_firmware(&FirmwareBuild::qemu(Some(&policy)))?
                }
            };
            let result = if no_run {
                SizeReport::from_elf(&elf, blob.len())?
            } else {
                tools::size::measure(&elf, &blob, acts)?
            };
            println!("{result}");
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_string_pretty(&result)? + "\n")
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            // Without a run the stack is unknown: report the static sizes only.
            Ok(if no_run {
                result.flash <= tools::size::FLASH_BUDGET && result.heap_evidence.is_empty()
            } else {
                result.violations().is_empty()
            })
        }
        Command::Log { elf, input } => {
            let image =
                std::fs::read(&elf).with_context(|| format!("reading {}", elf.display()))?;
            let table = tools::defmt_log::Table::from_elf(&image)
                .with_context(|| format!("{}: no defmt string table", elf.display()))?;
            let raw = match input {
                Some(path) => {
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
                }
                None => {
                    let mut raw = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut raw)
                        .context("reading standard input")?;
                    raw
                }
            };
            for line in table.decode_stream(&raw) {
                println!("{line}");
            }
            Ok(true)
        }
        Command::Inspect { blob } => {
            let bytes =
                std::fs::read(&blob).with_context(|| format!("reading {}", blob.display()))?;
            let text = tools::inspect::describe(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", blob.display()))?;
            println!("{text}");
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        // The command said what failed.
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tools: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
