//! `tools inspect`: what a policy blob holds, without running it.

use std::fmt::Write as _;

use runtime::blob::{blob_hash, f32_at, PolicyBlob, FORMAT_VERSION, HEADER_LEN};
use runtime::Policy;

/// A human-readable description of a valid blob: metadata, provenance, layers, sizes.
pub fn describe(bytes: &[u8]) -> Result<String, runtime::BlobError> {
    let policy = Policy::from_bytes(bytes)?;
    let b: &PolicyBlob = policy.blob();
    let m = &b.meta;
    let p = &m.provenance;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "format        v{FORMAT_VERSION}, {} bytes (header {HEADER_LEN}), crc32 {:#010x}",
        bytes.len(),
        blob_hash(bytes)
    );
    let _ = writeln!(
        s,
        "env           {}  obs {}  act {}",
        m.env_id, m.obs_dim, m.act_dim
    );
    let _ = writeln!(
        s,
        "algorithm     {:?}, {} network evaluation(s) per action, noise σ_z {}",
        m.algorithm, m.nfe, m.noise_std
    );
    let bounds: Vec<String> = (0..m.act_dim as usize)
        .map(|i| {
            format!(
                "[{}, {}]",
                f32_at(m.action_low, i),
                f32_at(m.action_high, i)
            )
        })
        .collect();
    let _ = writeln!(s, "action bounds {}", bounds.join(" "));
    let _ = writeln!(
        s,
        "provenance    trainer {} @ {}, {} env steps, seed {}, return float {} / quantized {}",
        p.trainer_version,
        p.git_revision,
        p.env_steps,
        p.seed,
        p.float_return.map_or("-".into(), |r| format!("{r:.2}")),
        p.int8_return.map_or("-".into(), |r| format!("{r:.2}")),
    );
    let _ = writeln!(
        s,
        "input         obs clip ±{}, int16 symmetric, one scale per element",
        b.input.obs_clip
    );
    let mut weight_bytes = 0;
    for (i, l) in b.hidden.iter().enumerate() {
        let bias_sets = l.biases.len() / (4 * l.out_dim as usize);
        let _ = writeln!(
            s,
            "hidden {i}      {:>4} -> {:<4} int{} weights {:>7} B, bias sets {bias_sets}, int16 table {} B",
            l.in_dim,
            l.out_dim,
            8 * l.weight_bytes,
            l.weights.len(),
            l.activation.len()
        );
        weight_bytes += l.weights.len();
    }
    let o = &b.output;
    let _ = writeln!(
        s,
        "output        {:>4} -> {:<4} int{} weights {:>7} B, f32 dequantization",
        o.in_dim,
        o.out_dim,
        8 * o.weight_bytes,
        o.weights.len()
    );
    weight_bytes += o.weights.len();
    let _ = write!(
        s,
        "totals        {} MACs/action, {} B of weights",
        policy.macs_per_action(),
        weight_bytes
    );
    Ok(s)
}
