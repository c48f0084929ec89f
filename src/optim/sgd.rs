//! Stochastic gradient descent with momentum, Nesterov and weight decay.

use std::collections::BTreeMap;

use ndarray::{ArrayD, Zip};

use crate::collection::Params;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grads::Grads;
use crate::kernels::{chunks, simd};
use crate::optim::momentum::heavy_ball;
use crate::optim::{
    LearningRate, Optimizer, OptimizerState, check_gradients, check_state_shapes,
    setting_at_least_zero, state_for_each_gradient,
};

/// SGD: `g ← g + λ p` (weight decay), `v ← μ v + g`, `p ← p − lr · v` (or
/// `p ← p − lr · (g + μ v)` with Nesterov). Equal to `torch.optim.SGD(lr, momentum,
/// nesterov, weight_decay)` with no dampening, and to `optax.sgd(lr, momentum)`.
///
/// ```
/// use tapegrad::optim::{Optimizer, Sgd};
/// use tapegrad::{value_and_grad, Params};
/// use ndarray::arr1;
///
/// let mut params: Params<f64> = [("w".to_string(), arr1(&[1.0]))].into_iter().collect();
/// let mut sgd = Sgd::new(0.1).momentum(0.9);
/// for _ in 0..2 {
///     // loss = w^2, gradient 2w
///     let (_, grads) = value_and_grad(&params, |p| Ok(p.get("w")?.square().sum_all()))?;
///     sgd.update(&mut params, &grads)?;
/// }
/// // Step 1: g = 2, v = 2, w = 0.8. Step 2: g = 1.6, v = 0.9·2 + 1.6 = 3.4, w = 0.8 − 0.34.
/// assert!((params.get("w").unwrap()[[0]] - 0.46).abs() < 1e-12);
/// assert!((sgd.velocity("w").unwrap()[[0]] - 3.4).abs() < 1e-12);
/// # Ok::<(), tapegrad::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sgd<A: Float> {
    learning_rate: LearningRate,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    allow_non_finite: bool,
    velocities: BTreeMap<String, ArrayD<A>>,
    steps: usize,
}

impl<A: Float> Sgd<A> {
    /// Plain SGD with a constant rate or a schedule.
    pub fn new(learning_rate: impl Into<LearningRate>) -> Self {
        Sgd {
            learning_rate: learning_rate.into(),
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            allow_non_finite: false,
            velocities: BTreeMap::new(),
            steps: 0,
        }
    }

    /// Heavy-ball momentum `μ`.
    #[must_use]
    pub fn momentum(self, momentum: f64) -> Self {
        Sgd { momentum, ..self }
    }

    /// Nesterov momentum.
    #[must_use]
    pub fn nesterov(self, nesterov: bool) -> Self {
        Sgd { nesterov, ..self }
    }

    /// L2 weight decay `λ`, added to the gradient (PyTorch's `weight_decay`).
    #[must_use]
    pub fn weight_decay(self, weight_decay: f64) -> Self {
        Sgd {
            weight_decay,
            ..self
        }
    }

    /// Whether to apply non-finite gradients instead of refusing them (default `false`:
    /// `update` returns [`Error::NonFinite`] and moves nothing). Turning the check off saves
    /// one pass over the gradients; a NaN then spreads into every param it reaches.
    #[must_use]
    pub fn allow_non_finite(self, allow: bool) -> Self {
        Sgd {
            allow_non_finite: allow,
            ..self
        }
    }

    /// PyTorch's checks of `torch.optim.SGD`'s arguments, made before a step moves anything.
    fn check_settings(&self) -> Result<()> {
        const OP: &str = "Sgd";
        self.learning_rate.check(OP)?;
        setting_at_least_zero(OP, "momentum", self.momentum)?;
        setting_at_least_zero(OP, "weight decay", self.weight_decay)?;
        if self.nesterov && self.momentum == 0.0 {
            return Err(Error::InvalidSetting {
                op: OP,
                setting: "momentum",
                value: self.momentum,
                expected: "greater than 0 with Nesterov",
            });
        }
        Ok(())
    }

    /// The velocity of the param at `path` (after the first step with momentum).
    #[must_use]
    pub fn velocity(&self, path: &str) -> Option<&ArrayD<A>> {
        self.velocities.get(path)
    }

    /// The learning rate the next step will use.
    #[must_use]
    pub fn current_learning_rate(&self) -> f64 {
        self.learning_rate.at(self.steps)
    }
}

impl<A: Float> Optimizer<A> for Sgd<A> {
    fn update(&mut self, params: &mut Params<A>, grads: &Grads<A>) -> Result<()> {
        self.check_settings()?;
        check_gradients("Sgd::update", params, grads, self.allow_non_finite)?;
        check_state_shapes("Sgd::update", &self.velocities, grads)?;
        let lr = A::of(self.learning_rate.finite_at("Sgd::update", self.steps)?);
        let (mu, decay, nesterov) = (
            A::of(self.momentum),
            A::of(self.weight_decay),
            self.nesterov,
        );
        // Params and grads have the same paths in the same order (checked above). Params in
        // standard layout (all of them, unless a caller built one from a view) are updated
        // in one elementwise pass over the threads; any other on the caller, through `Zip`.
        if self.momentum == 0.0 {
            let mut parts = Vec::new();
            for ((_, p), (_, g)) in params.iter_mut().zip(grads.iter()) {
                match (p.is_standard_layout(), g.as_slice()) {
                    (true, Some(g)) => parts.push((p.as_slice_mut().expect("standard"), g)),
                    _ => Zip::from(p)
                        .and(g)
                        .for_each(|p, &g| *p -= lr * (g + decay * *p)),
                }
            }
            chunks::for_each_elementwise(parts, |path, (p, g): (&mut [A], &[A])| {
                simd::vectorized_on(
                    path,
                    #[inline(always)]
                    || {
                        for (p, &g) in p.iter_mut().zip(g) {
                            *p -= lr * (g + decay * *p);
                        }
                    },
                );
            });
        } else {
            let velocities = state_for_each_gradient(&mut self.velocities, grads);
            let mut parts = Vec::new();
            for (((_, p), (_, g)), v) in params.iter_mut().zip(grads.iter()).zip(velocities) {
                match (
                    p.is_standard_layout() && v.is_standard_layout(),
                    g.as_slice(),
                ) {
                    (true, Some(g)) => parts.push((
                        p.as_slice_mut().expect("standard"),
                        v.as_slice_mut().expect("standard"),
                        g,
                    )),
                    _ => Zip::from(p).and(v).and(g).for_each(|p, v, &g| {
                        *p -= lr * heavy_ball(v, g + decay * *p, mu, nesterov);
                    }),
                }
            }
            // One pass per param, in place: no copy of the gradient or the velocity.
            chunks::for_each_elementwise(parts, |path, (p, v, g)| {
                simd::vectorized_on(
                    path,
                    #[inline(always)]
                    || momentum_step(p, v, g, [lr, decay, mu], nesterov),
                );
            });
        }
        self.steps += 1;
        Ok(())
    }

    fn steps(&self) -> usize {
        self.steps
    }

    fn state(&self) -> OptimizerState<A> {
        OptimizerState::new("Sgd", self.steps, [("velocity", &self.velocities)])
    }

    fn load_state(&mut self, state: OptimizerState<A>) -> Result<()> {
        let (steps, mut slots) = state.into_slots("Sgd::load_state", "Sgd", &["velocity"])?;
        self.velocities = slots.remove("velocity").unwrap_or_default();
        self.steps = steps;
        Ok(())
    }
}

/// One heavy-ball step of `p` (velocity `v`, gradient `g`), with `[lr, decay, mu]`.
#[inline(always)]
fn momentum_step<A: Float>(
    p: &mut [A],
    v: &mut [A],
    g: &[A],
    [lr, decay, mu]: [A; 3],
    nesterov: bool,
) {
    // The branch outside the loop: each loop vectorises on its own.
    let elements = p.iter_mut().zip(v.iter_mut()).zip(g);
    if nesterov {
        for ((p, v), &g) in elements {
            *p -= lr * heavy_ball(v, g + decay * *p, mu, true);
        }
    } else {
        for ((p, v), &g) in elements {
            *p -= lr * heavy_ball(v, g + decay * *p, mu, false);
        }
    }
}
