//! Checkpoints: every collection saved and loaded in the safetensors format, and models
//! imported from a PyTorch `state_dict`.
//!
//! Saving only the params loses BatchNorm's running statistics, a classic way to ship a
//! model whose evaluation accuracy collapses. A tapegrad checkpoint holds *every* collection,
//! each tensor named `collection/path` (`batch_stats/BatchNorm_0/mean`).
//!
//! * [`save`] is atomic: the file is written beside the target (under a unique temporary
//!   name) and renamed over it, so a crash never leaves a half-written checkpoint where the
//!   old one was; it is deterministic (the same variables, the same bytes) and stores values
//!   bit for bit.
//! * [`save_training`] and [`load_training_into`] add the optimizer's state (velocities,
//!   moments, the step count that positions the learning-rate schedule), so that a run
//!   resumed from a checkpoint is the same run as one never stopped.
//! * [`load_into`] is all-or-nothing: it checks the file against the model's variables
//!   (names, shapes, dtypes, a corrupt or truncated file) and reports every problem at once,
//!   leaving the variables untouched unless there is none.
//! * [`import_pytorch_into`] reads a PyTorch `state_dict` exported with
//!   `safetensors.torch.save_file`, converting names and layouts; [`export_pytorch`] writes
//!   one that PyTorch's `load_state_dict` accepts.
//!
//! ```
//! use tapegrad::checkpoint::{load_into, save, LoadMode};
//! use tapegrad::nn::{BatchNorm, Mlp};
//! use tapegrad::{ModuleExt, Tensor};
//!
//! let model = Mlp::new(&[4], 2).with_batch_norm(BatchNorm::new());
//! let x = Tensor::from_vec(&[3, 2], vec![0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6])?;
//! let trained = model.init(1, &x)?;
//! let path = std::env::temp_dir().join(format!("tapegrad-doc-{}.safetensors", std::process::id()));
//! save(&trained, &path)?;
//!
//! let mut restored = model.init(2, &x)?; // other values, same names and shapes
//! load_into(&mut restored, &path, LoadMode::Strict)?;
//! assert_eq!(restored, trained); // params and batch_stats alike
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), tapegrad::Error>(())
//! ```

mod file;
mod format;
mod pytorch;
mod training;
mod write;

pub use crate::error::{CheckpointProblem, IoSource};
pub use file::{FORMAT_VERSION, LoadMode, LoadOptions, load_into, read, save};
pub use pytorch::{TorchLayer, TorchMapping, export_pytorch, import_pytorch_into};
pub use training::{load_training_into, run_settings, save_training, save_training_with_run};
