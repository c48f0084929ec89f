//! Ordered maps from slash paths to arrays: a [`Collection`] of variables, and the
//! [`Params`] (the one collection that gradients and optimizers see).

use std::collections::{BTreeMap, btree_map};
use std::fmt;
use std::sync::Arc;

use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::into_array::IntoArray;

/// One collection of variables: an ordered map from a slash path (`"Dense_0/kernel"`) to an
/// array. Iteration is in path order, so it is deterministic.
///
/// Arrays are held behind `Arc`: reading a variable into a tensor shares it without a copy,
/// and writing (`get_mut`) copies only if a tensor still shares it.
pub struct Collection<A: Float> {
    entries: BTreeMap<String, Arc<ArrayD<A>>>,
}

impl<A: Float> Clone for Collection<A> {
    fn clone(&self) -> Self {
        Collection {
            entries: self.entries.clone(),
        }
    }
}

impl<A: Float> Default for Collection<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Float> PartialEq for Collection<A> {
    /// Equal when the paths are the same and every array is equal element for element
    /// (and so, for the bit-for-bit checks of the property suites, with no NaN).
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|((ka, a), (kb, b))| ka == kb && a.shape() == b.shape() && a == b)
    }
}

impl<A: Float> Collection<A> {
    /// An empty collection.
    #[must_use]
    pub fn new() -> Self {
        Collection {
            entries: BTreeMap::new(),
        }
    }

    /// Inserts or replaces the array at `path`, returning the old one. `value` is any
    /// ndarray array, view or reference to one (see [`IntoArray`]).
    pub fn insert(
        &mut self,
        path: impl Into<String>,
        value: impl IntoArray<A>,
    ) -> Option<ArrayD<A>> {
        self.insert_shared(path.into(), Arc::new(value.into_array()))
            .map(Arc::unwrap_or_clone)
    }

    pub(crate) fn insert_shared(
        &mut self,
        path: String,
        value: Arc<ArrayD<A>>,
    ) -> Option<Arc<ArrayD<A>>> {
        self.entries.insert(path, value)
    }

    /// The array at `path`.
    #[must_use]
    pub fn get(&self, path: &str) -> Option<&ArrayD<A>> {
        self.entries.get(path).map(|a| &**a)
    }

    pub(crate) fn get_shared(&self, path: &str) -> Option<&Arc<ArrayD<A>>> {
        self.entries.get(path)
    }

    /// The array at `path`, for writing in place.
    pub fn get_mut(&mut self, path: &str) -> Option<&mut ArrayD<A>> {
        self.entries.get_mut(path).map(Arc::make_mut)
    }

    /// Removes and returns the array at `path`.
    pub fn remove(&mut self, path: &str) -> Option<ArrayD<A>> {
        self.entries.remove(path).map(Arc::unwrap_or_clone)
    }

    /// Whether `path` is present.
    #[must_use]
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    /// The number of variables.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no variables.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The total number of scalars over all variables.
    #[must_use]
    pub fn size(&self) -> usize {
        self.entries.values().map(|a| a.len()).sum()
    }

    /// Paths in order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// `(path, array)` pairs in path order.
    #[must_use]
    pub fn iter(&self) -> Iter<'_, A> {
        self.into_iter()
    }

    pub(crate) fn iter_shared(&self) -> impl Iterator<Item = (&String, &Arc<ArrayD<A>>)> {
        self.entries.iter()
    }

    /// `(path, array)` pairs in path order, for writing in place.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut ArrayD<A>)> {
        self.entries
            .iter_mut()
            .map(|(k, v)| (k.as_str(), Arc::make_mut(v)))
    }

    /// Every array converted to another element type (e.g. `f64` reference values to `f32`).
    #[must_use]
    pub fn cast<B: Float>(&self) -> Collection<B> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.mapv(|x| B::of(x.as_f64()))))
            .collect()
    }
}

/// Collects `(path, array)` pairs: any path that converts into a `String` and any
/// [`IntoArray`] value, so `[("w", arr1(&[1.0]))].into_iter().collect()` works.
impl<A: Float, K: Into<String>, V: IntoArray<A>> FromIterator<(K, V)> for Collection<A> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Collection {
            entries: iter
                .into_iter()
                .map(|(k, v)| (k.into(), Arc::new(v.into_array())))
                .collect(),
        }
    }
}

/// `(path, array)` pairs in path order, by reference: `for (path, value) in &collection`.
impl<'a, A: Float> IntoIterator for &'a Collection<A> {
    type Item = (&'a str, &'a ArrayD<A>);
    type IntoIter = Iter<'a, A>;

    fn into_iter(self) -> Iter<'a, A> {
        Iter(self.entries.iter())
    }
}

/// `(path, array)` pairs in path order, borrowed from a [`Collection`] or [`Params`].
#[derive(Debug, Clone)]
pub struct Iter<'a, A>(btree_map::Iter<'a, String, Arc<ArrayD<A>>>);

impl<'a, A> Iterator for Iter<'a, A> {
    type Item = (&'a str, &'a ArrayD<A>);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (k.as_str(), &**v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl<A> ExactSizeIterator for Iter<'_, A> {}

impl<A: Float> fmt::Debug for Collection<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v.shape())))
            .finish()
    }
}

/// An error naming every path of `incoming` that `present` already holds, if any: joining
/// two sets of params must never silently let one value shadow another.
pub(crate) fn require_disjoint<'a>(
    op: &'static str,
    incoming: impl Iterator<Item = &'a str>,
    present: impl Fn(&str) -> bool,
) -> Result<()> {
    let shared: Vec<String> = incoming.filter(|p| present(p)).map(String::from).collect();
    if shared.is_empty() {
        Ok(())
    } else {
        Err(Error::KeyMismatch {
            op,
            missing: Vec::new(),
            unexpected: shared,
        })
    }
}

/// The `params` collection: the only variables that are differentiated and optimized.
///
/// `Params` is its own type, not a `Collection` with a name, so that the compiler enforces
/// the design: [`value_and_grad`](crate::value_and_grad) and the optimizers take `&Params`,
/// and nothing else converts into it implicitly. (It reads like a collection through
/// `Deref`.)
#[derive(Clone, Default, PartialEq)]
pub struct Params<A: Float>(Collection<A>);

impl<A: Float> Params<A> {
    /// Empty params.
    #[must_use]
    pub fn new() -> Self {
        Params(Collection::new())
    }

    /// Params from a collection of arrays (e.g. read from a checkpoint).
    #[must_use]
    pub fn from_collection(collection: Collection<A>) -> Self {
        Params(collection)
    }

    /// The underlying collection.
    #[must_use]
    pub fn into_collection(self) -> Collection<A> {
        self.0
    }

    /// Splits into `(selected, rest)` by a predicate on the path: e.g. the frozen part and
    /// the trainable part. Flax NNX: a `wrt` filter; optax: `masked`.
    ///
    /// ```
    /// use tapegrad::Params;
    /// use ndarray::ArrayD;
    /// let mut p = Params::<f64>::new();
    /// p.insert("Embed_0/embedding", ArrayD::zeros(vec![4, 2]));
    /// p.insert("Dense_0/kernel", ArrayD::zeros(vec![2, 3]));
    /// let (frozen, trainable) = p.partition(|path| path.starts_with("Embed_0/"));
    /// assert_eq!(frozen.paths().collect::<Vec<_>>(), ["Embed_0/embedding"]);
    /// assert_eq!(trainable.paths().collect::<Vec<_>>(), ["Dense_0/kernel"]);
    /// ```
    pub fn partition(&self, mut select: impl FnMut(&str) -> bool) -> (Params<A>, Params<A>) {
        let (mut selected, mut rest) = (Params::new(), Params::new());
        for (path, value) in self.0.iter_shared() {
            let side = if select(path) {
                &mut selected
            } else {
                &mut rest
            };
            side.0.insert_shared(path.clone(), Arc::clone(value));
        }
        (selected, rest)
    }

    /// The union of two disjoint sets of params (undoes [`Params::partition`]); an error
    /// naming the shared paths if they overlap.
    ///
    /// # Errors
    ///
    /// [`Error::KeyMismatch`] listing the paths both have.
    pub fn merged(&self, other: &Params<A>) -> Result<Params<A>> {
        require_disjoint("Params::merged", other.paths(), |p| self.contains(p))?;
        let mut out = self.clone();
        for (path, value) in other.0.iter_shared() {
            out.0.insert_shared(path.clone(), Arc::clone(value));
        }
        Ok(out)
    }
}

impl<A: Float> std::ops::Deref for Params<A> {
    type Target = Collection<A>;
    fn deref(&self) -> &Collection<A> {
        &self.0
    }
}

impl<A: Float> std::ops::DerefMut for Params<A> {
    fn deref_mut(&mut self) -> &mut Collection<A> {
        &mut self.0
    }
}

/// As for [`Collection`]: `[("w", arr1(&[1.0]))].into_iter().collect::<Params<f64>>()`.
impl<A: Float, K: Into<String>, V: IntoArray<A>> FromIterator<(K, V)> for Params<A> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Params(iter.into_iter().collect())
    }
}

/// `for (path, value) in &params`.
impl<'a, A: Float> IntoIterator for &'a Params<A> {
    type Item = (&'a str, &'a ArrayD<A>);
    type IntoIter = Iter<'a, A>;

    fn into_iter(self) -> Iter<'a, A> {
        (&self.0).into_iter()
    }
}

impl<A: Float> fmt::Debug for Params<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Params{:?}", self.0)
    }
}
