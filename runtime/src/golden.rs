//! Golden vectors: observations with the exact action bits the host runtime produced at
//! export. The firmware re-runs them on `SelfTest`; tests re-run them on the host.
//!
//! Encoding: postcard [`GoldenSet`]; `records` holds `count` fixed-size records of
//! `mode: u8 (0 deterministic, 1 stochastic) | seed: u64 LE | obs: f32 LE × obs_dim |
//! action: f32 LE × act_dim`.

use serde::{Deserialize, Serialize};

use crate::blob::f32_at;
use crate::policy::{NoiseMode, Policy, Scratch};
use crate::{MAX_ACT, MAX_OBS};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GoldenSet<'a> {
    /// `blob::blob_hash` of the blob these vectors belong to.
    pub blob_hash: u32,
    pub obs_dim: u16,
    pub act_dim: u16,
    pub records: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GoldenError {
    Malformed,
    /// The records do not divide into whole vectors of the stated dims.
    RecordLength,
    /// Dimensions above the runtime's capacity.
    CapacityExceeded,
}

/// One decoded golden vector, borrowing its arrays.
#[derive(Debug, Clone, Copy)]
pub struct GoldenVector<'a> {
    pub mode: NoiseMode,
    obs: &'a [u8],
    action: &'a [u8],
}

impl GoldenVector<'_> {
    pub fn obs(&self, out: &mut [f32]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = f32_at(self.obs, i);
        }
    }
    pub fn action_bits(&self, i: usize) -> u32 {
        f32_at(self.action, i).to_bits()
    }
}

impl<'a> GoldenSet<'a> {
    pub fn record_len(&self) -> usize {
        1 + 8 + 4 * (self.obs_dim as usize + self.act_dim as usize)
    }

    pub fn parse(bytes: &'a [u8]) -> Result<Self, GoldenError> {
        let (set, rest): (GoldenSet<'a>, _) =
            postcard::take_from_bytes(bytes).map_err(|_| GoldenError::Malformed)?;
        if !rest.is_empty() {
            return Err(GoldenError::Malformed);
        }
        if set.obs_dim as usize > MAX_OBS || set.act_dim as usize > MAX_ACT {
            return Err(GoldenError::CapacityExceeded);
        }
        if set.records.len() % set.record_len() != 0 {
            return Err(GoldenError::RecordLength);
        }
        if set.vectors().any(|v| v.is_none()) {
            return Err(GoldenError::Malformed);
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.records.len() / self.record_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The vectors; `None` for a record with an unknown mode byte.
    pub fn vectors(&self) -> impl Iterator<Item = Option<GoldenVector<'a>>> + '_ {
        let obs_bytes = 4 * self.obs_dim as usize;
        self.records.chunks_exact(self.record_len()).map(move |r| {
            let mut seed = [0u8; 8];
            seed.copy_from_slice(&r[1..9]);
            let mode = match r[0] {
                0 => NoiseMode::Deterministic,
                1 => NoiseMode::Stochastic {
                    seed: u64::from_le_bytes(seed),
                },
                _ => return None,
            };
            Some(GoldenVector {
                mode,
                obs: &r[9..9 + obs_bytes],
                action: &r[9 + obs_bytes..],
            })
        })
    }

    /// Re-run every vector on `policy`; returns (vectors, mismatches). A vector whose
    /// action differs in any bit, or that fails to evaluate, is a mismatch.
    pub fn check(&self, policy: &Policy<'_>, scratch: &mut Scratch) -> (usize, usize) {
        let (obs_dim, act_dim) = (self.obs_dim as usize, self.act_dim as usize);
        if obs_dim != policy.obs_dim() || act_dim != policy.act_dim() {
            return (self.len(), self.len());
        }
        let mut obs = [0f32; MAX_OBS];
        let mut action = [0f32; MAX_ACT];
        let mut mismatches = 0;
        for v in self.vectors().flatten() {
            v.obs(&mut obs[..obs_dim]);
            let ok = policy
                .act(&obs[..obs_dim], v.mode, scratch, &mut action[..act_dim])
                .is_ok()
                && (0..act_dim).all(|i| action[i].to_bits() == v.action_bits(i));
            mismatches += usize::from(!ok);
        }
        (self.len(), mismatches)
    }
}

/// Append one record (host side, at export).
#[cfg(feature = "std")]
pub fn push_record(records: &mut std::vec::Vec<u8>, mode: NoiseMode, obs: &[f32], action: &[f32]) {
    let (tag, seed) = match mode {
        NoiseMode::Deterministic => (0u8, 0u64),
        NoiseMode::Stochastic { seed } => (1, seed),
    };
    records.push(tag);
    records.extend_from_slice(&seed.to_le_bytes());
    records.extend(obs.iter().chain(action).flat_map(|v| v.to_le_bytes()));
}
