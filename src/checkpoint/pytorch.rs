//! PyTorch `state_dict`s in safetensors, both ways: importing one into a model's variables,
//! and exporting variables as one that `model.load_state_dict(load_file(path))` accepts.
//!
//! | PyTorch | tapegrad |
//! |---|---|
//! | `Linear.weight` `(out, in)` | `params/<path>/kernel` `(in, out)`, transposed |
//! | `Linear.bias` | `params/<path>/bias` |
//! | `Conv2d.weight` `(out, in, kh, kw)` | `params/<path>/kernel` `(kh, kw, in, out)` (HWIO), `permute(2, 3, 1, 0)` |
//! | `Conv2d.bias` | `params/<path>/bias` |
//! | `BatchNorm1d`/`BatchNorm2d` `.weight`, `.bias` | `params/<path>/scale`, `params/<path>/bias` |
//! | `BatchNorm1d`/`BatchNorm2d` `.running_mean`, `.running_var` | `batch_stats/<path>/mean`, `batch_stats/<path>/var` |
//! | `BatchNorm1d`/`BatchNorm2d` `.num_batches_tracked` | `batch_stats/<path>/num_batches_tracked` for a [`BatchNorm::pytorch`](crate::nn::BatchNorm::pytorch) layer, which keeps the count; dropped on import into a Flax-convention BatchNorm, which has no use for it (exported as 0 from one) |
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
//! the weight of the new value and it blends the *unbiased* batch variance into
//! `running_var`. Imported statistics give the same evaluation-mode outputs as PyTorch
//! whatever the model's convention; to go on training as PyTorch would (and export the
//! result back), build the model's BatchNorms with
//! [`BatchNorm::pytorch`](crate::nn::BatchNorm::pytorch).
//!
//! For an `nn.Sequential` the mapping comes from the file
//! ([`TorchMapping::derive_sequential`]) or from the tapegrad model
//! ([`Sequential::torch_mapping`](crate::nn::Sequential::torch_mapping),
//! [`Mlp::torch_mapping`](crate::nn::Mlp::torch_mapping)), and `import ∘ export` is the
//! identity, bit for bit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use safetensors::tensor::Dtype;

use crate::checkpoint::file::{LoadMode, LoadOptions};
use crate::checkpoint::file::{apply_checked, failure, read_tensors, write};
use crate::checkpoint::format::{self, Decoded};
use crate::error::CheckpointProblem;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::nn::{Mlp, Sequential};
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

/// One tensor of a PyTorch layer and the variable it is: `(torch field, collection, our
/// field)`. The one table both directions read.
type Field = (&'static str, &'static str, &'static str);

/// The tensors of each kind of layer. (`num_batches_tracked` is handled apart: whether it
/// is a variable depends on the BatchNorm's convention.)
fn fields(layer: TorchLayer) -> &'static [Field] {
    match layer {
        TorchLayer::Linear | TorchLayer::Conv2d => {
            &[("weight", "params", "kernel"), ("bias", "params", "bias")]
        }
        TorchLayer::BatchNorm => &[
            ("weight", "params", "scale"),
            ("bias", "params", "bias"),
            ("running_mean", "batch_stats", "mean"),
            ("running_var", "batch_stats", "var"),
        ],
        TorchLayer::Embedding => &[("weight", "params", "embedding")],
    }
}

/// PyTorch's BatchNorm step counter, a buffer of every BatchNorm1d/2d.
const BATCHES_TRACKED: &str = "num_batches_tracked";

/// Our kernel from PyTorch's weight: `(out, in)` → `(in, out)`, `(out, in, kh, kw)` → HWIO.
fn from_torch_layout(layer: TorchLayer, our_field: &str, tensor: Decoded) -> Decoded {
    match (layer, our_field) {
        (TorchLayer::Linear, "kernel") => tensor.transposed(),
        (TorchLayer::Conv2d, "kernel") => tensor.permuted(&[2, 3, 1, 0]),
        _ => tensor,
    }
}

/// The inverse of [`from_torch_layout`].
fn to_torch_layout(layer: TorchLayer, our_field: &str, tensor: Decoded) -> Decoded {
    match (layer, our_field) {
        (TorchLayer::Linear, "kernel") => tensor.transposed(),
        (TorchLayer::Conv2d, "kernel") => tensor.permuted(&[3, 2, 0, 1]),
        _ => tensor,
    }
}

impl TorchMapping {
    /// The mapping of an `nn.Sequential` whose module `i` is the layer of kind `kinds[i]`
    /// (tapegrad's [`Module::kind`](crate::Module::kind) names): `"Dense"`, `"Conv"`,
    /// `"BatchNorm"` and `"Embed"` have tensors and are named `Dense_0`, `Conv_0`, … as a
    /// scope names them; every other kind (activations, pooling, flatten, dropout) only
    /// takes its place in the numbering.
    fn from_kinds<'k>(kinds: impl IntoIterator<Item = &'k str>) -> Self {
        let mut mapping = TorchMapping::new();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (index, kind) in kinds.into_iter().enumerate() {
            let layer = match kind {
                "Dense" => TorchLayer::Linear,
                "Conv" => TorchLayer::Conv2d,
                "BatchNorm" => TorchLayer::BatchNorm,
                "Embed" => TorchLayer::Embedding,
                _ => continue,
            };
            let count = counts.entry(kind).or_default();
            mapping = mapping.layer(&index.to_string(), &format!("{kind}_{count}"), layer);
            *count += 1;
        }
        mapping
    }

    /// How `model`'s variables map onto a PyTorch `nn.Sequential` of the same layers in the
    /// same order (`Dense` ↔ `nn.Linear`, `Conv` ↔ `nn.Conv2d`, `BatchNorm` ↔
    /// `nn.BatchNorm1d/2d`, `Embed` ↔ `nn.Embedding`; activations, pooling and flatten hold
    /// their places): module `i` there is kind `i` of [`Sequential::kinds`], where a
    /// [`BatchNormRelu`](crate::nn::BatchNormRelu) stands for its two modules.
    #[must_use]
    pub fn of_sequential<A: Float>(model: &Sequential<A>) -> Self {
        Self::from_kinds(model.kinds())
    }

    /// How `model`'s variables map onto the equivalent PyTorch `nn.Sequential`: per hidden
    /// width `nn.Linear`, `nn.BatchNorm1d` if any, the activation, `nn.Dropout` if any; then
    /// the output `nn.Linear` (modules `0`, `1`, … in that order).
    #[must_use]
    pub fn of_mlp(model: &Mlp) -> Self {
        let mut kinds = Vec::new();
        for _ in &model.hidden {
            kinds.push("Dense");
            if model.batch_norm.is_some() {
                kinds.push("BatchNorm");
            }
            kinds.push("Activation");
            if model.dropout.is_some() {
                kinds.push("Dropout");
            }
        }
        kinds.push("Dense");
        Self::from_kinds(kinds)
    }
}

/// What is wrong with `mapping` for `variables`: a PyTorch module or a tapegrad path that
/// appears twice (an export would write half of them, an import keep whichever came last),
/// and a kind that does not fit the variables at its path (a `Dense` under a `Conv2d` entry
/// would be written untransposed).
fn mapping_problems<A: Float>(
    mapping: &TorchMapping,
    variables: &Variables<A>,
) -> Vec<CheckpointProblem> {
    let mut problems = Vec::new();
    let mut seen_torch: BTreeMap<&str, &str> = BTreeMap::new();
    let mut seen_ours: BTreeMap<&str, &str> = BTreeMap::new();
    for (torch, ours, layer) in &mapping.layers {
        if let Some(other) = seen_torch.insert(torch, ours) {
            problems.push(CheckpointProblem::Mapping(format!(
                "\"{other}\" and \"{ours}\" both map to PyTorch's \"{torch}\""
            )));
        }
        if let Some(other) = seen_ours.insert(ours, torch) {
            problems.push(CheckpointProblem::Mapping(format!(
                "PyTorch's \"{other}\" and \"{torch}\" both map to \"{ours}\""
            )));
        }
        let (name, rank) = match layer {
            TorchLayer::Linear => (format!("params/{ours}/kernel"), Some(2)),
            TorchLayer::Conv2d => (format!("params/{ours}/kernel"), Some(4)),
            TorchLayer::BatchNorm => (format!("batch_stats/{ours}/mean"), Some(1)),
            TorchLayer::Embedding => (format!("params/{ours}/embedding"), Some(2)),
        };
        let found = variables.get(&name).map(|a| a.ndim());
        if found.is_some() && found != rank {
            problems.push(CheckpointProblem::Mapping(format!(
                "PyTorch's \"{torch}\" is a {layer:?}, but \"{name}\" has {} dimensions, not {}",
                found.unwrap_or(0),
                rank.unwrap_or(0)
            )));
        }
    }
    problems
}

/// Writes `variables` as a PyTorch `state_dict` in safetensors, named and laid out as
/// `mapping` says: the inverse of [`import_pytorch_into`]. Each BatchNorm also gets its
/// `num_batches_tracked` (an `int64`, as PyTorch keeps it): the stored count of a
/// [`BatchNorm::pytorch`](crate::nn::BatchNorm::pytorch) layer, 0 for a Flax-convention one.
/// Tensors are written in the model's element type (`float32` or `float64`); load them
/// into a module of the same dtype.
///
/// In PyTorch: `model.load_state_dict(safetensors.torch.load_file(path))`, with `model` the
/// `nn.Sequential` the mapping describes; feed it images as NCHW, and mind the flatten order
/// before a `Linear` (see the module documentation).
///
/// ```
/// use tapegrad::checkpoint::{LoadMode, TorchMapping, export_pytorch, import_pytorch_into};
/// use tapegrad::nn::{BatchNorm, Mlp};
/// use tapegrad::{ModuleExt, Tensor};
/// let model = Mlp::new(&[4], 2).with_batch_norm(BatchNorm::pytorch(Some(0.1)));
/// let x = Tensor::from_vec(&[3, 2], vec![0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6])?;
/// let trained = model.init(1, &x)?;
/// let path = std::env::temp_dir().join(format!("tapegrad-export-{}.safetensors", std::process::id()));
/// // nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
/// let mapping = TorchMapping::of_mlp(&model);
/// export_pytorch(&trained, &path, &mapping)?;
/// let mut back = model.init(2, &x)?;
/// import_pytorch_into(&mut back, &path, &mapping, LoadMode::Strict)?;
/// assert_eq!(back, trained);
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::Checkpoint`] listing every variable the mapping does not export (it would be lost),
/// every tensor a mapped layer needs but `variables` lack, and every entry of a mapping that
/// is not one-to-one or whose kind does not fit its variables; or, if the file cannot be
/// written, the i/o error as its source. Nothing is written then.
pub fn export_pytorch<A: Float>(
    variables: &Variables<A>,
    path: impl AsRef<Path>,
    mapping: &TorchMapping,
) -> Result<()> {
    let path = path.as_ref();
    let mut tensors: BTreeMap<String, Decoded> = BTreeMap::new();
    let mut exported: BTreeSet<String> = BTreeSet::new();
    let mut problems = mapping_problems(mapping, variables);
    for (prefix, ours, layer) in &mapping.layers {
        for &(torch_field, collection, our_field) in fields(*layer) {
            let name = format!("{collection}/{ours}/{our_field}");
            let Some(array) = variables.get(&name) else {
                // A bias or scale may be turned off; a kernel or a statistic may not.
                if !matches!(our_field, "bias" | "scale") {
                    problems.push(CheckpointProblem::Missing(name));
                }
                continue;
            };
            let tensor = to_torch_layout(*layer, our_field, Decoded::encode(array));
            tensors.insert(format!("{prefix}.{torch_field}"), tensor);
            exported.insert(name);
        }
        if *layer == TorchLayer::BatchNorm {
            let name = format!("batch_stats/{ours}/{BATCHES_TRACKED}");
            let count = variables.get(&name).and_then(|a| a.first().copied());
            if count.is_some() {
                exported.insert(name);
            }
            let count = count.map_or(0, |c| c.as_f64().round() as i64);
            let tensor = Decoded {
                dtype: Dtype::I64,
                shape: Vec::new(),
                data: count.to_le_bytes().to_vec(),
            };
            tensors.insert(format!("{prefix}.{BATCHES_TRACKED}"), tensor);
        }
    }
    for (name, _) in variables.iter() {
        if !exported.contains(&name) {
            problems.push(CheckpointProblem::Unexpected(name));
        }
    }
    if !problems.is_empty() {
        return Err(failure(path, problems));
    }
    write(&format::serialize(&tensors, &BTreeMap::new()), path)
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
/// or dtype, and every entry of a mapping that is not one-to-one or whose kind does not fit
/// its variables; `variables` are not changed.
pub fn import_pytorch_into<A: Float>(
    variables: &mut Variables<A>,
    path: impl AsRef<Path>,
    mapping: &TorchMapping,
    options: impl Into<LoadOptions>,
) -> Result<()> {
    let options = options.into();
    let mode = options.mode;
    let path = path.as_ref();
    let tensors = read_tensors(path)?.tensors;
    let mut converted: BTreeMap<String, Decoded> = BTreeMap::new();
    let mut problems = mapping_problems(mapping, variables);
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
        if layer == TorchLayer::BatchNorm && field == BATCHES_TRACKED {
            // Kept by a PyTorch-convention BatchNorm; documented as dropped otherwise.
            let counter = format!("batch_stats/{ours}/{BATCHES_TRACKED}");
            if variables.get(&counter).is_some() {
                // PyTorch's int64 count as the model's float (exact below 2^24 in f32).
                let tensor = tensor.array::<A>().map_or(tensor, |a| Decoded::encode(&a));
                converted.insert(counter, tensor);
            }
            continue;
        }
        match fields(layer)
            .iter()
            .find(|(torch_field, _, _)| *torch_field == field)
        {
            Some(&(_, collection, our_field)) => {
                let tensor = from_torch_layout(layer, our_field, tensor);
                converted.insert(format!("{collection}/{ours}/{our_field}"), tensor);
            }
            None => {
                if mode == LoadMode::Strict {
                    problems.push(CheckpointProblem::Unexpected(name));
                }
            }
        }
    }
    apply_checked(variables, converted, options, false, path, problems)
}
