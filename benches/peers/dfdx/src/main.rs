//! The workload's training step in dfdx 0.13 (Rust, CPU), for the same-run comparison of
//! docs/performance.md: Linear-BatchNorm1D-ReLU x2 then Linear, mean softmax cross-entropy,
//! SGD momentum 0.9 lr 0.1, the same fixed batch every step, dfdx's own initialisation and
//! BatchNorm conventions (the cost of a step does not depend on them). dfdx wants the sizes as
//! const generics, so each size is its own instantiation. One JSON line per size:
//!
//!     cd benches/peers/dfdx && taskset -c 0,1 cargo run --release -- S M L

use std::time::Instant;

use dfdx::losses::cross_entropy_with_logits_loss;
use dfdx::optim::{Momentum, Sgd, SgdConfig};
use dfdx::prelude::*;

type Model<const I: usize, const H: usize, const C: usize> = (
    (Linear<I, H>, BatchNorm1D<H>, ReLU),
    (Linear<H, H>, BatchNorm1D<H>, ReLU),
    Linear<H, C>,
);

/// SplitMix64 + Box-Muller, seed 42 (workload section 7).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / 9007199254740992.0
    }
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

fn run<const B: usize, const I: usize, const H: usize, const C: usize>(
    name: &str,
    warmup: usize,
    timed: usize,
) {
    let dev: Cpu = Default::default();
    let mut rng = SplitMix64(42);
    let x: Vec<f32> = (0..B * I).map(|_| rng.normal() as f32).collect();
    let mut onehot = vec![0f32; B * C];
    for b in 0..B {
        onehot[b * C + (rng.next_u64() % C as u64) as usize] = 1.0;
    }
    let x: Tensor<Rank2<B, I>, f32, _> = dev.tensor(x);
    let targets: Tensor<Rank2<B, C>, f32, _> = dev.tensor(onehot);

    let mut model = dev.build_module::<Model<I, H, C>, f32>();
    let mut grads = model.alloc_grads();
    let mut opt = Sgd::new(
        &model,
        SgdConfig {
            lr: 0.1,
            momentum: Some(Momentum::Classic(0.9)),
            weight_decay: None,
        },
    );
    let mut step = || -> f32 {
        let logits = model.forward_mut(x.trace(grads.clone()));
        let loss = cross_entropy_with_logits_loss(logits, targets.clone());
        let value = loss.array();
        grads = loss.backward();
        opt.update(&mut model, &grads)
            .expect("every param has a gradient");
        model.zero_grads(&mut grads);
        value
    };
    let start = Instant::now();
    let first_loss = step();
    let first_step_s = start.elapsed().as_secs_f64();
    for _ in 0..warmup {
        step();
    }
    let mut times: Vec<f64> = (0..timed)
        .map(|_| {
            let start = Instant::now();
            step();
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        let at = q * (times.len() - 1) as f64;
        let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
        times[lo] + (times[hi] - times[lo]) * (at - lo as f64)
    };
    println!(
        "{{\"peer\": \"dfdx 0.13\", \"config\": \"{name}\", \"median_us\": {:.1}, \"p10_us\": {:.1}, \"p90_us\": {:.1}, \"first_step_s\": {:.3}, \"first_loss\": {:.4}, \"peak_rss_mib\": {:.1}}}",
        quantile(0.5),
        quantile(0.1),
        quantile(0.9),
        first_step_s,
        first_loss,
        peak_rss_mib()
    );
}

fn main() {
    let sizes: Vec<String> = std::env::args().skip(1).collect();
    let sizes = if sizes.is_empty() {
        vec!["S".into(), "M".into(), "L".into()]
    } else {
        sizes
    };
    for size in sizes {
        match size.as_str() {
            "S" => run::<32, 16, 64, 4>("S", 200, 500),
            "M" => run::<128, 64, 256, 10>("M", 100, 300),
            "L" => run::<512, 256, 1024, 10>("L", 20, 60),
            other => eprintln!("unknown size {other}: S, M or L"),
        }
    }
}

/// The process's peak resident size (VmHWM in /proc/self/status), in MiB; 0 where unknown.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
