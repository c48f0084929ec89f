//! Lesson 5: training with running statistics, on a real data set.
//!
//! Trains an MLP with BatchNorm (Dense → BatchNorm → ReLU, twice, then Dense) to predict the
//! quality of red wines from 11 raw measurements of very different scales, with SGD and
//! momentum (or Adam), and the same MLP without BatchNorm for comparison. It shows the point
//! of tapegrad:
//!
//! * the running mean and variance of the first BatchNorm live in `batch_stats`, change only
//!   through the mutable `apply` of each step, and approach the statistics of their input
//!   over the whole training set (the gap is printed each epoch);
//! * evaluation mode uses them, as constants, to score the test set;
//! * no gradient ever has a `batch_stats` entry (checked at every step).
//!
//! Run: `cargo run --release --example 05_train_batchnorm -- --help`

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, ValueEnum};

mod checks;
mod data;
mod exit;
mod plot;
mod step;

use data::Data;
use ndarray::Axis;
use plot::{History, plot};
use rand::seq::SliceRandom;
use tapegrad::average::{BufferPolicy, Ema};
use tapegrad::checkpoint::{self, LoadMode};
use tapegrad::nn::{BatchNorm, Dense, Mlp};
use tapegrad::optim::{Adam, LearningRate, Optimizer, Sgd};
use tapegrad::{ApplyOptions, ModuleExt, Mutable, SplitMix64, Variables};

/// Train an MLP with BatchNorm running statistics on the red wine-quality data (and the
/// same MLP without BatchNorm, for comparison); score both in evaluation mode and plot them.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Passes over the training set.
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Examples per mini-batch (at least 2: BatchNorm needs a batch).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(2..))]
    batch_size: u32,
    /// Initial learning rate (cosine-decayed to 1% of it).
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// The optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Sgd)]
    optimizer: OptimizerKind,
    /// Seed of the split, the shuffling and the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Width of both hidden layers.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Folder for the plot (by default `out/` in the project, wherever it is run from).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../out"))]
    out: PathBuf,
    /// Save the BatchNorm model's training checkpoint (every collection and the optimizer's
    /// state) to this safetensors file after every epoch; at the end, reload it and check
    /// that it scores the test set bit for bit the same.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Resume the BatchNorm model's run from a checkpoint that `--save` wrote, with the same
    /// other flags (a checkpoint of a run with other flags is refused, naming each): it goes
    /// on from the epoch after the saved one, with the saved momentum and the learning-rate
    /// schedule where it was, and ends where the run never stopped would have (bit for bit).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop after this epoch, as if interrupted (to try `--resume`).
    #[arg(long)]
    stop_after: Option<usize>,
    /// Also keep an exponential moving average of the weights (and of BatchNorm's running
    /// statistics) with this decay, in the `ema` collection, and report the averaged model's
    /// test accuracy beside the live one's.
    #[arg(long)]
    ema: Option<f64>,
    /// Split each batch into this many micro-batches and accumulate their gradients
    /// (`tapegrad::accumulate`), the running statistics updated once per step from the
    /// micro-batches' moments merged: those of the whole batch.
    #[arg(long, default_value_t = 1)]
    accumulate: usize,
    /// Recompute the model's hidden blocks in this many segments during backward (all but the last),
    /// instead of keeping their activations: less memory, one more forward's time, the
    /// same results bit for bit.
    #[arg(long)]
    remat: Option<usize>,
    /// The data file (CSV with a header, the quality in the last column).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/winequality-red.csv"))]
    data: PathBuf,
}

impl Args {
    /// What is wrong with these flags for `train_rows` training rows, one problem a line.
    fn check(&self, train_rows: usize) -> Result<(), String> {
        let common = checks::Common {
            epochs: self.epochs,
            batch_size: self.batch_size as usize,
            stop_after: self.stop_after,
            lr: self.lr,
            ema: self.ema,
            accumulate: self.accumulate,
            remat: self.remat,
        };
        let mut problems = checks::check_common(&common, train_rows);
        if self.hidden == 0 {
            problems.push("--hidden 0: a hidden layer needs at least one unit".to_string());
        }
        checks::refuse(problems)
    }

    /// The flags that make a run what it is, as its checkpoints record them: a resume must
    /// have the same.
    fn run_settings(&self) -> BTreeMap<String, String> {
        let data = self
            .data
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        BTreeMap::from([
            ("epochs".to_string(), self.epochs.to_string()),
            ("batch-size".to_string(), self.batch_size.to_string()),
            ("lr".to_string(), self.lr.to_string()),
            (
                "optimizer".to_string(),
                format!("{:?}", self.optimizer).to_lowercase(),
            ),
            ("seed".to_string(), self.seed.to_string()),
            ("hidden".to_string(), self.hidden.to_string()),
            ("data".to_string(), data.unwrap_or_default()),
            (
                "ema".to_string(),
                self.ema.map_or("none".to_string(), |d| d.to_string()),
            ),
            ("accumulate".to_string(), self.accumulate.to_string()),
        ])
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OptimizerKind {
    /// SGD with heavy-ball momentum 0.9.
    Sgd,
    /// Adam (learning rate scaled by 1/10).
    Adam,
}

fn accuracy(model: &Mlp, vars: &Variables<f32>, data: &Data, idx: &[usize]) -> f64 {
    let (x, y) = data.rows(idx);
    let (logits, _) = model.apply(vars, &x, &ApplyOptions::eval()).expect("eval");
    let correct = logits
        .value()
        .outer_iter()
        .zip(&y)
        .filter(|(row, label)| {
            let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
            best.map(|(i, _)| i) == Some(**label)
        })
        .count();
    correct as f64 / y.len() as f64
}

/// The average relative gap, over features, between the first BatchNorm's running statistics and the mean
/// and (biased) variance of its input, `Dense_0(x)`, over the whole training set: the mean's
/// gap in standard deviations, the variance's as a fraction of the variance.
fn running_stats_gap(vars: &Variables<f32>, data: &Data, train: &[usize]) -> (f64, f64) {
    let (x, _) = data.rows(train);
    let dense = vars.subtree("Dense_0");
    let width = dense.params().get("bias").map_or(0, |b| b.len());
    let (z, _) = Dense::new(width)
        .apply(&dense, &x, &ApplyOptions::eval())
        .expect("Dense_0");
    let z = z.value();
    let mean = z.mean_axis(Axis(0)).expect("rows");
    let var = z.var_axis(Axis(0), 0.0);
    let running = |name| vars.get(name).expect("BatchNorm_0 statistics");
    let average = |gaps: &mut dyn Iterator<Item = f32>| {
        let (sum, n) = gaps.fold((0.0, 0u32), |(s, n), g| (s + f64::from(g), n + 1));
        sum / f64::from(n.max(1))
    };
    let mean_gap = running("batch_stats/BatchNorm_0/mean")
        .iter()
        .zip(&mean)
        .zip(&var)
        .map(|((r, m), v)| (r - m).abs() / v.sqrt().max(1e-6));
    let var_gap = running("batch_stats/BatchNorm_0/var")
        .iter()
        .zip(&var)
        .map(|(r, v)| (r - v).abs() / v.max(1e-6));
    (average(&mut { mean_gap }), average(&mut { var_gap }))
}

fn make_optimizer(args: &Args, steps: usize) -> Box<dyn Optimizer<f32>> {
    let lr = match args.optimizer {
        OptimizerKind::Sgd => args.lr,
        OptimizerKind::Adam => args.lr / 10.0,
    };
    let schedule = LearningRate::Cosine {
        initial: lr,
        final_value: lr / 100.0,
        steps,
    };
    match args.optimizer {
        OptimizerKind::Sgd => Box::new(Sgd::new(schedule).momentum(0.9)),
        OptimizerKind::Adam => Box::new(Adam::new(schedule)),
    }
}

/// A trained model: its history, its variables, and the step that failed, if one did (the
/// history then ends at the last whole epoch).
struct Trained {
    history: History,
    vars: Variables<f32>,
    failure: Option<String>,
    /// The averaged weights' final test accuracy, with `--ema`.
    averaged_accuracy: Option<f64>,
}

/// Trains `model` and returns its history; with BatchNorm it also prints the statistics
/// gap each epoch. `stats_entries_in_grads` counts gradient keys that name a batch_stats
/// variable (it must stay 0). A step that fails (a learning rate so large the loss
/// overflows, say) ends the training and is reported in the result, with its epoch and
/// step; what cannot start (a refused resume) is an error.
fn train(
    name: &str,
    model: &Mlp,
    args: &Args,
    data: &Data,
    (train_idx, test_idx): (&[usize], &[usize]),
    (resume, save): (Option<&Path>, Option<&Path>),
    stats_entries_in_grads: &mut usize,
) -> Result<Trained, Box<dyn Error>> {
    let (x0, _) = data.rows(&train_idx[..2]);
    let mut vars = model.init(args.seed, &x0)?;
    let batch = args.batch_size as usize;
    let batches_per_epoch = train_idx.len() / batch;
    let mut optimizer = make_optimizer(args, args.epochs * batches_per_epoch);
    // The average starts as a copy of the initial variables, so that a resumed run's
    // variables have the collection its checkpoint holds.
    let ema = averaging(args.ema, &vars)?;
    if let Some(ema) = &ema {
        ema.update(&mut vars)?;
    }
    let mut first_epoch = 1;
    if let Some(path) = resume {
        // Only the same run: another seed would split the data otherwise, another batch
        // size count its steps otherwise.
        checks::same_run(&checkpoint::run_settings(path)?, &args.run_settings())
            .map_err(|e| format!("cannot resume from {}: {e}", path.display()))?;
        // All or nothing: a checkpoint of another model or optimizer is refused with every
        // problem listed, and nothing is loaded.
        checkpoint::load_training_into(&mut vars, optimizer.as_mut(), path, LoadMode::Strict)?;
        first_epoch = optimizer.steps() / batches_per_epoch + 1;
        println!(
            "resumed from {} after epoch {} (step {})",
            path.display(),
            first_epoch - 1,
            optimizer.steps()
        );
    }
    let mut rng = SplitMix64::new(args.seed ^ 0x5EED);
    let mut order = train_idx.to_vec();
    let step_options = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let mut history = History {
        first_epoch,
        ..History::default()
    };

    println!("\n== {name}: {} params", vars.params().size());
    for epoch in 1..=args.epochs {
        order.shuffle(&mut rng);
        if epoch < first_epoch {
            continue; // done before the checkpoint; the shuffle above keeps the order in step
        }
        // No progress bar: an epoch takes a few milliseconds, so one line per epoch is the
        // progress a person can see.
        let mut loss_sum = 0.0;
        // Whole batches only: a last batch of one example has no batch variance.
        for (step, chunk) in order.chunks_exact(batch).enumerate() {
            let (x, y) = data.rows(chunk);
            let stepped = step::train_step(
                model,
                &mut vars,
                optimizer.as_mut(),
                ema.as_ref(),
                (&x, &y),
                args.accumulate,
                &step_options,
            );
            match stepped {
                Ok((loss, stats_in_grads)) => {
                    loss_sum += f64::from(loss);
                    *stats_entries_in_grads += stats_in_grads;
                }
                Err(error) => {
                    let failure = checks::failed_at(name, epoch, step + 1, &error);
                    return Ok(Trained {
                        history,
                        vars,
                        failure: Some(failure),
                        averaged_accuracy: None,
                    });
                }
            }
        }
        let train_loss = loss_sum / batches_per_epoch as f64;
        let test_accuracy = accuracy(model, &vars, data, test_idx);
        let gap = if model.batch_norm.is_some() {
            let (mean_gap, var_gap) = running_stats_gap(&vars, data, train_idx);
            format!(
                "  BatchNorm_0 running stats off by {:.1}% of a std (mean), {:.1}% (var)",
                100.0 * mean_gap,
                100.0 * var_gap
            )
        } else {
            String::new()
        };
        println!(
            "epoch {epoch:>3}  train loss {train_loss:.4}  test accuracy {:.1}%{gap}",
            100.0 * test_accuracy
        );
        history.train_loss.push(train_loss);
        history.test_accuracy.push(test_accuracy);
        if let Some(path) = save {
            let settings = args.run_settings();
            checkpoint::save_training_with_run(&vars, optimizer.as_ref(), &settings, path)?;
        }
        if args.stop_after == Some(epoch) {
            println!("stopping after epoch {epoch}, as asked");
            break;
        }
    }
    let averaged_accuracy = match &ema {
        Some(ema) => Some(accuracy(model, &ema.averaged(&vars)?, data, test_idx)),
        None => None,
    };
    Ok(Trained {
        history,
        vars,
        failure: None,
        averaged_accuracy,
    })
}

/// The moving average `--ema` asks for: the weights, and BatchNorm's running statistics
/// where the model has them (averaged, so that the averaged weights are evaluated with
/// statistics of weights like them).
fn averaging(decay: Option<f64>, vars: &Variables<f32>) -> Result<Option<Ema>, Box<dyn Error>> {
    let Some(decay) = decay else {
        return Ok(None);
    };
    let mut ema = Ema::new(decay)?;
    if vars.collection("batch_stats").is_some() {
        ema = ema.buffers("batch_stats", BufferPolicy::Average);
    }
    Ok(Some(ema))
}

fn main() -> std::process::ExitCode {
    // Keep freed arrays' memory for the next step instead of faulting it in again
    // (`runtime::retain_freed_memory`: a program's choice, so the program makes it).
    tapegrad::runtime::retain_freed_memory();
    exit::report(run(Args::parse()))
}

fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    println!("{}", tapegrad::runtime::summary());
    let data = Data::load(&args.data)?;

    // A fixed, seeded 80/20 split.
    let mut idx: Vec<usize> = (0..data.y.len()).collect();
    idx.shuffle(&mut SplitMix64::new(args.seed));
    let (train_idx, test_idx) = idx.split_at(data.y.len() * 4 / 5);
    let majority = (0..6)
        .map(|c| test_idx.iter().filter(|&&i| data.y[i] == c).count())
        .max()
        .unwrap_or(0) as f64
        / test_idx.len() as f64;
    println!(
        "red wine quality: {} train, {} test, {} raw features; majority-class test accuracy {:.1}%",
        train_idx.len(),
        test_idx.len(),
        data.x.ncols(),
        100.0 * majority
    );
    args.check(train_idx.len())?;
    // The checkpoint's folder, made now rather than found missing after the first epoch.
    if let Some(folder) = args.save.as_deref().and_then(Path::parent) {
        std::fs::create_dir_all(folder)?;
    }

    let hidden = [args.hidden, args.hidden];
    let mut with_bn = Mlp::new(&hidden, 6).with_batch_norm(BatchNorm::new().momentum(0.9));
    let mut without_bn = Mlp::new(&hidden, 6);
    if let Some(segments) = args.remat {
        with_bn = with_bn.with_remat_segments(segments)?;
        without_bn = without_bn.with_remat_segments(segments)?;
    }
    let mut stats_in_grads = 0;
    let split = (train_idx, test_idx);
    let checkpoints = (args.resume.as_deref(), args.save.as_deref());
    let with_batch_norm = train(
        "MLP with BatchNorm",
        &with_bn,
        &args,
        &data,
        split,
        checkpoints,
        &mut stats_in_grads,
    )?;
    let without = train(
        "MLP without BatchNorm",
        &without_bn,
        &args,
        &data,
        split,
        (None, None),
        &mut stats_in_grads,
    )?;

    // Whatever trained is plotted and reported, even if the other model's run failed.
    std::fs::create_dir_all(&args.out)?;
    let out = std::fs::canonicalize(&args.out)?; // the folder as a person finds it
    let plot_path = out.join("train_batchnorm.svg");
    plot(
        &plot_path,
        &[
            ("with BatchNorm", &with_batch_norm.history),
            ("without BatchNorm", &without.history),
        ],
        majority,
    )?;

    let last = |trained: &Trained| match trained.history.test_accuracy.last() {
        Some(accuracy) => format!("{:.1}%", 100.0 * accuracy),
        None => "(no epoch completed)".to_string(),
    };
    println!(
        "\nfinal test accuracy: with BatchNorm {}, without {}, majority class {:.1}%",
        last(&with_batch_norm),
        last(&without),
        100.0 * majority
    );
    if let Some(decay) = args.ema {
        let averaged = |trained: &Trained| {
            trained
                .averaged_accuracy
                .map_or("(no epoch completed)".to_string(), |a| {
                    format!("{:.1}%", 100.0 * a)
                })
        };
        println!(
            "averaged weights (EMA, decay {decay}): with BatchNorm {}, without {}",
            averaged(&with_batch_norm),
            averaged(&without)
        );
    }
    let bn_vars = &with_batch_norm.vars;
    let (mean_gap, var_gap) = running_stats_gap(bn_vars, &data, train_idx);
    println!(
        "BatchNorm_0 running statistics vs its input over the training set: \
         mean off by {:.1}% of a std, var by {:.1}% (averages over features)",
        100.0 * mean_gap,
        100.0 * var_gap
    );
    println!(
        "gradient entries naming a batch_stats variable, over every step: {stats_in_grads} {}",
        if stats_in_grads == 0 {
            "(never: running statistics are not differentiated)"
        } else {
            "(BUG)"
        }
    );
    println!("plot written to {}", plot_path.display());
    if let Some(path) = &args.save {
        // The training checkpoint is a variables checkpoint too: load_into reads the
        // variables and skips the optimizer's state.
        let (x0, _) = data.rows(&train_idx[..2]);
        let mut reloaded = with_bn.init(args.seed.wrapping_add(1), &x0)?;
        if let Some(ema) = averaging(args.ema, &reloaded)? {
            ema.update(&mut reloaded)?; // the collection the checkpoint holds
        }
        checkpoint::load_into(&mut reloaded, path, LoadMode::Strict)?;
        let (before, after) = (
            accuracy(&with_bn, bn_vars, &data, test_idx),
            accuracy(&with_bn, &reloaded, &data, test_idx),
        );
        println!(
            "saved {} (params, batch_stats and the optimizer's state); reloaded, it scores {:.1}% on the test set, {}",
            path.display(),
            100.0 * after,
            if before.to_bits() == after.to_bits() {
                "bit for bit the same"
            } else {
                "DIFFERENT"
            }
        );
        if before.to_bits() != after.to_bits() {
            return Err("the reloaded checkpoint evaluates differently".into());
        }
    }
    println!(
        "done in {:.1} s, peak resident memory {:.0} MiB",
        started.elapsed().as_secs_f64(),
        tapegrad::runtime::peak_resident_mib().unwrap_or(0.0)
    );
    if stats_in_grads != 0 {
        return Err("a gradient reached batch_stats".into());
    }
    let failures: Vec<String> = [with_batch_norm.failure, without.failure]
        .into_iter()
        .flatten()
        .collect();
    checks::refuse(failures).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags only this example has are checked with the common ones.
    #[test]
    fn a_hidden_layer_of_no_unit_is_refused() {
        let args = Args::parse_from(["05_train_batchnorm", "--hidden", "0"]);
        let err = args.check(1279).unwrap_err();
        assert!(err.starts_with("--hidden 0"), "{err}");
        assert!(Args::parse_from(["05_train_batchnorm"]).check(1279).is_ok());
        // The run's settings name every flag that changes the run (and not --out).
        let settings = Args::parse_from(["05_train_batchnorm", "--seed", "3"]).run_settings();
        assert_eq!(settings["seed"], "3");
        assert!(!settings.contains_key("out"));
    }
}
