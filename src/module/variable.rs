//! `Variable`: a handle on one non-params variable, read as a constant, written with a value.

use std::sync::Arc;

use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::into_array::IntoArray;
use crate::kernels::simd;
use crate::module::context::{Context, check_shape};
use crate::tensor::Tensor;

/// A handle on one non-params variable, from [`Scope::variable`](crate::Scope::variable).
///
/// It reads as a constant [`Tensor`] (no node, no gradient) and is written with a plain
/// array: a written value is detached by type, so the tape has no edge into a buffer.
///
/// ```compile_fail,E0308
/// # use tapegrad::{Tensor, Variable};
/// // A tracked tensor cannot be written into a buffer: `set` takes an array.
/// fn write(v: &Variable<'_, f64>, t: Tensor<f64>) { v.set(t); }
/// ```
pub struct Variable<'a, A: Float> {
    pub(crate) ctx: &'a Context<'a, A>,
    /// The full name, built once: every read labels its constant with it.
    pub(crate) label: Arc<str>,
    pub(crate) collection: String,
    pub(crate) path: String,
}

impl<A: Float> Variable<'_, A> {
    /// The current value (as written earlier in this run, else as stored), as a constant.
    #[must_use]
    pub fn value(&self) -> Tensor<A> {
        Tensor::from_shared(self.current()).with_label(Arc::clone(&self.label))
    }

    fn current(&self) -> Arc<ArrayD<A>> {
        self.ctx
            .read(&self.collection, &self.path)
            .expect("a variable handle exists only for a variable that exists")
    }

    /// Writes a new value. An error, with nothing written, if the collection is not mutable
    /// in this `apply` ([`Error::ImmutableCollection`]) or if the shape differs from the
    /// stored one. In `init` every collection is writable.
    ///
    /// # Errors
    ///
    /// [`Error::ImmutableCollection`] or
    /// [`Error::VariableShape`], with nothing written.
    pub fn set(&self, value: impl IntoArray<A>) -> Result<()> {
        let value = value.into_array();
        if self.is_mutable() {
            check_shape(&self.collection, &self.path, &value, self.current().shape())?;
        }
        self.ctx.write(&self.collection, &self.path, value)
    }

    /// [`Variable::set`], refusing a value that holds NaN or an infinity
    /// ([`Error::NonFinite`] naming the variable, nothing written): for state that must stay
    /// finite, such as running statistics. `op` names the layer in the error.
    ///
    /// # Errors
    ///
    /// [`Error::NonFinite`], or what [`Variable::set`] returns; nothing is
    /// written.
    pub fn set_finite(&self, op: &'static str, value: impl IntoArray<A>) -> Result<()> {
        let value = value.into_array();
        self.check_finite(op, &value)?;
        self.set(value)
    }

    /// An error naming the variable if `value` holds NaN or an infinity: for a layer that
    /// writes several variables and checks them all before it writes any.
    ///
    /// # Errors
    ///
    /// [`Error::NonFinite`] naming `op` and the variable.
    pub fn check_finite(&self, op: &'static str, value: &ArrayD<A>) -> Result<()> {
        if simd::array_all_finite(value) {
            Ok(())
        } else {
            Err(Error::NonFinite {
                op,
                name: format!("the new value of \"{}\"", self.label),
            })
        }
    }

    /// Whether [`Variable::set`] may write.
    #[must_use]
    pub fn is_mutable(&self) -> bool {
        self.ctx.may_write(&self.collection)
    }

    /// The collection's name.
    #[must_use]
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// The path inside the collection.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }
}
