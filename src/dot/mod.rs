//! Graphviz pictures of a tape: params (leaves), constants and op nodes drawn distinctly,
//! grouped by the module that recorded them; optionally the backward pass over it, each
//! gradient on the edge it flows along, and the collections an `apply` returned, drawn off
//! the tape.

mod flows;
mod layout;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::tape::{Operand, Tape, TapeEntry};
use crate::tensor::Tensor;
use crate::variables::Updates;
use flows::{Flows, short};
use layout::{
    Columns, Place, Vertex, boxes, enters_column, escape, place_of_constant, two_line_label,
};

/// The DOT attributes of each kind of vertex.
const LEAF_STYLE: &str = "shape=box, style=\"filled,bold\", fillcolor=\"#b7e4b7\"";
const OP_STYLE: &str = "shape=ellipse";
const CONSTANT_STYLE: &str =
    "shape=box, style=\"filled,dashed\", fillcolor=\"#eeeeee\", fontcolor=\"#555555\"";
const UPDATE_STYLE: &str =
    "shape=note, style=filled, fillcolor=\"#dbe9f6\", color=\"#1f4e79\", fontcolor=\"#1f4e79\"";
/// The dotted edge from a module's box to what it returned.
const UPDATE_EDGE_STYLE: &str = "style=dotted, color=\"#1f4e79\", arrowhead=vee";
/// Gradients flowing back, and the edges that carry them.
const GRADIENT_COLOR: &str = "#c0392b";
/// The forward edges, when the backward pass is drawn over them.
const FORWARD_COLOR: &str = "#bbbbbb";

/// A picture of a tape for Graphviz (`dot -Tsvg`), built up from [`Tape::picture`]:
///
/// * leaves (the params being differentiated) are green boxes named by their path;
/// * op nodes are ellipses with the op and the output shape;
/// * constants are grey dashed boxes with their label (e.g.
///   `batch_stats/BatchNorm_0/var`), joined by dashed edges: they are inputs with no node,
///   so no gradient can flow back into them. Constants with the same label are drawn once;
/// * what a module recorded is boxed and named by the module's path (`Dense_0`), a
///   top-level module to a column, left to right in the order the forward pass ran them;
///   the params and buffers of a module are drawn in its box;
/// * with [`backward`](Picture::backward), the backward pass from a loss: every edge a
///   gradient flowed along turns red, its arrow pointing back to the input and labelled
///   with the size (the Euclidean norm) of what flowed; the others turn grey; each leaf
///   shows the size of its whole gradient, the sum of its edges. Where two contributions cancel (a bias before BatchNorm), the edges are
///   large and the sum is round-off. Constants get no red edge: nothing flows into them;
/// * with [`updates`](Picture::updates), the collections an `apply` returned, as blue notes
///   joined to their module's box by a dotted edge: values written beside the tape, with no
///   node on it, so nothing can flow back into them either.
///
/// ```
/// use tapegrad::nn::{BatchNorm, Mlp};
/// use tapegrad::{ApplyOptions, ModuleExt, Mutable, ParamTensors, Tape, Tensor};
///
/// let model = Mlp::new(&[3], 2).with_batch_norm(BatchNorm::new());
/// let x = Tensor::from_vec(&[4, 2], vec![0.5, -1.0, 2.0, 0.1, -0.3, 0.8, 1.5, -2.0])?;
/// let variables = model.init(0, &x)?;
/// let tape = Tape::new();
/// let params = ParamTensors::leaves(variables.params(), &tape);
/// let options = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
/// let (logits, updates) = model.apply_tracked(&params, &variables, &x, &options)?;
/// let loss = tapegrad::softmax_cross_entropy(&logits, &[0, 1, 1, 0])?;
///
/// let dot = tape.picture().backward(&loss)?.updates(&updates).to_dot();
/// assert!(dot.contains("subgraph cluster_") && dot.contains("label=\"BatchNorm_0\""));
/// assert!(dot.contains("batch_stats/BatchNorm_0/mean"));
/// # Ok::<(), tapegrad::Error>(())
/// ```
pub struct Picture<'t, A: Float> {
    tape: &'t Tape<A>,
    flows: Option<Flows>,
    /// `(collection/path, shape)` of each variable an `apply` returned.
    updates: Vec<(String, Vec<usize>)>,
}

impl<A: Float> Tape<A> {
    /// A picture of the tape, to add the backward pass and the updates to.
    #[must_use]
    pub fn picture(&self) -> Picture<'_, A> {
        Picture {
            tape: self,
            flows: None,
            updates: Vec::new(),
        }
    }

    /// The tape as a Graphviz `digraph`, drawn as [`Picture`] says.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let w = tape.leaf("w", ndarray::arr1(&[1.0, 2.0]));
    /// let x = Tensor::constant(ndarray::arr1(&[3.0, 4.0])).with_label("x");
    /// let _ = w.mul(&x)?.sum_all();
    /// let dot = tape.to_dot();
    /// assert!(dot.starts_with("digraph tape {"));
    /// assert!(dot.contains("n0 [label=<") && dot.contains("<TD>w</TD>"));
    /// assert!(dot.contains("c0 [label=\"x\"") && dot.contains("c0 -> n1 [style=dashed]"));
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    #[must_use]
    pub fn to_dot(&self) -> String {
        self.picture().to_dot()
    }

    /// The backward pass from `output` (one element) over the tape, as a Graphviz `digraph`:
    /// `self.picture().backward(output)?.to_dot()`.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let w = tape.leaf("w", ndarray::arr1(&[1.0, 2.0]));
    /// let x = Tensor::constant(ndarray::arr1(&[3.0, 4.0])).with_label("x");
    /// let loss = w.mul(&x)?.sum_all();
    /// let dot = tape.to_dot_backward(&loss)?;
    /// assert!(dot.contains("n0 -> n1 [dir=back, color=\"#c0392b\", fontcolor=\"#c0392b\", xlabel=\"5\"]")); // |x| = 5
    /// assert!(loss.backward().is_ok()); // not released
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Picture::backward`].
    pub fn to_dot_backward(&self, output: &Tensor<A>) -> Result<String> {
        Ok(self.picture().backward(output)?.to_dot())
    }
}

impl<A: Float> Picture<'_, A> {
    /// Draws the backward pass from `output` (one element). The pass runs the recorded VJPs
    /// without releasing them, so the tape can still be walked. An output with no node (a
    /// constant) draws no gradient.
    ///
    /// # Errors
    ///
    /// [`Error::NotScalar`] for an output of more than one element, [`Error::DifferentTapes`]
    /// for one from another tape, [`Error::BackwardTwice`] if a backward pass released the
    /// tape.
    pub fn backward(mut self, output: &Tensor<A>) -> Result<Self> {
        if output.len() != 1 {
            return Err(Error::NotScalar {
                op: "Picture::backward",
                shape: output.shape().into(),
            });
        }
        match output.node() {
            Some((tape, root)) if tape.same_as(self.tape) => {
                let seed = ArrayD::ones(output.shape());
                self.flows = Some(Flows::from_tape(self.tape, root, seed)?);
            }
            Some(_) => {
                return Err(Error::DifferentTapes {
                    op: "Picture::backward",
                });
            }
            None => {}
        }
        Ok(self)
    }

    /// Draws every variable of `updates` (what a mutable `apply` returned) beside the box of
    /// the module it belongs to.
    #[must_use]
    pub fn updates(mut self, updates: &Updates<A>) -> Self {
        for name in updates.collection_names() {
            let Some(collection) = updates.collection(name) else {
                continue;
            };
            for (path, value) in collection.iter() {
                self.updates
                    .push((format!("{name}/{path}"), value.shape().to_vec()));
            }
        }
        self
    }

    /// The picture as a Graphviz `digraph`.
    #[must_use]
    pub fn to_dot(&self) -> String {
        let entries = self.tape.entries();
        let columns = Columns::new(&entries);
        let (vertices, edges) = self.vertices_and_edges(&entries, &columns);
        let first_ops: Vec<String> = match columns.any() {
            true => first_op_of_each_column(&entries, &columns),
            false => Vec::new(),
        };
        let (mut body, named_boxes) = match columns.any() {
            true => boxes(&vertices, &columns, &first_ops),
            false => {
                let mut flat = String::new();
                for vertex in &vertices {
                    let _ = writeln!(flat, "  {} [{}];", vertex.name, vertex.attributes);
                }
                (flat, Default::default())
            }
        };
        body.push_str(&edges);
        for (index, (name, shape)) in self.updates.iter().enumerate() {
            let _ = writeln!(
                body,
                "  u{index} [label={}, {UPDATE_STYLE}];",
                two_line_label(name, &format!("{shape:?}"))
            );
            let module = name
                .split_once('/')
                .and_then(|(_, path)| path.rsplit_once('/'))
                .map_or("", |(module, _)| module);
            if let Some((cluster, inside)) = enclosing_box(&named_boxes, module) {
                let _ = writeln!(
                    body,
                    "  {inside} -> u{index} [ltail={cluster}, {UPDATE_EDGE_STYLE}];"
                );
            }
        }
        if let Some(flows) = &self.flows {
            for (leaf, size) in &flows.leaves {
                let _ = writeln!(
                    body,
                    "  n{leaf} [xlabel=\"∇ {}\", fontcolor=\"#1e5a1e\"];",
                    short(*size)
                );
            }
        }
        let mut out = String::from("digraph tape {\n  rankdir=TB;\n");
        if columns.any() {
            out.push_str("  compound=true; newrank=true; ranksep=0.2; nodesep=0.15;\n");
        }
        out.push_str("  node [fontname=\"Helvetica\", fontsize=10, margin=\"0.06,0.03\"];\n");
        out.push_str("  edge [fontname=\"Helvetica\", fontsize=10];\n");
        out.push_str(&body);
        out.push_str("}\n");
        out
    }

    /// Every vertex with where it goes, and the DOT text of every edge.
    fn vertices_and_edges(
        &self,
        entries: &[TapeEntry],
        columns: &Columns,
    ) -> (Vec<Vertex>, String) {
        let places: Vec<Place> = entries
            .iter()
            .map(|entry| match entry.op {
                "leaf" => match entry.name.as_deref().and_then(|n| n.rsplit_once('/')) {
                    Some((module, _)) => columns.of_module(module),
                    None => Place::Free,
                },
                _ => columns.of_op(entry),
            })
            .collect();
        let mut vertices = Vec::new();
        let mut edges = String::new();
        let mut constants = Constants::default();
        let mut drawn = BTreeSet::new();
        for entry in entries {
            let style = if entry.op == "leaf" {
                LEAF_STYLE
            } else {
                OP_STYLE
            };
            vertices.push(Vertex {
                name: format!("n{}", entry.id),
                attributes: format!("label={}, {style}", vertex_label(entry)),
                place: places[entry.id].clone(),
            });
            let to = &places[entry.id];
            for (position, input) in entry.inputs.iter().enumerate() {
                match input {
                    Operand::Node(id) => {
                        let mut attributes = self.edge_colors(*id, entry.id, &mut drawn);
                        if enters_column(&places[*id], to) {
                            attributes.push("constraint=false".to_string());
                        }
                        let _ = writeln!(edges, "  n{id} -> n{}{};", entry.id, list(&attributes));
                    }
                    Operand::Constant(label) => {
                        let name = match label {
                            Some(label) => constants
                                .labelled(label, || place_of_constant(Some(label), to, columns)),
                            None => constants.unlabelled(entry.id, position, to.clone()),
                        };
                        let _ = writeln!(edges, "  {name} -> n{} [style=dashed];", entry.id);
                    }
                }
            }
            // A constant is declared after the op that first reads it.
            vertices.append(&mut constants.vertices);
        }
        (vertices, edges)
    }

    /// How the edge from node `input` to node `op` is drawn: red and turned back, labelled
    /// with the gradient that flowed along it (once: an op that reads a node twice has one
    /// total for both edges); grey under a backward pass that sent none along it; plain
    /// without a backward pass.
    fn edge_colors(
        &self,
        input: usize,
        op: usize,
        drawn: &mut BTreeSet<(usize, usize)>,
    ) -> Vec<String> {
        let Some(flows) = &self.flows else {
            return Vec::new();
        };
        match flows.edges.get(&(op, input)) {
            Some(size) if drawn.insert((op, input)) => vec![
                "dir=back".to_string(),
                format!("color=\"{GRADIENT_COLOR}\""),
                format!("fontcolor=\"{GRADIENT_COLOR}\""),
                format!("xlabel=\"{}\"", short(*size)),
            ],
            _ => vec![format!("color=\"{FORWARD_COLOR}\"")],
        }
    }
}

/// The constant vertices: one per label (`c0`, `c1`, …), where its first use puts it, and one
/// per unlabelled use (`c{op}_{position}`), beside the op it feeds.
#[derive(Default)]
struct Constants {
    labels: Vec<String>,
    vertices: Vec<Vertex>,
}

impl Constants {
    fn labelled(&mut self, label: &str, place: impl FnOnce() -> Place) -> String {
        if let Some(index) = self.labels.iter().position(|l| l == label) {
            return format!("c{index}");
        }
        let name = format!("c{}", self.labels.len());
        self.labels.push(label.to_string());
        self.push(&name, label, place());
        name
    }

    fn unlabelled(&mut self, op: usize, position: usize, place: Place) -> String {
        let name = format!("c{op}_{position}");
        self.push(&name, "const", place);
        name
    }

    fn push(&mut self, name: &str, text: &str, place: Place) {
        self.vertices.push(Vertex {
            name: name.to_string(),
            attributes: format!("label=\"{}\", {CONSTANT_STYLE}", escape(text)),
            place,
        });
    }
}

/// ` [a, b]`, or nothing for no attributes.
fn list(attributes: &[String]) -> String {
    match attributes.is_empty() {
        true => String::new(),
        false => format!(" [{}]", attributes.join(", ")),
    }
}

/// The vertex of each column's first op, in column order: set side by side on one rank, they
/// order the columns.
fn first_op_of_each_column(entries: &[TapeEntry], columns: &Columns) -> Vec<String> {
    let mut firsts: Vec<String> = Vec::new();
    let mut last_column = None;
    for entry in entries.iter().filter(|e| e.op != "leaf") {
        if let Place::Column { column, .. } = columns.of_op(entry)
            && last_column != Some(column)
        {
            firsts.push(format!("n{}", entry.id));
            last_column = Some(column);
        }
    }
    firsts
}

/// The box of `module` or of its nearest enclosing module that has one, with a vertex inside
/// it; `None` for the root, which has no box.
fn enclosing_box<'b>(
    named_boxes: &'b BTreeMap<String, (String, String)>,
    module: &str,
) -> Option<&'b (String, String)> {
    let mut path = module;
    while !path.is_empty() {
        if let Some(found) = named_boxes.get(path) {
            return Some(found);
        }
        path = path.rsplit_once('/').map_or("", |(parent, _)| parent);
    }
    None
}

fn vertex_label(entry: &TapeEntry) -> String {
    let shape = format!("{:?}", entry.shape);
    match &entry.name {
        Some(name) => two_line_label(name, &shape),
        None if entry.op == "leaf" => two_line_label(&format!("leaf %{}", entry.id), &shape),
        None => two_line_label(&format!("%{} {}", entry.id, entry.op), &shape),
    }
}
