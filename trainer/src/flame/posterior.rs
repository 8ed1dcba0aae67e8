//! Candidate clean actions for Q-reweighted flow matching.
//!
//! With the interpolation `x_t = (1 − t)·a + t·ε`, ε ~ N(0, I), and a uniform prior on
//! the action box, the posterior of the clean action given `x_t` is
//! `N(x_t / (1 − t), (t / (1 − t))²·I)` truncated to `[−1, 1]^d`. Each dimension is
//! sampled by inverse CDF; where the box lies so far in the tail that the CDF difference
//! underflows, the sample falls back to clipping an untruncated draw.

use tch::{Kind, Tensor};

/// Below this probability mass inside the box, inverse-CDF sampling loses precision.
const MIN_MASS: f64 = 1e-9;

fn normal_cdf(x: &Tensor) -> Tensor {
    (x / std::f64::consts::SQRT_2).erf() * 0.5 + 0.5
}

fn normal_icdf(p: &Tensor) -> Tensor {
    (p * 2.0 - 1.0).erfinv() * std::f64::consts::SQRT_2
}

/// `k` candidates per anchor: `x_t [B, d]`, `t [B, 1]` in (0, 1) → `[B, k, d]` in the box.
pub fn sample_candidates(x_t: &Tensor, t: &Tensor, k: i64) -> Tensor {
    let (b, d) = x_t.size2().expect("x_t is [B, d]");
    // Double precision: the CDF of the box edges is evaluated far into the tails.
    let x = x_t.to_kind(Kind::Double).unsqueeze(1);
    let t = t.to_kind(Kind::Double).unsqueeze(1);
    let mean = &x / (1.0 - &t);
    let std = &t / (1.0 - &t);
    let lower = normal_cdf(&((-1.0 - &mean) / &std));
    let upper = normal_cdf(&((1.0 - &mean) / &std));
    let uniform = Tensor::rand([b, k, d], (Kind::Double, x_t.device()));
    let p = (&lower + (&upper - &lower) * uniform).clamp(1e-300, 1.0 - 1e-16);
    let truncated = &mean + &std * normal_icdf(&p);
    let fallback = &mean + &std * Tensor::randn([b, k, d], (Kind::Double, x_t.device()));
    let usable = (&upper - &lower).ge(MIN_MASS);
    truncated
        .where_self(&usable, &fallback)
        .clamp(-1.0, 1.0)
        .to_kind(x_t.kind())
}

/// The conditional velocity `v_k = ε_k − a_k` of each candidate, with
/// `ε_k = (x_t − (1 − t)·a_k) / t`: `x_t [B, d]`, `t [B, 1]`, `a [B, k, d]` → `[B, k, d]`.
pub fn candidate_velocities(x_t: &Tensor, t: &Tensor, a: &Tensor) -> Tensor {
    let x = x_t.unsqueeze(1);
    let t = t.unsqueeze(1);
    let noise = (&x - (1.0 - &t) * a) / &t;
    noise - a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean and variance of N(μ, σ²) truncated to [−1, 1].
    fn truncated_moments(mu: f64, sigma: f64) -> (f64, f64) {
        let pdf = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let cdf = |x: f64| {
            let t = Tensor::from_slice(&[x]);
            normal_cdf(&t).double_value(&[0])
        };
        let (a, b) = ((-1.0 - mu) / sigma, (1.0 - mu) / sigma);
        let z = cdf(b) - cdf(a);
        let mean = mu + sigma * (pdf(a) - pdf(b)) / z;
        let var =
            sigma * sigma * (1.0 + (a * pdf(a) - b * pdf(b)) / z - ((pdf(a) - pdf(b)) / z).powi(2));
        (mean, var)
    }

    #[test]
    fn candidates_stay_in_the_box_with_the_right_moments() {
        tch::manual_seed(5);
        // (x_t, t) pairs: mild, wide posterior, box in the tail, tiny t.
        for &(x, t) in &[
            (0.3f64, 0.3f64),
            (-0.2, 0.9),
            (1.8, 0.2),
            (0.05, 0.01),
            (-0.7, 0.5),
        ] {
            let x_t = Tensor::from_slice(&[x as f32]).view([1, 1]);
            let tt = Tensor::from_slice(&[t as f32]).view([1, 1]);
            let a = sample_candidates(&x_t, &tt, 200_000);
            let (min, max) = (a.min().double_value(&[]), a.max().double_value(&[]));
            assert!((-1.0..=1.0).contains(&min) && (-1.0..=1.0).contains(&max));
            let (mean, var) = truncated_moments(x / (1.0 - t), t / (1.0 - t));
            let got_mean = a.mean(Kind::Double).double_value(&[]);
            let got_var = a.var(true).double_value(&[]);
            let se = (var / 200_000f64).sqrt();
            assert!(
                (got_mean - mean).abs() < 6.0 * se + 1e-4,
                "x={x} t={t}: mean {got_mean} vs {mean}"
            );
            assert!(
                (got_var - var).abs() < 0.02 * var + 1e-5,
                "x={x} t={t}: var {got_var} vs {var}"
            );
        }
    }

    #[test]
    fn far_tail_falls_back_to_clipping() {
        // Posterior mean 200 with std 0.01: all mass outside the box → clipped to 1.
        let x_t = Tensor::from_slice(&[1.98f32]).view([1, 1]);
        let t = Tensor::from_slice(&[0.0099f32]).view([1, 1]);
        let a = sample_candidates(&x_t, &t, 64);
        assert_eq!(a.min().double_value(&[]), 1.0);
        assert_eq!(a.isnan().any().int64_value(&[]), 0);
    }

    #[test]
    fn velocities_reconstruct_the_anchor() {
        let x_t = Tensor::from_slice(&[0.2f32, -0.4]).view([1, 2]);
        let t = Tensor::from_slice(&[0.6f32]).view([1, 1]);
        let a = sample_candidates(&x_t, &t, 8);
        let v = candidate_velocities(&x_t, &t, &a);
        // x_t = (1 − t)·a + t·ε and v = ε − a  ⇒  x_t = a + t·v.
        let rebuilt: Tensor = &a + 0.6 * &v;
        let err = (rebuilt - x_t.unsqueeze(1)).abs().max().double_value(&[]);
        assert!(err < 1e-5, "{err}");
    }
}
