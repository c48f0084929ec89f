//! Lesson 6: a convolutional network with BatchNorm, on real images.
//!
//! Trains a small CNN (Conv → BatchNorm → ReLU → max pool, twice, then a global average and
//! a Dense layer) on the 1,797 8×8 handwritten digits with SGD and momentum. BatchNorm here
//! is `BatchNorm2d` as PyTorch users know it: each channel's statistics are over the batch
//! and every pixel, and its running mean and variance live in `batch_stats`, written only by
//! the mutable `apply` of each step. Evaluation mode uses them to score the test split, and
//! no gradient ever has a `batch_stats` entry (checked at every step).
//!
//! Run: `cargo run --release --example 06_train_cnn -- --help`

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;

#[path = "../05_train_batchnorm/checks.rs"]
mod checks;
mod data;
#[path = "../05_train_batchnorm/exit.rs"]
mod exit;
#[path = "../05_train_batchnorm/plot.rs"]
mod plot;
#[path = "../05_train_batchnorm/step.rs"]
mod step;

use data::Digits;
use plot::{History, plot};
use rand::seq::SliceRandom;
use tapegrad::average::{BufferPolicy, Ema};
use tapegrad::checkpoint::{self, LoadMode};
use tapegrad::nn::{BatchNorm, Conv, Dense, GlobalAvgPool, Pool, Sequential};
use tapegrad::optim::{LearningRate, Optimizer, Sgd};
use tapegrad::{ApplyOptions, ModuleExt, Mutable, SplitMix64, Variables};

/// Train a CNN with BatchNorm on 8×8 handwritten digits, and score it in evaluation mode.
#[derive(Parser, Debug)]
struct Args {
    /// Passes over the training split.
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Images per mini-batch (at least 2: BatchNorm needs a batch).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(2..))]
    batch_size: u32,
    /// Initial learning rate (cosine-decayed to 1% of it).
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Seed of the split, the shuffling and the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Channels of the two convolutions.
    #[arg(long, num_args = 2, default_values_t = [16, 32])]
    channels: Vec<usize>,
    /// Folder for the plot (by default `out/` in the project, wherever it is run from).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../out"))]
    out: PathBuf,
    /// Save a training checkpoint (every collection and the optimizer's state) here after
    /// every epoch.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Resume a run from a checkpoint that `--save` wrote, with the same other flags (a
    /// checkpoint of a run with other flags is refused, naming each).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop after this epoch, as if interrupted (to try `--resume`).
    #[arg(long)]
    stop_after: Option<usize>,
    /// Also keep an exponential moving average of the weights and of BatchNorm's running
    /// statistics with this decay, in the `ema` collection, and report the averaged model's
    /// test accuracy beside the live one's.
    #[arg(long)]
    ema: Option<f64>,
    /// Split each batch into this many micro-batches and accumulate their gradients
    /// (`tapegrad::accumulate`), the running statistics updated once per step from the
    /// micro-batches' moments merged: those of the whole batch.
    #[arg(long, default_value_t = 1)]
    accumulate: usize,
    /// Recompute the model's layers in this many segments during backward (all but the last),
    /// instead of keeping their activations: less memory, one more forward's time, the
    /// same results bit for bit.
    #[arg(long)]
    remat: Option<usize>,
    /// After training, write the model as a PyTorch state_dict (`digits_cnn.safetensors`)
    /// and the test images with tapegrad's logits (`digits_cnn_expected.safetensors`) into
    /// this folder, for `scripts/check_pytorch_export.py`.
    #[arg(long)]
    export_pytorch: Option<PathBuf>,
    /// The data file (CSV: 64 pixels in 0..=16, then the digit, per line).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits.csv"))]
    data: PathBuf,
}

impl Args {
    /// What is wrong with these flags for `train_rows` training images, one problem a line.
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
        if self.channels.contains(&0) {
            problems.push(format!(
                "--channels {:?}: a convolution needs at least one output channel",
                self.channels
            ));
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
        let channels: Vec<String> = self.channels.iter().map(ToString::to_string).collect();
        BTreeMap::from([
            ("epochs".to_string(), self.epochs.to_string()),
            ("batch-size".to_string(), self.batch_size.to_string()),
            ("lr".to_string(), self.lr.to_string()),
            ("seed".to_string(), self.seed.to_string()),
            ("channels".to_string(), channels.join(" ")),
            ("data".to_string(), data.unwrap_or_default()),
            (
                "ema".to_string(),
                self.ema.map_or("none".to_string(), |d| d.to_string()),
            ),
            ("accumulate".to_string(), self.accumulate.to_string()),
        ])
    }
}

/// Conv → BatchNorm → ReLU → max pool, twice; global average; Dense to the 10 digits.
fn model(channels: &[usize]) -> Sequential<f32> {
    let mut model = Sequential::new();
    for &c in channels {
        model = model
            .push(Conv::new(c, [3, 3]).without_bias()) // BatchNorm's mean cancels a bias
            // BatchNorm then ReLU, the ReLU inside BatchNorm's fused node (one pass fewer).
            .push(BatchNorm::new().momentum(0.9).with_relu())
            .push(Pool::max([2, 2]));
    }
    model.push(GlobalAvgPool).push(Dense::new(10))
}

fn accuracy(model: &Sequential<f32>, vars: &Variables<f32>, data: &Digits, idx: &[usize]) -> f64 {
    let (x, y) = data.batch(idx);
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

fn main() -> std::process::ExitCode {
    // Keep freed arrays' memory for the next step instead of faulting it in again
    // (`runtime::retain_freed_memory`: a program's choice, so the program makes it).
    tapegrad::runtime::retain_freed_memory();
    exit::report(run(Args::parse()))
}

fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    println!("{}", tapegrad::runtime::summary());
    let data = Digits::load(&args.data)?;
    // A fixed, seeded 80/20 split.
    let mut idx: Vec<usize> = (0..data.labels.len()).collect();
    idx.shuffle(&mut SplitMix64::new(args.seed));
    let (train_idx, test_idx) = idx.split_at(data.labels.len() * 4 / 5);
    println!(
        "digits: {} train, {} test images of 8x8 pixels, 10 classes",
        train_idx.len(),
        test_idx.len()
    );
    args.check(train_idx.len())?;
    // The checkpoint's folder, made now rather than found missing after the first epoch.
    if let Some(folder) = args.save.as_deref().and_then(Path::parent) {
        std::fs::create_dir_all(folder)?;
    }

    let mut model = model(&args.channels);
    if let Some(segments) = args.remat {
        model = model.remat_segments(segments)?;
    }
    let (x0, _) = data.batch(&train_idx[..2]);
    let mut vars = model.init(args.seed, &x0)?;
    let batch = args.batch_size as usize;
    let batches_per_epoch = train_idx.len() / batch;
    let schedule = LearningRate::Cosine {
        initial: args.lr,
        final_value: args.lr / 100.0,
        steps: args.epochs * batches_per_epoch,
    };
    let mut optimizer = Sgd::new(schedule).momentum(0.9);
    // The average starts as a copy of the initial variables (its collection is then in
    // every checkpoint of the run, resumed or not).
    let ema = match args.ema {
        Some(decay) => Some(Ema::new(decay)?.buffers("batch_stats", BufferPolicy::Average)),
        None => None,
    };
    if let Some(ema) = &ema {
        ema.update(&mut vars)?;
    }
    let mut first_epoch = 1;
    if let Some(path) = &args.resume {
        checks::same_run(&checkpoint::run_settings(path)?, &args.run_settings())
            .map_err(|e| format!("cannot resume from {}: {e}", path.display()))?;
        checkpoint::load_training_into(&mut vars, &mut optimizer, path, LoadMode::Strict)?;
        first_epoch = optimizer.steps() / batches_per_epoch + 1;
        println!(
            "resumed from {} after epoch {}",
            path.display(),
            first_epoch - 1
        );
    }
    let statistics: Vec<&str> = vars
        .collection("batch_stats")
        .map(|c| c.paths().collect())
        .unwrap_or_default();
    println!(
        "model: {} params; batch_stats: {}",
        vars.params().size(),
        statistics.join(", ")
    );

    // One line per epoch is the progress shown: an epoch takes a few tens of milliseconds.
    let say = |line: String| println!("{line}");
    let step_options = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let mut rng = SplitMix64::new(args.seed ^ 0x5EED);
    let mut order = train_idx.to_vec();
    let mut history = History {
        first_epoch,
        ..History::default()
    };
    let (mut stats_in_grads, mut failure) = (0usize, None);
    for epoch in 1..=args.epochs {
        order.shuffle(&mut rng);
        if epoch < first_epoch {
            continue; // done before the checkpoint; the shuffle keeps the order in step
        }
        let mut loss_sum = 0.0;
        for (step, chunk) in order.chunks_exact(batch).enumerate() {
            let (x, y) = data.batch(chunk);
            let stepped = step::train_step(
                &model,
                &mut vars,
                &mut optimizer,
                ema.as_ref(),
                (&x, &y),
                args.accumulate,
                &step_options,
            );
            match stepped {
                Ok((loss, in_grads)) => {
                    loss_sum += f64::from(loss);
                    stats_in_grads += in_grads;
                }
                Err(error) => {
                    failure = Some(checks::failed_at("CNN", epoch, step + 1, &error));
                    break;
                }
            }
        }
        if failure.is_some() {
            break; // the epochs before it are plotted and reported below
        }
        let train_loss = loss_sum / batches_per_epoch as f64;
        let test_accuracy = accuracy(&model, &vars, &data, test_idx);
        say(format!(
            "epoch {epoch:>3}  train loss {train_loss:.4}  test accuracy {:.1}%",
            100.0 * test_accuracy
        ));
        history.train_loss.push(train_loss);
        history.test_accuracy.push(test_accuracy);
        if let Some(path) = &args.save {
            let settings = args.run_settings();
            checkpoint::save_training_with_run(&vars, &optimizer, &settings, path)?;
        }
        if args.stop_after == Some(epoch) {
            say(format!("stopping after epoch {epoch}, as asked"));
            break;
        }
    }

    std::fs::create_dir_all(&args.out)?;
    let out = std::fs::canonicalize(&args.out)?; // the folder as a person finds it
    let plot_path = out.join("train_cnn.svg");
    let majority = (0..10)
        .map(|d| test_idx.iter().filter(|&&i| data.labels[i] == d).count())
        .max()
        .unwrap_or(0) as f64
        / test_idx.len() as f64;
    plot(&plot_path, &[("CNN with BatchNorm", &history)], majority)?;
    let final_accuracy = accuracy(&model, &vars, &data, test_idx);
    println!(
        "\nfinal test accuracy (evaluation mode, running statistics): {:.1}%",
        100.0 * final_accuracy
    );
    if let (Some(ema), Some(decay)) = (&ema, args.ema) {
        let averaged = accuracy(&model, &ema.averaged(&vars)?, &data, test_idx);
        println!(
            "averaged weights (EMA, decay {decay}): {:.1}%",
            100.0 * averaged
        );
    }
    check_statistics_matter(&model, &vars, &data, test_idx)?;
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
        reload_and_compare(&model, &vars, &data, test_idx, path, ema.as_ref())?;
    }
    if let Some(folder) = &args.export_pytorch {
        export_for_pytorch(&model, &vars, &data, test_idx, folder)?;
    }
    println!(
        "done in {:.1} s, peak resident memory {:.0} MiB",
        started.elapsed().as_secs_f64(),
        tapegrad::runtime::peak_resident_mib().unwrap_or(0.0)
    );
    if stats_in_grads != 0 {
        return Err("a gradient reached batch_stats".into());
    }
    checks::refuse(failure.into_iter().collect()).map_err(Into::into)
}

/// The trained model as a PyTorch state_dict, and what PyTorch should compute with it: the
/// test images (NHWC, as tapegrad reads them) and tapegrad's evaluation-mode logits.
fn export_for_pytorch(
    model: &Sequential<f32>,
    vars: &Variables<f32>,
    data: &Digits,
    test: &[usize],
    folder: &Path,
) -> Result<(), Box<dyn Error>> {
    std::fs::create_dir_all(folder)?;
    let state_dict = folder.join("digits_cnn.safetensors");
    checkpoint::export_pytorch(
        vars,
        &state_dict,
        &checkpoint::TorchMapping::of_sequential(model),
    )?;
    let (x, _) = data.batch(test);
    let (logits, _) = model.apply(vars, &x, &ApplyOptions::eval())?;
    let mut expected = Variables::new();
    expected.insert("inputs", "x", x.value())?;
    expected.insert("outputs", "logits", logits.value())?;
    checkpoint::save(&expected, folder.join("digits_cnn_expected.safetensors"))?;
    println!(
        "PyTorch state_dict written to {} (check: python3 scripts/check_pytorch_export.py {})",
        state_dict.display(),
        folder.display()
    );
    Ok(())
}

/// Evaluation with the running statistics reset to their initial values (mean 0, var 1):
/// what a checkpoint of the params alone would give. The gap is what `batch_stats` carries.
fn check_statistics_matter(
    model: &Sequential<f32>,
    vars: &Variables<f32>,
    data: &Digits,
    test: &[usize],
) -> Result<(), Box<dyn Error>> {
    let (x0, _) = data.batch(&test[..2]);
    let fresh_stats = model.init(0, &x0)?;
    let mut forgotten = vars.clone();
    for (path, value) in fresh_stats
        .collection("batch_stats")
        .ok_or("no batch_stats")?
        .iter()
    {
        forgotten.insert("batch_stats", path, value.clone())?;
    }
    println!(
        "the same params with the running statistics forgotten (mean 0, var 1): {:.1}%",
        100.0 * accuracy(model, &forgotten, data, test)
    );
    Ok(())
}

/// Reloads the saved checkpoint into a fresh model and checks it scores the same.
fn reload_and_compare(
    model: &Sequential<f32>,
    vars: &Variables<f32>,
    data: &Digits,
    test: &[usize],
    path: &Path,
    ema: Option<&Ema>,
) -> Result<(), Box<dyn Error>> {
    let (x0, _) = data.batch(&test[..2]);
    let mut reloaded = model.init(1, &x0)?;
    if let Some(ema) = ema {
        ema.update(&mut reloaded)?; // the collection the checkpoint holds
    }
    checkpoint::load_into(&mut reloaded, path, LoadMode::Strict)?;
    let (before, after) = (
        accuracy(model, vars, data, test),
        accuracy(model, &reloaded, data, test),
    );
    println!(
        "saved {}; reloaded, it scores {:.1}%, {}",
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags only this example has are checked with the common ones.
    #[test]
    fn a_convolution_of_no_channel_is_refused() {
        let args = Args::parse_from(["06_train_cnn", "--channels", "16", "0"]);
        let err = args.check(1437).unwrap_err();
        assert!(err.starts_with("--channels [16, 0]"), "{err}");
        assert!(Args::parse_from(["06_train_cnn"]).check(1437).is_ok());
    }
}
