//! Checkpoints of variables: save, validated all-or-nothing load, read.

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::ArrayD;
use safetensors::tensor::Dtype;

use crate::checkpoint::format::{self, Decoded, FileContents, dtype_of};
use crate::checkpoint::write::{read_regular_file, write_atomically};
use crate::error::{CheckpointProblem, Error, IoSource, Result};
use crate::float::Float;
use crate::variables::{Variables, check_collection_name};

/// The version of tapegrad's checkpoint layout, stored in the file's metadata.
pub const FORMAT_VERSION: &str = "1";

/// The prefix of the tensors that hold optimizer state in a training checkpoint
/// ([`save_training`](crate::checkpoint::save_training)). No collection name can start
/// with `#`, so these never collide with variables; loading variables alone skips them.
pub(crate) const OPTIMIZER_PREFIX: &str = "#optimizer/";

/// What to do with tensors in the file that the model does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Unexpected tensors are problems (PyTorch `load_state_dict(strict=True)`).
    Strict,
    /// Unexpected tensors are ignored (PyTorch `strict=False`). Missing ones are still
    /// problems: a model must not run with variables it was not given.
    Lenient,
}

impl LoadMode {
    /// This mode, with values that are not finite (NaN, ±∞) accepted as they are stored:
    /// for a checkpoint whose non-finite values are meant (a mask of −∞, say). By default a
    /// load refuses them, naming each, so that a corrupt or diverged file is caught when it
    /// is read rather than at the first step.
    #[must_use]
    pub fn allowing_non_finite(self) -> LoadOptions {
        LoadOptions {
            mode: self,
            allow_non_finite: true,
        }
    }
}

/// How a load treats what the model does not expect: tensors it lacks ([`LoadMode`]) and
/// values that are not finite (refused unless allowed). A [`LoadMode`] alone is the options
/// with non-finite values refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// What to do with tensors the model does not have.
    pub mode: LoadMode,
    /// Whether NaN and infinite values load (`false`: each is a problem naming its tensor).
    pub allow_non_finite: bool,
}

impl From<LoadMode> for LoadOptions {
    fn from(mode: LoadMode) -> Self {
        LoadOptions {
            mode,
            allow_non_finite: false,
        }
    }
}

pub(crate) fn failure(path: &Path, problems: Vec<CheckpointProblem>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        problems,
        io: None,
    }
}

/// A checkpoint error for a file that could not be read or written, keeping the
/// `io::Error` as the error's source.
pub(crate) fn io_failure(path: &Path, error: std::io::Error) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        problems: vec![CheckpointProblem::Io(error.to_string())],
        io: Some(IoSource::new(error)),
    }
}

/// Reads and parses a safetensors file: every tensor, and the metadata.
pub(crate) fn read_tensors(path: &Path) -> Result<FileContents> {
    let bytes = read_regular_file(path).map_err(|e| io_failure(path, e))?;
    format::parse(&bytes).map_err(|e| failure(path, vec![CheckpointProblem::Corrupt(e)]))
}

/// The variables of a file's tensors: every tensor but the optimizer's.
pub(crate) fn variable_tensors(tensors: BTreeMap<String, Decoded>) -> BTreeMap<String, Decoded> {
    tensors
        .into_iter()
        .filter(|(name, _)| !name.starts_with(OPTIMIZER_PREFIX))
        .collect()
}

/// Checks incoming tensors against `variables` and returns the arrays to write, or adds to
/// `problems`. `incoming` maps full names to tensors; `exact_dtype` requires the file's
/// element type to be the model's (a checkpoint) rather than any float (an import).
pub(crate) fn check_variables<A: Float>(
    variables: &Variables<A>,
    incoming: &BTreeMap<String, Decoded>,
    options: LoadOptions,
    exact_dtype: bool,
    problems: &mut Vec<CheckpointProblem>,
) -> Vec<(String, ArrayD<A>)> {
    let expected: BTreeMap<String, Vec<usize>> = variables
        .iter()
        .map(|(name, v)| (name, v.shape().to_vec()))
        .collect();
    let mut accepted = Vec::new();
    for (name, shape) in &expected {
        let Some(tensor) = incoming.get(name) else {
            problems.push(CheckpointProblem::Missing(name.clone()));
            continue;
        };
        if let Some(array) = check_tensor(name, tensor, shape, exact_dtype, problems) {
            if !options.allow_non_finite && !array.iter().all(|v: &A| v.is_finite()) {
                problems.push(CheckpointProblem::NonFinite(name.clone()));
            }
            accepted.push((name.clone(), array));
        }
    }
    for name in incoming.keys() {
        if !expected.contains_key(name) && options.mode == LoadMode::Strict {
            problems.push(CheckpointProblem::Unexpected(name.clone()));
        }
    }
    accepted
}

/// One tensor against the shape the model expects: its array, or a problem.
pub(crate) fn check_tensor<A: Float>(
    name: &str,
    tensor: &Decoded,
    shape: &[usize],
    exact_dtype: bool,
    problems: &mut Vec<CheckpointProblem>,
) -> Option<ArrayD<A>> {
    let dtype_ok = match tensor.dtype {
        Dtype::F32 | Dtype::F64 => !exact_dtype || tensor.dtype == dtype_of::<A>(),
        _ => false,
    };
    if !dtype_ok {
        problems.push(CheckpointProblem::Dtype {
            name: name.to_string(),
            file: format!("{:?}", tensor.dtype),
            model: A::DTYPE,
        });
        None
    } else if tensor.shape != shape {
        problems.push(CheckpointProblem::Shape {
            name: name.to_string(),
            file: tensor.shape.as_slice().into(),
            model: shape.into(),
        });
        None
    } else {
        let array = tensor.array();
        if array.is_none() {
            problems.push(CheckpointProblem::Corrupt(format!(
                "{name}: the data does not fill the shape"
            )));
        }
        array
    }
}

/// Writes checked arrays into `variables` (names are full names of existing variables).
pub(crate) fn commit<A: Float>(variables: &mut Variables<A>, accepted: Vec<(String, ArrayD<A>)>) {
    for (name, array) in accepted {
        let (collection, var_path) = name
            .split_once('/')
            .expect("names from variables are full names");
        variables
            .collection_entry(collection)
            .insert(var_path, array);
    }
}

/// [`check_variables`], then [`commit`] if nothing is wrong.
pub(crate) fn apply_checked<A: Float>(
    variables: &mut Variables<A>,
    incoming: BTreeMap<String, Decoded>,
    options: LoadOptions,
    exact_dtype: bool,
    path: &Path,
    mut problems: Vec<CheckpointProblem>,
) -> Result<()> {
    let accepted = check_variables(variables, &incoming, options, exact_dtype, &mut problems);
    if !problems.is_empty() {
        return Err(failure(path, problems));
    }
    commit(variables, accepted);
    Ok(())
}

/// Every variable as a tensor to write, by full name.
pub(crate) fn variable_tensors_of<A: Float>(variables: &Variables<A>) -> BTreeMap<String, Decoded> {
    variables
        .iter()
        .map(|(name, array)| (name, Decoded::encode(array)))
        .collect()
}

/// The metadata every tapegrad checkpoint carries.
pub(crate) fn base_metadata() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("format".to_string(), "tapegrad".to_string()),
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
    ])
}

/// Writes `bytes` to `path` atomically, as a checkpoint error on failure.
pub(crate) fn write(bytes: &[u8], path: &Path) -> Result<()> {
    write_atomically(bytes, path).map_err(|e| io_failure(path, e))
}

/// Saves every collection of `variables` to `path` in the safetensors format, tensor names
/// `collection/path`, with metadata `{"format": "tapegrad", "format_version": "1"}`.
///
/// Atomic: the bytes go to a temporary file of a unique name beside `path`, are flushed to
/// disk, and the temporary file is renamed over `path`. A crash at any point leaves either
/// the old file or the new one, never a mixture, and a failed save removes its temporary
/// file. Deterministic: the same variables give the same bytes. Values are stored bit for
/// bit (a NaN keeps its payload).
///
/// # Errors
///
/// [`Error::Checkpoint`] if the file cannot be written (its `source()` is the `std::io::Error`); an
/// existing file at `path` is then left as it was.
pub fn save<A: Float>(variables: &Variables<A>, path: impl AsRef<Path>) -> Result<()> {
    let bytes = format::serialize(&variable_tensors_of(variables), &base_metadata());
    write(&bytes, path.as_ref())
}

pub(crate) fn check_version(metadata: &BTreeMap<String, String>) -> Vec<CheckpointProblem> {
    match metadata.get("format_version") {
        Some(v) if v != FORMAT_VERSION => vec![CheckpointProblem::Version {
            found: v.clone(),
            supported: FORMAT_VERSION,
        }],
        _ => Vec::new(),
    }
}

/// Loads a checkpoint into `variables`, which say what the model expects (create them with
/// the model's `init`). Every tensor must match a variable's name, shape and element type;
/// in [`LoadMode::Strict`] the file may hold nothing else (optimizer state, in a training
/// checkpoint, is not a variable and is skipped), and no value may be NaN or infinite unless
/// the options allow it ([`LoadMode::allowing_non_finite`]). All problems are reported
/// together in [`Error::Checkpoint`], and on any problem `variables` is left untouched.
///
/// # Errors
///
/// [`Error::Checkpoint`] listing every problem found (missing, unexpected, wrong shape or dtype,
/// non-finite values, unreadable or corrupt file); `variables` are not changed.
pub fn load_into<A: Float>(
    variables: &mut Variables<A>,
    path: impl AsRef<Path>,
    options: impl Into<LoadOptions>,
) -> Result<()> {
    let path = path.as_ref();
    let file = read_tensors(path)?;
    let problems = check_version(&file.metadata);
    apply_checked(
        variables,
        variable_tensors(file.tensors),
        options.into(),
        true,
        path,
        problems,
    )
}

/// Reads every variable of a checkpoint, without a model to check against. Tensors must be
/// of the element type `A` and named `collection/path` with a valid collection name.
///
/// # Errors
///
/// [`Error::Checkpoint`] if the file cannot be read or is not a tapegrad checkpoint of element type
/// `A`.
pub fn read<A: Float>(path: impl AsRef<Path>) -> Result<Variables<A>> {
    let path = path.as_ref();
    let file = read_tensors(path)?;
    let mut problems = check_version(&file.metadata);
    let mut variables = Variables::new();
    for (name, tensor) in variable_tensors(file.tensors) {
        let Some((collection, var_path)) = name
            .split_once('/')
            .filter(|(c, _)| check_collection_name("read", c).is_ok())
        else {
            problems.push(CheckpointProblem::Name(name));
            continue;
        };
        if tensor.dtype != dtype_of::<A>() {
            problems.push(CheckpointProblem::Dtype {
                name,
                file: format!("{:?}", tensor.dtype),
                model: A::DTYPE,
            });
            continue;
        }
        match tensor.array() {
            Some(array) => {
                variables
                    .collection_entry(collection)
                    .insert(var_path, array);
            }
            None => problems.push(CheckpointProblem::Corrupt(format!(
                "{name}: the data does not fill the shape"
            ))),
        }
    }
    if problems.is_empty() {
        Ok(variables)
    } else {
        Err(failure(path, problems))
    }
}
