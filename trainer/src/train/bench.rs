//! `trainer bench`: an agent's update throughput at its configured sizes (median and best
//! of timed windows, against the matmul peak), and the whole loop's env steps/s; with
//! `--seeds S`, per seed and for all S seeds of one process stepped in lockstep, as
//! `trainer train --seeds` runs them.

use std::time::Instant;

use anyhow::{ensure, Result};
use serde::Serialize;
use sim::run_dir::Algo;
use tch::{Device, Tensor};

use super::{Pace, SeedGroup, TrainConfig, Trainer};

/// `trainer bench` for one agent: update throughput at the configured sizes, and env
/// steps/s of the whole training loop (acting, env stepping, storing, updating).
#[derive(Debug, Clone, Serialize)]
pub struct AgentBench {
    pub algo: Algo,
    pub env_id: String,
    pub batch_size: usize,
    /// Seeds in the process, each its own agent, replay and envs, stepped in turn.
    pub seeds: usize,
    /// The thread count the timed updates ran on ([`Trainer::threads_label`]).
    pub threads: String,
    /// The median of the [`BENCH_WINDOWS`] windows' update rates, per seed.
    pub updates_per_s: f64,
    /// The fastest window's update rate per seed: the machine's rate with the least
    /// interference, measured the way [`matmul_peak_gflops`] measures the peak (best of
    /// several).
    pub best_updates_per_s: f64,
    /// The training loop's rates, per seed.
    pub loop_env_steps_per_s: f64,
    pub loop_updates_per_s: f64,
    /// Matmul FLOPs per update ([`Agent::flops_per_update`]).
    pub flops_per_update: f64,
    /// The device's measured f32 matmul rate ([`matmul_peak_gflops`]).
    pub peak_gflops: f64,
}

impl AgentBench {
    /// Matmul GFLOP/s all seeds' updates reached at `updates_per_s` per seed.
    pub fn gflops(&self, updates_per_s: f64) -> f64 {
        self.seeds as f64 * updates_per_s * self.flops_per_update / 1e9
    }

    /// Percent of the measured matmul peak at `updates_per_s`.
    pub fn percent_of_peak(&self, updates_per_s: f64) -> f64 {
        100.0 * self.gflops(updates_per_s) / self.peak_gflops
    }
}

impl std::fmt::Display for AgentBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (seeds, per_seed) = match self.seeds {
            1 => (String::new(), String::new()),
            s => (
                format!(", {s} seeds"),
                format!(" per seed, {:.1} for all", s as f64 * self.updates_per_s),
            ),
        };
        write!(
            f,
            "{:<8} {:<20} batch {} on {}{seeds}: {:>7.1} updates/s{per_seed} (median of {BENCH_WINDOWS} windows, best {:.1}); training loop {:>7.1} env steps/s ({:.1} updates/s); {:.3} GFLOP/update → {:.1} GFLOP/s = {:.0}% of the {:.0} GFLOP/s matmul peak (best window {:.0}%)",
            self.algo.name(),
            self.env_id,
            self.batch_size,
            self.threads,
            self.updates_per_s,
            self.best_updates_per_s,
            self.loop_env_steps_per_s,
            self.loop_updates_per_s,
            self.flops_per_update / 1e9,
            self.gflops(self.updates_per_s),
            self.percent_of_peak(self.updates_per_s),
            self.peak_gflops,
            self.percent_of_peak(self.best_updates_per_s),
        )
    }
}

/// The f32 matmul rate of `device` (GFLOP/s): the best of ten 1024×1024 × 1024×1024
/// products after warm-up, on libtorch's configured threads.
pub fn matmul_peak_gflops(device: Device) -> f64 {
    let n = 1024i64;
    let a = Tensor::randn([n, n], (tch::Kind::Float, device));
    let b = Tensor::randn([n, n], (tch::Kind::Float, device));
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    for _ in 0..3 {
        let _ = a.matmul(&b);
    }
    sync();
    let best = (0..10)
        .map(|_| {
            let start = Instant::now();
            let _ = a.matmul(&b);
            sync();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (n * n * n) as f64 / best / 1e9
}

/// Windows the timed updates of [`bench_agent`] are split into. On a shared machine a
/// neighbour's burst slows a window or two: the median ignores it, and the best window
/// is the rate with the least interference (the matmul peak is a best of ten too). On
/// the 2-core workstation one mean over 1000 SAC updates moved between 169 and 219
/// updates/s from run to run with the peak at 193–203 GFLOP/s.
pub const BENCH_WINDOWS: usize = 10;

/// The median and the largest of `rates` (not empty).
fn median_and_best(rates: &[f64]) -> (f64, f64) {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    };
    (median, sorted[n - 1])
}

/// `trainer bench` for one agent at `config`'s sizes, with `seeds` seeds (from
/// `config.seed` on) in one process, as `trainer train --seeds` steps them.
pub fn bench_agent(
    mut config: TrainConfig,
    updates: usize,
    loop_steps: u64,
    peak_gflops: f64,
    seeds: usize,
) -> Result<AgentBench> {
    ensure!(seeds > 0, "--seeds must be positive");
    config.progress_secs = 0.0;
    let warm = (config.batch_size as u64).max(1000);
    config.learning_starts = warm;
    config.steps = warm + loop_steps;
    let trainers = (config.seed..config.seed + seeds as u64)
        .map(|seed| {
            let mut c = config.clone();
            c.seed = seed;
            Trainer::new(c, None)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut group = SeedGroup::of(trainers)?.trainers;
    // One update of each seed in turn, each on its lane (a GPU shared by several seeds).
    let update_each = |group: &mut [Trainer]| -> Result<()> {
        for t in group {
            t.enter_lane()?;
            t.update()?;
        }
        Ok(())
    };
    // Warm-up transitions (random actions), no updates yet; then a few untimed updates
    // (under --cuda-graph: the eager warm-ups and the recording).
    for t in &mut group {
        t.enter_lane()?;
        t.config.learning_starts = u64::MAX;
        t.run_until(warm, false)?;
        t.config.learning_starts = warm;
        for _ in 0..10 {
            t.update()?;
        }
    }
    // Under `--threads auto`, time the count the tuner settles on, as training runs
    // (its first probes take about half a second of updates).
    while group[0]
        .tuner
        .as_ref()
        .is_some_and(|tuner| !tuner.decided())
    {
        update_each(&mut group)?;
    }
    let threads = group[0].threads_label();
    let windows = BENCH_WINDOWS.min(updates);
    let mut rates = Vec::with_capacity(windows);
    for k in 0..windows {
        let count = updates * (k + 1) / windows - updates * k / windows;
        let start = Instant::now();
        for _ in 0..count {
            update_each(&mut group)?;
        }
        // The window ends when its updates have run, not when they were queued.
        for t in &mut group {
            t.enter_lane()?;
            t.read_stats()?;
        }
        rates.push(count as f64 / start.elapsed().as_secs_f64());
    }
    let (updates_per_s, best_updates_per_s) = median_and_best(&rates);
    let (s0, u0) = (group[0].state.env_steps, group[0].state.updates);
    let mut paces: Vec<Pace> = group.iter().map(|t| Pace::new(&t.state)).collect();
    let start = Instant::now();
    let mut stepping = true;
    while stepping {
        stepping = false;
        for (t, pace) in group.iter_mut().zip(&mut paces) {
            stepping |= t.advance(pace, warm + loop_steps, false)?;
        }
    }
    let dt = start.elapsed().as_secs_f64();
    let t = &group[0];
    Ok(AgentBench {
        algo: t.config.algo,
        env_id: t.config.env_id.clone(),
        batch_size: t.config.batch_size,
        seeds,
        threads,
        updates_per_s,
        best_updates_per_s,
        loop_env_steps_per_s: (t.state.env_steps - s0) as f64 / dt,
        loop_updates_per_s: (t.state.updates - u0) as f64 / dt,
        flops_per_update: t.agent.flops_per_update(t.config.batch_size),
        peak_gflops,
    })
}

#[cfg(test)]
mod tests {
    use super::median_and_best;

    /// The bench's summary of its windows: a slow window (a neighbour's burst) moves
    /// neither the median nor the best.
    #[test]
    fn median_and_best_of_window_rates() {
        assert_eq!(median_and_best(&[200.0]), (200.0, 200.0));
        assert_eq!(median_and_best(&[210.0, 60.0, 205.0]), (205.0, 210.0));
        assert_eq!(
            median_and_best(&[190.0, 220.0, 30.0, 200.0]),
            (195.0, 220.0)
        );
    }
}
