//! [`Grads`]: gradients keyed exactly like the params they were taken with respect to, and
//! the transforms (accumulate, scale, clip) that keep them so.

use std::collections::{BTreeMap, btree_map};
use std::fmt;

use ndarray::ArrayD;

use crate::collection::{Collection, Params};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::simd;
use crate::optim::setting_at_least_zero;

/// Gradients keyed exactly like the [`Params`] they were taken with respect to: the same
/// paths, each gradient with its parameter's shape. No other collection can appear here,
/// because only params become leaves of the tape.
///
/// The transforms optax and PyTorch users reach for keep that invariant: every one returns
/// gradients with the same keys and shapes ([`Grads::map`] checks what its function returns).
///
/// ```
/// use tapegrad::{value_and_grad, Grads, Params};
/// use ndarray::arr1;
///
/// let params: Params<f64> = [("w".to_string(), arr1(&[3.0, 4.0]))].into_iter().collect();
/// // Two micro-batches, accumulated: the gradient of sum(w²) is 2w each time.
/// let mut total = Grads::zeros_like(&params);
/// for _ in 0..2 {
///     let (_, grads) = value_and_grad(&params, |p| Ok(p.get("w")?.square().sum_all()))?;
///     total = total.add(&grads)?;
/// }
/// let mean = total.scale(0.5);
/// assert_eq!(mean.get("w").unwrap().as_slice().unwrap(), &[6.0, 8.0]);
/// assert_eq!(mean.global_norm(), 10.0);
/// let clipped = mean.clip_by_global_norm(5.0)?; // optax.clip_by_global_norm(5.0)
/// assert_eq!(clipped.get("w").unwrap().as_slice().unwrap(), &[3.0, 4.0]);
/// let capped = mean.clip_by_value(7.0)?; // optax.clip(7.0)
/// assert_eq!(capped.get("w").unwrap().as_slice().unwrap(), &[6.0, 7.0]);
/// # Ok::<(), tapegrad::Error>(())
/// ```
#[derive(Clone, Default, PartialEq)]
pub struct Grads<A: Float> {
    entries: BTreeMap<String, ArrayD<A>>,
}

impl<A: Float> Grads<A> {
    pub(crate) fn from_map(entries: BTreeMap<String, ArrayD<A>>) -> Self {
        Grads { entries }
    }

    /// Zeros keyed and shaped like `params`: where an accumulation of gradients starts.
    #[must_use]
    pub fn zeros_like(params: &Params<A>) -> Self {
        let entries = params
            .iter()
            .map(|(path, p)| (path.to_string(), ArrayD::zeros(p.raw_dim())))
            .collect();
        Grads { entries }
    }

    /// `f(path, gradient)` for every gradient. An error naming the path, with no result, if
    /// `f` returns an array of another shape. optax: `jax.tree.map(f, grads)`.
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`] naming the path if `f` returns an array of another shape.
    pub fn map(&self, mut f: impl FnMut(&str, &ArrayD<A>) -> ArrayD<A>) -> Result<Grads<A>> {
        let mut entries = BTreeMap::new();
        for (path, g) in self.iter() {
            let mapped = f(path, g);
            if mapped.shape() != g.shape() {
                return Err(Error::incompatible(
                    "Grads::map",
                    g.shape(),
                    mapped.shape(),
                    format!("the function changed the shape of the gradient of \"{path}\""),
                ));
            }
            entries.insert(path.to_string(), mapped);
        }
        Ok(Grads { entries })
    }

    /// Every gradient times `factor` (the mean of accumulated micro-batches:
    /// `scale(1 / K)`). optax: `optax.scale(factor)`.
    #[must_use]
    pub fn scale(&self, factor: A) -> Grads<A> {
        self.map_values(|g| g.mapv(|x| x * factor))
    }

    /// The sum of two sets of gradients of the same params (accumulating micro-batches);
    /// an error if their keys or shapes differ.
    ///
    /// K micro-batches accumulated and scaled by `1 / K` equal one batch of all their rows
    /// for a mean loss of a model without BatchNorm. With BatchNorm they do not: each
    /// micro-batch is normalised with its own statistics, which makes it another function of
    /// the data (as in PyTorch, where accumulating gradients does not emulate a larger batch
    /// for BatchNorm either).
    ///
    /// # Errors
    ///
    /// [`Error::KeyMismatch`] if the paths differ, [`Error::IncompatibleShapes`] if a shape does.
    pub fn add(&self, other: &Grads<A>) -> Result<Grads<A>> {
        let keys_of_self: Collection<A> = self
            .iter()
            .map(|(p, g)| (p.to_string(), ArrayD::zeros(g.raw_dim())))
            .collect();
        other.check_matches(&keys_of_self, "Grads::add")?;
        let entries = self
            .iter()
            .zip(other.iter())
            .map(|((path, a), (_, b))| (path.to_string(), a + b))
            .collect();
        Ok(Grads { entries })
    }

    /// Scaled down, all together, so that their [`Grads::global_norm`] is at most
    /// `max_norm`: `g · max_norm / max(norm, max_norm)`. optax: `clip_by_global_norm`;
    /// PyTorch's `clip_grad_norm_` computes the same with `norm + 1e-6` in the denominator.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSetting`] unless `max_norm` is finite and at least 0 (a negative one
    /// would reverse the gradient).
    pub fn clip_by_global_norm(&self, max_norm: A) -> Result<Grads<A>> {
        setting_at_least_zero("clip_by_global_norm", "max_norm", max_norm.as_f64())?;
        let norm = self.global_norm();
        if norm <= max_norm {
            return Ok(self.clone());
        }
        Ok(self.scale(max_norm / norm))
    }

    /// Every element clamped to `[-limit, limit]`. optax: `optax.clip(limit)`; PyTorch:
    /// `clip_grad_value_`. (NaN stays NaN, for the optimizer's check to find.)
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSetting`] unless `limit` is finite and at least 0.
    pub fn clip_by_value(&self, limit: A) -> Result<Grads<A>> {
        setting_at_least_zero("clip_by_value", "limit", limit.as_f64())?;
        Ok(self.map_values(|g| {
            g.mapv(|x| {
                if x > limit {
                    limit
                } else if x < -limit {
                    -limit
                } else {
                    x
                }
            })
        }))
    }

    fn map_values(&self, f: impl Fn(&ArrayD<A>) -> ArrayD<A>) -> Grads<A> {
        let entries = self.iter().map(|(p, g)| (p.to_string(), f(g))).collect();
        Grads { entries }
    }

    /// The gradient for the param at `path`.
    #[must_use]
    pub fn get(&self, path: &str) -> Option<&ArrayD<A>> {
        self.entries.get(path)
    }

    /// Paths in order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// `(path, gradient)` pairs in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ArrayD<A>)> {
        self.into_iter()
    }

    /// The number of gradients.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The L2 norm over all gradients, as for gradient clipping.
    #[must_use]
    pub fn global_norm(&self) -> A {
        self.entries
            .values()
            .flat_map(|g| g.iter())
            .map(|&x| x * x)
            .sum::<A>()
            .sqrt()
    }

    /// The path of the first gradient (in path order) holding a NaN or an infinity.
    #[must_use]
    pub fn first_non_finite(&self) -> Option<&str> {
        self.iter()
            .find(|(_, g)| !simd::array_all_finite(g))
            .map(|(path, _)| path)
    }

    /// Checks that the gradients are keyed exactly like `params`, with matching shapes;
    /// `op` names the caller in the error.
    ///
    /// # Errors
    ///
    /// [`Error::KeyMismatch`] if the paths differ, [`Error::IncompatibleShapes`] naming `op` if a
    /// shape does.
    pub fn check_matches(&self, params: &Collection<A>, op: &'static str) -> Result<()> {
        // Both are ordered by path: one merge-like pass decides the common case.
        let same_paths_and_shapes = self.entries.len() == params.len()
            && self
                .iter()
                .zip(params.iter())
                .all(|((p, g), (q, v))| p == q && g.shape() == v.shape());
        if same_paths_and_shapes {
            return Ok(());
        }
        let missing: Vec<String> = params
            .paths()
            .filter(|p| !self.entries.contains_key(*p))
            .map(String::from)
            .collect();
        let unexpected: Vec<String> = self
            .paths()
            .filter(|p| !params.contains(p))
            .map(String::from)
            .collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(Error::KeyMismatch {
                op,
                missing,
                unexpected,
            });
        }
        for (path, grad) in self.iter() {
            let param = params.get(path).expect("keys checked equal");
            if grad.shape() != param.shape() {
                return Err(Error::incompatible(
                    op,
                    param.shape(),
                    grad.shape(),
                    format!("the gradient of \"params/{path}\" must have its param's shape"),
                ));
            }
        }
        Ok(())
    }
}

/// `for (path, gradient) in &grads`, in path order.
impl<'a, A: Float> IntoIterator for &'a Grads<A> {
    type Item = (&'a str, &'a ArrayD<A>);
    type IntoIter = std::iter::Map<
        btree_map::Iter<'a, String, ArrayD<A>>,
        fn((&'a String, &'a ArrayD<A>)) -> (&'a str, &'a ArrayD<A>),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl<A: Float> fmt::Debug for Grads<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v.shape())))
            .finish()
    }
}
