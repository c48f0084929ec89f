//! Higher orders against first order, on the workload's models (S, M, CNN-S; f32): for each
//! size the median time of a gradient (`value_and_grad`), of a Hessian-vector product by
//! forward-over-reverse (`hvp`, what tapegrad uses) and by reverse-over-reverse, of a
//! forward pass, and of a forward pass with its tangent (`jvp`), interleaved over rounds so
//! that they share the machine's state; then the ratios `hvp / gradient` and `jvp /
//! forward`. Training-mode BatchNorm, differentiated through its batch statistics; the loss
//! is the workload's. `cargo bench --bench higher_order -- S M CNN-S`.

use std::time::Instant;

use tapegrad::{
    ApplyOptions, Module, ModuleExt, Mutable, ParamTensors, Params, Tensor, hvp,
    hvp_reverse_over_reverse, jvp, softmax_cross_entropy, value_and_grad,
};

#[allow(dead_code)] // its other sizes and its training step serve the other benches
#[path = "support/workload.rs"]
mod workload;

/// A case to time: its name and one run of it.
type Case<'a> = (&'a str, Box<dyn Fn() + 'a>);

fn main() {
    tapegrad::runtime::retain_freed_memory();
    let sizes = {
        let named: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with("--"))
            .collect();
        if named.is_empty() {
            vec!["S".into(), "M".into(), "CNN-S".into()]
        } else {
            named
        }
    };
    for size in sizes {
        match size.as_str() {
            "S" => compare("S", &workload::Workload::new(workload::S), 200),
            "M" => compare("M", &workload::Workload::new(workload::M), 50),
            "CNN-S" => compare("CNN-S", &workload::Workload::cnn(workload::CNN_S), 50),
            other => eprintln!("unknown size {other}: S, M or CNN-S"),
        }
    }
}

fn compare<M>(name: &str, w: &workload::Workload<M>, rounds: usize)
where
    M: Module<f32, Input = Tensor<f32>, Output = Tensor<f32>>,
{
    let options = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let params = w.variables.params();
    let mut rng = tapegrad::SplitMix64::new(7);
    let v: Params<f32> = params
        .iter()
        .map(|(p, a)| (p.to_string(), a.mapv(|_| rng.normal() as f32)))
        .collect();
    let logits =
        |p: &ParamTensors<f32>| Ok(w.model.apply_tracked(p, &w.variables, &w.x, &options)?.0);
    let loss = |p: &ParamTensors<f32>| softmax_cross_entropy(&logits(p)?, &w.labels);
    let constants = ParamTensors::constants(params);
    let mut cases: Vec<Case<'_>> = vec![
        (
            "gradient",
            Box::new(|| drop(value_and_grad(params, loss).unwrap())),
        ),
        ("hvp", Box::new(|| drop(hvp(params, &v, loss).unwrap()))),
        (
            "hvp_rev_rev",
            Box::new(|| drop(hvp_reverse_over_reverse(params, &v, loss).unwrap())),
        ),
        ("forward", Box::new(|| drop(loss(&constants).unwrap()))),
        ("jvp", Box::new(|| drop(jvp(params, &v, loss).unwrap()))),
    ];
    let mut times = vec![Vec::with_capacity(rounds); cases.len()];
    for round in 0..rounds + 3 {
        for ((_, case), times) in cases.iter_mut().zip(&mut times) {
            let started = Instant::now();
            case();
            if round >= 3 {
                times.push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    let median = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let medians: Vec<f64> = times.iter_mut().map(median).collect();
    let fields: Vec<String> = cases
        .iter()
        .zip(&medians)
        .map(|((case, _), m)| format!("\"{case}_us\": {m:.1}"))
        .collect();
    println!(
        "{{\"config\": \"{name}\", {}, \"hvp_over_gradient\": {:.2}, \"hvp_rev_rev_over_gradient\": {:.2}, \"jvp_over_forward\": {:.2}}}",
        fields.join(", "),
        medians[1] / medians[0],
        medians[2] / medians[0],
        medians[4] / medians[3]
    );
}
