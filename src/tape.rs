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
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{ArrayD, Dimension, IxDyn};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::shape::{broadcast_shape, sum_to_shape};

/// What the tape keeps of an op to differentiate it, reading the values the op saved (its
/// inputs, its output, whatever its derivative needs):
///
/// * [`Rule::vjp`], the vector-Jacobian product on arrays: given the gradient of the output
///   and which inputs want a gradient, one gradient per input (`None` where not wanted). A
///   returned gradient may have the op's broadcast output shape; the tape sums it back to the
///   input's shape. The output's gradient is passed by value: backward has consumed it, so a
///   rule may reuse its buffer. This is all a first-order backward pass calls.
/// * [`Rule::vjp_recorded`], the same product computed by ops, so that a backward pass can be
///   recorded on the tape and differentiated again (`grad_of`, `hvp`, `hessian`).
/// * [`Rule::jvp`], the Jacobian-vector product: the output's tangent from the inputs'
///   tangents (`None` for an input with none, a zero tangent), for forward mode.
///
/// The last two return `None` when the op has no such rule (a `custom_op` given a VJP
/// alone): the caller turns that into an error naming the op and the order.
///
/// The rule is behind an `Rc` so that a backward pass can call it without holding the tape
/// borrowed (a rule may record on the tape) and then drop it, releasing what it saved.
pub(crate) trait Rule<A: Float> {
    fn vjp(&self, g: ArrayD<A>, needs: &[bool]) -> Result<Vec<Option<ArrayD<A>>>>;

    fn vjp_recorded(
        &self,
        tape: &Tape<A>,
        site: &Site<'_>,
        g: Traced<A>,
    ) -> Option<Result<Vec<Option<Traced<A>>>>>;

    fn jvp(&self, tangents: &[Option<&ArrayD<A>>]) -> Option<Result<ArrayD<A>>>;
}

/// A value of the computation as the tape sees it: an array, and its node if it has one
/// (a tensor without its label; the tape sits below tensors and does not name them).
pub(crate) struct Traced<A> {
    pub(crate) value: Arc<ArrayD<A>>,
    pub(crate) node: Option<usize>,
}

/// Where an op sits on the tape: its inputs and its own node, for a rule that links the
/// values it saved back to their nodes.
pub(crate) struct Site<'a> {
    pub(crate) inputs: &'a [Operand],
    pub(crate) node: usize,
}

pub(crate) type SharedRule<A> = Rc<dyn Rule<A>>;

/// A node as a walk over the tape sees it.
pub(crate) enum NodeView<A: Float> {
    Leaf,
    Op {
        op: &'static str,
        inputs: Vec<Operand>,
        rule: Option<SharedRule<A>>,
    },
}

pub(crate) enum NodeKind<A: Float> {
    /// A tensor we differentiate with respect to (a parameter), optionally named by its path.
    Leaf { name: Option<String> },
    /// The result of an op, with one operand per input of the op. `rule` is `None` once a
    /// backward pass has run it and released what it saved.
    Op {
        op: &'static str,
        inputs: Vec<Operand>,
        rule: Option<SharedRule<A>>,
    },
}

/// An input of a recorded op: another node, or a constant, which has no node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// The node with this id.
    Node(usize),
    /// A constant, labelled with where it came from when known: a variable's full name such
    /// as `batch_stats/BatchNorm_0/mean` (also for constants computed from it), or a label
    /// given with [`Tensor::with_label`](crate::Tensor::with_label).
    Constant(Option<Arc<str>>),
}

impl Operand {
    /// The node id, if the operand is a node.
    #[must_use]
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

/// Whether a backward pass releases what each node saved once its VJP has run (PyTorch's
/// default), or keeps it so that the tape can be walked again (`retain_graph=True`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Saved {
    Release,
    Retain,
}

/// The gradient store of one backward pass, indexed by node id.
pub(crate) type GradientSlots<A> = Vec<Option<ArrayD<A>>>;

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
/// let x = tape.leaf("x", arr1(&[1.0, 2.0, 3.0]));
/// let c = Tensor::constant(arr1(&[10.0, 10.0, 10.0]));
/// let y = x.mul(&x)?.add(&c)?.sum_all(); // sum(x^2 + 10)
/// assert_eq!(tape.len(), 4); // leaf, mul, add, sum: the constant has no node
/// println!("{tape}");
///
/// let grads = y.backward()?;
/// assert_eq!(grads.get(&x).unwrap().as_slice().unwrap(), &[2.0, 4.0, 6.0]); // 2x
/// # Ok::<(), tapegrad::Error>(())
/// ```
pub struct Tape<A: Float> {
    /// Unique per tape for the life of the process: gradients remember which tape they came
    /// from by this id, not by a handle that would keep the tape's saved values alive.
    id: u64,
    nodes: Rc<RefCell<Vec<Node<A>>>>,
    /// Which module recorded which nodes: each span starts at a node id and runs to the next
    /// span's start. A module call opens a span and closes it by opening its caller's again.
    modules: Rc<RefCell<Vec<ModuleSpan>>>,
}

/// The nodes from `first` on, up to the next span, were recorded by the module at `path`.
struct ModuleSpan {
    first: usize,
    path: String,
}

impl<A: Float> Clone for Tape<A> {
    fn clone(&self) -> Self {
        Tape {
            id: self.id,
            nodes: Rc::clone(&self.nodes),
            modules: Rc::clone(&self.modules),
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
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Tape {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            nodes: Rc::new(RefCell::new(Vec::new())),
            modules: Rc::new(RefCell::new(Vec::new())),
        }
    }

    /// Nodes recorded from now on are recorded by the module at `path` (`""`: outside any
    /// sub-module). [`Scope::call`](crate::Scope::call) says so around a sub-module's
    /// `forward`; [`TapeEntry::module`] and the pictures read it.
    pub(crate) fn enter_module(&self, path: &str) {
        let first = self.len();
        let mut modules = self.modules.borrow_mut();
        match modules.last_mut() {
            Some(last) if last.path == path => {}
            // Nothing was recorded in the span being closed: it is replaced.
            Some(last) if last.first == first => path.clone_into(&mut last.path),
            _ => modules.push(ModuleSpan {
                first,
                path: path.to_string(),
            }),
        }
    }

    /// The number of nodes recorded (leaves included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }

    /// Whether nothing has been recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether two handles point to the same tape.
    #[must_use]
    pub fn same_as(&self, other: &Tape<A>) -> bool {
        self.id == other.id
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// One entry per node, in recording order: what the node is, its inputs, its shape and
    /// the module that recorded it.
    #[must_use]
    pub fn entries(&self) -> Vec<TapeEntry> {
        let modules = self.modules.borrow();
        let mut spans = modules.iter().peekable();
        let mut module: &str = "";
        self.nodes
            .borrow()
            .iter()
            .enumerate()
            .map(|(id, node)| {
                while let Some(span) = spans.next_if(|span| span.first <= id) {
                    module = &span.path;
                }
                let (op, name, inputs) = match &node.kind {
                    NodeKind::Leaf { name } => ("leaf", name.clone(), Vec::new()),
                    NodeKind::Op { op, inputs, .. } => (*op, None, inputs.clone()),
                };
                TapeEntry {
                    id,
                    op,
                    name,
                    inputs,
                    shape: node.shape.slice().to_vec(),
                    module: module.to_string(),
                }
            })
            .collect()
    }

    /// Appends a leaf of `shape`, named `name`; returns its id.
    pub(crate) fn push_leaf(&self, name: Option<String>, shape: IxDyn) -> usize {
        self.push(Node {
            kind: NodeKind::Leaf { name },
            shape,
        })
    }

    /// Appends the result of `op` on `inputs`, of `shape`, with its VJP; returns its id.
    pub(crate) fn push_op(
        &self,
        op: &'static str,
        inputs: Vec<Operand>,
        shape: IxDyn,
        rule: SharedRule<A>,
    ) -> usize {
        self.push(Node {
            kind: NodeKind::Op {
                op,
                inputs,
                rule: Some(rule),
            },
            shape,
        })
    }

    /// Node `id` as a walk sees it; an op's rule is shared, not taken.
    pub(crate) fn view(&self, id: usize) -> NodeView<A> {
        match &self.nodes.borrow()[id].kind {
            NodeKind::Leaf { .. } => NodeView::Leaf,
            NodeKind::Op { op, inputs, rule } => NodeView::Op {
                op,
                inputs: inputs.clone(),
                rule: rule.clone(),
            },
        }
    }

    /// The shape of node `id`'s value.
    pub(crate) fn shape_of(&self, id: usize) -> IxDyn {
        self.nodes.borrow()[id].shape.clone()
    }

    fn push(&self, node: Node<A>) -> usize {
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(node);
        nodes.len() - 1
    }

    /// Reverse-mode sweep from node `root`, seeded with `seed` (the gradient of the root).
    /// Returns the gradient slots: the leaves' gradients, every intermediate one released.
    ///
    /// The tape is borrowed only between VJPs, never while one runs, so a VJP may record on
    /// it (a user's `custom_op` that makes a leaf). With [`Saved::Release`], each node's VJP
    /// (and with it everything the op saved) is dropped as soon as it has run, so memory
    /// falls as the pass goes; walking the tape again is then [`Error::BackwardTwice`].
    pub(crate) fn backward_from(
        &self,
        root: usize,
        seed: ArrayD<A>,
        saved: Saved,
    ) -> Result<GradientSlots<A>> {
        let mut grads: GradientSlots<A> = Vec::new();
        grads.resize_with(root + 1, || None);
        grads[root] = Some(seed);
        let mut needs: Vec<bool> = Vec::new(); // reused: no allocation per node
        for id in (0..=root).rev() {
            let (op, rule) = {
                let mut nodes = self.nodes.borrow_mut();
                let NodeKind::Op { op, inputs, rule } = &mut nodes[id].kind else {
                    continue; // a leaf keeps its gradient: that is the result
                };
                if grads[id].is_none() {
                    continue; // the output does not depend on this node
                }
                let op = *op;
                needs.clear();
                needs.extend(inputs.iter().map(|i| i.node().is_some()));
                let rule = match saved {
                    Saved::Release => rule.take(),
                    Saved::Retain => rule.clone(),
                };
                (op, rule.ok_or(Error::BackwardTwice { op, node: id })?)
            };
            // An intermediate gradient is consumed here and released.
            let g = grads[id].take().expect("checked above");
            let contributions = rule.vjp(g, &needs)?;
            drop(rule); // with Saved::Release, the op's saved values go here
            let nodes = self.nodes.borrow();
            let NodeKind::Op { inputs, .. } = &nodes[id].kind else {
                unreachable!("node {id} was an op a moment ago");
            };
            for (input, contribution) in inputs.iter().zip(contributions) {
                if let (Operand::Node(parent), Some(c)) = (input, contribution) {
                    accumulate(op, &mut grads[*parent], c, nodes[*parent].shape.slice())?;
                }
            }
        }
        Ok(grads)
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
    /// The path of the module whose `forward` recorded the node (`"Dense_0"`, or
    /// `"Block_0/Dense_1"` for a nested one); empty outside any sub-module, as for the
    /// params' leaves, which are made before the model runs.
    pub module: String,
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
