//! What a training run's flags must satisfy, and what makes a resumed run the same run:
//! shared by the training examples (05 and 06).

use std::collections::BTreeMap;

/// The flags every training example has.
pub struct Common {
    pub epochs: usize,
    pub batch_size: usize,
    pub stop_after: Option<usize>,
    pub lr: f64,
    pub ema: Option<f64>,
    pub accumulate: usize,
    pub remat: Option<usize>,
}

/// The problems with the flags every training example has, one line each: an empty run, a
/// batch larger than the data, a stop outside the run, a learning rate that is not one, an
/// average's decay outside `[0, 1)`, micro-batches that do not split the batch into pieces
/// BatchNorm can normalise, no segments to recompute.
pub fn check_common(flags: &Common, train_rows: usize) -> Vec<String> {
    let Common {
        epochs,
        batch_size,
        stop_after,
        lr,
        ema,
        accumulate,
        remat,
    } = *flags;
    let mut problems = Vec::new();
    if epochs == 0 {
        problems.push("--epochs 0: nothing would be trained; give at least 1".to_string());
    }
    if batch_size > train_rows {
        problems.push(format!(
            "--batch-size {batch_size} is more than the {train_rows} training rows: no whole \
             batch can be formed"
        ));
    }
    if let Some(stop) = stop_after.filter(|&s| s == 0 || s > epochs) {
        problems.push(format!(
            "--stop-after {stop}: name an epoch from 1 to --epochs ({epochs})"
        ));
    }
    if !(lr.is_finite() && lr > 0.0) {
        problems.push(format!(
            "--lr {lr}: the learning rate must be a positive number"
        ));
    }
    if let Some(decay) = ema.filter(|d| !(0.0..1.0).contains(d)) {
        problems.push(format!("--ema {decay}: the decay must be in [0, 1)"));
    }
    if accumulate == 0 || !batch_size.is_multiple_of(accumulate) || batch_size / accumulate < 2 {
        problems.push(format!(
            "--accumulate {accumulate}: must split --batch-size {batch_size} into micro-batches \
             of at least 2 rows each (BatchNorm needs a batch)"
        ));
    }
    if remat == Some(0) {
        problems.push("--remat 0: recompute the blocks in at least one segment".to_string());
    }
    problems
}

/// All of `problems`, or nothing wrong.
pub fn refuse(problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Whether a checkpoint written by a run with the settings `saved` may be resumed by one
/// with `current`: only the same run may, else its data split (the seed), its step count
/// (the batch size), its schedule (the learning rate, the epochs) or its model would change
/// under it. Every difference is named, with both values.
pub fn same_run(
    saved: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
) -> Result<(), String> {
    if saved.is_empty() {
        return Err(
            "the checkpoint records no run settings (it was not saved by --save of this \
             example): start a new run without --resume"
                .to_string(),
        );
    }
    let differences: Vec<String> = current
        .iter()
        .filter_map(|(flag, value)| {
            let before = saved.get(flag).map_or("(not recorded)", String::as_str);
            (before != value).then(|| {
                format!("  --{flag}: the checkpoint's run used {before}, this one {value}")
            })
        })
        .collect();
    if differences.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the checkpoint was written by another run:\n{}\nresume with the same flags, or start \
         a new run without --resume",
        differences.join("\n")
    ))
}

/// A step that failed, with where it happened and, for values that left the range of
/// `f32`, what usually helps.
pub fn failed_at(model: &str, epoch: usize, step: usize, error: &dyn std::fmt::Display) -> String {
    let error = error.to_string();
    let hint = if error.contains("not finite") {
        "; the loss or the gradients overflowed: a smaller --lr usually helps"
    } else {
        ""
    };
    format!("{model}: epoch {epoch}, step {step}: {error}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn flags(epochs: usize, batch_size: usize, stop_after: Option<usize>, lr: f64) -> Common {
        Common {
            epochs,
            batch_size,
            stop_after,
            lr,
            ema: None,
            accumulate: 1,
            remat: None,
        }
    }

    #[test]
    fn flags_that_train_nothing_or_cannot_be_met_are_named() {
        assert!(check_common(&flags(40, 32, None, 0.05), 1279).is_empty());
        let bad = Common {
            ema: Some(1.0),
            accumulate: 3,
            remat: Some(0),
            ..flags(0, 2000, Some(50), f64::NAN)
        };
        let problems = check_common(&bad, 1279);
        assert_eq!(problems.len(), 7, "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("--accumulate 3")));
        let whole_batch = Common {
            accumulate: 16,
            ..flags(10, 32, None, 0.1)
        };
        assert!(check_common(&whole_batch, 100).is_empty()); // 16 micro-batches of 2 rows
        for flag in [
            "--epochs 0",
            "--batch-size 2000",
            "--stop-after 50",
            "--lr NaN",
            "--ema 1",
            "--remat 0",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(flag)),
                "{flag}: {problems:?}"
            );
        }
        assert!(check_common(&flags(10, 32, Some(0), 0.1), 100)[0].starts_with("--stop-after 0"));
        assert!(
            refuse(vec!["a".into(), "b".into()])
                .unwrap_err()
                .contains("a\nb")
        );
    }

    #[test]
    fn a_resume_with_other_flags_is_refused_naming_each_flag_and_both_values() {
        let saved = settings(&[("seed", "0"), ("batch-size", "32"), ("lr", "0.05")]);
        assert!(same_run(&saved, &saved).is_ok());
        let current = settings(&[("seed", "3"), ("batch-size", "64"), ("lr", "0.05")]);
        let err = same_run(&saved, &current).unwrap_err();
        assert!(
            err.contains("--seed: the checkpoint's run used 0, this one 3"),
            "{err}"
        );
        assert!(err.contains("--batch-size: the checkpoint's run used 32, this one 64"));
        assert!(!err.contains("--lr"), "{err}");
        assert!(same_run(&BTreeMap::new(), &current).is_err());
    }

    #[test]
    fn a_failed_step_says_where_and_what_helps() {
        let message = failed_at("MLP", 3, 12, &"Sgd::update: the gradient is not finite");
        assert!(message.starts_with("MLP: epoch 3, step 12: "), "{message}");
        assert!(message.contains("smaller --lr"), "{message}");
    }
}
