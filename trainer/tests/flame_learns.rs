//! FLAME-M learns InvertedPendulum-v5: the best evaluation of the best-of-N policy and
//! of the deployed z = 0 policy (10 episodes each, no exploration noise) reach a mean
//! return ≥ 900 within 7k env steps. Besides the budget (the step count, one env, a
//! 1k-step random warm-up instead of 30k, an evaluation every 1k steps) the run changes
//! what the test's doc comment names. Two libtorch threads with active OpenMP wait: this
//! binary's only test, so nothing else holds the cores.

mod common;

/// FLAME-M with its defaults (the official code's behaviours, `docs/ablations.md`: 3×256
/// mish, one-step MeanFlow acting, α from 1.0 stepped every 100 updates, TD target from
/// the online policy's best of N_p, two critic steps, …) but SAC's critic regime: targets
/// every update (`--policy-frequency 1`), critic learning rate 1e-3, reward scale 1.
/// Each target update moves the critic's value at most τ(1 − γ) of the way to its fixed
/// point, so the paper's targets every 2 updates leave the critic far from it on this
/// budget. K = 16 candidates and N_p = 8 particles (the paper's 100 and 32 serve up to 17
/// action dimensions; this task has one) keep the run short: N_p sets the cost of the
/// TD target's best-of-N.
///
/// With the official behaviours (measured with `--threads 1`, which trains the same
/// agent): seed 0 (the test's) reached 1000 best-of-8 at 8k and deployed z = 0 at 9k,
/// seed 1 at 6k and 8k. The old defaults (EMA-sample TD target, α from 0.2, one critic
/// step, …) needed 20k: seed 0 reached 1000 at 17k (deployed 18k), seed 1 at 9k (12k).
/// With FLAME-M's τ 0.02 (targets now move 4× faster) seed 0 reached 1000 best-of-8 at
/// 4k and deployed 934 at 5k, 1000 at 6k; seed 1 1000 best-of-8 at 4k and deployed 1000
/// at 7k (trainer at bc64869, `--threads 1`); the budget fell from 12k to 10k. With the
/// time MLPs (FLAME-M's default since the sixth session; `--threads 1`, which gives the
/// same bits as this test's two threads) seed 0 reaches 1000 best-of-8 and 1000 deployed
/// at 4k, seeds 1 and 2 both at 5k (trainer at 111cfed). The budget fell from 10k to 7k:
/// it covers the slowest seed's 5k with 40% to spare, the test's seed 0 with 75%.
#[test]
fn flame_m_learns_inverted_pendulum() {
    let rows = common::train_on_inverted_pendulum(
        "flame-m",
        7_000,
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
            "--particles",
            "8",
        ],
        "ACTIVE",
    );
    let best_deployed = rows.iter().map(|r| r.2).fold(f64::MIN, f64::max);
    assert!(
        best_deployed >= 900.0,
        "flame-m: the deployed z = 0 policy's best evaluation {best_deployed} < 900: {rows:?}"
    );
}
