//! SAC (CleanRL defaults) learns InvertedPendulum-v5: the best evaluation (10 episodes
//! without exploration noise) reaches a mean return ≥ 900 within 12k env steps. The
//! only changes from the defaults are the budget: the step count, a 1k-step random
//! warm-up instead of 5k, an evaluation every 2k steps. One libtorch thread, passive
//! OpenMP wait (the trainer's default): seed 0 reached 1000 at 8k, 10k and 12k steps in
//! ~2 minutes on the 2-core machine (with the op-by-op Adam before libtorch's fused
//! one: at 10k and 12k).

mod common;

#[test]
fn sac_learns_inverted_pendulum() {
    common::train_on_inverted_pendulum(
        "sac",
        12_000,
        &["--eval-every", "2000", "--threads", "1"],
        "PASSIVE",
    );
}
