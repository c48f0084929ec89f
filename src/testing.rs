//! Proptest strategies for shapes and arrays (feature `testing`), so users write property
//! suites like ours: draw shapes including 0-d scalars, size-1 and broadcast dimensions, and
//! values in the domain where the function under test is smooth.
//!
//! ```
//! use proptest::prelude::*;
//! use tapegrad::testing::{arrays, shape};
//!
//! proptest!(|(x in shape(3, 4).prop_flat_map(|s| arrays::<f64>(s, -1.0..1.0)))| {
//!     prop_assert!(x.ndim() <= 3);
//!     prop_assert!(x.iter().all(|v| (-1.0..1.0).contains(v)));
//! });
//! ```

use ndarray::{ArrayD, IxDyn};
use proptest::collection::vec;
use proptest::prelude::*;

use crate::float::Float;

/// A proptest configuration running `default_cases` cases, unless the environment variable
/// `PROPTEST_CASES` asks for another number (as proptest's own default configuration does,
/// and `ProptestConfig::with_cases` does not): a long run can then be asked for without
/// editing code, `PROPTEST_CASES=100000 cargo test --release --test fusion`.
///
/// ```
/// use proptest::prelude::*;
/// proptest!(tapegrad::testing::config(8), |(x in 0..10u32)| {
///     prop_assert!(x < 10);
/// });
/// ```
#[must_use]
pub fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig::with_cases(cases)
}

/// Shapes of rank `0..=max_rank` with dimensions `1..=max_dim` (size-1 dimensions are
/// frequent, since they are where broadcasting bugs hide). Shrinks toward lower rank and
/// smaller dimensions.
pub fn shape(max_rank: usize, max_dim: usize) -> impl Strategy<Value = Vec<usize>> {
    vec(1..=max_dim.max(1), 0..=max_rank)
}

/// Shapes of rank `min_rank..=max_rank` with dimensions `1..=max_dim`.
pub fn shape_with_rank(
    min_rank: usize,
    max_rank: usize,
    max_dim: usize,
) -> impl Strategy<Value = Vec<usize>> {
    vec(1..=max_dim.max(1), min_rank..=max_rank)
}

/// A pair of shapes that broadcast together (NumPy rules): the second is a suffix of the
/// first's rank with some dimensions set to 1, and the first may have 1s where the second
/// does not, so broadcasting goes both ways. Either order of the pair is drawn.
pub fn broadcast_pair(
    max_rank: usize,
    max_dim: usize,
) -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    shape(max_rank, max_dim)
        .prop_flat_map(|full| {
            let rank = full.len();
            (
                Just(full),
                0..=rank,
                vec(any::<bool>(), rank),
                vec(any::<bool>(), rank),
                any::<bool>(),
            )
        })
        .prop_map(|(full, suffix_len, ones_a, ones_b, swap)| {
            let rank = full.len();
            let a: Vec<usize> = full
                .iter()
                .zip(&ones_a)
                .zip(&ones_b)
                // Only one side of a dimension may be squeezed to 1.
                .map(|((&n, &one_a), &one_b)| if one_a && !one_b { 1 } else { n })
                .collect();
            let b: Vec<usize> = full[rank - suffix_len..]
                .iter()
                .zip(&ones_b[rank - suffix_len..])
                .map(|(&n, &one)| if one { 1 } else { n })
                .collect();
            if swap { (b, a) } else { (a, b) }
        })
}

/// Arrays of the given shape with values drawn from `values` (an `f64` strategy, converted
/// to `A`).
pub fn arrays<A: Float>(
    shape: Vec<usize>,
    values: impl Strategy<Value = f64>,
) -> impl Strategy<Value = ArrayD<A>> {
    let n: usize = shape.iter().product();
    vec(values, n).prop_map(move |v| {
        ArrayD::from_shape_vec(IxDyn(&shape), v.into_iter().map(A::of).collect())
            .expect("n elements for the shape")
    })
}

/// Values in `[-hi, -lo] ∪ [lo, hi]`: away from zero, for `relu`, `abs` and division.
pub fn away_from_zero(lo: f64, hi: f64) -> impl Strategy<Value = f64> {
    prop_oneof![lo..=hi, -hi..=-lo]
}

/// Arrays of the given shape whose values are pairwise at least `gap` apart, in a random
/// order: for `max` and sorting, which are smooth only away from ties.
pub fn distinct_arrays<A: Float>(shape: Vec<usize>, gap: f64) -> impl Strategy<Value = ArrayD<A>> {
    let n: usize = shape.iter().product();
    (
        Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
        vec(0.0..gap * 0.5, n),
    )
        .prop_map(move |(order, jitter)| {
            let values = order
                .iter()
                .zip(&jitter)
                .map(|(&rank, &j)| A::of((rank as f64 - n as f64 / 2.0) * gap * 1.5 + j));
            ArrayD::from_shape_vec(IxDyn(&shape), values.collect()).expect("n elements")
        })
}

/// A small random classification problem for an MLP, optionally with BatchNorm: sizes,
/// inputs and labels. Shrinks toward fewer, narrower layers and smaller batches.
#[derive(Debug, Clone)]
pub struct MlpCase {
    /// Hidden widths.
    pub hidden: Vec<usize>,
    /// Number of classes.
    pub classes: usize,
    /// BatchNorm momentum, if the model has BatchNorm.
    pub batch_norm: Option<f64>,
    /// Inputs `(batch, d_in)`.
    pub x: ArrayD<f64>,
    /// One label per row of `x`.
    pub labels: Vec<usize>,
    /// The init seed.
    pub seed: u64,
}

impl MlpCase {
    /// The model this case describes.
    #[must_use]
    pub fn model(&self) -> crate::nn::Mlp {
        let mlp = crate::nn::Mlp::new(&self.hidden, self.classes);
        match self.batch_norm {
            Some(momentum) => mlp.with_batch_norm(crate::nn::BatchNorm::new().momentum(momentum)),
            None => mlp,
        }
    }

    /// The model's variables: `init` with `seed`, then every param named `bias` redrawn
    /// from N(0, 0.5²). Zero biases (the default) with a zero input row put a ReLU exactly on
    /// its kink, where finite differences are meaningless; random biases make that a
    /// probability-zero event.
    #[must_use]
    pub fn variables(&self) -> crate::variables::Variables<f64> {
        use crate::module::ModuleExt;
        let mut vars = self
            .model()
            .init(self.seed, &self.input())
            .expect("an MlpCase always initialises");
        let mut rng = crate::rng::SplitMix64::new(self.seed ^ 0xB1A5);
        for (path, value) in vars.params_mut().iter_mut() {
            if path.ends_with("/bias") {
                value.mapv_inplace(|_| 0.5 * rng.normal());
            }
        }
        vars
    }

    /// How far the ReLUs' inputs are from the kink at 0: the smallest `|pre-activation|` of
    /// any hidden unit in training mode, with [`MlpCase::variables`].
    #[must_use]
    pub(crate) fn relu_margin(&self) -> f64 {
        self.relu_inputs(&self.variables())
            .iter()
            .flat_map(|layer| layer.iter())
            .fold(f64::INFINITY, |m, v| m.min(v.abs()))
    }

    /// Whether a finite difference of step `eps` sees a smooth function: no param entry
    /// moved by `±eps` (one at a time, as [`crate::gradcheck`] moves them) sends any ReLU
    /// input across the kink at 0. A margin alone cannot promise that: behind BatchNorm a
    /// kernel column whose pre-activations have a variance below BatchNorm's `epsilon` moves
    /// its normalised outputs by up to `1/√epsilon ≈ 316` times the step (a case CI drew:
    /// every ReLU input at least `3.3e-4` from the kink, yet a step of `1e-6` crossed one,
    /// and the central difference read 53 where the true derivative, to which it converges
    /// at smaller steps, is 61.3).
    #[must_use]
    pub(crate) fn kinks_clear_of_steps(&self, eps: f64) -> bool {
        let variables = self.variables();
        let signs = |v: &crate::variables::Variables<f64>| -> Vec<bool> {
            let inputs = self.relu_inputs(v);
            inputs
                .iter()
                .flat_map(|l| l.iter().map(|x| *x > 0.0))
                .collect()
        };
        let base = signs(&variables);
        let paths: Vec<String> = variables.params().paths().map(str::to_owned).collect();
        paths.iter().all(|path| {
            let len = variables.params().get(path).map_or(0, |p| p.len());
            (0..len).all(|i| {
                [eps, -eps].iter().all(|&step| {
                    let mut moved = variables.clone();
                    if let Some(entry) = moved
                        .params_mut()
                        .get_mut(path)
                        .and_then(|p| p.iter_mut().nth(i))
                    {
                        *entry += step;
                    }
                    signs(&moved) == base
                })
            })
        })
    }

    /// Every ReLU's input, layer by layer, in training mode.
    fn relu_inputs(&self, variables: &crate::variables::Variables<f64>) -> Vec<ArrayD<f64>> {
        self.hidden_layers(variables)
            .into_iter()
            .map(|(_, relu_input)| relu_input)
            .collect()
    }

    /// The smallest batch variance of any feature a BatchNorm normalises (training mode,
    /// with [`MlpCase::variables`]); infinite without BatchNorm. Where it is not well above
    /// BatchNorm's `epsilon`, the normalisation divides by about `√epsilon`: its outputs move
    /// by up to `1/√epsilon ≈ 316` times a param's change, and its gradients carry rounding
    /// amplified as much or more (CI drew a feature of variance `7.5e-5` whose kernel
    /// gradient then differed by 2e-12 relative between the fused and the composite
    /// BatchNorm, twice what `tests/fusion.rs` allows). [`mlp_case`] keeps it above
    /// `100 · epsilon`.
    #[must_use]
    pub(crate) fn smallest_batch_variance(&self) -> f64 {
        if self.batch_norm.is_none() {
            return f64::INFINITY;
        }
        self.hidden_layers(&self.variables())
            .iter()
            .flat_map(|(dense, _)| dense.var_axis(ndarray::Axis(0), 0.0))
            .fold(f64::INFINITY, f64::min)
    }

    /// Each hidden layer's Dense output and ReLU input (the same without BatchNorm), in
    /// training mode.
    fn hidden_layers(
        &self,
        variables: &crate::variables::Variables<f64>,
    ) -> Vec<(ArrayD<f64>, ArrayD<f64>)> {
        use crate::module::{ApplyOptions, ModuleExt};
        use crate::nn::{BatchNorm, Dense};
        use crate::variables::Mutable;
        let train = ApplyOptions::train().mutable(Mutable::all());
        let mut x = self.input::<f64>();
        let mut layers = Vec::with_capacity(self.hidden.len());
        for (i, &width) in self.hidden.iter().enumerate() {
            let layer = variables.subtree(&format!("Dense_{i}"));
            x = Dense::new(width)
                .apply(&layer, &x, &train)
                .expect("a case applies")
                .0;
            let dense = x.value().clone();
            if let Some(momentum) = self.batch_norm {
                let layer = variables.subtree(&format!("BatchNorm_{i}"));
                let bn = BatchNorm::new().momentum(momentum);
                x = bn.apply(&layer, &x, &train).expect("a case applies").0;
            }
            layers.push((dense, x.value().clone()));
            x = x.relu();
        }
        layers
    }

    /// The inputs as a constant tensor of element type `A`.
    pub fn input<A: Float>(&self) -> crate::tensor::Tensor<A> {
        crate::tensor::Tensor::constant(self.x.mapv(A::of))
    }
}

/// Random [`MlpCase`]s: batch 2 to 6 (BatchNorm needs at least 2), 1 to 4 inputs, 1 or 2
/// hidden layers of width 1 to 5, 2 to 4 classes, BatchNorm in half the cases; every ReLU
/// input at least `1e-4` from the kink, and on the same side of it after any step of ten
/// times [`crate::gradcheck::GradCheckOptions`]' default `eps`, so that finite differences
/// are meaningful (behind BatchNorm a small margin is not enough: a feature of small
/// variance moves by up to `1/√epsilon` times a param's step); and every feature BatchNorm
/// normalises has a batch variance above `100 · epsilon`, so that rounding is not amplified
/// past what comparisons of two computations allow.
pub fn mlp_case() -> impl Strategy<Value = MlpCase> {
    (
        2..=6usize,
        1..=4usize,
        vec(1..=5usize, 1..=2),
        2..=4usize,
        proptest::option::of(0.5..0.99f64),
        any::<u64>(),
    )
        .prop_flat_map(|(batch, d_in, hidden, classes, batch_norm, seed)| {
            (
                arrays::<f64>(vec![batch, d_in], -2.0..2.0),
                vec(0..classes, batch),
                Just((hidden, classes, batch_norm, seed)),
            )
        })
        .prop_map(|(x, labels, (hidden, classes, batch_norm, seed))| MlpCase {
            hidden,
            classes,
            batch_norm,
            x,
            labels,
            seed,
        })
        // The cheap test first: the step check runs the model twice per param entry.
        .prop_filter(
            "BatchNorm features of variance well above epsilon",
            // The cases' BatchNorms are `BatchNorm::new()`'s, with its default epsilon.
            |case| case.smallest_batch_variance() > 100.0 * crate::nn::BatchNorm::new().epsilon,
        )
        .prop_filter("ReLU inputs away from the kink", |case| {
            case.relu_margin() > 1e-4
                && case
                    .kinks_clear_of_steps(10.0 * crate::gradcheck::GradCheckOptions::default().eps)
        })
}

#[cfg(test)]
mod tests {
    use super::MlpCase;
    use ndarray::array;

    /// The case CI drew (shrunk): a kernel column of `-0.0012` feeding BatchNorm, every ReLU
    /// input at least `1e-4` from the kink, yet a step of `1e-6` crosses one.
    fn drawn_by_ci() -> MlpCase {
        MlpCase {
            hidden: vec![5],
            classes: 3,
            batch_norm: Some(0.828_311_395_372_463_9),
            x: array![
                [-1.838_456_113_663_956_3],
                [-0.480_812_378_981_963_16],
                [1.436_912_323_507_809_2],
                [1.429_030_845_908_658],
                [0.004_014_203_330_006_529]
            ]
            .into_dyn(),
            labels: vec![0; 5],
            seed: 14_859_840_270_737_152_825,
        }
    }

    /// The second case CI drew: a BatchNorm feature of batch variance `7.5e-5`.
    #[test]
    fn a_batch_norm_feature_near_epsilon_is_measured() {
        let case = MlpCase {
            hidden: vec![1, 4],
            classes: 3,
            batch_norm: Some(0.688_623_141_906_208),
            x: array![[1.917_322_703_815_800_3], [1.529_759_132_265_490_9], [0.0]].into_dyn(),
            labels: vec![0; 3],
            seed: 12_015_666_866_850_108_209,
        };
        let smallest = case.smallest_batch_variance();
        assert!((5e-5..1e-4).contains(&smallest), "{smallest}");
        let without = MlpCase {
            batch_norm: None,
            ..case
        };
        assert_eq!(without.smallest_batch_variance(), f64::INFINITY);
    }

    #[test]
    fn a_margin_is_not_enough_behind_batch_norm() {
        let case = drawn_by_ci();
        assert!(case.relu_margin() > 1e-4);
        assert!(!case.kinks_clear_of_steps(1e-6));
        assert!(case.kinks_clear_of_steps(1e-8));
    }
}
