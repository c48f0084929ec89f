//! Where each vertex of a picture goes. A tape recorded by a model is drawn a layer to a
//! column: the ops and params of each top-level module in a box of their own, nested
//! modules boxed inside it, the columns left to right in the order the forward pass ran
//! them, and each column's ops top to bottom. Edges into a column do not rank the vertices
//! (`constraint=false`), so a column's height is its own depth, not the model's; ops no
//! module recorded (the loss) hang below what they read.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::tape::TapeEntry;

/// A vertex of the picture: its DOT name and attributes, and where it goes.
pub(super) struct Vertex {
    pub(super) name: String,
    pub(super) attributes: String,
    pub(super) place: Place,
}

/// Where a vertex goes: in a column, inside the boxes of `module`; or free.
#[derive(Clone)]
pub(super) enum Place {
    Column { column: usize, module: String },
    Free,
}

/// The columns of a tape: one per run of ops recorded by the same top-level module (or
/// outside any), in recording order.
pub(super) struct Columns {
    /// Each column's top-level module (empty for ops outside any module).
    keys: Vec<String>,
    /// Each op node's column, by node id (leaves: `None`).
    of_node: Vec<Option<usize>>,
}

fn top_level(module: &str) -> &str {
    module.split('/').next().unwrap_or_default()
}

impl Columns {
    pub(super) fn new(entries: &[TapeEntry]) -> Self {
        let mut keys: Vec<String> = Vec::new();
        let mut of_node = vec![None; entries.len()];
        for entry in entries.iter().filter(|e| e.op != "leaf") {
            let key = top_level(&entry.module);
            if keys.last().is_none_or(|last| last != key) {
                keys.push(key.to_string());
            }
            of_node[entry.id] = Some(keys.len() - 1);
        }
        Columns { keys, of_node }
    }

    /// Whether the picture is drawn in columns: only if some module recorded an op.
    pub(super) fn any(&self) -> bool {
        self.keys.iter().any(|key| !key.is_empty())
    }

    /// Where an op node goes: in its column, unless no module recorded it.
    pub(super) fn of_op(&self, entry: &TapeEntry) -> Place {
        match self.of_node[entry.id] {
            Some(column) if !self.keys[column].is_empty() => Place::Column {
                column,
                module: entry.module.clone(),
            },
            _ => Place::Free,
        }
    }

    /// Where a vertex that belongs to `module` but was recorded outside it goes (a param's
    /// leaf, a buffer read as a constant): the first column of its top-level module.
    pub(super) fn of_module(&self, module: &str) -> Place {
        let key = top_level(module);
        match self.keys.iter().position(|k| !k.is_empty() && k == key) {
            Some(column) => Place::Column {
                column,
                module: module.to_string(),
            },
            None => Place::Free,
        }
    }

    /// The module a constant's label names (`batch_stats/BatchNorm_0/mean`: `BatchNorm_0`).
    pub(super) fn module_of_label(label: &str) -> Option<&str> {
        let (_, rest) = label.split_once('/')?;
        let (module, _) = rest.rsplit_once('/')?;
        Some(module)
    }
}

/// The DOT text of the vertices, boxed by column and module, then the column order. Returns
/// the text and, by module path, the name of its box and of a vertex inside it (what an
/// edge from the box needs).
pub(super) fn boxes(
    vertices: &[Vertex],
    columns: &Columns,
    first_op_of_column: &[String],
) -> (String, BTreeMap<String, (String, String)>) {
    let mut out = String::new();
    let mut named_boxes = BTreeMap::new();
    let mut counter = 0;
    for (column, key) in columns.keys.iter().enumerate() {
        let members: Vec<(&str, &Vertex)> = vertices
            .iter()
            .filter_map(|v| match &v.place {
                Place::Column { column: c, module } if *c == column => Some((module.as_str(), v)),
                _ => None,
            })
            .collect();
        if key.is_empty() {
            continue;
        }
        let style = format!("label=\"{}\"; {BOX_STYLE}", escape(key));
        emit_box(
            &mut out,
            &mut counter,
            &mut named_boxes,
            key,
            &style,
            &members,
            1,
        );
    }
    for vertex in vertices.iter().filter(|v| matches!(v.place, Place::Free)) {
        let _ = writeln!(out, "  {} [{}];", vertex.name, vertex.attributes);
    }
    if first_op_of_column.len() > 1 {
        // The columns' first ops on one rank, each below a hidden anchor, the anchors chained
        // left to right on the rank above. (Graphviz keeps the order of a chain of vertices
        // outside boxes; a chain between vertices in boxes, or `ordering=out`, it may reorder.)
        let anchors: Vec<String> = (0..first_op_of_column.len())
            .map(|i| format!("column_{i}"))
            .collect();
        for (anchor, first) in anchors.iter().zip(first_op_of_column) {
            let _ = writeln!(out, "  {anchor} [style=invis, shape=point];");
            let _ = writeln!(out, "  {anchor} -> {first} [style=invis, weight=100];");
        }
        let _ = writeln!(out, "  {{ rank=same; {}; }}", anchors.join("; "));
        let _ = writeln!(out, "  {} [style=invis];", anchors.join(" -> "));
        let _ = writeln!(out, "  {{ rank=same; {}; }}", first_op_of_column.join("; "));
    }
    (out, named_boxes)
}

const BOX_STYLE: &str =
    "style=rounded; color=\"#999999\"; fontname=\"Helvetica\"; fontsize=12; margin=10;";

/// A box for the module at `path` holding `members` (each with its module path): those of
/// `path` itself directly, those of modules below it in boxes of their own.
fn emit_box(
    out: &mut String,
    counter: &mut usize,
    named_boxes: &mut BTreeMap<String, (String, String)>,
    path: &str,
    style: &str,
    members: &[(&str, &Vertex)],
    depth: usize,
) {
    let name = format!("cluster_{counter}");
    *counter += 1;
    let indent = "  ".repeat(depth);
    let _ = writeln!(out, "{indent}subgraph {name} {{ {style}");
    let mut below: BTreeMap<&str, Vec<(&str, &Vertex)>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for &(module, vertex) in members {
        match child_of(path, module) {
            None => {
                let _ = writeln!(out, "{indent}  {} [{}];", vertex.name, vertex.attributes);
                named_boxes.insert(path.to_string(), (name.clone(), vertex.name.clone()));
            }
            Some(child) => {
                if !below.contains_key(child) {
                    order.push(child);
                }
                below.entry(child).or_default().push((module, vertex));
            }
        }
    }
    for child in order {
        let child_path = match path {
            "" => child.to_string(),
            _ => format!("{path}/{child}"),
        };
        let style = format!("label=\"{}\"; {BOX_STYLE}", escape(child));
        emit_box(
            out,
            counter,
            named_boxes,
            &child_path,
            &style,
            &below[child],
            depth + 1,
        );
        if let Some((_, inside)) = named_boxes.get(&child_path).cloned() {
            named_boxes
                .entry(path.to_string())
                .or_insert((name.clone(), inside));
        }
    }
    let _ = writeln!(out, "{indent}}}");
}

/// The next path segment of `module` below `path`; `None` if `module` is `path` itself (or
/// not below it, which the caller does not pass).
fn child_of<'m>(path: &str, module: &'m str) -> Option<&'m str> {
    let rest = match path {
        "" => module,
        _ => module.strip_prefix(path)?.strip_prefix('/')?,
    };
    rest.split('/').next().filter(|segment| !segment.is_empty())
}

/// `text` for a quoted DOT string.
pub(super) fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `text` for a DOT HTML-like label.
pub(super) fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A two-line label: a name over a shape, one cell each. (A plain `"name\nshape"` label sets
/// the lines so close that an underscore in the name touches the shape below it.)
pub(super) fn two_line_label(name: &str, shape: &str) -> String {
    format!(
        "<<TABLE BORDER=\"0\" CELLBORDER=\"0\" CELLSPACING=\"0\" CELLPADDING=\"1\"><TR><TD>{}</TD></TR>\
         <TR><TD><FONT POINT-SIZE=\"8\" COLOR=\"#555555\">{}</FONT></TD></TR></TABLE>>",
        escape_html(name),
        escape_html(shape)
    )
}

/// The place of an input's vertex: an unlabelled constant goes with the op it feeds.
pub(super) fn place_of_constant(label: Option<&str>, consumer: &Place, columns: &Columns) -> Place {
    match label {
        None => consumer.clone(),
        Some(label) => match Columns::module_of_label(label) {
            Some(module) => columns.of_module(module),
            None => Place::Free,
        },
    }
}

/// Whether an edge between two nodes enters a column from outside it, and so must not rank
/// its ends: every column starts at the top. (An edge from a column to a free op ranks the
/// op below it: the loss hangs below the last layer.)
pub(super) fn enters_column(from: &Place, to: &Place) -> bool {
    match (from, to) {
        (Place::Column { column: a, .. }, Place::Column { column: b, .. }) => a != b,
        (Place::Free, Place::Column { .. }) => true,
        (_, Place::Free) => false,
    }
}
