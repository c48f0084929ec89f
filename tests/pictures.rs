//! The guide's pictures are true: each committed DOT file in `docs/img/` is what the code
//! records today, and each committed SVG was drawn from its DOT.
//!
//! When a change to the engine changes a tape, this test fails and says how to redraw:
//! `TAPEGRAD_UPDATE_PICTURES=1 cargo test --test pictures` rewrites the DOT files, and
//! `scripts/render_pictures.sh` (Graphviz's `dot`) redraws the SVGs from them.

use std::path::{Path, PathBuf};

use tapegrad::nn::{BatchNorm, Mlp};
use tapegrad::{
    ApplyOptions, Fusion, ModuleExt, Mutable, ParamTensors, Tape, Tensor, value_and_grad,
};

/// The model of chapters 3 and 4: Dense → BatchNorm → ReLU → Dense, on 4 rows of 2 features.
fn recorded_tape(options: &ApplyOptions, fusion: Fusion) -> Tape<f64> {
    let model = Mlp::new(&[3], 2).with_batch_norm(BatchNorm::new().momentum(0.9));
    let x = Tensor::from_vec(&[4, 2], vec![0.5, -1.0, 2.0, 0.1, -0.3, 0.8, 1.5, -2.0])
        .unwrap()
        .with_label("x");
    let variables = model.init(0, &x).unwrap();
    let mut tape = None;
    fusion
        .run(|| {
            value_and_grad(variables.params(), |p| {
                tape = p.tape().cloned();
                let (logits, _) = model.apply_tracked(p, &variables, &x, options)?;
                tapegrad::softmax_cross_entropy(&logits, &[0, 1, 1, 0])
            })
        })
        .unwrap();
    tape.expect("params are tracked")
}

/// What a picture of the same model's loss draws over the tape.
#[derive(Clone, Copy, PartialEq)]
enum Drawn {
    /// The collections the step returned, beside the tape.
    Updates,
    /// The backward pass too.
    BackwardAndUpdates,
}

/// The same model's loss, drawn with `Tape::picture`.
fn picture(options: &ApplyOptions, fusion: Fusion, drawn: Drawn) -> String {
    let model = Mlp::new(&[3], 2).with_batch_norm(BatchNorm::new().momentum(0.9));
    let x = Tensor::from_vec(&[4, 2], vec![0.5, -1.0, 2.0, 0.1, -0.3, 0.8, 1.5, -2.0])
        .unwrap()
        .with_label("x");
    let variables = model.init(0, &x).unwrap();
    fusion.run(|| {
        let tape = Tape::new();
        let params = ParamTensors::leaves(variables.params(), &tape);
        let (logits, updates) = model
            .apply_tracked(&params, &variables, &x, options)
            .unwrap();
        let loss = tapegrad::softmax_cross_entropy(&logits, &[0, 1, 1, 0]).unwrap();
        let picture = match drawn {
            Drawn::Updates => tape.picture(),
            Drawn::BackwardAndUpdates => tape.picture().backward(&loss).unwrap(),
        };
        picture.updates(&updates).to_dot()
    })
}

fn backward_picture(options: &ApplyOptions, fusion: Fusion) -> String {
    picture(options, fusion, Drawn::BackwardAndUpdates)
}

/// Each picture: its file name in `docs/img/` and its DOT text.
fn pictures() -> Vec<(&'static str, String)> {
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    vec![
        (
            "bn_eval_tape",
            recorded_tape(&ApplyOptions::eval(), Fusion::On).to_dot(),
        ),
        (
            "bn_train_tape_fused",
            picture(&train, Fusion::On, Drawn::Updates),
        ),
        (
            "bn_train_tape_composite",
            recorded_tape(&train, Fusion::Off).to_dot(),
        ),
        (
            "bn_train_backward_composite",
            backward_picture(&train, Fusion::Off),
        ),
        (
            "bn_eval_backward",
            backward_picture(&ApplyOptions::eval(), Fusion::On),
        ),
    ]
}

fn image(name: &str, extension: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/img")
        .join(format!("{name}.{extension}"))
}

/// The lines of text of a DOT file's vertices, as Graphviz writes them into an SVG (already
/// escaped for XML): a quoted label's, or each cell of an HTML-like one.
fn vertex_labels(dot: &str) -> Vec<String> {
    let mut texts = Vec::new();
    for line in dot.lines() {
        if let Some((_, quoted)) = line.split_once("[label=\"") {
            let text = quoted.split_once('"').unwrap().0;
            texts.push(
                text.replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;"),
            );
        } else if let Some((_, html)) = line.split_once("[label=<") {
            for cell in html.split("<TD>").skip(1) {
                let cell = cell.split("</TD>").next().unwrap();
                // The text inside any <FONT …> tags, already escaped for XML.
                let text: String = cell
                    .split('<')
                    .map(|part| part.split_once('>').map_or(part, |(_, text)| text))
                    .collect();
                texts.push(text);
            }
        }
    }
    texts
}

#[test]
fn the_committed_dot_files_are_what_the_code_records() {
    let update = std::env::var_os("TAPEGRAD_UPDATE_PICTURES").is_some();
    for (name, dot) in pictures() {
        let path = image(name, "dot");
        if update {
            std::fs::write(&path, &dot).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == dot,
            "{} is stale: the code now records another tape. Rewrite it with \
             `TAPEGRAD_UPDATE_PICTURES=1 cargo test --test pictures`, then redraw with \
             `scripts/render_pictures.sh`.",
            path.display()
        );
    }
}

#[test]
fn each_committed_svg_is_drawn_from_its_dot() {
    for (name, _) in pictures() {
        let dot = std::fs::read_to_string(image(name, "dot")).unwrap();
        let svg = std::fs::read_to_string(image(name, "svg")).unwrap();
        assert!(svg.contains("Generated by graphviz"), "{name}.svg");
        let vertices = dot.matches("[label=").count();
        assert_eq!(
            svg.matches("class=\"node\"").count(),
            vertices,
            "{name}.svg: vertices"
        );
        for label in vertex_labels(&dot) {
            assert!(
                svg.contains(&format!(">{label}</text>")),
                "{name}.svg does not show {label:?}: redraw it with scripts/render_pictures.sh"
            );
        }
    }
}

#[test]
fn the_pictures_differ_where_the_guide_says_they_do() {
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let ops = |tape: &Tape<f64>| -> Vec<&'static str> {
        tape.entries()
            .iter()
            .map(|e| e.op)
            .filter(|&op| op != "leaf")
            .collect()
    };
    let eval = &recorded_tape(&ApplyOptions::eval(), Fusion::On);
    let fused = &recorded_tape(&train, Fusion::On);
    let composite = &recorded_tape(&train, Fusion::Off);
    // Evaluation: the statistics are constants; training, fused: one batch_norm_relu node.
    assert!(!ops(eval).iter().any(|op| op.starts_with("batch_norm")));
    assert!(ops(fused).contains(&"batch_norm_relu"));
    // Training, composite: only primitives, the statistics computed on the tape.
    assert!(
        ops(composite)
            .iter()
            .all(|op| !op.contains("batch_norm") && *op != "linear")
    );
    assert!(ops(composite).len() > 2 * ops(fused).len());
}

/// The backward pictures show what chapter 6 says: in training mode the bias before
/// BatchNorm receives round-off (BatchNorm's input gradient sums to zero over the batch, and
/// the bias's gradient is that sum), while the kernel beside it receives an ordinary
/// gradient, and so do the two edges whose sum cancels; in evaluation mode the running
/// statistics, constants, receive no edge.
#[test]
fn the_backward_pictures_show_the_cancellation_and_the_constants() {
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let composite = backward_picture(&train, Fusion::Off);
    let total = |name: &str| {
        let vertex = vertex_of(&composite, name);
        composite
            .lines()
            .find(|l| {
                l.starts_with(&format!("  {vertex} [xlabel=")) // not an edge out of it
            })
            .expect("a leaf has a total")
            .to_string()
    };
    assert!(
        total("Dense_0/bias").contains("e-1"),
        "round-off: {}",
        total("Dense_0/bias")
    );
    assert!(
        !total("Dense_0/kernel").contains("e-"),
        "ordinary: {}",
        total("Dense_0/kernel")
    );
    // The two contributions that cancel: the add that applies the bias receives an ordinary
    // gradient along two edges from BatchNorm (through the centring and through the mean).
    let bias = vertex_of(&composite, "Dense_0/bias");
    let add = composite
        .lines()
        .find_map(|l| l.strip_prefix(&format!("  {bias} -> ")))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the bias feeds an add")
        .to_string();
    let batch_norm = vertices_in_box(&composite, "BatchNorm_0");
    let received: Vec<f64> = composite
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("  {add} -> ")))
        .filter(|rest| {
            batch_norm
                .iter()
                .any(|v| rest.starts_with(&format!("{v} ")))
        })
        .map(|rest| {
            let size = rest.split("xlabel=\"").nth(1).expect("a gradient flowed");
            size.split('"').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(received.iter().all(|&size| size > 0.01), "{received:?}");

    let eval = backward_picture(&ApplyOptions::eval(), Fusion::On);
    assert!(eval.contains("batch_stats/BatchNorm_0/mean"));
    for line in eval.lines().filter(|l| l.contains("#c0392b")) {
        assert!(
            line.trim_start().starts_with('n') && line.contains("-> n"),
            "a gradient into a constant: {line}"
        );
    }
}

/// The vertices declared directly inside the box labelled `module`.
fn vertices_in_box(dot: &str, module: &str) -> Vec<String> {
    dot.lines()
        .skip_while(|l| !l.contains(&format!("{{ label=\"{module}\";")))
        .skip(1)
        .take_while(|l| l.trim() != "}")
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// The vertex (`nN`) whose label's first line is `name`.
fn vertex_of(dot: &str, name: &str) -> String {
    dot.lines()
        .find(|l| l.contains("[label=<") && l.contains(&format!("<TD>{name}</TD>")))
        .and_then(|l| l.split_whitespace().next())
        .expect("a vertex of that name")
        .to_string()
}
