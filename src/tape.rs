//! The tape: a Wengert list of the operations applied to tracked tensors.
//!
//! Nodes are appended as ops run, so a node's id is its index and append order is a
//! topological order: every node comes after its inputs. Backward is therefore one walk in
//! reverse from the output, calling each node's vector-Jacobian product (VJP) and
//! accumulating (`+=`) into its inputs' gradients, so a value used twice gets both
//! contributions.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;

use ndarray::{ArrayD, Dimension, IxDyn};

use crate::shape::{broadcast_shape, sum_to_shape};
use crate::{Error, Float, Result, Tensor};

/// A vector-Jacobian product: given the gradient of the output and which inputs want a
/// gradient, returns one gradient per input (`None` where not wanted). A returned gradient
/// may have the op's broadcast output shape; the tape sums it back to the input's shape.
///
/// The output's gradient is passed by value: backward has consumed it, so a rule may reuse
/// its buffer (an elementwise rule multiplies it in place instead of allocating).
pub(crate) type Vjp<A> = Box<dyn Fn(ArrayD<A>, &[bool]) -> Vec<Option<ArrayD<A>>>>;

pub(crate) enum NodeKind<A: Float> {
    /// A tensor we differentiate with respect to (a parameter), optionally named by its path.
    Leaf { name: Option<String> },
    /// The result of an op, with one operand per input of the op.
    Op {
        op: &'static str,
        inputs: Vec<Operand>,
        vjp: Vjp<A>,
    },
}

/// An input of a recorded op: another node, or a constant, which has no node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// The node with this id.
    Node(usize),
    /// A constant, labelled with where it came from when known: a variable's full name such
    /// as `batch_stats/BatchNorm_0/mean` (also for constants computed from it), or a label
    /// given with [`Tensor::with_label`].
    Constant(Option<Arc<str>>),
}

impl Operand {
    /// The node id, if the operand is a node.
    pub fn node(&self) -> Option<usize> {
        match self {
            Operand::Node(id) => Some(*id),
            Operand::Constant(_) => None,
        }
    }
}

pub(crate) struct Node<A: Float> {
    pub(crate) kind: NodeKind<A>,
    /// `IxDyn` keeps up to four dimensions inline: no allocation per node.
    pub(crate) shape: IxDyn,
}

/// A Wengert list recording operations on tracked tensors.
///
/// Cloning a `Tape` gives another handle to the same list. Most users never touch a tape:
/// [`value_and_grad`](crate::value_and_grad) makes one, turns the params into its leaves,
/// and drops it when the gradients are out. It is public for teaching and for custom use:
///
/// ```
/// use tapegrad::{Tape, Tensor};
/// use ndarray::arr1;
///
/// let tape = Tape::<f64>::new();
/// let x = tape.leaf("x", arr1(&[1.0, 2.0, 3.0]).into_dyn());
/// let c = Tensor::constant(arr1(&[10.0, 10.0, 10.0]).into_dyn());
/// let y = x.mul(&x)?.add(&c)?.sum_all(); // sum(x^2 + 10)
/// assert_eq!(tape.len(), 4); // leaf, mul, add, sum: the constant has no node
/// println!("{tape}");
///
/// let grads = y.backward()?;
/// assert_eq!(grads.get(&x).unwrap().as_slice().unwrap(), &[2.0, 4.0, 6.0]); // 2x
/// # Ok::<(), tapegrad::Error>(())
/// ```
pub struct Tape<A: Float> {
    nodes: Rc<RefCell<Vec<Node<A>>>>,
}

impl<A: Float> Clone for Tape<A> {
    fn clone(&self) -> Self {
        Tape {
            nodes: Rc::clone(&self.nodes),
        }
    }
}

impl<A: Float> Default for Tape<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Float> Tape<A> {
    /// An empty tape.
    pub fn new() -> Self {
        Tape {
            nodes: Rc::new(RefCell::new(Vec::new())),
        }
    }

    /// A tracked leaf holding `value`: what the gradient is taken with respect to.
    /// `name` labels it when the tape is printed (tapegrad uses the param's path).
    pub fn leaf(&self, name: impl Into<String>, value: ArrayD<A>) -> Tensor<A> {
        self.leaf_shared(Some(name.into()), std::sync::Arc::new(value))
    }

    pub(crate) fn leaf_shared(
        &self,
        name: Option<String>,
        value: std::sync::Arc<ArrayD<A>>,
    ) -> Tensor<A> {
        let id = self.push(Node {
            kind: NodeKind::Leaf { name },
            shape: value.raw_dim(),
        });
        Tensor::tracked(value, self.clone(), id)
    }

    /// The number of nodes recorded (leaves included).
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether two handles point to the same tape.
    pub fn same_as(&self, other: &Tape<A>) -> bool {
        Rc::ptr_eq(&self.nodes, &other.nodes)
    }

    /// One entry per node, in recording order: what the node is, its inputs and its shape.
    pub fn entries(&self) -> Vec<TapeEntry> {
        self.nodes
            .borrow()
            .iter()
            .enumerate()
            .map(|(id, node)| match &node.kind {
                NodeKind::Leaf { name } => TapeEntry {
                    id,
                    op: "leaf",
                    name: name.clone(),
                    inputs: Vec::new(),
                    shape: node.shape.slice().to_vec(),
                },
                NodeKind::Op { op, inputs, .. } => TapeEntry {
                    id,
                    op,
                    name: None,
                    inputs: inputs.clone(),
                    shape: node.shape.slice().to_vec(),
                },
            })
            .collect()
    }

    pub(crate) fn push(&self, node: Node<A>) -> usize {
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(node);
        nodes.len() - 1
    }

    /// Reverse-mode sweep from node `root`, seeded with `seed` (the gradient of the root).
    pub(crate) fn backward_from(&self, root: usize, seed: ArrayD<A>) -> Result<Gradients<A>> {
        let nodes = self.nodes.borrow();
        let mut grads: Vec<Option<ArrayD<A>>> = Vec::new();
        grads.resize_with(root + 1, || None);
        grads[root] = Some(seed);
        let mut needs: Vec<bool> = Vec::new(); // reused: no allocation per node
        for id in (0..=root).rev() {
            let NodeKind::Op { op, inputs, vjp } = &nodes[id].kind else {
                continue; // a leaf keeps its gradient: that is the result
            };
            // An intermediate gradient is consumed here and released.
            let Some(g) = grads[id].take() else { continue };
            needs.clear();
            needs.extend(inputs.iter().map(|i| i.node().is_some()));
            for (input, contribution) in inputs.iter().zip(vjp(g, &needs)) {
                if let (Operand::Node(parent), Some(c)) = (input, contribution) {
                    accumulate(op, &mut grads[*parent], c, nodes[*parent].shape.slice())?;
                }
            }
        }
        Ok(Gradients {
            tape: self.clone(),
            grads,
        })
    }
}

/// Adds a contribution into a node's gradient slot, reducing a broadcast first: the single
/// place where gradients are summed back to shape. A contribution that is not a broadcast of
/// the node's shape can only come from a faulty VJP (a user's `custom_op`): an error naming
/// the op.
fn accumulate<A: Float>(
    op: &'static str,
    slot: &mut Option<ArrayD<A>>,
    contribution: ArrayD<A>,
    shape: &[usize],
) -> Result<()> {
    if contribution.shape() != shape
        && broadcast_shape(op, shape, contribution.shape())
            .ok()
            .as_deref()
            != Some(contribution.shape())
    {
        return Err(Error::incompatible(
            op,
            shape,
            contribution.shape(),
            "the VJP returned a gradient that does not reduce to its input's shape",
        ));
    }
    let contribution = sum_to_shape(contribution, shape);
    match slot {
        Some(existing) => *existing += &contribution,
        None => *slot = Some(contribution),
    }
    Ok(())
}

/// One node of a tape, as [`Tape::entries`] describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapeEntry {
    /// The node's id: its index on the tape.
    pub id: usize,
    /// The op's name (`"leaf"` for a leaf).
    pub op: &'static str,
    /// A leaf's name (a param's path), if it has one.
    pub name: Option<String>,
    /// The op's inputs: nodes, or constants with where they came from.
    pub inputs: Vec<Operand>,
    /// The shape of the node's value.
    pub shape: Vec<usize>,
}

impl fmt::Display for TapeEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{} = {}", self.id, self.op)?;
        if let Some(name) = &self.name {
            write!(f, " \"{name}\"")?;
        }
        if !self.inputs.is_empty() {
            let args: Vec<String> = self
                .inputs
                .iter()
                .map(|input| match input {
                    Operand::Node(id) => format!("%{id}"),
                    Operand::Constant(Some(label)) => format!("const \"{label}\""),
                    Operand::Constant(None) => "const".to_string(),
                })
                .collect();
            write!(f, "({})", args.join(", "))?;
        }
        write!(f, " : {:?}", self.shape)
    }
}

impl<A: Float> fmt::Display for Tape<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for entry in self.entries() {
            writeln!(f, "{entry}")?;
        }
        Ok(())
    }
}

impl<A: Float> fmt::Debug for Tape<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tape({} nodes)", self.len())
    }
}

/// The result of a backward pass: the gradient of the output with respect to each leaf it
/// reached. Intermediate gradients are released during the pass, as in PyTorch.
pub struct Gradients<A: Float> {
    tape: Tape<A>,
    grads: Vec<Option<ArrayD<A>>>,
}

impl<A: Float> Gradients<A> {
    /// The gradients of a constant output: with respect to nothing.
    pub(crate) fn none() -> Self {
        Gradients {
            tape: Tape::new(),
            grads: Vec::new(),
        }
    }

    /// The gradient with respect to leaf `x`, or `None` if `x` is a constant, belongs to
    /// another tape, is not a leaf, or was not reached (the output does not depend on it).
    pub fn get(&self, x: &Tensor<A>) -> Option<&ArrayD<A>> {
        let (tape, id) = x.node()?;
        if !tape.same_as(&self.tape) {
            return None;
        }
        self.grads.get(id)?.as_ref()
    }

    /// The gradient with respect to leaf `x`, zeros if it was not reached; an error if `x`
    /// is not on this tape.
    pub fn wrt(&self, x: &Tensor<A>) -> Result<ArrayD<A>> {
        match x.node() {
            Some((tape, _)) if tape.same_as(&self.tape) => Ok(self
                .get(x)
                .cloned()
                .unwrap_or_else(|| ArrayD::zeros(x.shape()))),
            _ => Err(Error::DifferentTapes {
                op: "Gradients::wrt",
            }),
        }
    }

    /// Moves the gradient of the leaf with node `id` out (zeros of `shape` if not reached).
    pub(crate) fn take(&mut self, id: usize, shape: &[usize]) -> ArrayD<A> {
        self.grads
            .get_mut(id)
            .and_then(Option::take)
            .unwrap_or_else(|| ArrayD::zeros(shape))
    }
}
