//! The update as a CUDA graph records it, held to the eager update on the CPU.
//!
//! Its own test binary: it compares two agents' updates drawn from torch's one global
//! generator after the same reseed, and the library's unit tests, which run in parallel
//! threads of their own process, draw from that generator too.

use rand::SeedableRng;
use runtime::blob::Algorithm;
use tch::Device;
use trainer::agents::flame::{Flame, FlameConfig};
use trainer::agents::sac::{Sac, SacConfig};
use trainer::agents::Agent;
use trainer::replay::ReplayBuffer;
use trainer::train::StaticInputs;

/// The update as a graph records it — the replay copied to the device, the minibatch
/// gathered there by index into fixed tensors, the agent's update on those — gives
/// bit for bit the numbers of the eager loop's update (host-gathered minibatch, fresh
/// tensors), over every update variant, for FLAME-M, FLAME-R and SAC.
#[test]
fn the_static_update_equals_the_eager_update() {
    let (obs_dim, act_dim) = (5, 2);
    let flame = |algorithm| {
        move || -> Box<dyn Agent> {
            let config = FlameConfig {
                alpha_every: 4,
                ..FlameConfig::small_for_tests(algorithm)
            };
            Box::new(Flame::new(config, algorithm, obs_dim, act_dim, Device::Cpu))
        }
    };
    let sac = || -> Box<dyn Agent> {
        let config = SacConfig {
            policy_hidden: vec![32, 32],
            critic_hidden: vec![32, 32],
            ..SacConfig::default()
        };
        Box::new(Sac::new(config, obs_dim, act_dim, &[1.0, 2.0], Device::Cpu))
    };
    type Maker<'a> = &'a dyn Fn() -> Box<dyn Agent>;
    let makers: [(&str, Maker); 3] = [
        ("flame-m", &flame(Algorithm::FlameM)),
        ("flame-r", &flame(Algorithm::FlameR)),
        ("sac", &sac),
    ];
    for (name, make) in makers {
        tch::manual_seed(7);
        let mut eager = make();
        tch::manual_seed(7);
        let mut fixed = make();
        let mut replay = ReplayBuffer::new(obs_dim, act_dim, 40);
        let mut inputs = StaticInputs::new(Device::Cpu, &replay, 16);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut push = |replay: &mut ReplayBuffer, n: usize| {
            for _ in 0..n {
                let mut row = |d: usize| {
                    (0..d)
                        .map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0))
                        .collect::<Vec<_>>()
                };
                let (o, a, n2) = (row(obs_dim), row(act_dim), row(obs_dim));
                replay.push(&o, &a, o[0], &n2, o[1] > 0.8);
            }
        };
        push(&mut replay, 30);
        let mut sample_rng = rand::rngs::StdRng::seed_from_u64(4);
        for update in 0..8 {
            let indices = replay.sample_indices(16, &mut sample_rng);
            let batch = replay.gather(&indices, Device::Cpu);
            let fraction = update as f64 / 8.0;
            tch::manual_seed(100 + update as i64);
            eager.set_progress(fraction);
            let expected = eager.update(&batch, update);
            inputs.load(&replay, &indices);
            tch::manual_seed(100 + update as i64);
            fixed.set_progress(fraction);
            let got = inputs.update(fixed.as_mut(), update);
            for ((k, e), (k2, g)) in expected.iter().zip(&got) {
                assert_eq!(k, k2);
                assert!(e.equal(g), "{name} update {update}: {k} {e} vs {g}");
            }
            // New transitions between updates, past the capacity (the ring wraps).
            push(&mut replay, 3);
        }
        for ((k, e), (_, g)) in eager.state().iter().zip(fixed.state()) {
            assert!(e.equal(&g), "{name}: {k} differs");
        }
    }
}
