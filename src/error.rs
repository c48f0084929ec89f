//! One error type for the whole crate. Each variant names the op or the variable it concerns,
//! with the shapes involved, and its documentation says the usual cause and the fix.
//!
//! This module imports nothing from the crate: every other module may use it.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A shape, printed as `[2, 3]`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Shape(pub Vec<usize>);

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<&[usize]> for Shape {
    fn from(s: &[usize]) -> Self {
        Shape(s.to_vec())
    }
}

/// Shorthand for `std::result::Result<T, tapegrad::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in tapegrad.
///
/// Errors never leave stored state half-changed: an op that fails records nothing, and an
/// `apply`, an optimizer step or a merge that fails leaves the caller's variables as they were.
#[derive(Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two operands' shapes do not fit the op: not broadcastable (NumPy rules), inner
    /// dimensions of a matmul differ, or concatenated arrays differ off the concat axis.
    ///
    /// Fix: check the shapes printed; a missing `reshape` or `transpose` is the usual cause.
    #[error("{op}: incompatible shapes {lhs} and {rhs}{}", detail_suffix(.detail))]
    IncompatibleShapes {
        /// The op that was called.
        op: &'static str,
        /// The first operand's shape.
        lhs: Shape,
        /// The second operand's shape.
        rhs: Shape,
        /// What the op needed, in words.
        detail: String,
    },

    /// An argument does not fit the tensor it is applied to: a reshape to a different number
    /// of elements, an axis out of range or repeated, a permutation that is not one, an empty
    /// concat, a slice out of bounds, an input of the wrong rank.
    ///
    /// Fix: the message names the op, the tensor's shape and what was asked.
    #[error("{op}: {detail} (tensor shape {shape})")]
    InvalidArgument {
        /// The op that was called.
        op: &'static str,
        /// The shape of the tensor the op was applied to.
        shape: Shape,
        /// What was wrong, in words.
        detail: String,
    },

    /// An integer index (an embedding id, a class label) is out of range.
    ///
    /// Fix: ids must be `< len`; check the vocabulary size or the number of classes.
    #[error("{op}: index {index} out of range for length {len}")]
    IndexOutOfRange {
        /// The op that was called.
        op: &'static str,
        /// The offending index.
        index: usize,
        /// The number of valid indices.
        len: usize,
    },

    /// `backward` was called on a tensor with more than one element.
    ///
    /// Fix: reduce to a scalar loss first (`mean_all`, `sum_all`), or pass an explicit
    /// cotangent with [`Tensor::backward_with`](crate::Tensor::backward_with).
    #[error("{op}: expected a scalar (one element), got shape {shape}")]
    NotScalar {
        /// The op that was called.
        op: &'static str,
        /// The tensor's shape.
        shape: Shape,
    },

    /// Tensors recorded on two different tapes were combined, or a gradient was asked of a
    /// tensor from another tape.
    ///
    /// Fix: do all the work of one differentiation inside one `value_and_grad` closure; a
    /// tensor kept from an earlier step must be `detach`ed (it is a constant now).
    #[error("{op}: tensors from different tapes")]
    DifferentTapes {
        /// The op that was called.
        op: &'static str,
    },

    /// A module wrote a variable of a collection that the `apply` call did not declare mutable.
    /// As in Flax: "Cannot update variable … because collection … is immutable".
    ///
    /// Fix: pass the collection in `mutable` (e.g. `Mutable::only(["batch_stats"])`), or run
    /// the layer in evaluation mode, where it does not write.
    #[error(
        "cannot update variable \"{path}\" because collection \"{collection}\" is immutable; \
         declare it mutable in apply (e.g. Mutable::only([\"{collection}\"]))"
    )]
    ImmutableCollection {
        /// The collection written to.
        collection: String,
        /// The variable's path inside the collection.
        path: String,
    },

    /// A recomputed block ([`nn::Remat`](crate::nn::Remat), [`remat`](crate::remat::remat))
    /// wrote a variable while its forward ran again during backward. A step's updates are
    /// those of its first forward; the recomputation must not write a second time.
    ///
    /// Fix: skip the write when `Scope::is_recomputing()` is true (BatchNorm does), or write
    /// only when `Scope::is_mutable_collection` allows it.
    #[error(
        "cannot update variable \"{path}\" of collection \"{collection}\" while recomputing \
         a block for its backward pass: the first forward made this step's updates"
    )]
    WriteWhileRecomputing {
        /// The collection written to.
        collection: String,
        /// The variable's path inside the collection.
        path: String,
    },

    /// A module read a variable that the given variables do not hold.
    ///
    /// Fix: create the variables with the same model's `init`; a renamed layer or a changed
    /// architecture changes the paths. For a parameter missing inside `value_and_grad`, check
    /// that frozen params were added back with `ParamTensors::with_frozen`.
    #[error(
        "variable \"{collection}/{path}\" does not exist; was it created by init of this model?"
    )]
    MissingVariable {
        /// The collection read from.
        collection: String,
        /// The variable's path inside the collection.
        path: String,
    },

    /// A module asked for a `"params"` variable through `Scope::variable`. Params are
    /// created and read only by `Scope::param`, the one way to a tracked leaf; anything read
    /// through `variable` is a constant.
    ///
    /// Fix: a trainable array is a `param`; a non-trainable one (a fixed embedding, a
    /// counter) belongs in another collection such as `"state"`.
    #[error(
        "variable \"{path}\" cannot be declared in collection \"params\" with Scope::variable: \
         use Scope::param for a trainable array, or another collection (e.g. \"state\") for a constant one"
    )]
    ReservedCollection {
        /// The variable's path.
        path: String,
    },

    /// A stored variable's shape differs from what the module asks for (or a value written
    /// to a variable differs from its stored shape).
    ///
    /// Fix: the variables come from a model of other sizes; re-run `init` or fix the sizes.
    #[error(
        "variable \"{collection}/{path}\" has shape {stored}, but the module expects {expected}"
    )]
    VariableShape {
        /// The collection.
        collection: String,
        /// The variable's path inside the collection.
        path: String,
        /// The shape stored in the variables.
        stored: Shape,
        /// The shape the module asked for or wrote.
        expected: Shape,
    },

    /// A module asked for a random stream (e.g. `"dropout"`) that the `apply` call did not
    /// provide.
    ///
    /// Fix: pass it, e.g. `ApplyOptions::train().rng("dropout", seed)`, or run in evaluation mode.
    #[error("module at \"{path}\" needs the RNG stream \"{stream}\", which apply was not given")]
    MissingRng {
        /// The stream's name.
        stream: String,
        /// The module path that asked.
        path: String,
    },

    /// A module asked for a replica axis (a cross-replica `BatchNorm`'s `axis_name`) that
    /// the `apply` call was not given.
    ///
    /// Fix: pass the replicas' communicator, e.g.
    /// `ApplyOptions::train().replica_axis(ReplicaAxis::new("batch", communicator))`.
    #[error(
        "module at \"{path}\" reduces over the replica axis \"{axis}\", which apply was not given"
    )]
    MissingReplicaAxis {
        /// The axis name.
        axis: String,
        /// The module path that asked.
        path: String,
    },

    /// Replicas disagreed where they must agree (the length of a reduction, the params'
    /// names and shapes, the optimizer's step count). Every replica gets this error, from
    /// the same collective, so none is left waiting; nothing was applied.
    ///
    /// Fix: build every replica from the same model, variables and optimizer state, and give
    /// each the same number of rows.
    #[error("{op}: the replicas disagree: {detail}")]
    ReplicasDisagree {
        /// The operation that found it.
        op: &'static str,
        /// What differs.
        detail: String,
    },

    /// A checkpoint could not be saved or loaded; `problems` lists everything found wrong
    /// (missing and unexpected names, shapes, dtypes, a corrupt or truncated file). A load
    /// that fails changes nothing.
    ///
    /// Fix: load into variables made by `init` of the model that was saved; for a file with
    /// extra tensors use `LoadMode::Lenient`.
    #[error("checkpoint {path}: {}", list_of(problems))]
    Checkpoint {
        /// The file.
        path: String,
        /// Every problem found.
        problems: Vec<CheckpointProblem>,
        /// The operating system's error, when the file could not be read or written: also
        /// what [`std::error::Error::source`] returns, so `downcast_ref::<std::io::Error>()`
        /// gives its `kind()` and `raw_os_error()`.
        #[source]
        io: Option<IoSource>,
    },

    /// A value that must be finite holds NaN or an infinity: a gradient handed to an
    /// optimizer, or a statistic a layer was about to write into a buffer. Nothing was
    /// changed: params, buffers and optimizer state are as they were before the step.
    ///
    /// Fix: find where the value first went wrong (a NaN or an extreme value in the input, a
    /// learning rate too large for the data, an overflow of `f32`); `name` says where it was
    /// caught. To let an optimizer apply non-finite gradients anyway (rarely what you want),
    /// turn its check off with `allow_non_finite(true)`.
    #[error("{op}: {name} is not finite (it holds NaN or an infinity); nothing was changed")]
    NonFinite {
        /// Who refused it.
        op: &'static str,
        /// What it was: a gradient's path (`grad of "params/Dense_0/kernel"`) or a variable's
        /// full name (`batch_stats/BatchNorm_0/var`).
        name: String,
    },

    /// A setting of an optimizer, a schedule or a layer is outside its valid range (checked,
    /// as PyTorch does, before anything moves).
    ///
    /// Fix: the message names the setting, its value and the range it must be in.
    #[error("{op}: invalid {setting} {value}: it must be {expected}")]
    InvalidSetting {
        /// The optimizer, schedule or layer.
        op: &'static str,
        /// The setting's name (`momentum`, `beta1`, `learning rate`, …).
        setting: &'static str,
        /// The value given.
        value: f64,
        /// The valid range, in words.
        expected: &'static str,
    },

    /// A collection name that tapegrad cannot store faithfully: empty, containing `/` (the
    /// separator between a collection and a path: `"a/b"` would come back from a checkpoint
    /// as collection `"a"`), or starting with `#` (reserved for optimizer state in
    /// checkpoints).
    ///
    /// Fix: name collections with a plain word, `"batch_stats"`, `"state"`, `"cache"`.
    #[error("{op}: {name:?} is not a valid collection name ({detail})")]
    InvalidName {
        /// Where it was given.
        op: &'static str,
        /// The name.
        name: String,
        /// What is wrong with it.
        detail: &'static str,
    },

    /// A derivative was asked of an op that has no rule for it: a `custom_op` given only its
    /// VJP can be differentiated once, in reverse mode; a second-order derivative needs its
    /// VJP as ops, forward mode needs its JVP. Nothing returns a silent zero instead.
    ///
    /// Fix: write the op with tapegrad's ops, which have every rule, or give it the missing
    /// rule (`custom_op_with_rules`).
    #[error("{op} has no {rule}: a {order} derivative cannot be taken through it")]
    MissingRule {
        /// The op.
        op: &'static str,
        /// The rule it lacks: "differentiable VJP" or "JVP rule".
        rule: &'static str,
        /// The derivative asked for: "second-order" or "forward-mode".
        order: &'static str,
    },

    /// A backward pass reached a node whose saved values an earlier backward pass released.
    /// As in PyTorch ("Trying to backward through the graph a second time"), a backward pass
    /// frees what each op saved once the op's VJP has run, so that memory falls as it goes.
    ///
    /// Fix: walk the tape once per forward pass; to walk it several times (one cotangent per
    /// output, as a Jacobian does), use
    /// [`Tensor::backward_retaining`](crate::Tensor::backward_retaining) for all but the last.
    #[error(
        "backward: node %{node} ({op}) was already walked by a backward pass that released its \
         saved values; use backward_retaining to walk a tape more than once"
    )]
    BackwardTwice {
        /// The op of the node.
        op: &'static str,
        /// Its id on the tape.
        node: usize,
    },

    /// Two keyed trees that must have the same keys do not (gradients against params, a
    /// merge of updates into variables, optimizer state against params).
    ///
    /// Fix: compute the gradients from the same params you update; the lists name every key.
    #[error("{op}: keys differ; missing {missing:?}, unexpected {unexpected:?}")]
    KeyMismatch {
        /// The operation that compared the trees.
        op: &'static str,
        /// Keys expected but absent.
        missing: Vec<String>,
        /// Keys present but not expected.
        unexpected: Vec<String>,
    },
}

/// One problem as it is, several one to a line: a refused model can have dozens.
fn list_of(problems: &[CheckpointProblem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => many.iter().map(|p| format!("\n  - {p}")).collect(),
    }
}

impl Error {
    /// What usually fixes this error, in plain words: the "Fix" of its variant's
    /// documentation; `None` where the message itself says what is wrong and what was
    /// expected.
    ///
    /// ```
    /// use tapegrad::Error;
    /// let error = Error::ImmutableCollection { collection: "batch_stats".into(), path: "BatchNorm_0/mean".into() };
    /// assert!(error.fix().unwrap().contains("Mutable::only"));
    /// ```
    #[must_use]
    pub fn fix(&self) -> Option<&'static str> {
        Some(match self {
            Error::IncompatibleShapes { .. } => {
                "check the shapes printed; a missing reshape or transpose is the usual cause."
            }
            Error::InvalidArgument { .. } => return None,
            Error::IndexOutOfRange { .. } => {
                "ids must be < len; check the vocabulary size or the number of classes."
            }
            Error::NotScalar { .. } => {
                "reduce to a scalar loss first (mean_all, sum_all), or pass an explicit cotangent with Tensor::backward_with."
            }
            Error::DifferentTapes { .. } => {
                "do all the work of one differentiation inside one value_and_grad closure; a tensor kept from an earlier step must be detached (it is a constant now)."
            }
            Error::ImmutableCollection { .. } => {
                "pass the collection in mutable (e.g. Mutable::only([\"batch_stats\"])), or run the layer in evaluation mode, where it does not write."
            }
            Error::WriteWhileRecomputing { .. } => {
                "skip the write when Scope::is_recomputing() is true (BatchNorm does), or write only when Scope::is_mutable_collection allows it."
            }
            Error::MissingVariable { .. } => {
                "create the variables with the same model's init; a renamed layer or a changed architecture changes the paths. For a parameter missing inside value_and_grad, check that frozen params were added back with ParamTensors::with_frozen."
            }
            Error::ReservedCollection { .. } => {
                "a trainable array is a param; a non-trainable one (a fixed embedding, a counter) belongs in another collection such as \"state\"."
            }
            Error::VariableShape { .. } => {
                "the variables come from a model of other sizes; re-run init or fix the sizes."
            }
            Error::MissingRng { .. } => {
                "pass it, e.g. ApplyOptions::train().rng(\"dropout\", seed), or run in evaluation mode."
            }
            Error::MissingReplicaAxis { .. } => {
                "pass the replicas' communicator, e.g. ApplyOptions::train().replica_axis(ReplicaAxis::new(\"batch\", communicator))."
            }
            Error::ReplicasDisagree { .. } => {
                "build every replica from the same model, variables and optimizer state, and give each the same number of rows."
            }
            Error::Checkpoint { .. } => {
                "load into variables made by init of the model that was saved; for a file with extra tensors use LoadMode::Lenient."
            }
            Error::NonFinite { .. } => {
                "find where the value first went wrong (a NaN or an extreme value in the input, a learning rate too large for the data, an overflow of f32); name says where it was caught. To let an optimizer apply non-finite gradients anyway (rarely what you want), turn its check off with allow_non_finite(true)."
            }
            Error::InvalidSetting { .. } => return None,
            Error::InvalidName { .. } => {
                "name collections with a plain word, \"batch_stats\", \"state\", \"cache\"."
            }
            Error::MissingRule { .. } => {
                "write the op with tapegrad's ops, which have every rule, or give it the missing rule (custom_op_with_rules)."
            }
            Error::BackwardTwice { .. } => {
                "walk the tape once per forward pass; to walk it several times (one cotangent per output, as a Jacobian does), use Tensor::backward_retaining for all but the last."
            }
            Error::KeyMismatch { .. } => {
                "compute the gradients from the same params you update; the lists name every key."
            }
        })
    }
}

/// `{:?}` prints the message and, on a line of its own, its fix ([`Error::fix`]): what a
/// `fn main() -> Result<(), tapegrad::Error>` shows for an error it returns, so a user sees
/// the words rather than the variant's fields, as error-reporting crates print theirs. The
/// fields stay public for code that matches on them.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        if let Some(fix) = self.fix() {
            write!(f, "\nhelp: {fix}")?;
        }
        Ok(())
    }
}

/// The `std::io::Error` behind a checkpoint error, shared so that [`Error`] stays `Clone`.
///
/// It dereferences to the `io::Error` itself (as a `dyn Error`), which is what makes
/// `Error::source()` return that `io::Error` rather than this wrapper: a caller's
/// `source().and_then(|s| s.downcast_ref::<std::io::Error>())` finds it. (For the same
/// reason it does not implement `Error` itself.) Two are equal if their kinds and messages
/// are.
#[derive(Debug, Clone)]
pub struct IoSource(Arc<std::io::Error>);

impl IoSource {
    /// Wraps `error`.
    #[must_use]
    pub fn new(error: std::io::Error) -> Self {
        IoSource(Arc::new(error))
    }

    /// The error.
    #[must_use]
    pub fn io_error(&self) -> &std::io::Error {
        &self.0
    }
}

impl Deref for IoSource {
    type Target = dyn std::error::Error + Send + Sync + 'static;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl PartialEq for IoSource {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.to_string() == other.0.to_string()
    }
}

/// One thing wrong with a checkpoint, as listed by [`Error::Checkpoint`].
#[derive(Debug, Clone, PartialEq)]
pub enum CheckpointProblem {
    /// The file could not be read or written.
    Io(String),
    /// The file is not a valid safetensors file (corrupt, truncated, bad header).
    Corrupt(String),
    /// The file was written by another version of the format than the one this build reads.
    Version {
        /// The version the file declares.
        found: String,
        /// The version this build reads and writes.
        supported: &'static str,
    },
    /// The model has this variable; the file does not.
    Missing(String),
    /// The file has this tensor; the model does not (strict mode).
    Unexpected(String),
    /// The shapes differ.
    Shape {
        /// The tensor's name.
        name: String,
        /// Its shape in the file.
        file: Shape,
        /// Its shape in the model.
        model: Shape,
    },
    /// The element types differ, or the file's is not one tapegrad reads.
    Dtype {
        /// The tensor's name.
        name: String,
        /// Its dtype in the file.
        file: String,
        /// The model's element type.
        model: &'static str,
    },
    /// A tensor name that is not `collection/path`.
    Name(String),
    /// A tensor holds NaN or an infinity (refused unless the load allows it).
    NonFinite(String),
    /// A PyTorch mapping that is not one-to-one, or whose kind does not fit the variables it
    /// names: what is wrong, naming both sides.
    Mapping(String),
}

impl fmt::Display for CheckpointProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointProblem::Io(e) => write!(f, "i/o: {e}"),
            CheckpointProblem::Corrupt(e) => write!(f, "not a valid safetensors file: {e}"),
            CheckpointProblem::Version { found, supported } => {
                write!(f, "unknown format version {found:?} (this is {supported})")
            }
            CheckpointProblem::Missing(n) => write!(f, "missing \"{n}\""),
            CheckpointProblem::Unexpected(n) => write!(f, "unexpected \"{n}\""),
            CheckpointProblem::Shape { name, file, model } => {
                write!(
                    f,
                    "\"{name}\" has shape {file} in the file, {model} in the model"
                )
            }
            CheckpointProblem::Dtype { name, file, model } => {
                write!(f, "\"{name}\" is {file} in the file, {model} in the model")
            }
            CheckpointProblem::Name(n) => write!(f, "\"{n}\" is not a collection/path name"),
            CheckpointProblem::Mapping(detail) => write!(f, "mapping: {detail}"),
            CheckpointProblem::NonFinite(n) => write!(
                f,
                "\"{n}\" holds NaN or an infinity (LoadMode::allowing_non_finite loads it anyway)"
            ),
        }
    }
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

impl Error {
    pub(crate) fn invalid(op: &'static str, shape: &[usize], detail: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            shape: shape.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn incompatible(
        op: &'static str,
        lhs: &[usize],
        rhs: &[usize],
        detail: impl Into<String>,
    ) -> Self {
        Error::IncompatibleShapes {
            op,
            lhs: lhs.into(),
            rhs: rhs.into(),
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    /// `s` as plain text: rustdoc links `[text](target)` as their text, backticks dropped,
    /// white space folded.
    fn plain(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(open) = rest.find('[') {
            let after = &rest[open + 1..];
            match (after.find("]("), after.find(']')) {
                (Some(close), Some(first)) if close == first => {
                    out.push_str(&rest[..open]);
                    out.push_str(&after[..close]);
                    let target = &after[close + 2..];
                    rest = &target[target.find(')').map_or(target.len(), |end| end + 1)..];
                }
                _ => {
                    out.push_str(&rest[..=open]);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        let out = out.replace('`', "");
        out.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// Each variant's `fix()` is the "Fix" its documentation gives, in plain text: read from
    /// this file, so that the two cannot drift apart.
    #[test]
    fn each_fix_is_the_one_its_variant_documents() {
        let source = include_str!("error.rs");
        let enum_body = source
            .split("pub enum Error {")
            .nth(1)
            .and_then(|rest| rest.split("\n}\n").next())
            .unwrap();
        let mut documented = Vec::new();
        let mut fix: Option<String> = None;
        for line in enum_body.lines().map(str::trim) {
            if let Some(text) = line.strip_prefix("/// Fix:") {
                fix = Some(text.to_string());
            } else if let (Some(text), Some(f)) = (line.strip_prefix("///"), fix.as_mut()) {
                f.push(' ');
                f.push_str(text);
            } else if let Some(name) = line.strip_suffix(" {").filter(|n| !n.contains(' ')) {
                documented.push((name.to_string(), fix.take().map(|f| plain(&f))));
            }
        }
        assert!(documented.len() >= 18, "{documented:?}");
        let arms = source.split("pub fn fix(&self)").nth(1).unwrap();
        let arms = arms.split("\n        })").next().unwrap();
        for (name, fix) in documented {
            let start = arms
                .find(&format!("Error::{name} "))
                .unwrap_or_else(|| panic!("no arm for {name}"));
            let arm = &arms[start..];
            let arm = &arm[..arm[1..].find("Error::").map_or(arm.len(), |end| end + 1)];
            match (arm.find('"'), arm.rfind('"'), fix) {
                (Some(open), Some(close), Some(fix)) if open < close => {
                    let text = arm[open + 1..close].replace("\\\"", "\"");
                    assert_eq!(text, fix.trim(), "{name}");
                }
                (None, _, _) => assert!(arm.contains("return None"), "{name}: {arm}"),
                _ => panic!("{name} has a fix its documentation does not give: {arm}"),
            }
        }
    }

    #[test]
    fn debug_prints_the_message_and_its_fix() {
        let error = Error::ImmutableCollection {
            collection: "batch_stats".into(),
            path: "BatchNorm_0/mean".into(),
        };
        let shown = format!("{error:?}");
        assert!(shown.starts_with(&error.to_string()), "{shown}");
        assert!(
            shown.contains("\nhelp: pass the collection in mutable"),
            "{shown}"
        );
        let invalid = Error::invalid("reshape", &[2, 3], "7 elements");
        assert_eq!(format!("{invalid:?}"), invalid.to_string());
    }

    #[test]
    fn a_checkpoints_problems_are_listed_one_to_a_line() {
        let problems = |names: &[&str]| Error::Checkpoint {
            path: "run.safetensors".into(),
            problems: names
                .iter()
                .map(|n| super::CheckpointProblem::Corrupt((*n).into()))
                .collect(),
            io: None,
        };
        let one = problems(&["a"]).to_string();
        assert_eq!(one.lines().count(), 1, "{one}");
        let two = problems(&["a", "b"]).to_string();
        assert_eq!(two.lines().count(), 3, "{two}");
        assert!(two.lines().skip(1).all(|l| l.starts_with("  - ")), "{two}");
    }
}
