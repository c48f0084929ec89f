//! The benchmark workload of `../shared/bench/workload.md`, shared by the benches: the MLP
//! with two BatchNorms, the CNN of its section 10, their data (SplitMix64 + Box-Muller, seed
//! 42) and one training step.

use ndarray::ArrayD;
use tapegrad::nn::{BatchNorm, Conv, Dense, GlobalAvgPool, Mlp, Pool, Sequential};
use tapegrad::optim::{Optimizer, Sgd};
use tapegrad::{
    ApplyOptions, LeafGradients, Module, ModuleExt, Mutable, ParamTensors, SplitMix64, Tape,
    Tensor, Variables, softmax_cross_entropy, value_and_grad_with_aux,
};

/// A size of the workload: batch, inputs, hidden width, classes.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    #[allow(dead_code)] // not every bench prints it
    pub name: &'static str,
    pub batch: usize,
    pub d_in: usize,
    pub hidden: usize,
    pub classes: usize,
}

pub const S: Config = Config {
    name: "S",
    batch: 32,
    d_in: 16,
    hidden: 64,
    classes: 4,
};
pub const M: Config = Config {
    name: "M",
    batch: 128,
    d_in: 64,
    hidden: 256,
    classes: 10,
};
pub const L: Config = Config {
    name: "L",
    batch: 512,
    d_in: 256,
    hidden: 1024,
    classes: 10,
};

/// A size of the CNN workload (section 10): batch, image side, input channels, the two
/// convolutions' channels, classes.
#[derive(Clone, Copy, Debug)]
pub struct CnnConfig {
    #[allow(dead_code)] // not every bench prints it
    pub name: &'static str,
    pub batch: usize,
    pub side: usize,
    pub in_channels: usize,
    pub channels: [usize; 2],
    pub classes: usize,
}

/// Digits-sized: 8×8 grey images, 16 and 32 channels.
#[allow(dead_code)]
pub const CNN_S: CnnConfig = CnnConfig {
    name: "CNN-S",
    batch: 32,
    side: 8,
    in_channels: 1,
    channels: [16, 32],
    classes: 10,
};
/// MNIST-sized: 28×28 grey images, 32 and 64 channels.
#[allow(dead_code)]
pub const CNN_M: CnnConfig = CnnConfig {
    name: "CNN-M",
    batch: 64,
    side: 28,
    in_channels: 1,
    channels: [32, 64],
    classes: 10,
};

/// Section 10's CNN: Conv → BatchNorm → ReLU → 2×2 max pool, Conv → BatchNorm → ReLU,
/// global average, Dense.
pub fn cnn(config: CnnConfig) -> Sequential<f32> {
    // BatchNorm then ReLU as one layer: the ReLU inside BatchNorm's fused node.
    let bn_relu = || BatchNorm::new().momentum(0.9).with_relu();
    Sequential::new()
        .push(Conv::new(config.channels[0], [3, 3]))
        .push(bn_relu())
        .push(Pool::max([2, 2]))
        .push(Conv::new(config.channels[1], [3, 3]))
        .push(bn_relu())
        .push(GlobalAvgPool)
        .push(Dense::new(config.classes))
}

/// Everything one training step needs.
pub struct Workload<M = Mlp> {
    pub model: M,
    pub variables: Variables<f32>,
    pub optimizer: Sgd<f32>,
    pub x: Tensor<f32>,
    pub labels: Vec<usize>,
}

/// The workload's data (section 7): inputs of `shape` from N(0, 1) and one label in
/// `0..classes` per row, from SplitMix64 seed 42 and Box-Muller.
fn data(shape: &[usize], classes: usize) -> (Tensor<f32>, Vec<usize>) {
    let mut rng = SplitMix64::new(42);
    let x: Vec<f32> = (0..shape.iter().product())
        .map(|_| rng.normal() as f32)
        .collect();
    let labels = (0..shape[0])
        .map(|_| (rng.next_u64() % classes as u64) as usize)
        .collect();
    let x = Tensor::constant(ArrayD::from_shape_vec(shape.to_vec(), x).unwrap());
    (x, labels)
}

impl<M: Module<f32, Input = Tensor<f32>, Output = Tensor<f32>>> Workload<M> {
    /// `model` initialised on `x`, with SGD momentum 0.9 at learning rate 0.1.
    fn with(model: M, (x, labels): (Tensor<f32>, Vec<usize>)) -> Self {
        let variables = model.init(0, &x).unwrap();
        Workload {
            model,
            variables,
            optimizer: Sgd::new(0.1).momentum(0.9),
            x,
            labels,
        }
    }
}

impl Workload {
    /// The MLP workload at `config`.
    pub fn new(config: Config) -> Self {
        let model = Mlp::new(&[config.hidden, config.hidden], config.classes)
            .with_batch_norm(BatchNorm::new().momentum(0.9));
        Self::with(model, data(&[config.batch, config.d_in], config.classes))
    }
}

/// How much of a deep model is recomputed during backward: nothing, every block (each its
/// own segment), or about `√n` segments of `n` blocks (Chen et al., 2016).
#[allow(dead_code)] // only step_memory measures recomputation
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recompute {
    Nothing,
    EveryBlock,
    SqrtSegments,
}

#[allow(dead_code)]
impl Recompute {
    pub const ALL: [Recompute; 3] = [Self::Nothing, Self::EveryBlock, Self::SqrtSegments];

    pub fn name(self) -> &'static str {
        match self {
            Self::Nothing => "none",
            Self::EveryBlock => "every block",
            Self::SqrtSegments => "sqrt(n) segments",
        }
    }

    /// The segments for `blocks` blocks, `None` for no recomputation.
    pub fn segments(self, blocks: usize) -> Option<usize> {
        match self {
            Self::Nothing => None,
            Self::EveryBlock => Some(blocks),
            Self::SqrtSegments => Some((blocks as f64).sqrt().round().max(1.0) as usize),
        }
    }
}

/// The deep MLP of the recomputation table: 32 blocks of Dense(256), BatchNorm and ReLU, on
/// batches of 1024 rows of M's 64 inputs. (At M's batch of 128 the gradients of a block's
/// weights are as large as its activations, so there is little for recomputation to save.)
#[allow(dead_code)]
pub const DEEP_BLOCKS: usize = 32;
#[allow(dead_code)]
pub const DEEP_BATCH: usize = 1024;

impl Workload {
    /// The deep MLP, recomputed as `recompute` says.
    #[allow(dead_code)]
    pub fn deep(recompute: Recompute) -> Self {
        let mut model = Mlp::new(&[M.hidden; DEEP_BLOCKS], M.classes)
            .with_batch_norm(BatchNorm::new().momentum(0.9));
        if let Some(segments) = recompute.segments(DEEP_BLOCKS) {
            model = model.with_remat_segments(segments).unwrap();
        }
        Self::with(model, data(&[DEEP_BATCH, M.d_in], M.classes))
    }
}

impl Workload<Sequential<f32>> {
    /// The CNN workload at `config`, its layers recomputed as `recompute` says.
    #[allow(dead_code)]
    pub fn cnn_recomputed(config: CnnConfig, recompute: Recompute) -> Self {
        let mut model = cnn(config);
        if let Some(segments) = recompute.segments(model.len()) {
            model = model.remat_segments(segments).unwrap();
        }
        let shape = [config.batch, config.side, config.side, config.in_channels];
        Self::with(model, data(&shape, config.classes))
    }

    /// The CNN workload at `config`, with its inputs `(B, side, side, C)`.
    #[allow(dead_code)]
    pub fn cnn(config: CnnConfig) -> Self {
        let shape = [config.batch, config.side, config.side, config.in_channels];
        Self::with(cnn(config), data(&shape, config.classes))
    }
}

impl<M: Module<f32, Input = Tensor<f32>, Output = Tensor<f32>>> Workload<M> {
    /// One training step (workload section 5): forward in training mode with batch_stats
    /// mutable, the loss and its gradient with respect to params, the SGD-momentum update,
    /// the merge of the new statistics; returns the loss as a host scalar.
    pub fn step(&mut self) -> f32 {
        let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
        let (loss, updates, grads) = value_and_grad_with_aux(self.variables.params(), |p| {
            let (logits, updates) =
                self.model
                    .apply_tracked(p, &self.variables, &self.x, &train)?;
            Ok((softmax_cross_entropy(&logits, &self.labels)?, updates))
        })
        .unwrap();
        self.optimizer
            .update(self.variables.params_mut(), &grads)
            .unwrap();
        self.variables.merge(updates).unwrap();
        loss
    }

    /// The training-mode forward and loss on a tape driven by hand; returns the loss and the
    /// params as leaves (keep them for as long as the tape is needed).
    #[allow(dead_code)] // not every bench drives a tape by hand
    pub fn tracked_loss(&self) -> (Tensor<f32>, ParamTensors<f32>) {
        let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
        let tape = Tape::new();
        let params = ParamTensors::leaves(self.variables.params(), &tape);
        let (logits, _) = self
            .model
            .apply_tracked(&params, &self.variables, &self.x, &train)
            .unwrap();
        (
            softmax_cross_entropy(&logits, &self.labels).unwrap(),
            params,
        )
    }

    /// [`Workload::tracked_loss`] and its backward pass; everything else is dropped before
    /// the gradients are returned.
    #[allow(dead_code)]
    pub fn backward_by_hand(&self) -> LeafGradients<f32> {
        let (loss, params) = self.tracked_loss();
        let gradients = loss.backward().unwrap();
        drop((loss, params));
        gradients
    }
}

/// The process's peak resident size (VmHWM), in MiB; 0 where unknown.
#[allow(dead_code)]
pub fn peak_rss_mib() -> f64 {
    tapegrad::runtime::peak_resident_mib().unwrap_or(0.0)
}

/// The sizes named on the command line (cargo bench passes `--bench` too: flags are
/// skipped), or S, M and L.
#[allow(dead_code)]
pub fn sizes_from_args() -> Vec<String> {
    let sizes: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if sizes.is_empty() {
        vec!["S".into(), "M".into(), "L".into()]
    } else {
        sizes
    }
}
