//! The safetensors file: atomic save, validated all-or-nothing load.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{CheckpointProblem, Error, Result};
use crate::float::Float;
use crate::variables::Variables;

/// The version of tapegrad's checkpoint layout, stored in the file's metadata.
pub const FORMAT_VERSION: &str = "1";

/// What to do with tensors in the file that the model does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Unexpected tensors are problems (PyTorch `load_state_dict(strict=True)`).
    Strict,
    /// Unexpected tensors are ignored (PyTorch `strict=False`). Missing ones are still
    /// problems: a model must not run with variables it was not given.
    Lenient,
}

fn failure(path: &Path, problems: Vec<CheckpointProblem>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        problems,
    }
}

fn dtype_of<A: Float>() -> Dtype {
    if A::DTYPE == "float32" {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

fn to_bytes<A: Float>(array: &ArrayD<A>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(array.len() * std::mem::size_of::<A>());
    for &x in array.iter() {
        match dtype_of::<A>() {
            Dtype::F32 => bytes.extend_from_slice(&(x.as_f64() as f32).to_le_bytes()),
            _ => bytes.extend_from_slice(&x.as_f64().to_le_bytes()),
        }
    }
    bytes
}

/// A tensor decoded from a file: its dtype name, shape and values (as f64, exactly).
pub(crate) struct Decoded {
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) values: Option<Vec<f64>>,
}

fn decode(view: &TensorView<'_>) -> Decoded {
    let data = view.data();
    let values = match view.dtype() {
        Dtype::F32 => Some(
            data.chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
        Dtype::F64 => Some(
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        Dtype::I64 => Some(
            data.chunks_exact(8)
                .map(|c| {
                    i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64
                })
                .collect(),
        ),
        _ => None,
    };
    Decoded {
        dtype: view.dtype(),
        shape: view.shape().to_vec(),
        values,
    }
}

/// A file's tensors by name, and its metadata.
pub(crate) type FileContents = (BTreeMap<String, Decoded>, Option<HashMap<String, String>>);

/// Reads and parses a safetensors file: every tensor decoded, and the metadata.
pub(crate) fn read_tensors(path: &Path) -> Result<FileContents> {
    let bytes =
        fs::read(path).map_err(|e| failure(path, vec![CheckpointProblem::Io(e.to_string())]))?;
    let corrupt =
        |e: &dyn fmt::Display| failure(path, vec![CheckpointProblem::Corrupt(e.to_string())]);
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(&e))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&e))?;
    let tensors = file
        .iter()
        .map(|(name, view)| (name.to_string(), decode(&view)))
        .collect();
    Ok((tensors, metadata.metadata().clone()))
}

/// Checks incoming tensors against `variables` and, only if nothing is wrong, writes them.
/// `incoming` maps full names to tensors; `exact_dtype` requires the file's element type
/// to be the model's (a checkpoint) rather than any float (an import).
pub(crate) fn apply_checked<A: Float>(
    variables: &mut Variables<A>,
    incoming: BTreeMap<String, Decoded>,
    mode: LoadMode,
    exact_dtype: bool,
    path: &Path,
    mut problems: Vec<CheckpointProblem>,
) -> Result<()> {
    let expected: BTreeMap<String, Vec<usize>> = variables
        .iter()
        .map(|(name, v)| (name, v.shape().to_vec()))
        .collect();
    let mut accepted: Vec<(String, ArrayD<A>)> = Vec::new();
    for (name, shape) in &expected {
        let Some(tensor) = incoming.get(name) else {
            problems.push(CheckpointProblem::Missing(name.clone()));
            continue;
        };
        let dtype_ok = match tensor.dtype {
            Dtype::F32 | Dtype::F64 => !exact_dtype || tensor.dtype == dtype_of::<A>(),
            _ => false,
        };
        if !dtype_ok {
            problems.push(CheckpointProblem::Dtype {
                name: name.clone(),
                file: format!("{:?}", tensor.dtype),
                model: A::DTYPE,
            });
        } else if &tensor.shape != shape {
            problems.push(CheckpointProblem::Shape {
                name: name.clone(),
                file: tensor.shape.as_slice().into(),
                model: shape.as_slice().into(),
            });
        } else if let Some(values) = &tensor.values {
            let array =
                ArrayD::from_shape_vec(shape.clone(), values.iter().map(|&v| A::of(v)).collect());
            match array {
                Ok(array) => accepted.push((name.clone(), array)),
                Err(e) => problems.push(CheckpointProblem::Corrupt(format!("{name}: {e}"))),
            }
        }
    }
    for name in incoming.keys() {
        if !expected.contains_key(name) && mode == LoadMode::Strict {
            problems.push(CheckpointProblem::Unexpected(name.clone()));
        }
    }
    if !problems.is_empty() {
        return Err(failure(path, problems));
    }
    for (name, array) in accepted {
        let (collection, var_path) = name
            .split_once('/')
            .expect("names from variables are full names");
        variables.insert(collection, var_path, array);
    }
    Ok(())
}

/// Saves every collection of `variables` to `path` in the safetensors format, tensor names
/// `collection/path`, with metadata `{"format": "tapegrad", "format_version": "1"}`.
///
/// Atomic: the bytes go to a temporary file beside `path`, are flushed to disk, and the
/// temporary file is renamed over `path`. A crash at any point leaves either the old file or
/// the new one, never a mixture.
pub fn save<A: Float>(variables: &Variables<A>, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let bytes = serialize(variables).map_err(|e| failure(path, vec![CheckpointProblem::Io(e)]))?;
    stage(&bytes, path)
        .and_then(PendingWrite::commit)
        .map_err(|e| failure(path, vec![CheckpointProblem::Io(e.to_string())]))
}

fn serialize<A: Float>(variables: &Variables<A>) -> std::result::Result<Vec<u8>, String> {
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = variables
        .iter()
        .map(|(name, array)| (name, array.shape().to_vec(), to_bytes(array)))
        .collect();
    let views = owned
        .iter()
        .map(|(name, shape, bytes)| {
            Ok((
                name.clone(),
                TensorView::new(dtype_of::<A>(), shape.clone(), bytes)
                    .map_err(|e| e.to_string())?,
            ))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let metadata = HashMap::from([
        ("format".to_string(), "tapegrad".to_string()),
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
    ]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}

/// A checkpoint written to its temporary file, not yet in place.
pub(crate) struct PendingWrite {
    temporary: PathBuf,
    target: PathBuf,
}

/// Writes `bytes` to a temporary file in the target's folder (so that the rename stays on
/// one file system) and flushes it to disk.
pub(crate) fn stage(bytes: &[u8], target: &Path) -> std::io::Result<PendingWrite> {
    let name = target
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let mut temporary_name = name.to_os_string();
    temporary_name.push(format!(".tmp-{}", std::process::id()));
    let temporary = target.with_file_name(temporary_name);
    let mut file = fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(PendingWrite {
        temporary,
        target: target.to_path_buf(),
    })
}

impl PendingWrite {
    /// Renames the temporary file over the target, then flushes the folder entry.
    pub(crate) fn commit(self) -> std::io::Result<()> {
        fs::rename(&self.temporary, &self.target)?;
        if let Some(folder) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Best effort: some platforms cannot open a folder for syncing.
            if let Ok(dir) = fs::File::open(folder) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }
}

fn check_version(metadata: &Option<HashMap<String, String>>) -> Vec<CheckpointProblem> {
    match metadata.as_ref().and_then(|m| m.get("format_version")) {
        Some(v) if v != FORMAT_VERSION => vec![CheckpointProblem::Version {
            found: v.clone(),
            supported: FORMAT_VERSION,
        }],
        _ => Vec::new(),
    }
}

/// Loads a checkpoint into `variables`, which say what the model expects (create them with
/// the model's `init`). Every tensor must match a variable's name, shape and element type;
/// in [`LoadMode::Strict`] the file may hold nothing else. All problems are reported
/// together in [`Error::Checkpoint`], and on any problem `variables` is left untouched.
pub fn load_into<A: Float>(
    variables: &mut Variables<A>,
    path: impl AsRef<Path>,
    mode: LoadMode,
) -> Result<()> {
    let path = path.as_ref();
    let (tensors, metadata) = read_tensors(path)?;
    let problems = check_version(&metadata);
    apply_checked(variables, tensors, mode, true, path, problems)
}

/// Reads every tensor of a checkpoint as variables, without a model to check against.
/// Tensors must be of the element type `A` and named `collection/path`.
pub fn read<A: Float>(path: impl AsRef<Path>) -> Result<Variables<A>> {
    let path = path.as_ref();
    let (tensors, metadata) = read_tensors(path)?;
    let mut problems = check_version(&metadata);
    let mut variables = Variables::new();
    for (name, tensor) in tensors {
        let Some((collection, var_path)) = name.split_once('/') else {
            problems.push(CheckpointProblem::Name(name));
            continue;
        };
        match (&tensor.values, tensor.dtype == dtype_of::<A>()) {
            (Some(values), true) => {
                let values: Vec<A> = values.iter().map(|&v| A::of(v)).collect();
                match ArrayD::from_shape_vec(tensor.shape.clone(), values) {
                    Ok(array) => variables.insert(collection, var_path, array),
                    Err(e) => problems.push(CheckpointProblem::Corrupt(format!("{name}: {e}"))),
                }
            }
            _ => problems.push(CheckpointProblem::Dtype {
                name,
                file: format!("{:?}", tensor.dtype),
                model: A::DTYPE,
            }),
        }
    }
    if problems.is_empty() {
        Ok(variables)
    } else {
        Err(failure(path, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variables(value: f64) -> Variables<f64> {
        let mut v = Variables::new();
        v.insert("params", "w", ArrayD::from_elem(vec![2, 2], value));
        v.insert("batch_stats", "mean", ArrayD::from_elem(vec![2], value));
        v
    }

    #[test]
    fn a_crash_between_write_and_rename_leaves_the_previous_checkpoint_loadable() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("model.safetensors");
        save(&variables(1.0), &path).unwrap();

        // Stage the next checkpoint and "crash": the rename never happens.
        let pending = stage(&serialize(&variables(2.0)).unwrap(), &path).unwrap();
        let temporary = pending.temporary.clone();
        drop(pending);
        assert!(
            temporary.exists(),
            "the staged file is left behind, as after a crash"
        );

        let mut loaded = variables(0.0);
        load_into(&mut loaded, &path, LoadMode::Strict).unwrap();
        assert_eq!(loaded, variables(1.0));

        // The next save replaces both the stale temporary file and the checkpoint.
        save(&variables(3.0), &path).unwrap();
        load_into(&mut loaded, &path, LoadMode::Strict).unwrap();
        assert_eq!(loaded, variables(3.0));
        assert!(!temporary.exists());
    }
}
