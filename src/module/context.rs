//! The state shared by every scope of one `init` or `apply`: what is read, what is written.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use ndarray::ArrayD;

use crate::autodiff::ParamTensors;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::replicas::ReplicaAxis;
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
        }
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
