//! `trainer` CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use trainer::export::{export, ExportOptions};
use trainer::init::{init, InitOptions};
use trainer::run_dir::Algo;

#[derive(Parser)]
#[command(
    name = "trainer",
    version,
    about = "Train FLAME policies on MuJoCo v5 tasks and export them for the MCU runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a run directory with an untrained policy (normalizer and calibration states
    /// from random-action episodes).
    Init {
        #[arg(long, value_enum, default_value = "flame-m")]
        algo: Algo,
        /// Task id (see `trainer envs`).
        #[arg(long, default_value = "HalfCheetah-v5")]
        env: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Hidden layer widths, comma separated (paper: 256,256,256).
        #[arg(long, value_delimiter = ',', default_value = "256,256,256")]
        hidden: Vec<usize>,
        /// Sinusoidal features per time input.
        #[arg(long, default_value_t = 16)]
        time_dim: usize,
        /// Network evaluations per action (FLAME-M: 1; FLAME-R: N Euler steps).
        #[arg(long, default_value_t = 1)]
        nfe: usize,
        /// Random-action env steps recorded for normalization and calibration.
        #[arg(long, default_value_t = 5000)]
        states: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Quantize a run's policy to an int8 blob with golden vectors and a fidelity report.
    Export {
        /// Run directory (from `trainer init` or `trainer train`).
        run: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Episodes over which float and int8 returns are compared (0 skips).
        #[arg(long, default_value_t = 10)]
        episodes: usize,
        /// Refuse the blob if any held-out action differs by more than this (half-range units).
        #[arg(long, default_value_t = 0.15)]
        max_action_error: f64,
        /// Golden vectors to write next to the blob.
        #[arg(long, default_value_t = 64)]
        golden: usize,
    },
    /// List the tasks with their dimensions.
    Envs,
    /// List the devices libtorch sees (cpu, cuda:N).
    Devices,
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init {
            algo,
            env,
            seed,
            hidden,
            time_dim,
            nfe,
            states,
            out,
        } => {
            let config = init(
                &out,
                &InitOptions {
                    algo,
                    env_id: env,
                    seed,
                    hidden,
                    time_dim,
                    nfe,
                    states,
                },
            )?;
            println!(
                "initialized {} ({:?} on {}, obs {} act {}, hidden {:?}, untrained)",
                out.display(),
                config.algo,
                config.env_id,
                config.shape.obs_dim,
                config.shape.act_dim,
                config.shape.hidden
            );
        }
        Command::Export {
            run,
            out,
            episodes,
            max_action_error,
            golden,
        } => {
            anyhow::ensure!(
                max_action_error > 0.0,
                "--max-action-error must be positive"
            );
            let report = export(
                &run,
                &ExportOptions {
                    out,
                    episodes,
                    max_action_error,
                    golden,
                },
            )?;
            println!("{report}");
        }
        Command::Envs => {
            println!("{:<22} {:>5} {:>5}  action bounds", "id", "obs", "act");
            for spec in trainer::env::specs() {
                println!(
                    "{:<22} {:>5} {:>5}  [{}, {}]",
                    spec.id, spec.obs_dim, spec.act_dim, spec.action_low[0], spec.action_high[0]
                );
            }
        }
        Command::Devices => {
            for d in trainer::devices() {
                println!("{d}");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trainer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
