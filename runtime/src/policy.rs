//! The one-step (or N-step) flow policy on int8-weight, int16-activation kernels.
//!
//! For each action: quantize the normalized observation once; start from the base sample
//! z (zero in deterministic mode, σ_z·N(0,I) from [`crate::noise`] in stochastic mode);
//! for each of the `nfe` flow steps, run the network on `[q(obs), q(z)]` with that step's
//! first-layer bias (its time embedding is folded in) to get the velocity u, and move
//! `z ← z − u / nfe` (t runs from 1, noise, to 0, data); finally `a = clamp(z, −1, 1)`,
//! scaled to the env's bounds. With nfe = 1 this is FLAME-M's `a = clip(z − u(z, 0, 1))`.

use crate::blob::{f32_at, i32_at, HiddenLayer, PolicyBlob};
use crate::kernels::{dense, dense_requantize, OutputStage};
use crate::noise::SplitMix64;
use crate::quant::{round_half_away_f32, saturate_activation};
use crate::{BlobError, MAX_ACT, MAX_WIDTH};
use serde::{Deserialize, Serialize};

/// How the base sample z is drawn.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseMode {
    /// z = 0: the deterministic policy.
    Deterministic,
    /// z = σ_z·N(0, I) from the integer generator seeded with this value. The caller picks
    /// the seed per request, so both ends of a link reproduce the same action.
    Stochastic { seed: u64 },
}

/// Why an action could not be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActError {
    /// The observation has the wrong number of elements.
    ObservationLength,
    /// The observation contains NaN or ±Inf.
    NonFiniteObservation,
    /// The action buffer has the wrong number of elements.
    ActionLength,
}

impl core::fmt::Display for ActError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ActError::ObservationLength => "observation has the wrong length",
            ActError::NonFiniteObservation => "observation contains NaN or Inf",
            ActError::ActionLength => "action buffer has the wrong length",
        })
    }
}

/// Working memory for one evaluation, kept by the caller (a static on the MCU).
pub struct Scratch {
    input: [i16; MAX_WIDTH],
    ping: [i16; MAX_WIDTH],
    pong: [i16; MAX_WIDTH],
    z: [f32; MAX_ACT],
}

impl Scratch {
    pub const fn new() -> Self {
        Self {
            input: [0; MAX_WIDTH],
            ping: [0; MAX_WIDTH],
            pong: [0; MAX_WIDTH],
            z: [0.0; MAX_ACT],
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// A validated blob, ready to act.
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    blob: PolicyBlob<'a>,
}

impl<'a> Policy<'a> {
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, BlobError> {
        Ok(Self {
            blob: PolicyBlob::parse(bytes)?,
        })
    }

    pub fn blob(&self) -> &PolicyBlob<'a> {
        &self.blob
    }

    pub fn obs_dim(&self) -> usize {
        self.blob.meta.obs_dim as usize
    }

    pub fn act_dim(&self) -> usize {
        self.blob.meta.act_dim as usize
    }

    /// Multiply-accumulates per action (all layers, all flow steps).
    pub fn macs_per_action(&self) -> u64 {
        let per_step: u64 = self
            .blob
            .hidden
            .iter()
            .map(|l| l.in_dim as u64 * l.out_dim as u64)
            .sum::<u64>()
            + self.blob.output.in_dim as u64 * self.blob.output.out_dim as u64;
        per_step * self.blob.meta.nfe as u64
    }

    /// Compute the action for `obs` into `action` (env units, within the env's bounds).
    pub fn act(
        &self,
        obs: &[f32],
        mode: NoiseMode,
        scratch: &mut Scratch,
        action: &mut [f32],
    ) -> Result<(), ActError> {
        let (obs_dim, act_dim) = (self.obs_dim(), self.act_dim());
        if obs.len() != obs_dim {
            return Err(ActError::ObservationLength);
        }
        if action.len() != act_dim {
            return Err(ActError::ActionLength);
        }
        if obs.iter().any(|x| !x.is_finite()) {
            return Err(ActError::NonFiniteObservation);
        }
        let meta = &self.blob.meta;
        let inp = &self.blob.input;
        let Scratch {
            input,
            ping,
            pong,
            z,
        } = scratch;

        for (i, (&o, q)) in obs.iter().zip(input.iter_mut()).enumerate() {
            let n = ((o - f32_at(inp.obs_mean, i)) * f32_at(inp.obs_inv_std, i))
                .clamp(-inp.obs_clip, inp.obs_clip);
            *q = quantize_input(n, f32_at(inp.inv_scales, i));
        }
        let z = &mut z[..act_dim];
        match mode {
            NoiseMode::Deterministic => z.fill(0.0),
            NoiseMode::Stochastic { seed } => {
                let mut rng = SplitMix64::new(seed);
                for zi in z.iter_mut() {
                    *zi = rng.next_gaussian() * meta.noise_std;
                }
            }
        }

        let nfe = meta.nfe as usize;
        let step = 1.0 / nfe as f32;
        for k in 0..nfe {
            for (j, (q, &zi)) in input[obs_dim..obs_dim + act_dim]
                .iter_mut()
                .zip(z.iter())
                .enumerate()
            {
                *q = quantize_input(zi, f32_at(inp.inv_scales, obs_dim + j));
            }
            let mut width = obs_dim + act_dim;
            for (index, layer) in self.blob.hidden.iter().enumerate() {
                // Layer 0 reads `input` (kept for the next flow step); later layers
                // ping-pong between the two activation buffers.
                let (x, y): (&[i16], &mut [i16]) = match index {
                    0 => (&input[..width], &mut ping[..]),
                    i if i % 2 == 1 => (&ping[..width], &mut pong[..]),
                    _ => (&pong[..width], &mut ping[..]),
                };
                let bias_set = if index == 0 { k } else { 0 };
                hidden_layer(layer, bias_set, x, y);
                width = layer.out_dim as usize;
            }
            let x: &[i16] = if self.blob.hidden.len() % 2 == 1 {
                &ping[..width]
            } else {
                &pong[..width]
            };
            let out = &self.blob.output;
            dense(out.weight_matrix(), act_dim, x, |c, acc| {
                let acc = acc.wrapping_add(i32_at(out.biases, c));
                let u = acc as f32 * f32_at(out.scales, c);
                z[c] -= step * u;
            });
        }

        for (c, a) in action.iter_mut().enumerate() {
            let clipped = z[c].clamp(-1.0, 1.0);
            let (lo, hi) = (f32_at(meta.action_low, c), f32_at(meta.action_high, c));
            // The affine map can round a few ulp past a bound; clamp so the action is
            // always inside the env's box.
            *a = (lo + (clipped + 1.0) * 0.5 * (hi - lo)).clamp(lo, hi);
        }
        Ok(())
    }
}

/// One hidden layer: int8 × int16 dense, per-channel requantization, interpolated
/// activation table.
fn hidden_layer(layer: &HiddenLayer<'_>, bias_set: usize, x: &[i16], y: &mut [i16]) {
    let out_dim = layer.out_dim as usize;
    let stage = OutputStage {
        biases: &layer.biases[4 * bias_set * out_dim..4 * (bias_set + 1) * out_dim],
        multipliers: &layer.multipliers[..4 * out_dim],
        shifts: &layer.shifts[..out_dim],
        table: layer
            .activation
            .try_into()
            .expect("validated: 513-entry activation table"),
    };
    // The parser accepts only m ≥ 0 and shifts in range, what the kernel's requantization
    // assumes.
    dense_requantize(layer.weight_matrix(), out_dim, x, &stage, &mut y[..out_dim]);
}

/// `clamp(round(x · inv_scale), −32767, 32767)`: one f32 multiply (no FMA), rounding half
/// away from zero.
#[inline]
fn quantize_input(x: f32, inv_scale: f32) -> i16 {
    saturate_activation(round_half_away_f32(x * inv_scale))
}
