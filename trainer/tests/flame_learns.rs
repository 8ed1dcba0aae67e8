//! FLAME-M learns InvertedPendulum-v5: the best evaluation of the best-of-32 policy and
//! of the deployed z = 0 policy (10 episodes each, no exploration noise) reach a mean
//! return ≥ 900 within 20k env steps. Besides the budget (the step count, one env, a
//! 1k-step random warm-up instead of 30k, an evaluation every 1k steps) the run changes
//! what the test's doc comment names. Two libtorch threads with active OpenMP wait: this
//! binary's only test, so nothing else holds the cores.

mod common;

/// FLAME-M with the paper's networks (3×256 mish), Q-weighted flow matching, one-step
/// MeanFlow acting, decoupled entropy estimator and τ = 0.005, but SAC's critic regime:
/// targets every update (`--policy-frequency 1`), critic learning rate 1e-3, reward
/// scale 1. Each target update moves the critic's value at most τ(1 − γ) of the way to
/// its fixed point: with the paper's targets every 2 updates that is 38% after this
/// budget's 19k updates (61% every update), and the policy balances the pole but lets
/// the cart drift into the rail. K = 16 candidates (the paper's 100 serve up to 17
/// action dimensions; this task has one) keep the run to ~16 minutes.
///
/// The step at which a run gets there moves with the rounding of its trajectory, not
/// only with the seed. With the op-by-op Adam, seeds 0 (the test's) and 1 reached 1000
/// from 12k and 13k steps to the end, best-of-32, deployed z = 0 and int8 alike (seed
/// 1: best 309 at 12k). libtorch's fused Adam moves parameters by the same amounts to
/// within an ulp, and with it seed 0 was at 341 at 16k (best-of-32; the budget was 16k
/// then) and reached 1000 at 17k (deployed 18k), seed 1 at 9k (deployed 12k). 20k
/// covers the slowest of the four.
#[test]
fn flame_m_learns_inverted_pendulum() {
    let rows = common::train_on_inverted_pendulum(
        "flame-m",
        20_000,
        &[
            "--eval-every",
            "1000",
            "--threads",
            "2",
            "--policy-frequency",
            "1",
            "--q-lr",
            "1e-3",
            "--reward-scale",
            "1",
            "--candidates",
            "16",
        ],
        "ACTIVE",
    );
    let best_deployed = rows.iter().map(|r| r.2).fold(f64::MIN, f64::max);
    assert!(
        best_deployed >= 900.0,
        "flame-m: the deployed z = 0 policy's best evaluation {best_deployed} < 900: {rows:?}"
    );
}
