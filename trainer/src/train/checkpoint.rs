//! The run directory and the checkpoint: what a run writes as it goes, and how a killed
//! run resumes from it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use sim::env::VecEnv;
use sim::float_policy::{PolicyShape, TimeEmbedding};
use sim::run_dir::{read_json, write_json, RunConfig, RunDir};
use tch::{Device, Tensor};

use super::config::{make_agent, parse_device, TrainConfig};
use super::{start_threads, LoopState, Trainer};
use crate::plot::{learning_curve, CurvePoint};
use crate::replay::ReplayBuffer;
use crate::threads::Threads;

impl Trainer {
    /// Records and replays the updates as CUDA graphs from now on (`--cuda-graph` given
    /// with `--resume`: like the thread count, it changes the speed, not the run).
    pub fn use_cuda_graph(&mut self) -> Result<()> {
        self.config.cuda_graph = true;
        self.config.validate()
    }

    /// Reopens a run from its last checkpoint; `steps` and `max_wall_s` optionally
    /// replace the budgets, `threads` the libtorch thread count (which does not move a
    /// run off its trajectory: one and two threads train bit-identical agents, see
    /// `tests/train_loop.rs`), e.g. to share the cores with another run.
    pub fn resume(
        dir: &Path,
        steps: Option<u64>,
        max_wall_s: Option<f64>,
        threads: Option<Threads>,
    ) -> Result<Self> {
        ensure!(
            dir.is_dir(),
            "--resume {}: no such directory",
            dir.display()
        );
        let run = RunDir::new(dir);
        ensure!(
            run.config().is_file(),
            "--resume {}: not a training run (config.json is missing)",
            dir.display()
        );
        let run_config = run.read_config()?;
        let train = run_config.train.with_context(|| {
            format!(
                "--resume {}: not a `trainer train` run (its config.json has no training configuration)",
                dir.display()
            )
        })?;
        let mut config: TrainConfig = serde_json::from_value(train).with_context(|| {
            format!(
                "parsing the training configuration in {}",
                run.config().display()
            )
        })?;
        let ckpt = checkpoint_dir(dir).with_context(|| {
            format!(
                "--resume {}: the run has no checkpoint yet (checkpoint/ is missing)",
                dir.display()
            )
        })?;
        if let Some(steps) = steps {
            ensure!(steps > 0, "--steps must be positive");
            config.steps = steps;
        }
        if max_wall_s.is_some() {
            config.max_wall_s = max_wall_s;
        }
        if let Some(threads) = threads {
            config.threads = threads;
        }
        config.validate()?;
        let device = parse_device(&config.device)?;
        let tuner = start_threads(config.threads, device);
        let state: LoopState = read_json(&ckpt.join("state.json"))?;
        let venv = VecEnv::restore(&state.envs)?;
        let spec = venv.spec().clone();
        let mut agent = make_agent(&config, &spec, device)?;
        let tensors = Tensor::read_safetensors(ckpt.join("agent.safetensors"))
            .with_context(|| format!("reading {}", ckpt.join("agent.safetensors").display()))?;
        let tensors: HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, v)| (k, v.to_device(device)))
            .collect();
        agent.load_state(&tensors)?;
        let replay = ReplayBuffer::load(&ckpt.join("replay.bin"))?;
        ensure!(
            replay.obs_dim == spec.obs_dim && replay.act_dim == spec.act_dim,
            "checkpoint replay buffer does not match {}",
            spec.id
        );
        let trainer = Self {
            eval_envs: Vec::new(),
            tuner,
            graphs: None,
            act_graph: None,
            pending_stats: Vec::new(),
            lane: None,
            config,
            agent,
            replay,
            state,
            venv,
            spec,
            device,
            run: Some(run),
        };
        trainer.write_config()?;
        trainer.write_metrics()?;
        Ok(trainer)
    }

    pub(super) fn run_config(&self) -> Result<RunConfig> {
        let raw = TimeEmbedding::Raw;
        let (hidden, time_dim, time_embedding, time_mlp, noise_std, nfe) =
            match (&self.config.sac, &self.config.flame) {
                (_, Some(f)) => (
                    f.policy_hidden.clone(),
                    f.time_dim,
                    f.time_embedding,
                    f.time_mlp,
                    f.noise_std as f32,
                    f.nfe,
                ),
                (Some(s), None) => (s.policy_hidden.clone(), 0, raw, false, 0.5, 1),
                (None, None) => (Vec::new(), 0, raw, false, 0.5, 1),
            };
        Ok(RunConfig {
            algo: self.config.algo,
            env_id: self.config.env_id.clone(),
            seed: self.config.seed,
            shape: PolicyShape {
                obs_dim: self.spec.obs_dim,
                act_dim: self.spec.act_dim,
                hidden,
                time_dim,
                time_embedding,
                time_mlp,
            },
            nfe,
            noise_std,
            // The agents consume raw observations (identity normalizer): no clipping.
            obs_clip: 1e6,
            env_steps: self.state.env_steps,
            git_revision: build_revision::REVISION.into(),
            train: Some(serde_json::to_value(&self.config)?),
        })
    }

    pub(super) fn write_config(&self) -> Result<()> {
        let Some(run) = &self.run else { return Ok(()) };
        write_atomic(&run.config(), |p| write_json(p, &self.run_config()?))
    }

    /// metrics.jsonl, metrics.csv and learning_curve.png from the evaluation history.
    pub(super) fn write_metrics(&self) -> Result<()> {
        let Some(run) = &self.run else { return Ok(()) };
        let rows = &self.state.evals;
        write_atomic(&run.root.join("metrics.jsonl"), |p| {
            let mut text = String::new();
            for r in rows {
                text += &serde_json::to_string(r)?;
                text.push('\n');
            }
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))
        })?;
        let keys: std::collections::BTreeSet<&String> = rows
            .iter()
            .flat_map(|r| r.stats.keys())
            .filter(|k| k.as_str() != "alpha") // a fixed column already
            .collect();
        write_atomic(&run.root.join("metrics.csv"), |p| {
            let mut text = String::from(
                "step,updates,wall_s,eval_return,eval_return_std,eval_length,eval_return_single,eval_return_int8,train_return,alpha,updates_per_s,env_steps_per_s",
            );
            for k in &keys {
                text += &format!(",{k}");
            }
            text.push('\n');
            for r in rows {
                text += &format!(
                    "{},{},{:.3},{},{},{},{},{},{},{},{:.2},{:.2}",
                    r.step,
                    r.updates,
                    r.wall_s,
                    r.eval_return,
                    r.eval_return_std,
                    r.eval_length,
                    r.eval_return_single
                        .map_or(String::new(), |v| v.to_string()),
                    r.eval_return_int8.map_or(String::new(), |v| v.to_string()),
                    r.train_return.map_or(String::new(), |v| v.to_string()),
                    r.alpha,
                    r.updates_per_s,
                    r.env_steps_per_s
                );
                for k in &keys {
                    text += &format!(
                        ",{}",
                        r.stats.get(*k).map_or(String::new(), |v| v.to_string())
                    );
                }
                text.push('\n');
            }
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))
        })?;
        let points: Vec<CurvePoint> = rows
            .iter()
            .map(|r| CurvePoint {
                step: r.step as f64,
                eval_mean: r.eval_return,
                eval_std: r.eval_return_std,
                train_mean: r.train_return.unwrap_or(f64::NAN),
            })
            .collect();
        write_atomic(&run.root.join("learning_curve.png"), |p| {
            learning_curve(p, &points, self.config.steps as f64)
        })
    }

    /// Writes the checkpoint (agent, replay, loop state) to `checkpoint.tmp/` and swaps
    /// it in for `checkpoint/`; also refreshes the run directory's policy files.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.read_stats()?;
        let Some(run) = &self.run else { return Ok(()) };
        let root = run.root.clone();
        self.state.envs = self.venv.snapshot();
        let tmp = root.join("checkpoint.tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Tensor::write_safetensors(&on_cpu(self.agent.state()), tmp.join("agent.safetensors"))?;
        self.replay.save(&tmp.join("replay.bin"))?;
        write_json(&tmp.join("state.json"), &self.state)?;
        // Swap: checkpoint/ → checkpoint.old/, checkpoint.tmp/ → checkpoint/. Whenever the
        // process dies, one complete checkpoint is under one of the two names
        // ([`checkpoint_dir`]); a leftover checkpoint.old/ is only dropped once a newer
        // checkpoint/ exists.
        let ckpt = root.join("checkpoint");
        let old = root.join("checkpoint.old");
        if ckpt.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old)?;
            }
            std::fs::rename(&ckpt, &old)?;
        }
        std::fs::rename(&tmp, &ckpt)?;
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        // The run directory's policy files, as `trainer export` reads them.
        let run = RunDir::new(&root);
        let policy = on_cpu(self.agent.policy_tensors());
        write_atomic(&run.weights(), |p| {
            Tensor::write_safetensors(&policy, p).map_err(Into::into)
        })?;
        write_atomic(&run.normalizer(), |p| {
            write_json(p, &self.agent.normalizer())
        })?;
        let states = self.replay.observations(RUN_DIR_STATES);
        write_atomic(&run.states(), |p| {
            let bytes: Vec<u8> = states
                .iter()
                .flatten()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display()))
        })?;
        self.write_config()
    }
}

/// Observations from the replay buffer a run directory keeps (`states.bin`).
pub(super) const RUN_DIR_STATES: usize = 5000;

/// Named tensors moved to the CPU, contiguous (what safetensors files take).
fn on_cpu(tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    tensors
        .into_iter()
        .map(|(name, t)| (name, t.to_device(Device::Cpu).contiguous()))
        .collect()
}

/// The checkpoint to resume from: `checkpoint/`, or `checkpoint.old/` if a crash hit
/// between the two renames of [`Trainer::checkpoint`].
pub fn checkpoint_dir(root: &Path) -> Option<PathBuf> {
    ["checkpoint", "checkpoint.old"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.join("state.json").is_file())
}

/// Writes `path` via `write(path.tmp)` and a rename, so readers never see half a file.
fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    // `name.tmp.ext`, not `name.ext.tmp`: writers that pick the format from the
    // extension (the PNG plot) must still see it.
    let tmp = match path.extension() {
        Some(ext) => path.with_extension(format!("tmp.{}", ext.to_string_lossy())),
        None => path.with_extension("tmp"),
    };
    write(&tmp)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}
