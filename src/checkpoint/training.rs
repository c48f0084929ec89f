//! Training checkpoints: the variables and the optimizer's state in one file, so that a
//! resumed run is the same run (its momentum, its moments, its schedule's position).
//!
//! The optimizer's arrays are stored as tensors named `#optimizer/<slot>/<param path>`
//! (`#optimizer/velocity/Dense_0/kernel`), beside the variables' `collection/path`
//! tensors; its kind and step count are in the file's metadata (`optimizer_kind`,
//! `optimizer_steps`). A training checkpoint is still a variables checkpoint:
//! [`load_into`](crate::checkpoint::load_into) reads its variables and skips the rest.

use std::collections::BTreeMap;
use std::path::Path;

use crate::checkpoint::file::{
    LoadOptions, OPTIMIZER_PREFIX, base_metadata, check_tensor, check_variables, check_version,
    commit, failure, read_tensors, variable_tensors, variable_tensors_of, write,
};
use crate::checkpoint::format::{self, Decoded};
use crate::collection::Collection;
use crate::error::{CheckpointProblem, Result};
use crate::float::Float;
use crate::optim::{Optimizer, OptimizerState};
use crate::variables::Variables;

/// Saves `variables` and `optimizer`'s state to `path` (atomically, deterministically,
/// bit for bit, as [`save`](crate::checkpoint::save)).
///
/// ```
/// use tapegrad::checkpoint::{load_training_into, save_training, LoadMode};
/// use tapegrad::nn::Mlp;
/// use tapegrad::optim::{Optimizer, Sgd};
/// use tapegrad::{ModuleExt, Tensor, value_and_grad};
///
/// let model = Mlp::new(&[3], 2);
/// let x = Tensor::from_vec(&[2, 2], vec![0.5f64, -1.0, 2.0, 0.3])?;
/// let mut variables = model.init(0, &x)?;
/// let mut sgd = Sgd::new(0.1).momentum(0.9);
/// let (_, grads) = value_and_grad(variables.params(), |p| {
///     Ok(model.apply_tracked(p, &variables, &x, &Default::default())?.0.square().sum_all())
/// })?;
/// sgd.update(variables.params_mut(), &grads)?;
///
/// let path = std::env::temp_dir().join(format!("tapegrad-training-{}.safetensors", std::process::id()));
/// save_training(&variables, &sgd, &path)?;
/// let (mut restored, mut resumed) = (model.init(1, &x)?, Sgd::new(0.1).momentum(0.9));
/// load_training_into(&mut restored, &mut resumed, &path, LoadMode::Strict)?;
/// assert_eq!(restored, variables);
/// assert_eq!(resumed.state(), sgd.state()); // velocities and the step count
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
///
/// As [`save`](crate::checkpoint::save): [`Error::Checkpoint`](crate::Error::Checkpoint) if the
/// file cannot be written, the old file left as it was.
pub fn save_training<A: Float>(
    variables: &Variables<A>,
    optimizer: &dyn Optimizer<A>,
    path: impl AsRef<Path>,
) -> Result<()> {
    save_training_with_run(variables, optimizer, &BTreeMap::new(), path)
}

/// [`save_training`], with the run's own settings (its command-line flags, say) stored in
/// the file's metadata as `run.<key>` = value, for [`run_settings`] to read back: so that a
/// resume can refuse a checkpoint written with other settings (another seed would split
/// the data otherwise, another batch size count steps otherwise) instead of carrying on
/// silently.
///
/// ```
/// use std::collections::BTreeMap;
/// use tapegrad::checkpoint::{run_settings, save_training_with_run};
/// use tapegrad::optim::Sgd;
/// use tapegrad::{ModuleExt, Tensor};
/// let model = tapegrad::nn::Dense::new(2);
/// let variables = model.init(0, &Tensor::from_vec(&[1, 3], vec![1.0f32; 3])?)?;
/// let path = std::env::temp_dir().join(format!("tapegrad-run-{}.safetensors", std::process::id()));
/// let settings = BTreeMap::from([("seed".to_string(), "3".to_string())]);
/// save_training_with_run(&variables, &Sgd::new(0.1), &settings, &path)?;
/// assert_eq!(run_settings(&path)?, settings);
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
///
/// As [`save_training`].
pub fn save_training_with_run<A: Float>(
    variables: &Variables<A>,
    optimizer: &dyn Optimizer<A>,
    run: &BTreeMap<String, String>,
    path: impl AsRef<Path>,
) -> Result<()> {
    let state = optimizer.state();
    let mut tensors = variable_tensors_of(variables);
    for (slot, arrays) in &state.slots {
        for (param, array) in arrays.iter() {
            let name = format!("{OPTIMIZER_PREFIX}{slot}/{param}");
            tensors.insert(name, Decoded::encode(array));
        }
    }
    let mut metadata = base_metadata();
    metadata.insert("optimizer_kind".into(), state.kind.clone());
    metadata.insert("optimizer_steps".into(), state.steps.to_string());
    for (key, value) in run {
        metadata.insert(format!("{RUN_PREFIX}{key}"), value.clone());
    }
    write(&format::serialize(&tensors, &metadata), path.as_ref())
}

/// The prefix of a run's settings in a checkpoint's metadata, which keeps them apart from
/// tapegrad's own keys.
const RUN_PREFIX: &str = "run.";

/// The run's settings a checkpoint was saved with by [`save_training_with_run`] (empty for
/// any other checkpoint).
///
/// # Errors
///
/// [`Error::Checkpoint`](crate::Error::Checkpoint) if the file cannot be read or is not a
/// safetensors file.
pub fn run_settings(path: impl AsRef<Path>) -> Result<BTreeMap<String, String>> {
    let file = read_tensors(path.as_ref())?;
    Ok(file
        .metadata
        .into_iter()
        .filter_map(|(key, value)| Some((key.strip_prefix(RUN_PREFIX)?.to_string(), value)))
        .collect())
}

/// Loads a training checkpoint into `variables` and `optimizer`, all or nothing: the
/// variables are checked as by [`load_into`](crate::checkpoint::load_into), and the
/// optimizer's state against them (each array named after a param and of its shape, of the
/// model's element type; the file's optimizer of the same kind as `optimizer`). Every problem
/// is reported together, and on any problem neither `variables` nor `optimizer` changes.
///
/// # Errors
///
/// [`Error::Checkpoint`](crate::Error::Checkpoint) for a problem with the file or a mismatch with
/// `variables` or with the optimizer's kind; neither `variables` nor `optimizer` is changed.
pub fn load_training_into<A: Float>(
    variables: &mut Variables<A>,
    optimizer: &mut dyn Optimizer<A>,
    path: impl AsRef<Path>,
    options: impl Into<LoadOptions>,
) -> Result<()> {
    let path = path.as_ref();
    let file = read_tensors(path)?;
    let mut problems = check_version(&file.metadata);
    let state = check_optimizer_state(variables, &file.tensors, &file.metadata, &mut problems);
    let incoming = variable_tensors(file.tensors);
    let accepted = check_variables(variables, &incoming, options.into(), true, &mut problems);
    let Some(state) = state.filter(|_| problems.is_empty()) else {
        return Err(failure(path, problems));
    };
    // The optimizer checks the state is its own kind, and changes nothing if not.
    optimizer.load_state(state)?;
    commit(variables, accepted);
    Ok(())
}

/// The optimizer's state as the file holds it, checked against the params of `variables`.
fn check_optimizer_state<A: Float>(
    variables: &Variables<A>,
    tensors: &BTreeMap<String, Decoded>,
    metadata: &BTreeMap<String, String>,
    problems: &mut Vec<CheckpointProblem>,
) -> Option<OptimizerState<A>> {
    let kind = metadata.get("optimizer_kind");
    let steps = metadata.get("optimizer_steps").and_then(|s| s.parse().ok());
    let (Some(kind), Some(steps)) = (kind, steps) else {
        problems.push(CheckpointProblem::Missing(
            "optimizer state (metadata optimizer_kind and optimizer_steps)".into(),
        ));
        return None;
    };
    let mut slots: BTreeMap<String, Collection<A>> = BTreeMap::new();
    for (name, tensor) in tensors {
        let Some(rest) = name.strip_prefix(OPTIMIZER_PREFIX) else {
            continue;
        };
        let Some((slot, param)) = rest.split_once('/') else {
            problems.push(CheckpointProblem::Name(name.clone()));
            continue;
        };
        let Some(expected) = variables.params().get(param) else {
            problems.push(CheckpointProblem::Unexpected(name.clone()));
            continue;
        };
        if let Some(array) = check_tensor(name, tensor, expected.shape(), true, problems) {
            slots
                .entry(slot.to_string())
                .or_default()
                .insert(param, array);
        }
    }
    Some(OptimizerState {
        kind: kind.clone(),
        steps,
        slots,
    })
}
