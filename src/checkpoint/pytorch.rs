//! Importing a PyTorch `state_dict` exported to safetensors.
//!
//! | PyTorch | tapegrad |
//! |---|---|
//! | `Linear.weight` `(out, in)` | `params/<path>/kernel` `(in, out)`, transposed |
//! | `Linear.bias` | `params/<path>/bias` |
//! | `Conv2d.weight` `(out, in, kh, kw)` | `params/<path>/kernel` `(kh, kw, in, out)` (HWIO), `permute(2, 3, 1, 0)` |
//! | `Conv2d.bias` | `params/<path>/bias` |
//! | `BatchNorm1d`/`BatchNorm2d` `.weight`, `.bias` | `params/<path>/scale`, `params/<path>/bias` |
//! | `BatchNorm1d`/`BatchNorm2d` `.running_mean`, `.running_var` | `batch_stats/<path>/mean`, `batch_stats/<path>/var` |
//! | `BatchNorm1d`/`BatchNorm2d` `.num_batches_tracked` | dropped: tapegrad's BatchNorm has a fixed momentum and no use for it |
//! | `Embedding.weight` `(n, d)` | `params/<path>/embedding` |
//!
//! PyTorch's images are NCHW and tapegrad's NHWC: feed the same images with their axes
//! permuted (`x.permute(0, 2, 3, 1)`). One place where the layout is baked into weights is
//! an `nn.Flatten` before an `nn.Linear`: PyTorch flattens `(C, H, W)`, so the Linear's
//! columns are in that order. Use [`Flatten::channels_first`](crate::nn::Flatten::channels_first)
//! there, and the imported weights work unchanged; `Flatten::new` would feed them the
//! features in `(H, W, C)` order, giving wrong logits without any error (a classic porting
//! bug: a state_dict cannot tell which flatten the model used).
//!
//! Non-persistent buffers (`register_buffer(..., persistent=False)`) are not in a
//! `state_dict`, by PyTorch's design, so they cannot be imported: the model's `init` values
//! stay.
//!
//! Conventions differ (see the BatchNorm chapter of the guide): PyTorch's `momentum=0.1` is
//! tapegrad's `momentum(0.9)`, and PyTorch blends the *unbiased* batch variance into
//! `running_var`. Imported statistics give the same evaluation-mode outputs as PyTorch;
//! continuing to train updates them with tapegrad's (Flax's) biased convention.

use std::collections::BTreeMap;
use std::path::Path;

use crate::checkpoint::file::LoadMode;
use crate::checkpoint::file::{apply_checked, failure, read_tensors};
use crate::checkpoint::format::Decoded;
use crate::error::CheckpointProblem;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::variables::Variables;

/// The kind of a PyTorch layer, which decides how its tensors are renamed and laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchLayer {
    /// `nn.Linear` → `Dense`.
    Linear,
    /// `nn.Conv2d` → `Conv`.
    Conv2d,
    /// `nn.BatchNorm1d` or `nn.BatchNorm2d` → `BatchNorm` (their tensors are the same).
    BatchNorm,
    /// `nn.Embedding` → `Embed`.
    Embedding,
}

/// Which PyTorch module prefix becomes which tapegrad module path.
///
/// ```
/// use tapegrad::checkpoint::{TorchLayer, TorchMapping};
/// let mapping = TorchMapping::new()
///     .layer("encoder.fc", "Dense_0", TorchLayer::Linear)
///     .layer("encoder.bn", "BatchNorm_0", TorchLayer::BatchNorm);
/// assert_eq!(mapping.layers().len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TorchMapping {
    layers: Vec<(String, String, TorchLayer)>,
}

impl TorchMapping {
    /// No layers.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps the PyTorch module `torch_prefix` (e.g. `"encoder.fc"`) of kind `layer` to the
    /// tapegrad module path `path` (e.g. `"Dense_0"`).
    #[must_use]
    pub fn layer(mut self, torch_prefix: &str, path: &str, layer: TorchLayer) -> Self {
        self.layers
            .push((torch_prefix.to_string(), path.to_string(), layer));
        self
    }

    /// The layers, as `(torch prefix, tapegrad path, kind)`.
    #[must_use]
    pub fn layers(&self) -> &[(String, String, TorchLayer)] {
        &self.layers
    }

    /// The mapping of an `nn.Sequential` of `Conv2d`, `BatchNorm1d`/`BatchNorm2d` and
    /// `Linear` layers (activations, pooling, flattening and dropout have no tensors),
    /// derived from the file's names: modules in numeric order, a module with
    /// `running_mean` is a BatchNorm, one with a 4-D `weight` a Conv2d, one with a 2-D
    /// `weight` a Linear; they are named `Conv_0`, `BatchNorm_0`, `Dense_0`, … as
    /// [`Sequential`](crate::nn::Sequential) and [`Mlp`](crate::nn::Mlp) name them.
    ///
    /// # Errors
    ///
    /// [`Error::Checkpoint`] if the file cannot be read or holds a tensor that is not a Conv2d,
    /// BatchNorm1d/2d or Linear of an `nn.Sequential`.
    pub fn derive_sequential(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let tensors = read_tensors(path)?.tensors;
        let mut modules: BTreeMap<Vec<u64>, (String, Vec<&str>)> = BTreeMap::new();
        for name in tensors.keys() {
            let Some((prefix, field)) = name.rsplit_once('.') else {
                return Err(unmappable(path, name));
            };
            // Sort "10" after "9": numeric segments compare as numbers.
            let key = prefix
                .split('.')
                .map(|s| s.parse().unwrap_or(u64::MAX))
                .collect();
            modules
                .entry(key)
                .or_insert_with(|| (prefix.to_string(), Vec::new()))
                .1
                .push(field);
        }
        let mut mapping = TorchMapping::new();
        let (mut dense, mut norms, mut convs) = (0, 0, 0);
        for (prefix, fields) in modules.values() {
            let weight_rank = tensors
                .get(&format!("{prefix}.weight"))
                .map(|w| w.shape.len());
            if fields.contains(&"running_mean") {
                mapping =
                    mapping.layer(prefix, &format!("BatchNorm_{norms}"), TorchLayer::BatchNorm);
                norms += 1;
            } else if weight_rank == Some(4) {
                mapping = mapping.layer(prefix, &format!("Conv_{convs}"), TorchLayer::Conv2d);
                convs += 1;
            } else if weight_rank == Some(2) {
                mapping = mapping.layer(prefix, &format!("Dense_{dense}"), TorchLayer::Linear);
                dense += 1;
            } else {
                return Err(unmappable(path, prefix));
            }
        }
        Ok(mapping)
    }
}

fn unmappable(path: &Path, name: &str) -> Error {
    failure(
        path,
        vec![CheckpointProblem::Name(format!(
            "{name} (not a Conv2d, BatchNorm1d/2d or Linear of a Sequential)"
        ))],
    )
}

/// Where a PyTorch field goes: `(collection, field name)`, or `None` to drop it.
fn destination(layer: TorchLayer, field: &str) -> Option<Option<(&'static str, &'static str)>> {
    Some(match (layer, field) {
        (TorchLayer::Linear, "weight") => Some(("params", "kernel")),
        (TorchLayer::Linear, "bias") => Some(("params", "bias")),
        (TorchLayer::Conv2d, "weight") => Some(("params", "kernel")),
        (TorchLayer::Conv2d, "bias") => Some(("params", "bias")),
        (TorchLayer::BatchNorm, "weight") => Some(("params", "scale")),
        (TorchLayer::BatchNorm, "bias") => Some(("params", "bias")),
        (TorchLayer::BatchNorm, "running_mean") => Some(("batch_stats", "mean")),
        (TorchLayer::BatchNorm, "running_var") => Some(("batch_stats", "var")),
        (TorchLayer::BatchNorm, "num_batches_tracked") => None,
        (TorchLayer::Embedding, "weight") => Some(("params", "embedding")),
        _ => return None,
    })
}

/// Loads a PyTorch `state_dict` saved with `safetensors.torch.save_file` into `variables`
/// (made by the model's `init`), renaming and transposing as `mapping` and the module
/// documentation say. `float32` and `float64` tensors are accepted whatever `A` is. As
/// [`load_into`](crate::checkpoint::load_into): every problem is reported, and on any
/// problem nothing changes.
///
/// # Errors
///
/// [`Error::Checkpoint`] listing every tensor that does not map, is missing, or has the wrong shape
/// or dtype; `variables` are not changed.
pub fn import_pytorch_into<A: Float>(
    variables: &mut Variables<A>,
    path: impl AsRef<Path>,
    mapping: &TorchMapping,
    mode: LoadMode,
) -> Result<()> {
    let path = path.as_ref();
    let tensors = read_tensors(path)?.tensors;
    let mut converted: BTreeMap<String, Decoded> = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, tensor) in tensors {
        let found = name.rsplit_once('.').and_then(|(prefix, field)| {
            let (_, ours, layer) = mapping.layers.iter().find(|(p, _, _)| p == prefix)?;
            Some((ours, *layer, field))
        });
        let Some((ours, layer, field)) = found else {
            if mode == LoadMode::Strict {
                problems.push(CheckpointProblem::Unexpected(name));
            }
            continue;
        };
        match destination(layer, field) {
            Some(Some((collection, ours_field))) => {
                let tensor = match (layer, ours_field) {
                    (TorchLayer::Linear, "kernel") => tensor.transposed(),
                    (TorchLayer::Conv2d, "kernel") => tensor.permuted(&[2, 3, 1, 0]),
                    _ => tensor,
                };
                converted.insert(format!("{collection}/{ours}/{ours_field}"), tensor);
            }
            Some(None) => {} // documented as dropped
            None => {
                if mode == LoadMode::Strict {
                    problems.push(CheckpointProblem::Unexpected(name));
                }
            }
        }
    }
    apply_checked(variables, converted, mode, false, path, problems)
}
