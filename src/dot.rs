//! Graphviz export of a tape: params (leaves), constants and op nodes drawn distinctly; and
//! the backward pass over it, each gradient on the edge it flows along.

use std::collections::BTreeMap;
use std::fmt::Write;

use ndarray::{ArrayD, Dimension};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::shape::sum_to_shape;
use crate::tape::{NodeView, Operand, Tape, TapeEntry};
use crate::tensor::Tensor;

/// The DOT attributes of each kind of vertex.
const LEAF_STYLE: &str = "shape=box, style=\"filled,bold\", fillcolor=\"#b7e4b7\"";
const OP_STYLE: &str = "shape=ellipse";
const CONSTANT_STYLE: &str =
    "shape=box, style=\"filled,dashed\", fillcolor=\"#eeeeee\", fontcolor=\"#555555\"";

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

impl<A: Float> Tape<A> {
    /// The tape as a Graphviz `digraph`, for `dot -Tsvg`:
    ///
    /// * leaves (the params being differentiated) are green boxes named by their path;
    /// * op nodes are ellipses with the op and the output shape;
    /// * constants are grey dashed boxes with their label (e.g.
    ///   `batch_stats/BatchNorm_0/var`), joined by dashed edges: they are inputs with no node,
    ///   so no gradient can flow back into them. Constants with the same label are drawn once.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let w = tape.leaf("w", ndarray::arr1(&[1.0, 2.0]));
    /// let x = Tensor::constant(ndarray::arr1(&[3.0, 4.0])).with_label("x");
    /// let _ = w.mul(&x)?.sum_all();
    /// let dot = tape.to_dot();
    /// assert!(dot.starts_with("digraph tape {"));
    /// assert!(dot.contains("n0 [label=\"w\\n[2]\""));
    /// assert!(dot.contains("c0 [label=\"x\"") && dot.contains("c0 -> n1 [style=dashed]"));
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    #[must_use]
    pub fn to_dot(&self) -> String {
        let entries = self.entries();
        let mut out = String::from(
            "digraph tape {\n  rankdir=TB;\n  node [fontname=\"Helvetica\", fontsize=11];\n",
        );
        // Constant vertices: by label (drawn once each), and one per unlabelled use.
        let mut labelled: BTreeMap<String, String> = BTreeMap::new();
        let mut constants: Vec<(String, String)> = Vec::new();
        let mut edges = String::new();
        for entry in &entries {
            let _ = writeln!(
                out,
                "  n{} [label=\"{}\", {}];",
                entry.id,
                vertex_label(entry),
                vertex_style(entry)
            );
            for (position, input) in entry.inputs.iter().enumerate() {
                match input {
                    Operand::Node(id) => {
                        let _ = writeln!(edges, "  n{id} -> n{};", entry.id);
                    }
                    Operand::Constant(label) => {
                        let name = match label {
                            Some(label) => labelled
                                .entry(label.to_string())
                                .or_insert_with(|| {
                                    let name = format!("c{}", constants.len());
                                    constants.push((name.clone(), label.to_string()));
                                    name
                                })
                                .clone(),
                            None => {
                                let name = format!("c{}_{position}", entry.id);
                                constants.push((name.clone(), "const".to_string()));
                                name
                            }
                        };
                        let _ = writeln!(edges, "  {name} -> n{} [style=dashed];", entry.id);
                    }
                }
            }
        }
        for (name, text) in &constants {
            let _ = writeln!(
                out,
                "  {name} [label=\"{}\", {CONSTANT_STYLE}];",
                escape(text)
            );
        }
        out.push_str(&edges);
        out.push_str("}\n");
        out
    }
}

impl<A: Float> Tape<A> {
    /// The backward pass from `output` (one element) as a Graphviz `digraph`: the tape's
    /// vertices as [`Tape::to_dot`] draws them, its forward edges in light grey, and for
    /// every edge a gradient flowed back along, a red edge the other way labelled with the
    /// size (the Euclidean norm) of what flowed. Each leaf shows the size of its whole
    /// gradient, the sum of its edges: where two contributions cancel (a bias before
    /// BatchNorm), the edges are large and the sum is round-off. Constants have a forward
    /// edge and no red one: nothing flows into a constant. The pass runs the recorded VJPs
    /// without releasing them, so the tape can still be walked.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let w = tape.leaf("w", ndarray::arr1(&[1.0, 2.0]));
    /// let x = Tensor::constant(ndarray::arr1(&[3.0, 4.0])).with_label("x");
    /// let loss = w.mul(&x)?.sum_all();
    /// let dot = tape.to_dot_backward(&loss)?;
    /// assert!(dot.contains("n1 -> n0 [color=\"#c0392b\", fontcolor=\"#c0392b\", label=\"5\"]")); // |x| = 5
    /// assert!(loss.backward().is_ok()); // not released
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NotScalar`] for an output of more than one element, [`Error::DifferentTapes`]
    /// for one from another tape, [`Error::BackwardTwice`] if a backward pass released the
    /// tape.
    pub fn to_dot_backward(&self, output: &Tensor<A>) -> Result<String> {
        if output.len() != 1 {
            return Err(Error::NotScalar {
                op: "to_dot_backward",
                shape: output.shape().into(),
            });
        }
        let root = match output.node() {
            Some((tape, id)) if tape.same_as(self) => id,
            Some(_) => {
                return Err(Error::DifferentTapes {
                    op: "to_dot_backward",
                });
            }
            None => return Ok(self.to_dot()),
        };
        let flows = self.flows(root, ArrayD::ones(output.shape()))?;
        let forward = self.to_dot();
        let mut out = forward
            .trim_end()
            .trim_end_matches('}')
            .lines()
            .map(
                |line| match line.contains("->") && !line.contains("dashed") {
                    true => line.replace(';', " [color=\"#bbbbbb\"];"),
                    false => line.to_string(),
                },
            )
            .collect::<Vec<_>>()
            .join("\n");
        out.push('\n');
        for ((from, to), size) in &flows.edges {
            let _ = writeln!(
                out,
                "  n{from} -> n{to} [color=\"#c0392b\", fontcolor=\"#c0392b\", label=\"{}\"];",
                short(*size)
            );
        }
        for (leaf, size) in &flows.leaves {
            let _ = writeln!(
                out,
                "  n{leaf} [xlabel=\"∇ {}\", fontcolor=\"#1e5a1e\"];",
                short(*size)
            );
        }
        out.push_str("}\n");
        Ok(out)
    }

    /// The backward pass from `root`, keeping the size of every contribution by edge
    /// `(node, input)` and of every leaf's total.
    fn flows(&self, root: usize, seed: ArrayD<A>) -> Result<Flows> {
        let mut grads: Vec<Option<ArrayD<A>>> = vec![None; root + 1];
        grads[root] = Some(seed);
        let mut flows = Flows::default();
        for id in (0..=root).rev() {
            let NodeView::Op { op, inputs, rule } = self.view(id) else {
                if let Some(g) = &grads[id] {
                    flows.leaves.insert(id, norm(g));
                }
                continue;
            };
            let Some(g) = grads[id].take() else { continue };
            let rule = rule.ok_or(Error::BackwardTwice { op, node: id })?;
            let needs: Vec<bool> = inputs.iter().map(|i| i.node().is_some()).collect();
            for (input, c) in inputs.iter().zip(rule.vjp(g, &needs)?) {
                let (Some(parent), Some(c)) = (input.node(), c) else {
                    continue;
                };
                let c = sum_to_shape(c, self.shape_of(parent).slice());
                *flows.edges.entry((id, parent)).or_insert(0.0) += norm(&c);
                grads[parent] = Some(match grads[parent].take() {
                    Some(existing) => existing + &c,
                    None => c,
                });
            }
        }
        Ok(flows)
    }
}

/// The sizes a backward pass moved: by edge `(node, input)`, and by leaf.
#[derive(Default)]
struct Flows {
    edges: BTreeMap<(usize, usize), f64>,
    leaves: BTreeMap<usize, f64>,
}

fn norm<A: Float>(a: &ArrayD<A>) -> f64 {
    a.iter()
        .map(|v| v.as_f64() * v.as_f64())
        .sum::<f64>()
        .sqrt()
}

/// Three significant digits, in scientific notation below 0.001.
fn short(size: f64) -> String {
    if size != 0.0 && size.abs() < 1e-3 {
        format!("{size:.1e}")
    } else {
        format!("{:.3}", size)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

fn vertex_label(entry: &TapeEntry) -> String {
    let shape = format!("{:?}", entry.shape);
    match &entry.name {
        Some(name) => escape(&format!("{name}\\n{shape}")).replace("\\\\n", "\\n"),
        None if entry.op == "leaf" => format!("leaf %{}\\n{shape}", entry.id),
        None => format!("%{} {}\\n{shape}", entry.id, entry.op),
    }
}

fn vertex_style(entry: &TapeEntry) -> &'static str {
    if entry.op == "leaf" {
        LEAF_STYLE
    } else {
        OP_STYLE
    }
}
