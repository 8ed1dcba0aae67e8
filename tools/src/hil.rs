//! The host-in-the-loop runner: MuJoCo on the host, the policy on the device.
//!
//! Each step sends the observation to the device (`Act`), applies the device's action to
//! the env, and checks it bit for bit against the host `runtime` on the same observation
//! and mode. Link faults (timeouts, frame errors reported by either side) are retried with
//! a fresh sequence number and counted; they never pass unseen.
//!
//! With [`FaultPlan`] (`tools hil --inject-faults SEED[:RATE]`) the runner also corrupts
//! its own traffic: on a random fraction of steps it first sends a damaged copy of the
//! step's `Act` frame (random bytes, dropped bytes, a bit flip, an oversized frame, or a
//! flood of line noise), resynchronizes, records what the firmware answered against what
//! a correct firmware must answer (one frame error per damaged frame, computed with the
//! same frame reader on the host), and then sends the step's request cleanly, so the
//! episode completes and every step is still checked bit for bit.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use runtime::noise::SplitMix64;
use runtime::wire::{
    decode_frame, CostUnit, ErrorCode, Feed, FrameReader, Request, Response, MAX_FRAME,
};
use runtime::{NoiseMode, Policy, Scratch};
use serde::Serialize;
use sim::env;
use sim::float_policy::FloatPolicy;
use sim::rollout::{run_episode, to_f32};

use crate::link::{encode_request, DeviceLink, LinkError};

/// How the base sample is drawn on both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeArg {
    /// z = 0.
    Deterministic,
    /// z from the runtime's integer generator, seeded per step.
    Stochastic,
}

#[derive(Debug, Clone)]
pub struct HilOptions {
    pub episodes: usize,
    /// Episode e resets the env with seed `seed + e`.
    pub seed: u64,
    pub mode: ModeArg,
    /// Stop an episode after this many steps (the env's own limit otherwise).
    pub max_steps: Option<usize>,
    /// Attempts per step before the run fails.
    pub attempts: usize,
    /// A run directory whose float policy is rolled out on the same seeds for comparison.
    pub float_run: Option<PathBuf>,
    /// Corrupt the host→device traffic on some steps (fault injection).
    pub faults: Option<FaultPlan>,
}

impl HilOptions {
    /// Episode e resets the env with seed `seed + e`: refuses (one line) a run whose last
    /// episode would pass `u64::MAX`, before any device is started.
    pub fn check_episode_seeds(&self) -> Result<()> {
        let last = self.episodes.saturating_sub(1) as u64;
        match self.seed.checked_add(last) {
            Some(_) => Ok(()),
            None => bail!(
                "--seed {} with --episodes {}: episode {last} would reset with seed {} + {last}, past the largest seed {}",
                self.seed,
                self.episodes,
                self.seed,
                u64::MAX
            ),
        }
    }
}

/// Which steps get a corrupted request: each step independently with probability `rate`,
/// drawn from a generator seeded with `seed` (the same plan gives the same faults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaultPlan {
    pub seed: u64,
    pub rate: f64,
}

impl FaultPlan {
    /// The fault rate when `--inject-faults` names only a seed.
    pub const DEFAULT_RATE: f64 = 0.05;
}

impl std::str::FromStr for FaultPlan {
    type Err = String;

    /// `SEED` or `SEED:RATE`, with RATE in (0, 1].
    fn from_str(text: &str) -> Result<Self, String> {
        let (seed, rate) = match text.split_once(':') {
            Some((seed, rate)) => (seed, Some(rate)),
            None => (text, None),
        };
        let seed = seed
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("fault seed `{seed}` is not an unsigned integer (SEED[:RATE])"))?;
        let rate = match rate {
            None => Self::DEFAULT_RATE,
            Some(r) => r
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| *r > 0.0 && *r <= 1.0)
                .ok_or_else(|| format!("fault rate `{r}` is not a number in (0, 1]"))?,
        };
        Ok(Self { seed, rate })
    }
}

/// How one injected fault damages the step's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// 1–16 random non-zero bytes inserted into the frame.
    RandomBytes,
    /// 1–3 bytes of the frame body lost.
    DroppedBytes,
    /// One bit of the frame body flipped.
    BitFlip,
    /// The frame padded past the device's receive buffer (`MAX_FRAME`).
    Oversized,
    /// 256–2048 bytes of line noise (zeros included) instead of the request.
    Flood,
}

impl FaultKind {
    /// Every kind, in the order the runner cycles through them.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::RandomBytes,
        FaultKind::DroppedBytes,
        FaultKind::BitFlip,
        FaultKind::Oversized,
        FaultKind::Flood,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::RandomBytes => "random-bytes",
            FaultKind::DroppedBytes => "dropped-bytes",
            FaultKind::BitFlip => "bit-flip",
            FaultKind::Oversized => "oversized",
            FaultKind::Flood => "flood",
        }
    }
}

/// One corrupted step: what was sent, what a correct firmware answers to it, and what the
/// firmware answered.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    pub episode: usize,
    pub step: usize,
    pub kind: FaultKind,
    /// Bytes put on the line for the damaged request.
    pub bytes: usize,
    /// The frame errors a correct firmware sends for these bytes, in order (the host
    /// splits them with the firmware's own frame reader).
    pub expected: Vec<ErrorCode>,
    /// The frame errors the firmware sent.
    pub answered: Vec<ErrorCode>,
    /// Anything else the firmware sent before the link was resynchronized (a response
    /// with a sequence number, a frame the host could not decode): never expected.
    pub unexpected: Vec<String>,
}

impl FaultReport {
    /// The firmware answered exactly the expected frame errors and nothing else.
    pub fn as_expected(&self) -> bool {
        self.answered == self.expected && self.unexpected.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EpisodeReport {
    pub seed: u64,
    pub steps: usize,
    pub total_return: f64,
    pub terminated: bool,
    /// Steps whose device action equals the host runtime's bit for bit.
    pub bit_exact_steps: usize,
    /// Failed attempts (timeouts, corrupted frames, device errors) that were retried.
    pub link_errors: usize,
    /// The float policy's return on the same seed, when a run directory was given.
    pub float_return: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HilReport {
    pub env_id: String,
    pub blob_hash: u32,
    pub mode: ModeArg,
    pub cost_unit: Option<String>,
    pub episodes: Vec<EpisodeReport>,
    pub cost_min: u32,
    pub cost_median: u32,
    pub cost_max: u32,
    /// The float return recorded in the blob's provenance at export, if any.
    pub export_float_return: Option<f32>,
    pub export_int8_return: Option<f32>,
    /// The fault-injection plan, if any, and every fault injected, in order.
    pub fault_plan: Option<FaultPlan>,
    pub faults: Vec<FaultReport>,
}

impl HilReport {
    pub fn bit_exact(&self) -> bool {
        self.episodes.iter().all(|e| e.bit_exact_steps == e.steps)
    }
    /// Every injected fault was answered as a correct firmware must answer it.
    pub fn faults_handled(&self) -> bool {
        self.faults.iter().all(FaultReport::as_expected)
    }
    /// Bit-exact on every step and every injected fault handled: the run passed.
    pub fn passed(&self) -> bool {
        self.bit_exact() && self.faults_handled()
    }
    pub fn mean_return(&self) -> f64 {
        self.episodes.iter().map(|e| e.total_return).sum::<f64>()
            / self.episodes.len().max(1) as f64
    }
}

impl std::fmt::Display for HilReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "host-in-the-loop: {} | blob crc32 {:#010x} | mode {:?}",
            self.env_id, self.blob_hash, self.mode
        )?;
        writeln!(
            f,
            "{:>7} {:>6} {:>6} {:>12} {:>12} {:>11} {:>11}",
            "episode", "seed", "steps", "return", "float ret", "bit-exact", "link errs"
        )?;
        for (i, e) in self.episodes.iter().enumerate() {
            let float = e
                .float_return
                .map_or("-".to_string(), |r| format!("{r:.2}"));
            writeln!(
                f,
                "{:>7} {:>6} {:>6} {:>12.2} {:>12} {:>5}/{:<5} {:>11}",
                i,
                e.seed,
                e.steps,
                e.total_return,
                float,
                e.bit_exact_steps,
                e.steps,
                e.link_errors
            )?;
        }
        writeln!(
            f,
            "mean return     {:.2} over {} episode(s)",
            self.mean_return(),
            self.episodes.len()
        )?;
        if let (Some(fl), Some(q)) = (self.export_float_return, self.export_int8_return) {
            writeln!(
                f,
                "at export       float {fl:.2}, quantized {q:.2} (blob provenance)"
            )?;
        }
        let unit = self.cost_unit.as_deref().unwrap_or("cost units");
        writeln!(
            f,
            "cost/action     min {}  median {}  max {} {unit}",
            self.cost_min, self.cost_median, self.cost_max
        )?;
        let links: usize = self.episodes.iter().map(|e| e.link_errors).sum();
        writeln!(f, "link errors     {links}")?;
        if let Some(plan) = &self.fault_plan {
            let handled = self.faults.iter().filter(|r| r.as_expected()).count();
            writeln!(
                f,
                "faults          {} injected (seed {}, rate {}), {handled} answered as expected, {} not",
                self.faults.len(),
                plan.seed,
                plan.rate,
                self.faults.len() - handled
            )?;
            if !self.faults.is_empty() {
                writeln!(
                    f,
                    "{:>9} {:>6} {:<14} {:>6}  firmware answered",
                    "episode", "step", "fault", "bytes"
                )?;
            }
            for r in &self.faults {
                let mut answer = summarize_codes(&r.answered);
                if !r.unexpected.is_empty() {
                    answer += &format!("; unexpected: {}", r.unexpected.join(", "));
                }
                if !r.as_expected() {
                    answer += &format!("  <- expected {}", summarize_codes(&r.expected));
                }
                writeln!(
                    f,
                    "{:>9} {:>6} {:<14} {:>6}  {answer}",
                    r.episode,
                    r.step,
                    r.kind.name(),
                    r.bytes
                )?;
            }
        }
        write!(
            f,
            "bit-exact: {}",
            if self.bit_exact() { "yes" } else { "NO" }
        )?;
        if self.fault_plan.is_some() {
            write!(
                f,
                "\nfaults handled: {}",
                if self.faults_handled() { "yes" } else { "NO" }
            )?;
        }
        Ok(())
    }
}

/// `CorruptFrame ×3, FrameTooLong` (runs of equal codes counted), or `nothing`.
fn summarize_codes(codes: &[ErrorCode]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < codes.len() {
        let run = codes[i..].iter().take_while(|c| **c == codes[i]).count();
        parts.push(if run == 1 {
            format!("{:?}", codes[i])
        } else {
            format!("{:?} x{run}", codes[i])
        });
        i += run;
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

/// The per-step seed of stochastic mode: distinct for every (run seed, episode, step).
fn step_seed(seed: u64, episode: usize, step: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((episode as u64) << 32) ^ step as u64
}

/// Run `opts.episodes` episodes of `blob`'s task with the device in the loop.
pub fn run_hil<T: Read + Write>(
    link: &mut DeviceLink<T>,
    blob: &[u8],
    opts: &HilOptions,
) -> Result<HilReport> {
    let policy = Policy::from_bytes(blob).map_err(|e| anyhow::anyhow!("policy blob: {e}"))?;
    let meta = &policy.blob().meta;
    let env_id = meta.env_id.to_string();
    let mut env = env::make(&env_id)?;
    if env.spec().obs_dim != policy.obs_dim() || env.spec().act_dim != policy.act_dim() {
        bail!(
            "blob dims (obs {}, act {}) do not match {env_id}",
            policy.obs_dim(),
            policy.act_dim()
        );
    }
    let cost_unit = match link.sync(std::time::Duration::from_secs(10))? {
        runtime::wire::Response::Info {
            blob_hash,
            cost_unit,
            ..
        } => {
            let host_hash = runtime::blob::blob_hash(blob);
            if blob_hash != host_hash {
                bail!("the device runs blob {blob_hash:#010x}, not {host_hash:#010x}: flash or build the firmware with this blob");
            }
            Some(match cost_unit {
                CostUnit::Instructions => "instructions".to_string(),
                CostUnit::Cycles => "cycles".to_string(),
            })
        }
        runtime::wire::Response::Error { code, .. } => bail!("the device refuses to act: {code:?}"),
        other => bail!("unexpected answer to Info: {other:?}"),
    };
    let float = match &opts.float_run {
        Some(run) => Some(FloatPolicy::load(run)?),
        None => None,
    };

    let mut scratch = Scratch::new();
    let mut host_action = vec![0f32; policy.act_dim()];
    let mut costs = Vec::new();
    let mut episodes = Vec::new();
    let mut fault_rng = opts.faults.map(|plan| SplitMix64::new(plan.seed));
    let mut faults = Vec::new();
    opts.check_episode_seeds()?;
    for e in 0..opts.episodes {
        let seed = opts.seed + e as u64;
        let mut obs = to_f32(&env.reset(seed));
        let mut report = EpisodeReport {
            seed,
            steps: 0,
            total_return: 0.0,
            terminated: false,
            bit_exact_steps: 0,
            link_errors: 0,
            float_return: None,
        };
        loop {
            let mode = match opts.mode {
                ModeArg::Deterministic => NoiseMode::Deterministic,
                ModeArg::Stochastic => NoiseMode::Stochastic {
                    seed: step_seed(opts.seed, e, report.steps),
                },
            };
            if let (Some(plan), Some(rng)) = (&opts.faults, &mut fault_rng) {
                if uniform(rng) < plan.rate {
                    let kind = FaultKind::ALL[faults.len() % FaultKind::ALL.len()];
                    let fault = inject_fault(link, &obs, mode, kind, rng).with_context(|| {
                        format!("episode {e} step {}: injecting {kind:?}", report.steps)
                    })?;
                    faults.push(FaultReport {
                        episode: e,
                        step: report.steps,
                        ..fault
                    });
                }
            }
            let device = act_with_retries(link, &obs, mode, opts.attempts, &mut report.link_errors)
                .with_context(|| format!("episode {e} step {}", report.steps))?;
            policy
                .act(&obs, mode, &mut scratch, &mut host_action)
                .map_err(|err| anyhow::anyhow!("host runtime: {err}"))?;
            let exact = device.action.len() == host_action.len()
                && device
                    .action
                    .iter()
                    .zip(&host_action)
                    .all(|(d, h)| d.to_bits() == h.to_bits());
            report.bit_exact_steps += usize::from(exact);
            costs.push(device.cost);
            let action: Vec<f64> = device.action.iter().map(|&a| a as f64).collect();
            let step = env.step(&action)?;
            report.total_return += step.reward;
            report.steps += 1;
            let capped = opts.max_steps.is_some_and(|m| report.steps >= m);
            if step.terminated || step.truncated || capped {
                report.terminated = step.terminated;
                break;
            }
            obs = to_f32(&step.obs);
        }
        if let Some(float) = &float {
            let zero = vec![0f32; float.act_dim];
            let mut float_env = env::make(&env_id)?;
            let result = run_episode(float_env.as_mut(), seed, |o| Ok(float.act(o, &zero)))?;
            report.float_return = Some(result.total_return);
        }
        episodes.push(report);
    }
    costs.sort_unstable();
    let pick = |q: f64| {
        costs
            .get(((costs.len().saturating_sub(1)) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    Ok(HilReport {
        env_id,
        blob_hash: runtime::blob::blob_hash(blob),
        mode: opts.mode,
        cost_unit,
        episodes,
        cost_min: pick(0.0),
        cost_median: pick(0.5),
        cost_max: pick(1.0),
        export_float_return: meta.provenance.float_return,
        export_int8_return: meta.provenance.int8_return,
        fault_plan: opts.faults,
        faults,
    })
}

/// Uniform in [0, 1) from 53 random bits.
fn uniform(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn below(rng: &mut SplitMix64, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

fn nonzero_byte(rng: &mut SplitMix64) -> u8 {
    1 + (rng.next_u64() % 255) as u8
}

/// A damaged copy of `frame` (one complete request frame, delimiter last).
pub fn damage(frame: &[u8], kind: FaultKind, rng: &mut SplitMix64) -> Vec<u8> {
    let body = &frame[..frame.len() - 1];
    let mut out = body.to_vec();
    match kind {
        FaultKind::RandomBytes => {
            let at = below(rng, out.len() + 1);
            let noise: Vec<u8> = (0..1 + below(rng, 16)).map(|_| nonzero_byte(rng)).collect();
            out.splice(at..at, noise);
        }
        FaultKind::DroppedBytes => {
            for _ in 0..(1 + below(rng, 3)).min(out.len() - 1) {
                out.remove(below(rng, out.len()));
            }
        }
        FaultKind::BitFlip => loop {
            let bit = below(rng, out.len() * 8);
            let flipped = body[bit / 8] ^ (1 << (bit % 8));
            // A flip to 0x00 would split the frame in two: still a fault, but not a bit flip.
            if flipped != 0 {
                out[bit / 8] = flipped;
                break;
            }
        },
        FaultKind::Oversized => {
            let extra = MAX_FRAME + 1 - out.len().min(MAX_FRAME) + below(rng, 64);
            out.extend((0..extra).map(|_| nonzero_byte(rng)));
        }
        FaultKind::Flood => {
            let n = 256 + below(rng, 1793);
            out = (0..n).map(|_| rng.next_u64() as u8).collect();
        }
    }
    out.push(0);
    out
}

/// What a correct firmware answers to `bytes` sent at a frame boundary: one frame error per
/// non-empty frame they contain (a frame that decodes as a request is not a fault, and is
/// returned as `None`).
pub fn expected_answers(bytes: &[u8]) -> Option<Vec<ErrorCode>> {
    let mut reader = Box::new(FrameReader::<MAX_FRAME>::new());
    let mut codes = Vec::new();
    for &b in bytes {
        match reader.feed(b) {
            Feed::Pending => {}
            Feed::Frame(n) => match decode_frame::<Request>(reader.frame(n)) {
                Ok(_) => return None,
                Err(e) => codes.push(e.code()),
            },
            Feed::Overflow => codes.push(ErrorCode::FrameTooLong),
        }
    }
    Some(codes)
}

/// What a stream of host→device bytes holds, split as the firmware splits it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Frames that decode as `Act` requests.
    pub acts: usize,
    /// Frames that decode as other requests.
    pub other_requests: usize,
    /// Frames a correct firmware answers with a frame error (corrupt or too long).
    pub errors: usize,
}

/// Split `bytes` (starting at a frame boundary) into frames and classify them.
pub fn census(bytes: &[u8]) -> Census {
    let mut reader = Box::new(FrameReader::<MAX_FRAME>::new());
    let mut census = Census::default();
    for &b in bytes {
        match reader.feed(b) {
            Feed::Pending => {}
            Feed::Frame(n) => match decode_frame::<Request>(reader.frame(n)) {
                Ok(Request::Act { .. }) => census.acts += 1,
                Ok(_) => census.other_requests += 1,
                Err(_) => census.errors += 1,
            },
            Feed::Overflow => census.errors += 1,
        }
    }
    census
}

/// Send a damaged copy of this step's `Act`, resynchronize, and report what the firmware
/// answered (episode and step are filled in by the caller).
fn inject_fault<T: Read + Write>(
    link: &mut DeviceLink<T>,
    obs: &[f32],
    mode: NoiseMode,
    kind: FaultKind,
    rng: &mut SplitMix64,
) -> Result<FaultReport> {
    let seq = link.next_seq();
    let obs =
        heapless::Vec::from_slice(obs).map_err(|_| anyhow::anyhow!("observation too long"))?;
    let frame = encode_request(&Request::Act { seq, mode, obs })?;
    // Redraw in the (astronomically unlikely) case that the damage left a valid request
    // or no frame at all: every injected fault must be one the firmware has to answer.
    let (bytes, expected) = loop {
        let bytes = damage(&frame, kind, rng);
        match expected_answers(&bytes) {
            Some(codes) if !codes.is_empty() => break (bytes, codes),
            _ => continue,
        }
    };
    link.send_bytes(&bytes)?;
    let synced = link
        .sync_collect(std::time::Duration::from_secs(10))
        .context("the device did not answer after the fault")?;
    let mut answered = Vec::new();
    let mut unexpected = Vec::new();
    for said in synced.skipped {
        match said {
            Ok(Response::Error { seq: None, code }) => answered.push(code),
            Ok(other) => unexpected.push(format!("{other:?}")),
            Err(e) => unexpected.push(format!("undecodable frame ({e:?})")),
        }
    }
    if !matches!(synced.answer, Response::Info { .. }) {
        unexpected.push(format!("Info answered with {:?}", synced.answer));
    }
    Ok(FaultReport {
        episode: 0,
        step: 0,
        kind,
        bytes: bytes.len(),
        expected,
        answered,
        unexpected,
    })
}

/// One `Act`, retried on link faults with a fresh sequence number. Device refusals that a
/// retry cannot fix (wrong length, NaN observation, no policy) fail at once.
fn act_with_retries<T: Read + Write>(
    link: &mut DeviceLink<T>,
    obs: &[f32],
    mode: NoiseMode,
    attempts: usize,
    errors: &mut usize,
) -> Result<crate::link::DeviceAction> {
    let mut last = None;
    for _ in 0..attempts.max(1) {
        match link.act(obs, mode) {
            Ok(a) => return Ok(a),
            Err(e @ LinkError::Device { .. })
            | Err(e @ LinkError::Closed)
            | Err(e @ LinkError::Encode(_)) => return Err(e.into()),
            Err(e) => {
                *errors += 1;
                last = Some(e);
                // Drop whatever is in flight before retrying.
                let _ = link.sync(std::time::Duration::from_secs(5));
            }
        }
    }
    Err(anyhow::anyhow!(
        "gave up after {attempts} attempts: {}",
        last.map_or("no attempt".into(), |e| e.to_string())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act_frame(seq: u32) -> Vec<u8> {
        let obs = (0..17).map(|i| i as f32 * 0.25 - 2.0).collect();
        encode_request(&Request::Act {
            seq,
            mode: NoiseMode::Deterministic,
            obs,
        })
        .unwrap()
    }

    #[test]
    fn fault_plans_parse_and_bad_ones_are_named() {
        assert_eq!(
            "7".parse::<FaultPlan>().unwrap(),
            FaultPlan {
                seed: 7,
                rate: FaultPlan::DEFAULT_RATE
            }
        );
        assert_eq!(
            "3:0.5".parse::<FaultPlan>().unwrap(),
            FaultPlan { seed: 3, rate: 0.5 }
        );
        for bad in ["", "x", "-1", "3:0", "3:1.5", "3:abc", "3:"] {
            assert!(bad.parse::<FaultPlan>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_damage_is_a_fault_the_firmware_must_answer() {
        let mut rng = SplitMix64::new(1);
        let clean = act_frame(42);
        assert_eq!(expected_answers(&clean), None, "a clean frame is a request");
        for round in 0..200 {
            let kind = FaultKind::ALL[round % FaultKind::ALL.len()];
            let bytes = damage(&clean, kind, &mut rng);
            assert_eq!(bytes.last(), Some(&0), "{kind:?} ends at a frame boundary");
            let codes = expected_answers(&bytes).expect("damaged frames are not requests");
            match kind {
                FaultKind::Oversized => assert_eq!(codes, vec![ErrorCode::FrameTooLong]),
                FaultKind::Flood => assert!(!codes.is_empty()),
                _ => assert_eq!(codes, vec![ErrorCode::CorruptFrame], "{kind:?}"),
            }
        }
    }

    #[test]
    fn codes_are_summarized_in_runs() {
        use ErrorCode::*;
        assert_eq!(summarize_codes(&[]), "nothing");
        assert_eq!(
            summarize_codes(&[CorruptFrame, CorruptFrame, FrameTooLong, CorruptFrame]),
            "CorruptFrame x2, FrameTooLong, CorruptFrame"
        );
    }
}
