//! `trainer init`: a run directory with an untrained policy.
//!
//! The walking skeleton's stand-in for training (issue 4 brings `trainer train`, which
//! writes the same run-directory format): the FLAME policy network at its real shape with
//! tch's default initialization, the observation normalizer fitted on random-action
//! episodes, and those states for calibration.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use tch::nn;

use crate::policy_net::FlowPolicyNet;
use sim::env;
use sim::float_policy::{PolicyShape, TimeEmbedding};
use sim::rollout::random_states;
use sim::run_dir::{write_json, Algo, Normalizer, RunConfig, RunDir};

pub struct InitOptions {
    pub algo: Algo,
    pub env_id: String,
    pub seed: u64,
    pub hidden: Vec<usize>,
    pub time_dim: usize,
    pub nfe: usize,
    /// Random-action env steps to record (normalizer fit and calibration).
    pub states: usize,
}

pub fn init(out: &Path, opts: &InitOptions) -> Result<RunConfig> {
    ensure!(
        opts.algo != Algo::Sac,
        "trainer init creates flow policies: --algo must be flame-m or flame-r"
    );
    ensure!(opts.states >= 20, "--states must be at least 20");
    ensure!(
        !opts.hidden.is_empty() && opts.hidden.iter().all(|&h| h > 0),
        "--hidden needs positive widths"
    );
    ensure!(
        opts.algo == Algo::FlameR || opts.nfe == 1,
        "FLAME-M acts in one step: --nfe must be 1"
    );
    ensure!(
        opts.nfe >= 1 && opts.nfe <= runtime::MAX_NFE,
        "--nfe must be in 1..={}",
        runtime::MAX_NFE
    );
    let mut env = env::make(&opts.env_id)?;
    let spec = env.spec().clone();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let run = RunDir::new(out);

    let states = random_states(env.as_mut(), opts.states, opts.seed)?;
    write_json(&run.normalizer(), &Normalizer::fit(&states))?;
    run.write_states(&states)?;

    tch::manual_seed(opts.seed as i64);
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let shape = PolicyShape {
        obs_dim: spec.obs_dim,
        act_dim: spec.act_dim,
        hidden: opts.hidden.clone(),
        time_dim: opts.time_dim,
        // What `trainer train` uses (FlameConfig's default).
        time_embedding: TimeEmbedding::Scaled,
        time_mlp: false,
    };
    FlowPolicyNet::new(&vs.root(), shape.clone());
    vs.save(run.weights())
        .with_context(|| format!("writing {}", run.weights().display()))?;

    let config = RunConfig {
        algo: opts.algo,
        env_id: spec.id.to_string(),
        seed: opts.seed,
        shape,
        nfe: opts.nfe,
        noise_std: 0.5,
        obs_clip: 10.0,
        env_steps: 0,
        git_revision: build_revision::REVISION.into(),
        train: None,
    };
    write_json(&run.config(), &config)?;
    Ok(config)
}
