//! Graphviz export of a tape: params (leaves), constants and op nodes drawn distinctly.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::float::Float;
use crate::tape::{Operand, Tape, TapeEntry};

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
