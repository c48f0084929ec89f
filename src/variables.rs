//! [`Variables`]: every collection of a model, `params` apart from the rest; the [`Updates`]
//! a mutable `apply` returns; and the [`Mutable`] filter that says what `apply` may write.

use std::collections::BTreeMap;
use std::fmt;

use ndarray::ArrayD;

use crate::collection::{Collection, Params};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::into_array::IntoArray;

/// The name of the one collection that is differentiated and optimized.
pub(crate) const PARAMS: &str = "params";

/// All of a model's variables, by collection: the [`Params`], and any number of other
/// collections (`batch_stats`, `state`, …) that are read as constants and written only by a
/// mutable `apply`. Flax: the `variables` dict that `init` returns.
///
/// Full names are `collection/path`, e.g. `batch_stats/BatchNorm_0/mean`; iteration is in
/// collection then path order.
#[derive(Clone, Default, PartialEq)]
pub struct Variables<A: Float> {
    params: Params<A>,
    others: BTreeMap<String, Collection<A>>,
}

/// An error unless `name` can name a collection: not empty, no `/` (the separator of full
/// names), not starting with `#` (reserved for optimizer state in checkpoints).
pub(crate) fn check_collection_name(op: &'static str, name: &str) -> Result<()> {
    let detail = if name.is_empty() {
        "it is empty"
    } else if name.contains('/') {
        "it contains '/', which separates a collection from a path"
    } else if name.starts_with('#') {
        "a leading '#' is reserved for optimizer state in checkpoints"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        op,
        name: name.to_string(),
        detail,
    })
}

impl<A: Float> Variables<A> {
    /// No variables.
    #[must_use]
    pub fn new() -> Self {
        Variables {
            params: Params::new(),
            others: BTreeMap::new(),
        }
    }

    /// The params.
    #[must_use]
    pub fn params(&self) -> &Params<A> {
        &self.params
    }

    /// The params, for an optimizer to update.
    pub fn params_mut(&mut self) -> &mut Params<A> {
        &mut self.params
    }

    /// A collection by name (`"params"` included, read-only).
    #[must_use]
    pub fn collection(&self, name: &str) -> Option<&Collection<A>> {
        if name == PARAMS {
            Some(&self.params)
        } else {
            self.others.get(name)
        }
    }

    /// The names of the non-empty collections, in order.
    pub fn collection_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.others.keys().map(String::as_str).collect();
        if !self.params.is_empty() {
            names.push(PARAMS);
        }
        names.sort_unstable();
        names
    }

    /// The collections other than params: the buffers, in PyTorch's terms.
    pub fn buffers(&self) -> impl Iterator<Item = (&str, &Collection<A>)> {
        self.others.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// A variable by full name, `collection/path`.
    #[must_use]
    pub fn get(&self, full_name: &str) -> Option<&ArrayD<A>> {
        let (collection, path) = full_name.split_once('/')?;
        self.collection(collection)?.get(path)
    }

    /// Every variable as `(full name, array)`, in collection then path order.
    pub fn iter(&self) -> impl Iterator<Item = (String, &ArrayD<A>)> {
        let mut all: Vec<(String, &ArrayD<A>)> = Vec::new();
        for name in self.collection_names() {
            let collection = self.collection(name).expect("listed names exist");
            all.extend(collection.iter().map(|(p, v)| (format!("{name}/{p}"), v)));
        }
        all.into_iter()
    }

    /// Inserts a variable into `collection` (which may be `"params"`). An invalid collection
    /// name (empty, containing `/`, or starting with `#`) is [`Error::InvalidName`], and
    /// nothing is inserted: `"a/b"` would be saved as `a/b/path` and come back from a
    /// checkpoint as collection `a`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for an invalid collection name; nothing is inserted.
    pub fn insert(
        &mut self,
        collection: &str,
        path: impl Into<String>,
        value: impl IntoArray<A>,
    ) -> Result<()> {
        check_collection_name("Variables::insert", collection)?;
        self.collection_entry(collection).insert(path, value);
        Ok(())
    }

    pub(crate) fn collection_entry(&mut self, name: &str) -> &mut Collection<A> {
        if name == PARAMS {
            &mut self.params
        } else {
            self.others.entry(name.to_string()).or_default()
        }
    }

    pub(crate) fn others(&self) -> &BTreeMap<String, Collection<A>> {
        &self.others
    }

    /// The variables of the sub-module at `prefix` (e.g. `"Dense_0"`), in every collection,
    /// with the prefix removed: what that sub-module's own `apply` takes.
    /// Flax: `{"params": variables["params"]["Dense_0"], ...}`.
    ///
    /// ```
    /// use tapegrad::{nn, ModuleExt, Tensor};
    /// let x = Tensor::from_vec(&[2, 3], vec![1.0f64; 6])?;
    /// let vars = nn::Mlp::new(&[4], 2).init(0, &x)?;
    /// let first = vars.subtree("Dense_0");
    /// assert_eq!(first.params().paths().collect::<Vec<_>>(), ["bias", "kernel"]);
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    #[must_use]
    pub fn subtree(&self, prefix: &str) -> Variables<A> {
        let prefix = format!("{}/", prefix.trim_end_matches('/'));
        let mut out = Variables::new();
        for name in self.collection_names() {
            let collection = self.collection(name).expect("listed names exist");
            for (path, value) in collection.iter_shared() {
                if let Some(rest) = path.strip_prefix(&prefix) {
                    out.collection_entry(name)
                        .insert_shared(rest.to_string(), value.clone());
                }
            }
        }
        out
    }

    /// Replaces the params (e.g. after loading a checkpoint), keeping the other collections.
    #[must_use]
    pub fn with_params(mut self, params: Params<A>) -> Self {
        self.params = params;
        self
    }

    /// Writes the collections a mutable `apply` returned into these variables: each
    /// updated variable replaces the stored one. All-or-nothing: if any updated variable
    /// changes shape, nothing is written and the error names it.
    /// Flax: `variables = {**variables, **updates}`.
    ///
    /// # Errors
    ///
    /// [`Error::VariableShape`] naming the first variable whose shape would change; nothing is
    /// written.
    pub fn merge(&mut self, updates: Updates<A>) -> Result<()> {
        for (collection, entries) in &updates.collections {
            for (path, value) in entries.iter() {
                if let Some(stored) = self.collection(collection).and_then(|c| c.get(path))
                    && stored.shape() != value.shape()
                {
                    return Err(Error::VariableShape {
                        collection: collection.clone(),
                        path: path.to_string(),
                        stored: stored.shape().into(),
                        expected: value.shape().into(),
                    });
                }
            }
        }
        for (collection, entries) in updates.collections {
            let target = self.collection_entry(&collection);
            for (path, value) in entries.iter_shared() {
                target.insert_shared(path.clone(), value.clone());
            }
        }
        Ok(())
    }
}

impl<A: Float> fmt::Debug for Variables<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, v)| (k, v.shape().to_vec())))
            .finish()
    }
}

/// The mutable collections after an `apply`, whole (updated variables and unchanged ones
/// alike), as Flax returns them. Never contains `params`.
#[derive(Clone, Default, PartialEq)]
pub struct Updates<A: Float> {
    pub(crate) collections: BTreeMap<String, Collection<A>>,
}

impl<A: Float> Updates<A> {
    /// A collection by name.
    #[must_use]
    pub fn collection(&self, name: &str) -> Option<&Collection<A>> {
        self.collections.get(name)
    }

    /// A variable by full name, `collection/path`.
    #[must_use]
    pub fn get(&self, full_name: &str) -> Option<&ArrayD<A>> {
        let (collection, path) = full_name.split_once('/')?;
        self.collections.get(collection)?.get(path)
    }

    /// The names of the collections returned.
    pub fn collection_names(&self) -> impl Iterator<Item = &str> {
        self.collections.keys().map(String::as_str)
    }

    /// Whether no collection was returned (nothing was mutable).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.collections.is_empty()
    }
}

impl<A: Float> fmt::Debug for Updates<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.collections.iter()).finish()
    }
}

/// Which collections an `apply` may write. Flax: the `mutable` argument of `apply`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mutable {
    /// Nothing is mutable (Flax `mutable=False`): any write is an error.
    #[default]
    Nothing,
    /// Only these collections (Flax `mutable=["batch_stats"]`).
    Only(Vec<String>),
    /// Every collection but these (Flax `mutable=DenyList(...)`).
    AllExcept(Vec<String>),
}

impl Mutable {
    /// Only the named collections.
    ///
    /// ```
    /// use tapegrad::Mutable;
    /// let m = Mutable::only(["batch_stats"]);
    /// assert!(m.allows("batch_stats") && !m.allows("state"));
    /// assert!(Mutable::all_except(["state"]).allows("batch_stats"));
    /// ```
    pub fn only<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Mutable::Only(names.into_iter().map(Into::into).collect())
    }

    /// Every collection except the named ones.
    pub fn all_except<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Mutable::AllExcept(names.into_iter().map(Into::into).collect())
    }

    /// Every collection.
    #[must_use]
    pub fn all() -> Self {
        Mutable::AllExcept(Vec::new())
    }

    /// Whether `collection` is named in a [`Mutable::only`] list: asked for by name, not
    /// merely allowed (as every collection is by [`Mutable::all`]). For what a module writes
    /// only on request, a report of its run rather than its state.
    ///
    /// ```
    /// use tapegrad::Mutable;
    /// assert!(Mutable::only(["batch_moments"]).names("batch_moments"));
    /// assert!(!Mutable::all().names("batch_moments"));
    /// ```
    #[must_use]
    pub fn names(&self, collection: &str) -> bool {
        matches!(self, Mutable::Only(names) if names.iter().any(|n| n == collection))
    }

    /// Whether `collection` may be written. Params are never written by `apply`.
    #[must_use]
    pub fn allows(&self, collection: &str) -> bool {
        collection != PARAMS
            && match self {
                Mutable::Nothing => false,
                Mutable::Only(names) => names.iter().any(|n| n == collection),
                Mutable::AllExcept(names) => !names.iter().any(|n| n == collection),
            }
    }
}
