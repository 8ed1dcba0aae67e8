//! How many libtorch intra-op threads the updates run on.
//!
//! On the 2-core workstation a SAC update is ~200 small ops. Two threads help only while
//! OpenMP's worker spins between parallel regions (`trainer` re-execs itself with a
//! bounded spin, see `main.rs`); then SAC runs ~190 updates/s against ~110 on one thread.
//! When another process holds a core, the same spinning makes every parallel region wait
//! for a descheduled peer and two threads collapse (measured: two SAC benches at once,
//! 7 updates/s each) while one thread keeps going. No fixed choice is right for both, so
//! `--threads auto` (the default) measures: [`ThreadTuner`] times the updates on each
//! candidate count (every core, then halvings down to one: 16 → 8, 4, 2, 1, since on a
//! many-core machine a SAC update's small ops do best on a few), runs on the fastest,
//! and measures again every [`RETUNE_AFTER_S`] seconds of update time or as soon as the
//! rate falls well below what it measured.
//!
//! Switching the count does not change the numbers here: runs on each candidate count
//! give bit-identical agents (`tests/train_loop.rs` checks it on the machine it runs on),
//! so a tuned run still follows its seed's curve and resumes onto it. On AVX-512 machines
//! that needs MKL's strict reproducibility mode (`MKL_CBWR=AUTO,STRICT`, which `trainer`
//! sets for itself and `.cargo/config.toml` for `cargo test`): by default MKL splits long
//! matmul reductions across threads there. `--threads N` fixes the count.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Update time each candidate thread count runs before its rate counts.
const PROBE_S: f64 = 0.25;
/// ... and at least this many updates (FLAME's take ~0.1 s each).
const PROBE_UPDATES: u32 = 3;
/// Updates at the start that are not timed (first-touch allocations, caches).
const WARMUP_UPDATES: u32 = 5;
/// Seconds of update time on the chosen count before every candidate is measured again.
pub const RETUNE_AFTER_S: f64 = 30.0;
/// Measure again early when a [`CHECK_S`] stretch runs below this fraction of the rate
/// the chosen count was measured at (another process took a core).
const SLOWDOWN: f64 = 0.6;
/// Length of the stretches (update time) the slowdown check compares.
const CHECK_S: f64 = 1.0;

/// The machine's cores (what `auto` may use), 1 if unknown.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The counts `auto` chooses from on `cores` cores, in probe order: `cores`, then
/// halvings down to one (16 → [16, 8, 4, 2, 1], 6 → [6, 3, 1]).
pub fn candidates(cores: usize) -> Vec<usize> {
    let mut out = vec![cores.max(1)];
    while let Some(&last) = out.last().filter(|&&n| n > 1) {
        out.push(last / 2);
    }
    out
}

/// `--threads`: a fixed count, or `auto` ([`ThreadTuner`] over [`candidates`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    Auto,
    Fixed(usize),
}

impl Threads {
    pub fn validate(self) -> Result<()> {
        ensure!(
            self != Threads::Fixed(0),
            "--threads must be at least 1 (or auto)"
        );
        Ok(())
    }

    /// The tuner for this setting on a machine with `cores` cores: none when the count
    /// is fixed or there is nothing to choose from.
    pub fn tuner(self, cores: usize) -> Option<ThreadTuner> {
        match self {
            Threads::Auto if cores > 1 => Some(ThreadTuner::new(candidates(cores))),
            _ => None,
        }
    }

    /// The count the run starts on.
    pub fn initial(self, cores: usize) -> usize {
        match self {
            Threads::Auto => cores,
            Threads::Fixed(n) => n,
        }
    }
}

impl FromStr for Threads {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        if s == "auto" {
            return Ok(Threads::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Threads::Fixed(n)),
            _ => bail!("--threads takes `auto` or a positive thread count, got `{s}`"),
        }
    }
}

/// In `config.json` a count is a number (as in runs from before `auto`), `auto` a string.
impl Serialize for Threads {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Threads::Auto => s.serialize_str("auto"),
            Threads::Fixed(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Threads {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(usize),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) => Ok(Threads::Fixed(n)),
            Raw::Word(w) => w.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Update time and count of one measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    updates: u32,
    busy_s: f64,
}

impl Window {
    fn add(&mut self, busy: Duration) {
        self.updates += 1;
        self.busy_s += busy.as_secs_f64();
    }

    fn rate(&self) -> f64 {
        self.updates as f64 / self.busy_s.max(1e-9)
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Untimed first updates.
    WarmUp { left: u32 },
    /// Timing candidate `index`.
    Probe { index: usize },
    /// Running on the chosen candidate, measured at `rate` updates/s.
    Run { rate: f64, ran_s: f64 },
}

/// Chooses the intra-op thread count from measured update times (see the module doc).
/// Pure bookkeeping: [`ThreadTuner::record`] is given each update's duration and says
/// when to switch; the caller applies it (`tch::set_num_threads`).
#[derive(Debug, Clone)]
pub struct ThreadTuner {
    candidates: Vec<usize>,
    current: usize,
    phase: Phase,
    window: Window,
    rates: Vec<f64>,
}

impl ThreadTuner {
    /// Candidates in probe order; the run starts on the first.
    pub fn new(candidates: Vec<usize>) -> Self {
        assert!(!candidates.is_empty(), "no thread counts to choose from");
        Self {
            rates: vec![0.0; candidates.len()],
            candidates,
            current: 0,
            phase: Phase::WarmUp {
                left: WARMUP_UPDATES,
            },
            window: Window::default(),
        }
    }

    /// The thread count updates run on now.
    pub fn threads(&self) -> usize {
        self.candidates[self.current]
    }

    /// Whether every candidate has been measured and the fastest chosen.
    pub fn decided(&self) -> bool {
        matches!(self.phase, Phase::Run { .. })
    }

    /// Records one update that took `busy` on [`ThreadTuner::threads`] threads; returns
    /// the count to switch to, if it changes.
    pub fn record(&mut self, busy: Duration) -> Option<usize> {
        let before = self.threads();
        match self.phase {
            Phase::WarmUp { left } => {
                self.phase = if left > 1 {
                    Phase::WarmUp { left: left - 1 }
                } else {
                    Phase::Probe { index: 0 }
                };
            }
            Phase::Probe { index } => {
                self.window.add(busy);
                if self.window.updates >= PROBE_UPDATES && self.window.busy_s >= PROBE_S {
                    self.rates[index] = self.window.rate();
                    self.window = Window::default();
                    if index + 1 < self.candidates.len() {
                        self.phase = Phase::Probe { index: index + 1 };
                        self.current = index + 1;
                    } else {
                        let (best, &rate) = self
                            .rates
                            .iter()
                            .enumerate()
                            .max_by(|a, b| a.1.total_cmp(b.1))
                            .expect("candidates");
                        self.current = best;
                        self.phase = Phase::Run { rate, ran_s: 0.0 };
                    }
                }
            }
            Phase::Run { rate, ran_s } => {
                self.window.add(busy);
                let ran_s = ran_s + busy.as_secs_f64();
                let stretch_done = self.window.busy_s >= CHECK_S;
                let slowed = stretch_done && self.window.rate() < SLOWDOWN * rate;
                if slowed || ran_s >= RETUNE_AFTER_S {
                    self.window = Window::default();
                    self.current = 0;
                    self.phase = Phase::Probe { index: 0 };
                } else {
                    if stretch_done {
                        self.window = Window::default();
                    }
                    self.phase = Phase::Run { rate, ran_s };
                }
            }
        }
        (self.threads() != before).then(|| self.threads())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds updates whose duration depends on the thread count until `until` holds or
    /// `limit` updates ran; returns the updates fed and the counts switched to.
    fn drive(
        tuner: &mut ThreadTuner,
        mut seconds_per_update: impl FnMut(usize, usize) -> f64,
        limit: usize,
        until: impl Fn(&ThreadTuner) -> bool,
    ) -> (usize, Vec<usize>) {
        let mut switches = Vec::new();
        for i in 0..limit {
            if until(tuner) {
                return (i, switches);
            }
            let busy = Duration::from_secs_f64(seconds_per_update(i, tuner.threads()));
            switches.extend(tuner.record(busy));
        }
        (limit, switches)
    }

    /// Idle machine: two threads are faster, so after probing both it runs on two.
    #[test]
    fn settles_on_the_faster_count() {
        let mut t = ThreadTuner::new(vec![2, 1]);
        let speed = |_, n| if n == 2 { 1.0 / 190.0 } else { 1.0 / 110.0 };
        let (fed, switches) = drive(&mut t, speed, 10_000, ThreadTuner::decided);
        assert_eq!(switches, vec![1, 2], "probes one thread, returns to two");
        assert_eq!(t.threads(), 2);
        // Warm-up, ≥ 0.25 s on each count.
        assert!(
            (5 + 48 + 28..5 + 48 + 28 + 3).contains(&fed),
            "{fed} updates"
        );
    }

    /// Another process holds a core: one thread wins and the run stays there.
    #[test]
    fn falls_back_to_one_thread_under_contention() {
        let mut t = ThreadTuner::new(vec![2, 1]);
        let speed = |_, n| if n == 2 { 1.0 / 7.0 } else { 1.0 / 90.0 };
        drive(&mut t, speed, 10_000, ThreadTuner::decided);
        assert_eq!(t.threads(), 1);
        let (_, switches) = drive(&mut t, speed, 500, |_| false);
        assert!(switches.is_empty(), "{switches:?}");
    }

    /// Measures both again after RETUNE_AFTER_S of update time, and moves when the
    /// machine changed meanwhile.
    #[test]
    fn remeasures_periodically() {
        let mut t = ThreadTuner::new(vec![2, 1]);
        let idle = |_, n| if n == 2 { 0.005 } else { 0.009 };
        drive(&mut t, idle, 10_000, ThreadTuner::decided);
        let (fed, switches) = drive(&mut t, idle, 100_000, |t| !t.decided());
        let ran_s = fed as f64 * 0.005;
        assert!(
            (RETUNE_AFTER_S..RETUNE_AFTER_S + 0.01).contains(&ran_s),
            "{ran_s}"
        );
        assert!(switches.is_empty());
        // Both counts are now equally slow except that one thread has become faster.
        let busy = |_, n| if n == 2 { 0.02 } else { 0.01 };
        drive(&mut t, busy, 10_000, ThreadTuner::decided);
        assert_eq!(t.threads(), 1);
    }

    /// A slowdown on the chosen count (another process starts) triggers a measurement
    /// within a couple of seconds, long before the periodic one.
    #[test]
    fn reacts_to_a_slowdown() {
        let mut t = ThreadTuner::new(vec![2, 1]);
        drive(
            &mut t,
            |_, n| if n == 2 { 0.005 } else { 0.009 },
            10_000,
            ThreadTuner::decided,
        );
        let mut busy_s = 0.0;
        let contended = |_, n| if n == 2 { 1.0 / 7.0 } else { 1.0 / 90.0 };
        let (_, switches) = drive(
            &mut t,
            |i, n| {
                let s = contended(i, n);
                busy_s += s;
                s
            },
            10_000,
            |t| t.decided() && t.threads() == 1,
        );
        assert_eq!(switches, vec![1]);
        assert!(busy_s < 2.0 * CHECK_S + 1.0, "{busy_s} s to react");
    }

    /// Noise below the slowdown threshold does not make it re-measure.
    #[test]
    fn ignores_noise() {
        let mut t = ThreadTuner::new(vec![2, 1]);
        let noisy = |i: usize, n| {
            let base = if n == 2 { 0.005 } else { 0.009 };
            base * if i.is_multiple_of(3) { 1.4 } else { 0.9 }
        };
        drive(&mut t, noisy, 10_000, ThreadTuner::decided);
        let (fed, _) = drive(&mut t, noisy, 4000, |t| !t.decided());
        assert_eq!(fed, 4000, "re-measured after {fed} updates");
    }

    #[test]
    fn parses_and_round_trips() {
        assert_eq!("auto".parse::<Threads>().unwrap(), Threads::Auto);
        assert_eq!("3".parse::<Threads>().unwrap(), Threads::Fixed(3));
        for bad in ["0", "-1", "two", ""] {
            let err = bad.parse::<Threads>().unwrap_err().to_string();
            assert!(err.contains("--threads"), "{err}");
        }
        for t in [Threads::Auto, Threads::Fixed(2)] {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<Threads>(&json).unwrap(), t);
        }
        // Runs written before `auto` existed hold a plain count.
        assert_eq!(
            serde_json::from_str::<Threads>("2").unwrap(),
            Threads::Fixed(2)
        );
        assert!(serde_json::from_str::<Threads>("\"many\"").is_err());
    }

    #[test]
    fn fixed_counts_have_no_tuner() {
        assert!(Threads::Fixed(2).tuner(2).is_none());
        assert!(Threads::Auto.tuner(1).is_none());
        assert_eq!(Threads::Auto.tuner(4).unwrap().threads(), 4);
        assert_eq!(candidates(2), vec![2, 1]);
        assert_eq!(candidates(16), vec![16, 8, 4, 2, 1]);
        assert_eq!(candidates(6), vec![6, 3, 1]);
        assert_eq!(candidates(1), vec![1]);
        assert_eq!(Threads::Auto.initial(4), 4);
        assert_eq!(Threads::Fixed(1).initial(4), 1);
    }
}
