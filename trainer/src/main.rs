//! `trainer` CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use sim::run_dir::{group_runs, Algo};
use trainer::export::{export, ExportOptions};
use trainer::init::{init, InitOptions};
use trainer::threads::Threads;
use trainer::train::{bench_agent, SeedGroup, TrainConfig, Trainer};

#[derive(Parser)]
#[command(
    name = "trainer",
    version = build_revision::VERSION,
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
    /// Quantize a run's policy to a blob (int8 weights, int16 activations) with golden
    /// vectors and a per-stage fidelity report.
    Export {
        /// Run directory (from `trainer init` or `trainer train`).
        run: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Episodes over which float and int8 returns are compared (0 skips).
        #[arg(long, default_value_t = 10)]
        episodes: usize,
        /// Refuse the blob if any held-out action differs by more than this (half-range units).
        #[arg(long, default_value_t = 0.05)]
        max_action_error: f64,
        /// Golden vectors to write next to the blob.
        #[arg(long, default_value_t = 64)]
        golden: usize,
    },
    /// Train an agent (SAC, FLAME-M, FLAME-R) on a task, or resume a run (`--resume DIR`).
    /// Defaults are the paper's (FLAME) and CleanRL's (SAC).
    Train(Box<TrainArgs>),
    /// Agent throughput: updates/s at the configured sizes and env steps/s of the whole
    /// training loop.
    Bench {
        /// Agents to measure.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "sac")]
        algo: Vec<Algo>,
        #[arg(long, default_value = "HalfCheetah-v5")]
        env: String,
        /// Timed updates per agent.
        #[arg(long, default_value_t = 300)]
        updates: usize,
        /// Timed env steps of the training loop per agent.
        #[arg(long, default_value_t = 1000)]
        loop_steps: u64,
        /// libtorch intra-op threads: `auto` (the fastest of all cores and halvings down
        /// to one, measured while running) or a count.
        #[arg(long, default_value = "auto")]
        threads: Threads,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Minibatch size.
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
        /// Record each update variant as a CUDA graph and replay it (CUDA devices only).
        #[arg(long)]
        cuda_graph: bool,
        /// Seeds in one process, each its own agent, replay and envs, stepped in turn as
        /// `trainer train --seeds` runs them: rates per seed and for all.
        #[arg(long, default_value_t = 1)]
        seeds: usize,
    },
    /// List the tasks with their dimensions; with --bench, also measure env steps/s.
    Envs {
        /// Measure steps/s of each task, single env and VecEnv(5), with random actions.
        #[arg(long)]
        bench: bool,
        /// Env steps per task and setting for --bench.
        #[arg(long, default_value_t = 20_000)]
        bench_steps: usize,
    },
    /// List the devices libtorch sees (cpu, cuda:N); for each CUDA device, whether a CUDA
    /// graph records and replays there (what `--cuda-graph` needs).
    Devices,
    /// Results table (results.md, also printed) and learning curves
    /// (learning_curves.png) from training run directories, with the paper's numbers.
    Results {
        /// Run directories (from `trainer train`).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Directory for results.md and learning_curves.png.
        #[arg(long)]
        out: PathBuf,
        /// Env steps of the return columns (k/M suffixes allowed).
        #[arg(long, value_delimiter = ',', value_parser = trainer::results::parse_steps,
            default_value = "25k,50k,100k,300k,1M")]
        milestones: Vec<u64>,
        /// A column shows the last evaluation at most this fraction of its step before it.
        #[arg(long, default_value_t = 0.05)]
        tolerance: f64,
        /// RUN=BLOB: also show the fidelity report `trainer export` wrote for BLOB
        /// (runs' own *.report.json files are found without it). Repeatable.
        #[arg(long = "blob", value_name = "RUN=BLOB")]
        blobs: Vec<String>,
    },
}

/// `trainer train` flags. Every hyperparameter flag is optional: unset means the
/// algorithm's default (shown in brackets); with `--resume` only `--steps` and
/// `--max-wall` may be given.
#[derive(clap::Args)]
struct TrainArgs {
    /// Agent [sac].
    #[arg(long, value_enum)]
    algo: Option<Algo>,
    /// Task id (see `trainer envs`) [HalfCheetah-v5].
    #[arg(long)]
    env: Option<String>,
    /// Total env steps [1000000; Humanoid 2000000]. With --resume: the new budget.
    #[arg(long)]
    steps: Option<u64>,
    /// [0]
    #[arg(long)]
    seed: Option<u64>,
    /// Train several seeds in one process, in lockstep, each a run of its own in
    /// OUT/seed-N (e.g. 0,1,2,3,4); `--resume OUT` resumes them all.
    #[arg(long, value_delimiter = ',', conflicts_with = "seed")]
    seeds: Option<Vec<u64>>,
    /// Run directory to create.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Envs stepped together [sac 1; flame 5].
    #[arg(long)]
    num_envs: Option<usize>,
    /// Updates per vector step [1].
    #[arg(long)]
    updates_per_step: Option<usize>,
    /// Random-action env steps before learning [sac 5000; flame 30000].
    #[arg(long)]
    learning_starts: Option<u64>,
    /// [256]
    #[arg(long)]
    batch_size: Option<usize>,
    /// Replay capacity [1000000].
    #[arg(long)]
    buffer_size: Option<usize>,
    /// Env steps between evaluations [25000].
    #[arg(long)]
    eval_every: Option<u64>,
    /// Episodes per evaluation, no exploration noise [20].
    #[arg(long)]
    eval_episodes: Option<usize>,
    /// Env steps between checkpoints [100000].
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// cpu, cuda or cuda:N [cpu].
    #[arg(long)]
    device: Option<String>,
    /// libtorch intra-op threads: `auto` (the fastest of all cores and halvings down to
    /// one, measured while training) or a count [auto]. May change with --resume (the
    /// count does not change what the run computes).
    #[arg(long)]
    threads: Option<Threads>,
    /// Seconds between progress lines on stderr, 0 for none [10].
    #[arg(long)]
    progress_every: Option<f64>,
    /// Discount γ [0.99].
    #[arg(long)]
    gamma: Option<f64>,
    /// Polyak rate τ [sac 0.005; flame-m 0.02; flame-r 0.005].
    #[arg(long)]
    tau: Option<f64>,
    /// Critic learning rate [sac 1e-3; flame --lr].
    #[arg(long)]
    q_lr: Option<f64>,
    /// Policy learning rate [3e-4].
    #[arg(long)]
    policy_lr: Option<f64>,
    /// Temperature learning rate [sac 1e-3; flame 5e-3].
    #[arg(long)]
    alpha_lr: Option<f64>,
    /// Initial α [1.0].
    #[arg(long)]
    alpha: Option<f64>,
    /// Keep α fixed at --alpha instead of tuning it.
    #[arg(long)]
    no_autotune: bool,
    /// Target entropy H̄ = −scale·d [sac 1.0; flame 3.0].
    #[arg(long)]
    target_entropy_scale: Option<f64>,
    /// Policy (and α) updated every N updates, N times [2].
    #[arg(long)]
    policy_frequency: Option<u64>,
    /// Targets updated every N updates [1].
    #[arg(long)]
    target_frequency: Option<u64>,
    /// Reward scale c [sac 1.0].
    #[arg(long)]
    reward_scale: Option<f64>,
    /// Policy hidden widths [sac 256,256].
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// Critic hidden widths [sac 256,256].
    #[arg(long, value_delimiter = ',')]
    critic_hidden: Option<Vec<usize>>,
    /// Hidden activation [sac relu].
    #[arg(long, value_enum)]
    activation: Option<trainer::mlp::Activation>,
    /// Stop after this many seconds of wall time as if --steps were reached (final
    /// evaluation, checkpoint, summary). With --resume: the new budget.
    #[arg(long)]
    max_wall: Option<f64>,
    /// Record each variant of the update (critic only; with the policy; with α) as a
    /// CUDA graph after a few eager updates, and replay it: one launch per update instead
    /// of hundreds. CUDA devices only. May be given with --resume.
    #[arg(long)]
    cuda_graph: bool,
    /// FLAME: initial policy learning rate, and the critics' unless --q-lr [3e-4].
    #[arg(long)]
    lr: Option<f64>,
    /// FLAME: the policy learning rate decays linearly to this over the run [3e-5].
    #[arg(long)]
    final_policy_lr: Option<f64>,
    /// FLAME-R: Euler steps per action N [20] (FLAME-M acts in one).
    #[arg(long)]
    nfe: Option<usize>,
    /// FLAME: posterior candidates K per state for the Q-weighted target [100].
    #[arg(long)]
    candidates: Option<i64>,
    /// FLAME: particles N_p for best-of-N acting [32].
    #[arg(long)]
    particles: Option<i64>,
    /// FLAME: std σ_z of the base noise [0.5].
    #[arg(long)]
    noise_std: Option<f64>,
    /// FLAME: exploration noise std α·scale [1.0].
    #[arg(long)]
    noise_scale: Option<f64>,
    /// FLAME: weight λ of the Q-gradient term through the sampler [flame-m 1; flame-r 0].
    #[arg(long)]
    q_grad_weight: Option<f64>,
    /// FLAME: how policy and critic weights start: torch (U(±1/√fan_in)) or haiku (the
    /// official code's truncated normal, zero biases) [torch].
    #[arg(long, value_enum)]
    init: Option<trainer::mlp::Init>,
    /// FLAME: the TD target's entropy term β·α·Ĥ(s′): off, bonus (β = +1, SAC) or
    /// penalty (β = −1, the official script's default) [off].
    #[arg(long, value_enum)]
    td_entropy: Option<trainer::agents::flame::TdEntropy>,
    /// FLAME: steps of the entropy chain [flame-m 3; flame-r N].
    #[arg(long)]
    entropy_steps: Option<usize>,
    /// FLAME: log-determinant per chain step [flame-m exact; flame-r trace].
    #[arg(long, value_enum)]
    log_det: Option<trainer::flame::entropy::LogDet>,
    /// FLAME: states per update for the entropy estimate [64].
    #[arg(long)]
    entropy_states: Option<i64>,
    /// FLAME: sinusoidal features per time input [16].
    #[arg(long)]
    time_dim: Option<usize>,
    /// FLAME: MeanFlow adaptive loss weight power p, 0 for none [0].
    #[arg(long)]
    adaptive_loss_power: Option<f64>,
    /// FLAME: how the flow times become features [scaled].
    #[arg(long, value_enum)]
    time_embedding: Option<sim::float_policy::TimeEmbedding>,
    /// FLAME: pass each time embedding through a learned MLP (d → 2d → d, mish) before
    /// the trunk, as the official network [flame-m on; flame-r off].
    #[arg(long, overrides_with = "no_time_mlp")]
    time_mlp: bool,
    /// FLAME: the time embedding enters the trunk directly, no time MLP.
    #[arg(long, overrides_with = "time_mlp")]
    no_time_mlp: bool,
    /// FLAME-M: where the training anchors put the noise; `official` is the official
    /// MeanFlow code's t = 1-clean anchors beside a sampler that starts from noise at
    /// (0, 1) [consistent].
    #[arg(long, value_enum)]
    time_convention: Option<trainer::agents::flame::TimeConvention>,
    /// FLAME: α's Adam steps every N updates, a multiple of --policy-frequency [100].
    #[arg(long)]
    alpha_every: Option<u64>,
    /// FLAME: temperature of the Q-weights softmax(Q/T) [flame-m exp-alpha; flame-r alpha].
    #[arg(long, value_enum)]
    weight_temperature: Option<trainer::agents::flame::WeightTemperature>,
    /// FLAME: the TD target's next action [online-best].
    #[arg(long, value_enum)]
    td_action: Option<trainer::agents::flame::TdAction>,
    /// FLAME: flow loss over action dimensions [mean].
    #[arg(long, value_enum)]
    flow_loss_reduction: Option<trainer::agents::flame::FlowLossReduction>,
    /// FLAME: Adam steps per critic per update with one gradient [flame-m 2; flame-r 1].
    #[arg(long)]
    critic_steps: Option<usize>,
    /// FLAME-M: how the flow-time pairs r ≤ t are drawn [sorted].
    #[arg(long, value_enum)]
    time_pairs: Option<trainer::agents::flame::TimePairs>,
    /// FLAME-M: fraction of training pairs with r = t [0].
    #[arg(long)]
    equal_time_fraction: Option<f64>,
    /// FLAME: the policy learning-rate decay [updates].
    #[arg(long, value_enum)]
    lr_decay: Option<trainer::agents::flame::LrDecay>,
    /// Testing aid: make update N's loss NaN (exercises the NaN guard).
    #[arg(long, hide = true)]
    inject_nan_at_update: Option<u64>,
}

fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    let algo = a.algo.unwrap_or(Algo::Sac);
    let env = a.env.clone().unwrap_or_else(|| "HalfCheetah-v5".into());
    sim::env::spec(&env)?;
    let mut c = TrainConfig::defaults(algo, &env);
    macro_rules! set {
        ($($field:ident <- $flag:ident),*) => {$(if let Some(v) = a.$flag.clone() { c.$field = v; })*};
    }
    set!(steps <- steps, seed <- seed, num_envs <- num_envs,
        updates_per_step <- updates_per_step, learning_starts <- learning_starts,
        batch_size <- batch_size, buffer_size <- buffer_size, eval_every <- eval_every,
        eval_episodes <- eval_episodes, checkpoint_every <- checkpoint_every,
        device <- device, threads <- threads, progress_secs <- progress_every);
    c.inject_nan_at_update = a.inject_nan_at_update;
    c.max_wall_s = a.max_wall;
    c.cuda_graph = a.cuda_graph;
    refuse_flags_of_the_other_algorithm(a, algo)?;
    if let Some(f) = c.flame.as_mut() {
        macro_rules! set_flame {
            ($($field:ident <- $flag:ident),*) => {$(if let Some(v) = a.$flag.clone() { f.$field = v; })*};
        }
        set_flame!(gamma <- gamma, tau <- tau, lr <- lr, final_policy_lr <- final_policy_lr,
            alpha_lr <- alpha_lr, init_alpha <- alpha, target_entropy_scale <- target_entropy_scale,
            policy_frequency <- policy_frequency, reward_scale <- reward_scale,
            policy_hidden <- hidden, critic_hidden <- critic_hidden, nfe <- nfe,
            candidates <- candidates, particles <- particles, noise_std <- noise_std,
            noise_scale <- noise_scale, q_grad_weight <- q_grad_weight,
            entropy_steps <- entropy_steps, log_det <- log_det, entropy_states <- entropy_states,
            time_dim <- time_dim, adaptive_loss_power <- adaptive_loss_power,
            alpha_every <- alpha_every, weight_temperature <- weight_temperature,
            td_action <- td_action, flow_loss_reduction <- flow_loss_reduction,
            critic_steps <- critic_steps, time_pairs <- time_pairs,
            equal_time_fraction <- equal_time_fraction, lr_decay <- lr_decay,
            time_embedding <- time_embedding, time_convention <- time_convention,
            td_entropy <- td_entropy, init <- init);
        f.critic_lr = a.q_lr.or(f.critic_lr);
        if a.time_mlp || a.no_time_mlp {
            f.time_mlp = a.time_mlp;
        }
        if a.no_autotune {
            f.autotune = false;
        }
    }
    if let Some(s) = c.sac.as_mut() {
        macro_rules! set_sac {
            ($($field:ident <- $flag:ident),*) => {$(if let Some(v) = a.$flag.clone() { s.$field = v; })*};
        }
        set_sac!(gamma <- gamma, tau <- tau, q_lr <- q_lr, policy_lr <- policy_lr,
            alpha_lr <- alpha_lr, init_alpha <- alpha, target_entropy_scale <- target_entropy_scale,
            policy_frequency <- policy_frequency, target_frequency <- target_frequency,
            reward_scale <- reward_scale, policy_hidden <- hidden,
            critic_hidden <- critic_hidden, activation <- activation);
        if a.no_autotune {
            s.autotune = false;
            if a.alpha.is_none() {
                s.init_alpha = 0.2;
            }
        }
    }
    c.validate()?;
    Ok(c)
}

/// The flags only SAC has, and whether each was given.
fn sac_only_flags(a: &TrainArgs) -> [(&'static str, bool); 3] {
    [
        ("--policy-lr", a.policy_lr.is_some()),
        ("--target-frequency", a.target_frequency.is_some()),
        ("--activation", a.activation.is_some()),
    ]
}

/// The flags only FLAME-M / FLAME-R have, and whether each was given.
fn flame_only_flags(a: &TrainArgs) -> [(&'static str, bool); 27] {
    [
        ("--lr", a.lr.is_some()),
        ("--final-policy-lr", a.final_policy_lr.is_some()),
        ("--nfe", a.nfe.is_some()),
        ("--candidates", a.candidates.is_some()),
        ("--particles", a.particles.is_some()),
        ("--noise-std", a.noise_std.is_some()),
        ("--noise-scale", a.noise_scale.is_some()),
        ("--q-grad-weight", a.q_grad_weight.is_some()),
        ("--td-entropy", a.td_entropy.is_some()),
        ("--init", a.init.is_some()),
        ("--time-mlp", a.time_mlp),
        ("--no-time-mlp", a.no_time_mlp),
        ("--entropy-steps", a.entropy_steps.is_some()),
        ("--log-det", a.log_det.is_some()),
        ("--entropy-states", a.entropy_states.is_some()),
        ("--time-dim", a.time_dim.is_some()),
        ("--adaptive-loss-power", a.adaptive_loss_power.is_some()),
        ("--alpha-every", a.alpha_every.is_some()),
        ("--weight-temperature", a.weight_temperature.is_some()),
        ("--td-action", a.td_action.is_some()),
        ("--flow-loss-reduction", a.flow_loss_reduction.is_some()),
        ("--critic-steps", a.critic_steps.is_some()),
        ("--time-pairs", a.time_pairs.is_some()),
        ("--equal-time-fraction", a.equal_time_fraction.is_some()),
        ("--lr-decay", a.lr_decay.is_some()),
        ("--time-embedding", a.time_embedding.is_some()),
        ("--time-convention", a.time_convention.is_some()),
    ]
}

/// Flags that only one family of agents has: refuse them for the other, by name.
fn refuse_flags_of_the_other_algorithm(a: &TrainArgs, algo: Algo) -> Result<()> {
    let (sac_only, flame_only) = (sac_only_flags(a), flame_only_flags(a));
    let (foreign, owner) = match algo {
        Algo::Sac => (&flame_only[..], "flame-m and flame-r"),
        Algo::FlameM | Algo::FlameR => (&sac_only[..], "sac"),
    };
    if let Some((flag, _)) = foreign.iter().find(|(_, g)| *g) {
        anyhow::bail!(
            "{flag} is a flag of --algo {owner}, not of --algo {}",
            algo.name()
        );
    }
    Ok(())
}

/// With `--resume`, the run's saved configuration is used: refuse other flags.
fn refuse_flags_with_resume(a: &TrainArgs) -> Result<()> {
    let given = [
        ("--algo", a.algo.is_some()),
        ("--env", a.env.is_some()),
        ("--seed", a.seed.is_some()),
        ("--seeds", a.seeds.is_some()),
        ("--num-envs", a.num_envs.is_some()),
        ("--updates-per-step", a.updates_per_step.is_some()),
        ("--learning-starts", a.learning_starts.is_some()),
        ("--batch-size", a.batch_size.is_some()),
        ("--buffer-size", a.buffer_size.is_some()),
        ("--eval-every", a.eval_every.is_some()),
        ("--eval-episodes", a.eval_episodes.is_some()),
        ("--checkpoint-every", a.checkpoint_every.is_some()),
        ("--device", a.device.is_some()),
        ("--progress-every", a.progress_every.is_some()),
        ("--gamma", a.gamma.is_some()),
        ("--tau", a.tau.is_some()),
        ("--q-lr", a.q_lr.is_some()),
        ("--alpha-lr", a.alpha_lr.is_some()),
        ("--alpha", a.alpha.is_some()),
        ("--no-autotune", a.no_autotune),
        ("--target-entropy-scale", a.target_entropy_scale.is_some()),
        ("--policy-frequency", a.policy_frequency.is_some()),
        ("--reward-scale", a.reward_scale.is_some()),
        ("--hidden", a.hidden.is_some()),
        ("--critic-hidden", a.critic_hidden.is_some()),
        ("--inject-nan-at-update", a.inject_nan_at_update.is_some()),
    ];
    let (sac_only, flame_only) = (sac_only_flags(a), flame_only_flags(a));
    let mut all = given.iter().chain(&sac_only).chain(&flame_only);
    if let Some((flag, _)) = all.find(|(_, g)| *g) {
        anyhow::bail!(
            "{flag} cannot be combined with --resume: a resumed run keeps its own configuration (only --steps, --max-wall, --threads and --cuda-graph may change)"
        );
    }
    Ok(())
}

fn train(a: &TrainArgs) -> Result<()> {
    let mut group = match &a.resume {
        Some(dir) => {
            refuse_flags_with_resume(a)?;
            let is_group = !dir.join("config.json").exists() && !group_runs(dir)?.is_empty();
            let mut group = if is_group {
                SeedGroup::resume(dir, a.steps, a.max_wall, a.threads)?
            } else {
                SeedGroup::single(Trainer::resume(dir, a.steps, a.max_wall, a.threads)?)
            };
            if a.cuda_graph {
                group.use_cuda_graph()?;
            }
            for t in &group.trainers {
                announce_resume(t);
            }
            group
        }
        None => {
            let c = train_config(a)?;
            let out = a.out.as_ref().expect("clap requires --out");
            match &a.seeds {
                Some(seeds) => SeedGroup::new(c, seeds, out)?,
                None => SeedGroup::single(Trainer::new(c, Some(out))?),
            }
        }
    };
    for summary in group.run()? {
        println!("{summary}");
    }
    Ok(())
}

/// Where a resumed run stands, and what is left of its wall budget.
fn announce_resume(t: &Trainer) {
    eprintln!(
        "resuming {} at env step {} of {}",
        t.summary().run_dir.display(),
        t.state.env_steps,
        t.config.steps
    );
    // The wall budget counts over all sessions of the run: a longer --steps alone stops
    // where the old budget ends.
    if let Some(limit) = t.config.max_wall_s {
        let left = (limit - t.state.wall_s).max(0.0);
        eprintln!(
            "its wall budget (--max-wall {limit:.0} s over all sessions) has {left:.0} s left; give --max-wall to change it"
        );
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train(&args)?,
        Command::Bench {
            algo,
            env,
            updates,
            loop_steps,
            threads,
            device,
            batch_size,
            cuda_graph,
            seeds,
        } => {
            anyhow::ensure!(updates > 0, "--updates must be positive");
            anyhow::ensure!(batch_size > 0, "--batch-size must be positive");
            tch::set_num_threads(threads.initial(trainer::threads::cores()) as i32);
            let peak = trainer::train::matmul_peak_gflops(trainer::train::parse_device(&device)?);
            for a in algo {
                let mut c = TrainConfig::defaults(a, &env);
                c.device = device.clone();
                c.batch_size = batch_size;
                c.buffer_size = 100_000;
                c.threads = threads;
                c.cuda_graph = cuda_graph;
                println!("{}", bench_agent(c, updates, loop_steps, peak, seeds)?);
            }
        }
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
        Command::Envs { bench, bench_steps } => {
            println!("{:<22} {:>5} {:>5}  action bounds", "id", "obs", "act");
            for spec in sim::env::specs() {
                println!(
                    "{:<22} {:>5} {:>5}  [{}, {}]",
                    spec.id, spec.obs_dim, spec.act_dim, spec.action_low[0], spec.action_high[0]
                );
            }
            if bench {
                anyhow::ensure!(bench_steps > 0, "--bench-steps must be positive");
                let ids = sim::env::ids();
                for result in sim::env::bench::bench(&ids, bench_steps, 5, 0)? {
                    println!("{result}");
                }
            }
        }
        Command::Devices => {
            for d in trainer::devices() {
                match trainer::train::parse_device(&d)? {
                    tch::Device::Cpu => println!("{d}"),
                    cuda => match trainer::cuda_graph::self_check(cuda) {
                        Ok(()) => match trainer::cuda_graph::lanes_self_check(cuda) {
                            Ok(()) => println!(
                                "{d} (CUDA graphs: recorded and replayed; lanes for --seeds: each replays its own random stream)"
                            ),
                            Err(e) => println!(
                                "{d} (CUDA graphs: recorded and replayed; lanes for --seeds failed: {e:#})"
                            ),
                        },
                        Err(e) => println!("{d} (CUDA graphs unavailable: {e:#})"),
                    },
                }
            }
        }
        Command::Results {
            runs,
            out,
            milestones,
            tolerance,
            blobs,
        } => {
            let mut opts = trainer::results::ResultsOptions::new(out);
            opts.milestones = milestones;
            opts.tolerance = tolerance;
            opts.blobs = blobs
                .iter()
                .map(|b| trainer::results::parse_blob_arg(b))
                .collect::<Result<_>>()?;
            print!("{}", trainer::results::results(&runs, &opts)?);
        }
    }
    Ok(())
}

/// How long libtorch's OpenMP threads (libgomp) busy-wait for the next parallel region
/// before sleeping, in spin iterations: long enough to bridge the gaps between a SAC
/// update's ~100 regions (microseconds each), short enough that an idle worker sleeps
/// within about a millisecond. On the 2-core workstation SAC ran 91 updates/s on two
/// threads with the passive policy (every region wakes a sleeping thread), 168 at 1,000
/// spins, 190 at 10,000, 167–211 at 20,000, 149–188 at 100,000 and 300,000, 124–188 with
/// unbounded spinning (one run each, alternating; the machine is shared and noisy).
const GOMP_SPIN_COUNT: &str = "30000";

/// Intel MKL's strict conditional numerical reproducibility: the same matmul bits on any
/// thread count. Without it, on an AVX-512 machine, MKL splits a long reduction (a weight
/// gradient over FLAME's 25,600 candidate rows, or 8,192) across the threads, and one
/// and two threads differ in the last bits — then `--threads auto`, which changes the
/// count while training, moves a run off its seed's curve and a resume off the
/// uninterrupted run. Measured on the 2-core Xeon (AVX-512): such a product differs by up
/// to 4e-4 between one and two threads by default, not at all with this mode.
const MKL_REPRODUCIBLE: &str = "AUTO,STRICT";

/// libgomp reads its wait policy and MKL its reproducibility mode once, when they load
/// (before `main`), so set a bounded spin ([`GOMP_SPIN_COUNT`]) and
/// [`MKL_REPRODUCIBLE`] and re-exec once; `OMP_WAIT_POLICY`, `GOMP_SPINCOUNT` or
/// `MKL_CBWR` from the user take precedence. Spinning costs when another process holds
/// a core: every region then waits for a descheduled peer (two SAC benches at once: 7
/// updates/s each against ~90 passive). `--threads auto` notices and runs on one
/// thread, where there are no regions to wait for ([`trainer::threads`]).
fn reexec_with_library_settings() {
    use std::os::unix::process::CommandExt;
    let set = |name: &str| std::env::var_os(name).is_some();
    let mut missing = Vec::new();
    if !set("OMP_WAIT_POLICY") && !set("GOMP_SPINCOUNT") {
        missing.push(("GOMP_SPINCOUNT", GOMP_SPIN_COUNT));
    }
    if !set("MKL_CBWR") {
        missing.push(("MKL_CBWR", MKL_REPRODUCIBLE));
    }
    if missing.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // `exec` returns only on failure; then carry on in this process.
    let _ = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(missing)
        .exec();
}

/// Keep freed memory in glibc's heap. libtorch frees and reallocates the same
/// activation-sized buffers (hundreds of KB) every update; with glibc's default trim and
/// mmap thresholds they go back to the kernel and come back as fresh zeroed pages, and
/// the page faults cost ~10% of an update (measured with perf: SAC 11.6 → 10.5 ms CPU).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_TOP_PAD: i32 = -2;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only sets allocator tunables; called before any other thread
        // exists.
        unsafe {
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
            mallopt(M_TOP_PAD, 64 << 20);
            mallopt(M_MMAP_THRESHOLD, 32 << 20); // glibc's maximum on 64-bit
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Train(_) | Command::Bench { .. }) {
        reexec_with_library_settings();
        keep_freed_memory();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trainer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
