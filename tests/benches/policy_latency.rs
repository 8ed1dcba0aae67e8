//! Batch-1 latency on the host: the int8 runtime (`Policy::act`) on the shipped
//! `models/default.blob` (FLAME-M, hidden 3×256, obs 17, act 6) against libtorch's float
//! forward (tch) of a network of the same sizes (23 → 256 → 256 → 256 → 6, Mish), plus the
//! runtime's dense kernel against the reference loop on one 256×256 layer.
//!
//! `cargo bench -p tests --bench policy_latency`. A plain timing harness (no criterion, so
//! the workspace lock file does not change): after a warm-up, each case runs `SAMPLES`
//! batches of calls sized to ~20 ms and reports the median and min per call. Run it on an
//! otherwise idle machine.

use std::hint::black_box;
use std::time::{Duration, Instant};

use runtime::kernels::{dense, dense_reference};
use runtime::noise::SplitMix64;
use runtime::{NoiseMode, Policy, Scratch};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

const SAMPLES: usize = 30;

/// Median and minimum nanoseconds per call of `f`.
fn time(name: &str, mut f: impl FnMut()) -> (f64, f64) {
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < Duration::from_millis(300) {
        f();
        calls += 1;
    }
    let per_batch = ((calls as f64 / 15.0).ceil() as u64).max(1); // ~20 ms batches
    let mut samples: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_nanos() as f64 / per_batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let (median, min) = (samples[SAMPLES / 2], samples[0]);
    println!("{name:<48} median {median:>10.0} ns   min {min:>10.0} ns");
    (median, min)
}

fn main() {
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
    let mut i = 0;
    let (runtime_ns, _) = time("runtime int8 Policy::act (deterministic)", || {
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
    });
    time("runtime int8 Policy::act (stochastic)", || {
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
    });

    // One 256×256 hidden layer: optimized host kernel vs the reference loop.
    let layer = &policy.blob().hidden[1];
    let x: Vec<i8> = (0..layer.in_dim).map(|_| rng.next_u64() as i8).collect();
    let rows = layer.out_dim as usize;
    let mut sink = 0i32;
    let (fast, _) = time("kernels::dense 256x256", || {
        dense(black_box(layer.weights), rows, &x, 3, |_, a| {
            sink = sink.wrapping_add(a)
        });
    });
    let (slow, _) = time("kernels::dense_reference 256x256", || {
        dense_reference(black_box(layer.weights), rows, &x, 3, |_, a| {
            sink = sink.wrapping_add(a)
        });
    });
    black_box(sink);
    println!(
        "host kernel speed-up over the reference loop: {:.1}x",
        slow / fast
    );

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
    let mut results = Vec::new();
    for threads in [tch::get_num_threads(), 1] {
        tch::set_num_threads(threads);
        let (ns, _) = time(
            &format!("tch float forward, batch 1, {threads} thread(s)"),
            || {
                let out = net.forward(black_box(&input));
                black_box(out.double_value(&[0, 0]));
            },
        );
        results.push((threads, ns));
    }
    for (threads, ns) in results {
        println!(
            "runtime is {:.1}x faster than tch batch-1 ({threads} thread(s))",
            ns / runtime_ns
        );
    }
}
