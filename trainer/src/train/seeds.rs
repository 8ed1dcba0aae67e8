//! Several seeds of one configuration in one process: `trainer train --seeds 0,1,2,3,4`.
//!
//! Each seed is a whole [`Trainer`] with its own envs, replay buffer, agent, metrics,
//! checkpoints and run directory `OUT/seed-N`: a normal run, which `trainer export`,
//! `trainer results` and `--resume OUT/seed-N` read like any other. The group steps its
//! trainers in lockstep, one vector step each in turn, so their evaluations, checkpoints
//! and wall budgets stay in step, and `--resume OUT` resumes every seed.
//!
//! Seed s of a group is the single run of seed s, bit for bit: every random draw of a
//! run is counter-based (warm-up actions and minibatch indices from host generators
//! seeded by (seed, purpose, counter); torch's generator reseeded before each exploring
//! action, update and evaluation), so nothing one trainer does between another's steps
//! reaches that other's numbers. `tests/seed_group.rs` checks it.
//!
//! On a GPU, one process holds the device for all seeds, and each trainer has a lane
//! ([`CudaLane`]): its own stream, so one seed's update runs on the GPU while the host
//! steps the next seed's envs and queues its work, and its own random-number state, so
//! with `--cuda-graph` the seeds' recorded updates replay concurrently, each drawing from
//! its own (seed, counter) reseeds as a lone run does.

use std::path::Path;

use anyhow::{bail, ensure, Result};
use sim::run_dir::{group_runs, seed_dir};

use tch::Device;

use super::{Pace, Summary, TrainConfig, Trainer};
use crate::cuda_graph::CudaLane;
use crate::threads::Threads;

/// The trainers of a seed group.
pub struct SeedGroup {
    pub trainers: Vec<Trainer>,
}

impl SeedGroup {
    /// A fresh group: `config` with each of `seeds`, in `out/seed-N`.
    pub fn new(config: TrainConfig, seeds: &[u64], out: &Path) -> Result<Self> {
        ensure!(!seeds.is_empty(), "--seeds needs at least one seed");
        let mut sorted = seeds.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        ensure!(
            sorted.len() == seeds.len(),
            "--seeds {seeds:?} names a seed twice"
        );
        ensure!(
            !out.join("config.json").exists(),
            "{} already holds a single run: choose another --out",
            out.display()
        );
        let trainers = seeds
            .iter()
            .map(|&seed| {
                let mut c = config.clone();
                c.seed = seed;
                Trainer::new(c, Some(&seed_dir(out, seed)))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::of(trainers)
    }

    /// A group of one: a plain run.
    pub fn single(trainer: Trainer) -> Self {
        Self {
            trainers: vec![trainer],
        }
    }

    /// Reopens every seed run of the group directory `dir` from its last checkpoint, with
    /// [`Trainer::resume`]'s budget and thread overrides.
    pub fn resume(
        dir: &Path,
        steps: Option<u64>,
        max_wall_s: Option<f64>,
        threads: Option<Threads>,
    ) -> Result<Self> {
        let runs = group_runs(dir)?;
        ensure!(
            !runs.is_empty(),
            "--resume {}: not a seed group (no seed-N/ run directories)",
            dir.display()
        );
        let trainers = runs
            .iter()
            .map(|run| Trainer::resume(run, steps, max_wall_s, threads))
            .collect::<Result<Vec<_>>>()?;
        Self::of(trainers)
    }

    /// The group of `trainers`: one thread tuner, the first seed's (the seeds' updates
    /// are alike, and tuners of their own would overrule each other's thread count); on
    /// a GPU, a lane per trainer ([`CudaLane`]) once there are several.
    pub(super) fn of(mut trainers: Vec<Trainer>) -> Result<Self> {
        for t in trainers.iter_mut().skip(1) {
            t.tuner = None;
        }
        if trainers.len() > 1 {
            for t in trainers.iter_mut().filter(|t| t.device != Device::Cpu) {
                t.lane = Some(CudaLane::new(t.device)?);
            }
        }
        Ok(Self { trainers })
    }

    /// `--cuda-graph` given with `--resume`, for every seed.
    pub fn use_cuda_graph(&mut self) -> Result<()> {
        self.trainers
            .iter_mut()
            .try_for_each(Trainer::use_cuda_graph)
    }

    /// Trains every seed to its budget in lockstep and finishes each run (last evaluation,
    /// checkpoint, summary). A seed that fails (the NaN/Inf guard) stops with its last good
    /// checkpoint kept, and the others go on; the group then reports the failures. A group
    /// of one is a plain [`Trainer::run`].
    pub fn run(&mut self) -> Result<Vec<Summary>> {
        if let [one] = self.trainers.as_mut_slice() {
            return Ok(vec![one.run()?]);
        }
        let mut paces: Vec<Option<Pace>> = self
            .trainers
            .iter()
            .map(|t| Some(Pace::new(&t.state)))
            .collect();
        let mut failed: Vec<Option<String>> = vec![None; self.trainers.len()];
        while paces.iter().any(Option::is_some) {
            for ((t, pace), failure) in self.trainers.iter_mut().zip(&mut paces).zip(&mut failed) {
                let Some(p) = pace else { continue };
                match t.advance(p, t.config.steps, true) {
                    Ok(true) => {}
                    Ok(false) => *pace = None,
                    Err(e) => {
                        let why = format!("seed {}: {e:#}", t.config.seed);
                        eprintln!("{why}; the other seeds go on");
                        *failure = Some(why);
                        *pace = None;
                    }
                }
            }
        }
        let mut summaries = Vec::new();
        for (t, failure) in self.trainers.iter_mut().zip(&failed) {
            if failure.is_none() {
                summaries.push(t.finish()?);
            }
        }
        let failures: Vec<String> = failed.into_iter().flatten().collect();
        if !failures.is_empty() {
            bail!(
                "{} of {} seeds failed (the others finished):\n{}",
                failures.len(),
                self.trainers.len(),
                failures.join("\n")
            );
        }
        Ok(summaries)
    }
}
