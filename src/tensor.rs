//! `Tensor<A>`: a shared array value and, when tracked, its node on a tape.

use std::fmt;
use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::into_array::IntoArray;
use crate::tape::{Operand, Tape, Traced};

/// A value (an `ArrayD<A>`, shared, never copied when a tensor is cloned) and, if tracked,
/// its node on a [`Tape`].
///
/// A tensor is *tracked* when it is a leaf of a tape (a parameter being differentiated) or
/// the result of an op with at least one tracked input. Everything else is a *constant*:
/// inputs, labels, buffers such as BatchNorm's running statistics, and the result of an op
/// on constants alone. Constants carry no node and cost the tape nothing.
///
/// ```
/// use tapegrad::Tensor;
/// use ndarray::arr2;
///
/// let x = Tensor::constant(arr2(&[[1.0f64, -2.0], [3.0, -4.0]]));
/// let y = x.relu().sum_all();
/// assert!(!y.is_tracked());
/// assert_eq!(y.item()?, 4.0);
/// # Ok::<(), tapegrad::Error>(())
/// ```
pub struct Tensor<A: Float> {
    value: Arc<ArrayD<A>>,
    node: Option<(Tape<A>, usize)>,
    /// Where a constant came from (a variable's full name), shown when the tape is printed.
    label: Option<Arc<str>>,
}

impl<A: Float> Clone for Tensor<A> {
    fn clone(&self) -> Self {
        Tensor {
            value: Arc::clone(&self.value),
            node: self.node.clone(),
            label: self.label.clone(),
        }
    }
}

impl<A: Float> Tensor<A> {
    /// A constant: no node, no gradient. PyTorch: a tensor with `requires_grad=False`.
    /// `value` is any ndarray array, view or reference to one (see [`IntoArray`]).
    #[must_use]
    pub fn constant(value: impl IntoArray<A>) -> Self {
        Self::from_shared(Arc::new(value.into_array()))
    }

    /// A 0-d constant.
    pub fn scalar(x: A) -> Self {
        Self::constant(ArrayD::from_elem(IxDyn(&[]), x))
    }

    /// A constant from a shape and row-major data; an error if the lengths differ.
    ///
    /// ```
    /// let t = tapegrad::Tensor::from_vec(&[2, 2], vec![1.0f32, 2.0, 3.0, 4.0])?;
    /// assert_eq!(t.shape(), &[2, 2]);
    /// assert!(tapegrad::Tensor::from_vec(&[3], vec![1.0f32]).is_err());
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `data.len()` is not the product of `shape`.
    pub fn from_vec(shape: &[usize], data: Vec<A>) -> Result<Self> {
        let n = data.len();
        ArrayD::from_shape_vec(IxDyn(shape), data)
            .map(Self::constant)
            .map_err(|_| Error::invalid("from_vec", shape, format!("{n} values given")))
    }

    pub(crate) fn from_shared(value: Arc<ArrayD<A>>) -> Self {
        Tensor {
            value,
            node: None,
            label: None,
        }
    }

    /// A traced value of `tape` as a tensor: tracked if it has a node.
    pub(crate) fn from_traced(tape: &Tape<A>, traced: Traced<A>) -> Self {
        match traced.node {
            Some(id) => Self::tracked(traced.value, tape.clone(), id),
            None => Self::from_shared(traced.value),
        }
    }

    /// This tensor as a traced value of `tape`: an error if it is tracked on another tape.
    pub(crate) fn traced_on(&self, tape: &Tape<A>, op: &'static str) -> Result<Traced<A>> {
        match &self.node {
            Some((on, _)) if !on.same_as(tape) => Err(Error::DifferentTapes { op }),
            _ => Ok(Traced {
                value: self.shared_value(),
                node: self.node_id(),
            }),
        }
    }

    pub(crate) fn tracked(value: Arc<ArrayD<A>>, tape: Tape<A>, id: usize) -> Self {
        Tensor {
            value,
            node: Some((tape, id)),
            label: None,
        }
    }

    /// The same tensor labelled `label`: a constant's label is shown where it enters the tape
    /// (in [`Tape::to_dot`] and when a tape is printed), and constants computed from it keep
    /// it. tapegrad labels the variables it hands out with their full names.
    #[must_use]
    pub fn with_label(mut self, label: impl Into<Arc<str>>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// The label, if any.
    #[must_use]
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    pub(crate) fn operand(&self) -> Operand {
        match &self.node {
            Some((_, id)) => Operand::Node(*id),
            None => Operand::Constant(self.label.clone()),
        }
    }

    /// The value.
    #[must_use]
    pub fn value(&self) -> &ArrayD<A> {
        &self.value
    }

    /// The value as a shared handle (no copy).
    #[must_use]
    pub fn shared_value(&self) -> Arc<ArrayD<A>> {
        Arc::clone(&self.value)
    }

    /// The value's shape.
    #[must_use]
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    /// The number of dimensions.
    #[must_use]
    pub fn ndim(&self) -> usize {
        self.value.ndim()
    }

    /// The number of elements.
    #[must_use]
    pub fn len(&self) -> usize {
        self.value.len()
    }

    /// Whether the tensor has no elements.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// Whether the tensor has a node on a tape.
    #[must_use]
    pub fn is_tracked(&self) -> bool {
        self.node.is_some()
    }

    /// The tape this tensor is recorded on, if tracked.
    #[must_use]
    pub fn tape(&self) -> Option<&Tape<A>> {
        self.node.as_ref().map(|(tape, _)| tape)
    }

    /// The node's id on its tape, if tracked.
    #[must_use]
    pub fn node_id(&self) -> Option<usize> {
        self.node.as_ref().map(|(_, id)| *id)
    }

    pub(crate) fn node(&self) -> Option<(&Tape<A>, usize)> {
        self.node.as_ref().map(|(tape, id)| (tape, *id))
    }

    /// The single element of a one-element tensor. PyTorch: `.item()`.
    ///
    /// # Errors
    ///
    /// [`Error::NotScalar`] if the tensor has more than one element.
    pub fn item(&self) -> Result<A> {
        match self.value.iter().next() {
            Some(&x) if self.len() == 1 => Ok(x),
            _ => Err(Error::NotScalar {
                op: "item",
                shape: self.shape().into(),
            }),
        }
    }

    /// The same value as a constant: gradients stop here. PyTorch: `.detach()`;
    /// JAX: `lax.stop_gradient`.
    #[must_use]
    pub fn detach(&self) -> Tensor<A> {
        Self::from_shared(self.shared_value())
    }
}

// Defined here rather than in tape.rs so that the tape knows nothing of tensors: tape.rs
// sits below this module, which builds on it.
impl<A: Float> Tape<A> {
    /// A tracked leaf holding `value`: what the gradient is taken with respect to.
    /// `name` labels it when the tape is printed (tapegrad uses the param's path).
    /// `value` is any ndarray array, view or reference to one (see [`IntoArray`]).
    #[must_use]
    pub fn leaf(&self, name: impl Into<String>, value: impl IntoArray<A>) -> Tensor<A> {
        self.leaf_shared(Some(name.into()), Arc::new(value.into_array()))
    }

    pub(crate) fn leaf_shared(&self, name: Option<String>, value: Arc<ArrayD<A>>) -> Tensor<A> {
        let id = self.push_leaf(name, value.raw_dim());
        Tensor::tracked(value, self.clone(), id)
    }
}

impl<A: Float> fmt::Debug for Tensor<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.node_id() {
            Some(id) => write!(f, "Tensor(%{id}, {:?})", self.value),
            None => write!(f, "Tensor(const, {:?})", self.value),
        }
    }
}

impl<A: Float> fmt::Display for Tensor<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.value, f)
    }
}
