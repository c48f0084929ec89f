//! The state shared by every scope of one `init` or `apply`: what is read, what is written.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use ndarray::ArrayD;

use crate::autodiff::{ParamTensors, is_under};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::replicas::ReplicaAxis;
use crate::tape::Tape;
use crate::variables::{Mutable, Variables};

/// Whether the model is being initialised or applied, with what it reads in each case.
pub(crate) enum Phase<'a, A: Float> {
    Init {
        seed: u64,
    },
    Apply {
        params: &'a ParamTensors<A>,
        variables: &'a Variables<A>,
    },
}

/// State shared by every scope of one `init` or `apply`.
pub(crate) struct Context<'a, A: Float> {
    pub(crate) phase: Phase<'a, A>,
    pub(crate) training: bool,
    pub(crate) mutable: &'a Mutable,
    pub(crate) rngs: &'a BTreeMap<String, u64>,
    /// The replica axes this run reduces over, by name.
    pub(crate) axes: &'a BTreeMap<String, ReplicaAxis>,
    /// Init: every variable created. Apply: every variable written.
    pub(crate) written: RefCell<Variables<A>>,
    /// How many times each `stream/path` has drawn an RNG, so repeated draws differ.
    pub(crate) rng_draws: RefCell<BTreeMap<String, u64>>,
    /// Whether this run is a block's forward run again for its backward pass: nothing may
    /// be written.
    pub(crate) recomputing: bool,
}

impl<'a, A: Float> Context<'a, A> {
    pub(crate) fn new(
        phase: Phase<'a, A>,
        training: bool,
        mutable: &'a Mutable,
        rngs: &'a BTreeMap<String, u64>,
        axes: &'a BTreeMap<String, ReplicaAxis>,
    ) -> Self {
        Context {
            phase,
            training,
            mutable,
            rngs,
            axes,
            written: RefCell::new(Variables::new()),
            rng_draws: RefCell::new(BTreeMap::new()),
            recomputing: false,
        }
    }

    /// The tape the params are leaves of, if this run records one.
    pub(crate) fn tape(&self) -> Option<&'a Tape<A>> {
        match self.phase {
            Phase::Apply { params, .. } => params.tape(),
            Phase::Init { .. } => None,
        }
    }

    /// Every non-params variable under `prefix` as this run sees it now (written in it,
    /// else stored), full paths kept: what a block at `prefix` can read.
    pub(crate) fn view_under(&self, prefix: &str) -> Variables<A> {
        let mut view = Variables::new();
        let stored = match &self.phase {
            Phase::Init { .. } => None,
            Phase::Apply { variables, .. } => Some(*variables),
        };
        let written = self.written.borrow();
        for source in stored.into_iter().chain([&*written]) {
            for (name, collection) in source.others() {
                for (path, value) in collection.iter_shared() {
                    if is_under(path, prefix) {
                        view.collection_entry(name)
                            .insert_shared(path.clone(), Arc::clone(value));
                    }
                }
            }
        }
        view
    }

    /// Keeps what another run of a block wrote, as if this run had written it.
    pub(crate) fn absorb(&self, writes: Variables<A>) {
        let mut written = self.written.borrow_mut();
        for (name, collection) in writes.others() {
            let target = written.collection_entry(name);
            for (path, value) in collection.iter_shared() {
                target.insert_shared(path.clone(), Arc::clone(value));
            }
        }
    }

    /// Whether a module may write `collection` in this run.
    pub(crate) fn may_write(&self, collection: &str) -> bool {
        !self.recomputing && (self.is_initializing() || self.mutable.allows(collection))
    }

    /// Writes `value` at `collection`/`path`, or the error saying why this run may not.
    pub(crate) fn write(&self, collection: &str, path: &str, value: ArrayD<A>) -> Result<()> {
        if self.recomputing {
            return Err(Error::WriteWhileRecomputing {
                collection: collection.to_string(),
                path: path.to_string(),
            });
        }
        if !self.may_write(collection) {
            return Err(Error::ImmutableCollection {
                collection: collection.to_string(),
                path: path.to_string(),
            });
        }
        self.written
            .borrow_mut()
            .collection_entry(collection)
            .insert(path.to_string(), value);
        Ok(())
    }

    pub(crate) fn is_initializing(&self) -> bool {
        matches!(self.phase, Phase::Init { .. })
    }

    /// The current value of a non-params variable: written in this run, else stored.
    pub(crate) fn read(&self, collection: &str, path: &str) -> Option<Arc<ArrayD<A>>> {
        let written = self.written.borrow();
        if let Some(v) = written
            .collection(collection)
            .and_then(|c| c.get_shared(path))
        {
            return Some(v.clone());
        }
        match &self.phase {
            Phase::Init { .. } => None,
            Phase::Apply { variables, .. } => variables
                .collection(collection)
                .and_then(|c| c.get_shared(path))
                .cloned(),
        }
    }
}

/// A stored or written value against the shape a module expects: an error naming both.
pub(crate) fn check_shape<A: Float>(
    collection: &str,
    path: &str,
    stored: &ArrayD<A>,
    expected: &[usize],
) -> Result<()> {
    if stored.shape() == expected {
        Ok(())
    } else {
        Err(Error::VariableShape {
            collection: collection.to_string(),
            path: path.to_string(),
            stored: stored.shape().into(),
            expected: expected.into(),
        })
    }
}
