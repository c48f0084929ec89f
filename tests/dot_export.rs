//! The DOT export's structure: every node drawn once, params as leaves, running statistics
//! only as constant vertices with dashed edges.

use tapegrad::nn::{BatchNorm, Mlp};
use tapegrad::{ApplyOptions, ModuleExt, Operand, Tape, Tensor, value_and_grad};

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
        assert_eq!(
            dot.matches(&format!("\n  n{} [label=", e.id)).count(),
            1,
            "{dot}"
        );
    }
    let inputs: usize = entries.iter().map(|e| e.inputs.len()).sum();
    assert_eq!(dot.matches(" -> n").count(), inputs);
    assert!(dot.starts_with("digraph tape {") && dot.trim_end().ends_with('}'));
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
