//! Batch-1 latency on the host, with criterion: the int8 runtime (`Policy::act`) on the
//! shipped `models/default.blob` (FLAME-M, hidden 3×256, obs 17, act 6) against libtorch's
//! float forward (tch) of a network of the same sizes (23 → 256 → 256 → 256 → 6, Mish),
//! both in the same run so that their ratio is measured under the same machine load; plus
//! the runtime's dense kernel against the reference loop on one 256×256 layer.
//!
//! `cargo bench -p tests --bench policy_latency` (criterion's options after `--`, e.g.
//! `-- batch1` for the runtime-vs-tch group only). On a shared machine repeat it and
//! compare the two sides of one run, not absolute times across runs.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use runtime::kernels::{dense, dense_reference};
use runtime::noise::SplitMix64;
use runtime::{NoiseMode, Policy, Scratch};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

fn benches(c: &mut Criterion) {
    let root = tests::repo_root();
    let blob = std::fs::read(root.join("models/default.blob")).expect("models/default.blob");
    let policy = Policy::from_bytes(&blob).expect("valid blob");
    let (obs_dim, act_dim) = (policy.obs_dim(), policy.act_dim());
    let hidden: Vec<usize> = policy
        .blob()
        .hidden
        .iter()
        .map(|l| l.out_dim as usize)
        .collect();
    println!(
        "policy: obs {obs_dim} act {act_dim} hidden {hidden:?} nfe {}, {} MACs/action",
        policy.blob().meta.nfe,
        policy.macs_per_action()
    );

    let mut rng = SplitMix64::new(1);
    let observations: Vec<Vec<f32>> = (0..64)
        .map(|_| tests::random_observation(&mut rng, obs_dim))
        .collect();
    let mut scratch = Scratch::new();
    let mut action = vec![0f32; act_dim];

    // The float network of the same sizes in libtorch, batch 1, no autograd.
    let _guard = tch::no_grad_guard();
    let vs = nn::VarStore::new(Device::Cpu);
    let mut net = nn::seq();
    let mut width = obs_dim + act_dim;
    for (k, &h) in hidden.iter().enumerate() {
        net = net
            .add(nn::linear(
                vs.root() / format!("h{k}"),
                width as i64,
                h as i64,
                Default::default(),
            ))
            .add_fn(|t| t.mish());
        width = h;
    }
    let net = net.add(nn::linear(
        vs.root() / "out",
        width as i64,
        act_dim as i64,
        Default::default(),
    ));
    let input = Tensor::randn([1, (obs_dim + act_dim) as i64], (Kind::Float, Device::Cpu));

    let mut group = c.benchmark_group("batch1");
    let mut i = 0;
    group.bench_function("runtime int8 act deterministic", |b| {
        b.iter(|| {
            i = (i + 1) % observations.len();
            policy
                .act(
                    black_box(&observations[i]),
                    NoiseMode::Deterministic,
                    &mut scratch,
                    &mut action,
                )
                .unwrap();
            black_box(&action);
        })
    });
    group.bench_function("runtime int8 act stochastic", |b| {
        b.iter(|| {
            i = (i + 1) % observations.len();
            policy
                .act(
                    black_box(&observations[i]),
                    NoiseMode::Stochastic { seed: i as u64 },
                    &mut scratch,
                    &mut action,
                )
                .unwrap();
            black_box(&action);
        })
    });
    for threads in [1, tch::get_num_threads()] {
        tch::set_num_threads(threads);
        group.bench_function(format!("tch float forward {threads} thread(s)"), |b| {
            b.iter(|| {
                let out = net.forward(black_box(&input));
                black_box(out.double_value(&[0, 0]));
            })
        });
    }
    group.finish();

    // One 256×256 hidden layer: optimized host kernel vs the reference loop.
    let layer = &policy.blob().hidden[1];
    let x: Vec<i16> = (0..layer.in_dim)
        .map(|_| (rng.next_u64() as i16).max(-32767))
        .collect();
    let rows = layer.out_dim as usize;
    let mut group = c.benchmark_group("dense 256x256");
    let mut sink = 0i32;
    group.bench_function("kernels::dense", |b| {
        b.iter(|| {
            dense(black_box(layer.weight_matrix()), rows, &x, |_, a| {
                sink = sink.wrapping_add(a)
            })
        })
    });
    group.bench_function("kernels::dense_reference", |b| {
        b.iter(|| {
            dense_reference(black_box(layer.weight_matrix()), rows, &x, |_, a| {
                sink = sink.wrapping_add(a)
            })
        })
    });
    group.finish();
    black_box(sink);
}

criterion_group! {
    name = policy_latency;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(policy_latency);
