//! The DOT export's structure: every node drawn once, params as leaves, running statistics
//! only as constant vertices with dashed edges; each layer boxed with its params and ops, in
//! forward order; the statistics a step returns drawn off the tape, out of the gradient's
//! reach.

use tapegrad::nn::{BatchNorm, Mlp};
use tapegrad::{
    ApplyOptions, Fusion, ModuleExt, Mutable, Operand, ParamTensors, Tape, Tensor, value_and_grad,
};

/// The tape of an evaluation-mode loss of an MLP with BatchNorm, where the running
/// statistics enter the computation.
fn eval_tape() -> (Tape<f64>, tapegrad::Variables<f64>) {
    let model = Mlp::new(&[3], 2).with_batch_norm(BatchNorm::new());
    let x = Tensor::from_vec(&[4, 2], vec![0.5, -1.0, 2.0, 0.1, -0.3, 0.8, 1.5, -2.0])
        .unwrap()
        .with_label("x");
    let vars = model.init(0, &x).unwrap();
    let mut tape = None;
    value_and_grad(vars.params(), |p| {
        tape = p.tape().cloned();
        let (logits, _) = model.apply_tracked(p, &vars, &x, &ApplyOptions::eval())?;
        tapegrad::softmax_cross_entropy(&logits, &[0, 1, 1, 0])
    })
    .unwrap();
    (tape.unwrap(), vars)
}

#[test]
fn every_node_and_every_input_is_drawn_once() {
    let (tape, _) = eval_tape();
    let dot = tape.to_dot();
    let entries = tape.entries();
    for e in &entries {
        let vertex = format!("n{} [label=", e.id);
        assert_eq!(
            dot.lines()
                .filter(|l| l.trim_start().starts_with(&vertex))
                .count(),
            1,
            "{dot}"
        );
    }
    let inputs: usize = entries.iter().map(|e| e.inputs.len()).sum();
    let drawn_edges = dot
        .lines()
        .filter(|l| l.contains(" -> n") && !l.contains("style=invis"))
        .count();
    assert_eq!(drawn_edges, inputs);
    assert!(dot.starts_with("digraph tape {") && dot.trim_end().ends_with('}'));
}

/// The training tape of the same model, fusion off, drawn with its backward pass and the
/// collections the step returned.
fn training_picture() -> (Tape<f64>, String) {
    let model = Mlp::new(&[3], 2).with_batch_norm(BatchNorm::new());
    let x = Tensor::from_vec(&[4, 2], vec![0.5, -1.0, 2.0, 0.1, -0.3, 0.8, 1.5, -2.0]).unwrap();
    let vars = model.init(0, &x).unwrap();
    let options = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    Fusion::Off.run(|| {
        let tape = Tape::new();
        let params = ParamTensors::leaves(vars.params(), &tape);
        let (logits, updates) = model.apply_tracked(&params, &vars, &x, &options).unwrap();
        let loss = tapegrad::softmax_cross_entropy(&logits, &[0, 1, 1, 0]).unwrap();
        let dot = tape
            .picture()
            .backward(&loss)
            .unwrap()
            .updates(&updates)
            .to_dot();
        (tape, dot)
    })
}

#[test]
fn the_tape_knows_which_module_recorded_each_op() {
    let (tape, _) = training_picture();
    let module_of = |op: &str| -> Vec<String> {
        tape.entries()
            .into_iter()
            .filter(|e| e.op == op)
            .map(|e| e.module)
            .collect()
    };
    assert_eq!(module_of("matmul"), ["Dense_0", "Dense_1"]);
    assert_eq!(module_of("sqrt"), ["BatchNorm_0"]);
    assert_eq!(module_of("relu"), ["BatchNorm_0"]); // BatchNorm with ReLU, as Mlp builds it
    assert_eq!(module_of("exp"), [""]); // the loss: outside any module
    assert!(module_of("leaf").iter().all(String::is_empty)); // made before the model ran
}

/// The vertices inside the box labelled `module`, up to its closing brace.
fn vertices_in_box(dot: &str, module: &str) -> Vec<String> {
    let opening = format!("{{ label=\"{module}\";");
    let mut lines = dot.lines().skip_while(|l| !l.contains(&opening)).skip(1);
    let mut vertices = Vec::new();
    let mut depth = 0;
    for line in lines.by_ref() {
        let line = line.trim();
        if line.starts_with("subgraph") {
            depth += 1;
        } else if line == "}" {
            if depth == 0 {
                break;
            }
            depth -= 1;
        } else if let Some(name) = line.split(' ').next() {
            vertices.push(name.to_string());
        }
    }
    vertices
}

#[test]
fn each_layer_is_boxed_with_its_params_and_ops_and_the_loss_is_outside() {
    let (tape, dot) = training_picture();
    let entries = tape.entries();
    let vertex = |id: usize| format!("n{id}");
    for module in ["Dense_0", "BatchNorm_0", "Dense_1"] {
        // Its nodes (an unlabelled constant goes with the op it feeds).
        let inside: Vec<String> = vertices_in_box(&dot, module)
            .into_iter()
            .filter(|v| v.starts_with('n'))
            .collect();
        let expected: Vec<String> = entries
            .iter()
            .filter(|e| {
                e.module == module
                    || e.name
                        .as_deref()
                        .is_some_and(|n| n.starts_with(&format!("{module}/")))
            })
            .map(|e| vertex(e.id))
            .collect();
        let mut sorted = inside.clone();
        sorted.sort();
        let mut expected_sorted = expected.clone();
        expected_sorted.sort();
        assert_eq!(sorted, expected_sorted, "{module}");
    }
    let batch_norm_nodes = vertices_in_box(&dot, "BatchNorm_0")
        .into_iter()
        .filter(|v| v.starts_with('n'))
        .count();
    assert_eq!(batch_norm_nodes, 2 + 13); // scale, bias; 12 ops and the ReLU
    // The columns are ordered as the forward pass ran: Dense_0, BatchNorm_0, Dense_1.
    let first_op = |module: &str| vertex(entries.iter().find(|e| e.module == module).unwrap().id);
    let chain = format!("column_0 -> {}", first_op("Dense_0"));
    assert!(dot.contains(&chain), "{chain}");
    assert!(dot.contains(&format!("column_1 -> {}", first_op("BatchNorm_0"))));
    assert!(dot.contains(&format!("column_2 -> {}", first_op("Dense_1"))));
    assert!(dot.contains("column_0 -> column_1 -> column_2 [style=invis]"));
    // Edges into a later column do not rank it below the one before.
    let into_batch_norm = format!("-> {}", first_op("BatchNorm_0"));
    assert!(
        dot.lines()
            .filter(|l| l.contains(&into_batch_norm) && !l.contains("invis"))
            .all(|l| l.contains("constraint=false"))
    );
}

#[test]
fn the_returned_statistics_are_drawn_off_the_tape_and_no_gradient_reaches_them() {
    let (_, dot) = training_picture();
    let batch_norm_box = dot
        .lines()
        .find(|l| l.contains("label=\"BatchNorm_0\";"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_string();
    for (index, path) in [
        "batch_stats/BatchNorm_0/mean",
        "batch_stats/BatchNorm_0/var",
    ]
    .iter()
    .enumerate()
    {
        let note = format!("u{index}");
        let vertex = dot
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{note} [label=")))
            .expect("a note per returned variable");
        assert!(vertex.contains(&format!("<TD>{path}</TD>")) && vertex.contains("shape=note"));
        let edges: Vec<&str> = dot
            .lines()
            .filter(|l| l.contains(&note) && l.contains("->"))
            .collect();
        assert_eq!(edges.len(), 1, "{edges:?}");
        assert!(
            edges[0].contains(&format!("-> {note} [ltail={batch_norm_box},"))
                && edges[0].contains("style=dotted")
                && !edges[0].contains("#c0392b"),
            "{}",
            edges[0]
        );
    }
    assert!(!dot.contains("u2 ["), "one note per returned variable");
}

#[test]
fn params_are_the_leaves_and_running_statistics_only_constants() {
    let (tape, vars) = eval_tape();
    let dot = tape.to_dot();
    let leaves: Vec<String> = tape
        .entries()
        .into_iter()
        .filter(|e| e.op == "leaf")
        .filter_map(|e| e.name)
        .collect();
    assert_eq!(
        leaves,
        vars.params().paths().map(String::from).collect::<Vec<_>>()
    );
    // The running statistics appear as constant operands, labelled, and never as nodes.
    let constant_labels: Vec<String> = tape
        .entries()
        .iter()
        .flat_map(|e| e.inputs.clone())
        .filter_map(|input| match input {
            Operand::Constant(Some(label)) => Some(label.to_string()),
            _ => None,
        })
        .collect();
    // The variance enters as the constant computed from it, labelled as what it holds.
    assert!(
        !constant_labels
            .iter()
            .any(|l| l == "batch_stats/BatchNorm_0/var"),
        "a constant derived from the variance must not be labelled as the variance"
    );
    for stat in [
        "batch_stats/BatchNorm_0/mean",
        "1/√(batch_stats/BatchNorm_0/var + ε)",
    ] {
        assert!(
            constant_labels.iter().any(|l| l == stat),
            "{constant_labels:?}"
        );
        let vertex = dot
            .lines()
            .find(|l| l.contains(&format!("[label=\"{stat}\"")))
            .expect(stat);
        assert!(
            vertex.trim_start().starts_with('c') && vertex.contains("dashed"),
            "{vertex}"
        );
        let name = vertex.trim_start().split(' ').next().unwrap();
        assert!(
            dot.lines()
                .filter(|l| l.trim_start().starts_with(&format!("{name} ->")))
                .all(|l| l.contains("dashed"))
        );
    }
    assert!(
        dot.lines()
            .filter(|l| l.trim_start().starts_with('n') && l.contains("[label="))
            .all(|l| !l.contains("batch_stats"))
    );
}
