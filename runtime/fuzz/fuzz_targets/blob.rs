//! `PolicyBlob::parse` and `Policy::from_bytes` on arbitrary bytes, then `act` on a few
//! observations (ordinary, extreme, and derived from the input) in both noise modes: no
//! input may panic, and every action must lie inside the blob's action bounds.
//!
//! The CRC would stop almost every mutation at the header, so each input is also tried
//! "resealed": the same payload with the header's magic, version, length and CRC made
//! consistent, which sends the mutations into the postcard decoder and the validator.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runtime::blob::{f32_at, CRC32, FORMAT_VERSION, HEADER_LEN, MAGIC};
use runtime::noise::SplitMix64;
use runtime::{NoiseMode, Policy, PolicyBlob, Scratch, MAX_ACT, MAX_OBS};

fn exercise(bytes: &[u8], seed: u64) {
    let parsed = PolicyBlob::parse(bytes);
    let Ok(policy) = Policy::from_bytes(bytes) else {
        assert!(parsed.is_err());
        return;
    };
    assert!(parsed.is_ok());
    let (obs_dim, act_dim) = (policy.obs_dim(), policy.act_dim());
    assert!(obs_dim <= MAX_OBS && act_dim <= MAX_ACT);
    let _ = policy.macs_per_action();
    let meta = &policy.blob().meta;
    let mut scratch = Scratch::new();
    let mut rng = SplitMix64::new(seed);
    let mut action = [0f32; MAX_ACT];
    for k in 0..4 {
        let obs: Vec<f32> = (0..obs_dim)
            .map(|i| match k {
                0 => 0.0,
                1 => {
                    if i % 2 == 0 {
                        f32::MAX
                    } else {
                        -f32::MAX
                    }
                }
                2 => rng.next_gaussian() * 3.0,
                _ => f32::from_bits(rng.next_u64() as u32 & 0xBF7F_FFFF), // finite
            })
            .collect();
        for mode in [
            NoiseMode::Deterministic,
            NoiseMode::Stochastic { seed: seed ^ k },
        ] {
            policy
                .act(&obs, mode, &mut scratch, &mut action[..act_dim])
                .expect("valid observation");
            for (c, &a) in action[..act_dim].iter().enumerate() {
                let (lo, hi) = (f32_at(meta.action_low, c), f32_at(meta.action_high, c));
                assert!(lo <= a && a <= hi, "action {c} = {a} outside [{lo}, {hi}]");
            }
        }
        // Wrong lengths and non-finite observations are errors, not panics.
        assert!(policy
            .act(
                &obs[..obs_dim - 1],
                NoiseMode::Deterministic,
                &mut scratch,
                &mut action[..act_dim]
            )
            .is_err());
        let mut bad = obs.clone();
        bad[obs_dim - 1] = f32::NAN;
        assert!(policy
            .act(
                &bad,
                NoiseMode::Deterministic,
                &mut scratch,
                &mut action[..act_dim]
            )
            .is_err());
    }
}

fuzz_target!(|data: &[u8]| {
    exercise(data, 1);
    if data.len() >= HEADER_LEN {
        let payload = &data[HEADER_LEN..];
        let mut sealed = Vec::with_capacity(data.len());
        sealed.extend_from_slice(&MAGIC);
        sealed.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        sealed.extend_from_slice(&[0, 0]);
        sealed.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        sealed.extend_from_slice(&CRC32.checksum(payload).to_le_bytes());
        sealed.extend_from_slice(payload);
        exercise(&sealed, 2);
    }
});
