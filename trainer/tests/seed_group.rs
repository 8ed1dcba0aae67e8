//! Several seeds in one process (`trainer train --seeds`): seed s of a group is the
//! single run of seed s, bit for bit (every evaluation, every loss, every tensor of the
//! agent's state), for SAC and FLAME-M; a killed group resumes to the same place.
//!
//! Its own test binary: the runs reseed torch's one global generator, and the
//! library's unit tests draw from it on parallel threads of their own process.

use std::path::Path;

use sim::run_dir::{group_runs, seed_dir, Algo};
use trainer::train::{SeedGroup, TrainConfig, Trainer};

#[path = "common/in_process.rs"]
mod in_process;
use in_process::{agent_state, scratch, serial, timeless};

/// `algo` on InvertedPendulum with small networks and two envs, 600 steps; evaluations
/// during the warm-up (at 150) and after it, a checkpoint at 300.
fn tiny(algo: Algo) -> TrainConfig {
    let mut c = in_process::tiny(algo);
    c.steps = 600;
    c.num_envs = 2;
    c.eval_every = 150;
    c
}

/// Asserts that `a` and `b` trained the same agent through the same evaluations.
fn assert_same_run(a: &Trainer, b: &Trainer, what: &str) {
    assert_eq!(a.state.env_steps, b.state.env_steps, "{what}: env steps");
    assert_eq!(a.state.updates, b.state.updates, "{what}: updates");
    assert!(a.state.updates > 0, "{what}: the run never updated");
    assert_eq!(
        timeless(&a.state.evals),
        timeless(&b.state.evals),
        "{what}: evaluations"
    );
    let (sa, sb) = (agent_state(a), agent_state(b));
    assert_eq!(sa.len(), sb.len(), "{what}: state entries");
    for (name, ta) in &sa {
        assert!(ta.equal(&sb[name]), "{what}: {name} differs");
    }
}

fn single_run(config: &TrainConfig, seed: u64, dir: &Path) -> Trainer {
    let mut c = config.clone();
    c.seed = seed;
    let mut t = Trainer::new(c, Some(dir)).unwrap();
    t.run().unwrap();
    t
}

/// Seeds 0 and 1 trained together equal each trained alone (and differ from each other).
#[test]
fn seed_s_of_a_group_is_the_single_run_of_seed_s() {
    let _rng = serial();
    for algo in [Algo::Sac, Algo::FlameM] {
        let config = tiny(algo);
        let dir = scratch(&format!("group-{}", algo.name()));
        let mut group = SeedGroup::new(config.clone(), &[1, 0], &dir).unwrap();
        let summaries = group.run().unwrap();
        assert_eq!(summaries.len(), 2);
        assert_eq!(
            group_runs(&dir).unwrap(),
            vec![seed_dir(&dir, 0), seed_dir(&dir, 1)]
        );
        for (t, seed) in group.trainers.iter().zip([1, 0]) {
            assert_eq!(t.config.seed, seed);
            assert!(seed_dir(&dir, seed).join("summary.json").is_file());
            let alone = single_run(&config, seed, &scratch(&format!("alone-{seed}")));
            assert_same_run(t, &alone, &format!("{} seed {seed}", algo.name()));
        }
        let (a, b) = (&group.trainers[0], &group.trainers[1]);
        assert_ne!(
            timeless(&a.state.evals),
            timeless(&b.state.evals),
            "{}: two seeds trained the same run",
            algo.name()
        );
    }
}

/// A group killed between checkpoints resumes every seed from its checkpoint and ends
/// where the uninterrupted single runs end.
#[test]
fn a_killed_group_resumes_to_the_single_runs() {
    let _rng = serial();
    let config = tiny(Algo::Sac);
    let dir = scratch("killed");
    let mut group = SeedGroup::new(config.clone(), &[0, 1], &dir).unwrap();
    for t in &mut group.trainers {
        t.run_until(450, true).unwrap();
    }
    drop(group);
    let mut resumed = SeedGroup::resume(&dir, None, None, None).unwrap();
    assert!(resumed.trainers.iter().all(|t| t.state.env_steps == 300));
    resumed.run().unwrap();
    for t in &resumed.trainers {
        let seed = t.config.seed;
        let alone = single_run(&config, seed, &scratch(&format!("killed-alone-{seed}")));
        assert_same_run(t, &alone, &format!("resumed seed {seed}"));
    }
    let err = SeedGroup::resume(&seed_dir(&dir, 0), None, None, None)
        .err()
        .expect("a single run is not a group");
    assert!(format!("{err:#}").contains("not a seed group"), "{err:#}");
}
