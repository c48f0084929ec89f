//! How an op puts its result and its rules on the tape: [`record_rules`] for an op with every
//! rule ([`Rules`]: its VJP on arrays, its VJP as ops, its JVP), [`record`] for one with a VJP
//! alone (a user's `custom_op`), which can be differentiated once, in reverse mode.
//!
//! Why three rules rather than one VJP written as ops: the first-order step is what training
//! runs, and its VJPs work in place on the incoming gradient, call fused kernels and never
//! allocate a tensor. Writing them as ops would cost every step a tensor per intermediate
//! value. Instead each op keeps that VJP and adds two short rules used only when asked for:
//! the VJP again as ops (on the values it saved, linked back to their nodes by [`Primal`]),
//! which a recorded backward pass runs so that its result can be differentiated, and the
//! JVP, which a forward-mode sweep runs. All three read one set of saved values, so the
//! first-order step saves and allocates exactly what it did with the VJP alone.

use std::rc::Rc;
use std::sync::Arc;

use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::tape::{Operand, Rule, Site, Tape, Traced};
use crate::tensor::Tensor;

/// The rules of an op, all reading `saved`:
/// * `vjp(saved, g, needs)`: one gradient per input, on arrays (see [`Rule::vjp`]);
/// * `recorded(saved, g, primal)`: the same as ops, `g` a tensor that may be tracked, the
///   saved values linked to their nodes through `primal`;
/// * `jvp(saved, tangents)`: the output's tangent, `None` standing for a zero tangent.
pub(crate) struct Rules<S, V, R, J> {
    pub(crate) saved: S,
    pub(crate) vjp: V,
    pub(crate) recorded: R,
    pub(crate) jvp: J,
}

/// A gradient per input (`None` where there is none) as the recorded rules return them.
pub(crate) type RecordedGrads<A> = Result<Vec<Option<Tensor<A>>>>;

impl<A, S, V, R, J> Rule<A> for Rules<S, V, R, J>
where
    A: Float,
    V: Fn(&S, ArrayD<A>, &[bool]) -> Vec<Option<ArrayD<A>>>,
    R: Fn(&S, &Tensor<A>, &Primal<'_, A>) -> RecordedGrads<A>,
    J: Fn(&S, &[Option<&ArrayD<A>>]) -> Result<ArrayD<A>>,
{
    fn vjp(&self, g: ArrayD<A>, needs: &[bool]) -> Result<Vec<Option<ArrayD<A>>>> {
        Ok((self.vjp)(&self.saved, g, needs))
    }

    fn vjp_recorded(
        &self,
        tape: &Tape<A>,
        site: &Site<'_>,
        g: Traced<A>,
    ) -> Option<Result<Vec<Option<Traced<A>>>>> {
        Some(run_recorded(tape, site, g, |g, primal| {
            (self.recorded)(&self.saved, g, primal)
        }))
    }

    fn jvp(&self, tangents: &[Option<&ArrayD<A>>]) -> Option<Result<ArrayD<A>>> {
        Some((self.jvp)(&self.saved, tangents))
    }
}

/// The rules of an op of one input, each giving that input's gradient or the output's
/// tangent: [`Rules`] whose `vjp` returns one array and `recorded` one tensor.
struct OneInput<S, V, R, J>(Rules<S, V, R, J>);

impl<A, S, V, R, J> Rule<A> for OneInput<S, V, R, J>
where
    A: Float,
    V: Fn(&S, ArrayD<A>, &[bool]) -> ArrayD<A>,
    R: Fn(&S, &Tensor<A>, &Primal<'_, A>) -> Result<Tensor<A>>,
    J: Fn(&S, &[Option<&ArrayD<A>>]) -> Result<ArrayD<A>>,
{
    fn vjp(&self, g: ArrayD<A>, needs: &[bool]) -> Result<Vec<Option<ArrayD<A>>>> {
        Ok(vec![Some((self.0.vjp)(&self.0.saved, g, needs))])
    }

    fn vjp_recorded(
        &self,
        tape: &Tape<A>,
        site: &Site<'_>,
        g: Traced<A>,
    ) -> Option<Result<Vec<Option<Traced<A>>>>> {
        Some(run_recorded(tape, site, g, |g, primal| {
            Ok(vec![Some((self.0.recorded)(&self.0.saved, g, primal)?)])
        }))
    }

    fn jvp(&self, tangents: &[Option<&ArrayD<A>>]) -> Option<Result<ArrayD<A>>> {
        Some((self.0.jvp)(&self.0.saved, tangents))
    }
}

/// Runs a recorded rule on the tape's values: `g` and the saved values as tensors of
/// `tape`, the gradients back as traced values (a gradient on another tape is an error).
pub(crate) fn run_recorded<A: Float>(
    tape: &Tape<A>,
    site: &Site<'_>,
    g: Traced<A>,
    rule: impl FnOnce(&Tensor<A>, &Primal<'_, A>) -> RecordedGrads<A>,
) -> Result<Vec<Option<Traced<A>>>> {
    let g = Tensor::from_traced(tape, g);
    let primal = Primal { tape, site };
    rule(&g, &primal)?
        .into_iter()
        .map(|grad| grad.map(|t| t.traced_on(tape, "backward")).transpose())
        .collect()
}

/// The rule of an op given a VJP alone: reverse mode, first order.
struct FirstOrder<F>(F);

impl<A, F> Rule<A> for FirstOrder<F>
where
    A: Float,
    F: Fn(ArrayD<A>, &[bool]) -> Result<Vec<Option<ArrayD<A>>>>,
{
    fn vjp(&self, g: ArrayD<A>, needs: &[bool]) -> Result<Vec<Option<ArrayD<A>>>> {
        (self.0)(g, needs)
    }

    fn vjp_recorded(
        &self,
        _: &Tape<A>,
        _: &Site<'_>,
        _: Traced<A>,
    ) -> Option<Result<Vec<Option<Traced<A>>>>> {
        None
    }

    fn jvp(&self, _: &[Option<&ArrayD<A>>]) -> Option<Result<ArrayD<A>>> {
        None
    }
}

/// What a recorded rule sees of its op on the tape: it turns the values the op saved back
/// into tensors tracked as the nodes they were, so that the ops of the rule are recorded
/// with the right inputs and a second backward pass reaches them.
pub(crate) struct Primal<'a, A: Float> {
    tape: &'a Tape<A>,
    site: &'a Site<'a>,
}

impl<A: Float> Primal<'_, A> {
    /// Input `i`, whose value is `value`: tracked as its node, or a constant.
    pub(crate) fn input(&self, i: usize, value: &Arc<ArrayD<A>>) -> Tensor<A> {
        let node = self.site.inputs.get(i).and_then(Operand::node);
        Tensor::from_traced(
            self.tape,
            Traced {
                value: Arc::clone(value),
                node,
            },
        )
    }

    /// The op's output, whose value is `value`, tracked as the op's node.
    pub(crate) fn output(&self, value: &Arc<ArrayD<A>>) -> Tensor<A> {
        Tensor::from_traced(
            self.tape,
            Traced {
                value: Arc::clone(value),
                node: Some(self.site.node),
            },
        )
    }

    /// Whether input `i` is a node (wants a gradient).
    pub(crate) fn needs(&self, i: usize) -> bool {
        self.site.inputs.get(i).and_then(Operand::node).is_some()
    }

    /// The tape the op is on.
    pub(crate) fn tape(&self) -> &Tape<A> {
        self.tape
    }
}

/// Records the result of an op with all its rules: `value` is the forward result. If no
/// input is tracked nothing is recorded and the result is a constant (the rules are dropped
/// unused), with no label: a constant computed from a labelled one must not pass for it
/// (BatchNorm's `1/√(var + ε)` is not the variance), and deriving a label such as
/// `sqrt(batch_stats/…/var)` would cost a string per op on the no-tape path, growing with
/// depth. A layer that knows what its constant holds labels it (`with_label`). Inputs
/// tracked on different tapes are an error.
///
/// `value` is an array or a shared one: a rule that reads the output (ReLU's mask) keeps a
/// clone of the `Arc` instead of a copy.
pub(crate) fn record_rules<A: Float>(
    op: &'static str,
    inputs: &[&Tensor<A>],
    value: impl Into<Arc<ArrayD<A>>>,
    rule: impl Rule<A> + 'static,
) -> Result<Tensor<A>> {
    let value = value.into();
    let mut tape: Option<&Tape<A>> = None;
    for t in inputs {
        if let Some((other, _)) = t.node() {
            match tape {
                Some(first) if !first.same_as(other) => return Err(Error::DifferentTapes { op }),
                _ => tape = Some(other),
            }
        }
    }
    let Some(tape) = tape else {
        return Ok(Tensor::from_shared(value));
    };
    let operands = inputs.iter().map(|t| t.operand()).collect();
    let id = tape.push_op(op, operands, value.raw_dim(), Rc::new(rule));
    Ok(Tensor::tracked(value, tape.clone(), id))
}

/// [`record_rules`] for an op with a VJP alone: differentiable once, in reverse mode.
pub(crate) fn record<A: Float>(
    op: &'static str,
    inputs: &[&Tensor<A>],
    value: impl Into<Arc<ArrayD<A>>>,
    vjp: impl Fn(ArrayD<A>, &[bool]) -> Vec<Option<ArrayD<A>>> + 'static,
) -> Result<Tensor<A>> {
    record_fallible(op, inputs, value, move |g, needs| Ok(vjp(g, needs)))
}

/// [`record`] for an op whose VJP can fail: its error ends the backward pass.
pub(crate) fn record_fallible<A: Float>(
    op: &'static str,
    inputs: &[&Tensor<A>],
    value: impl Into<Arc<ArrayD<A>>>,
    vjp: impl Fn(ArrayD<A>, &[bool]) -> Result<Vec<Option<ArrayD<A>>>> + 'static,
) -> Result<Tensor<A>> {
    record_rules(op, inputs, value, FirstOrder(vjp))
}

/// [`record_rules`] for an op of one input, whose rules give that input's gradient. One input
/// cannot come from two tapes, so this cannot fail.
pub(crate) fn record_one<A, S, V, R, J>(
    op: &'static str,
    input: &Tensor<A>,
    value: impl Into<Arc<ArrayD<A>>>,
    rules: Rules<S, V, R, J>,
) -> Tensor<A>
where
    A: Float,
    S: 'static,
    V: Fn(&S, ArrayD<A>, &[bool]) -> ArrayD<A> + 'static,
    R: Fn(&S, &Tensor<A>, &Primal<'_, A>) -> Result<Tensor<A>> + 'static,
    J: Fn(&S, &[Option<&ArrayD<A>>]) -> Result<ArrayD<A>> + 'static,
{
    record_rules(op, &[input], value, OneInput(rules)).expect("one input cannot mix tapes")
}
