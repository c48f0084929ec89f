//! Adam and AdamW.

use std::collections::BTreeMap;

use ndarray::{ArrayD, Zip};

use crate::collection::Params;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grads::Grads;
use crate::kernels::{chunks, simd};
use crate::optim::schedule::power;
use crate::optim::{
    LearningRate, Optimizer, OptimizerState, check_gradients, check_state_shapes,
    setting_at_least_zero, setting_below_one, state_for_each_gradient,
};

/// Adam with bias correction (Kingma and Ba), PyTorch's defaults: `β = (0.9, 0.999)`,
/// `ε = 1e-8`. `m ← β₁ m + (1 − β₁) g`, `v ← β₂ v + (1 − β₂) g²`,
/// `p ← p − lr · m̂ / (√v̂ + ε)` with `m̂ = m / (1 − β₁ᵗ)`, `v̂ = v / (1 − β₂ᵗ)`.
///
/// Weight decay is L2 (added to the gradient, `torch.optim.Adam(weight_decay=…)`) or, for
/// [`Adam::adamw`], decoupled (`p ← p − lr · λ p`, `torch.optim.AdamW`, default `λ = 0.01`).
#[derive(Debug, Clone)]
pub struct Adam<A: Float> {
    learning_rate: LearningRate,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    allow_non_finite: bool,
    first: BTreeMap<String, ArrayD<A>>,
    second: BTreeMap<String, ArrayD<A>>,
    steps: usize,
}

impl<A: Float> Adam<A> {
    /// Adam with PyTorch's defaults and no weight decay.
    pub fn new(learning_rate: impl Into<LearningRate>) -> Self {
        Adam {
            learning_rate: learning_rate.into(),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            allow_non_finite: false,
            first: BTreeMap::new(),
            second: BTreeMap::new(),
            steps: 0,
        }
    }

    /// AdamW: decoupled weight decay, PyTorch's default `λ = 0.01`.
    pub fn adamw(learning_rate: impl Into<LearningRate>) -> Self {
        Adam {
            weight_decay: 0.01,
            decoupled: true,
            ..Adam::new(learning_rate)
        }
    }

    /// The decay rates of the moments.
    #[must_use]
    pub fn betas(self, beta1: f64, beta2: f64) -> Self {
        Adam {
            beta1,
            beta2,
            ..self
        }
    }

    /// The term added to the denominator.
    #[must_use]
    pub fn eps(self, eps: f64) -> Self {
        Adam { eps, ..self }
    }

    /// The weight decay `λ` (L2 for Adam, decoupled for AdamW).
    #[must_use]
    pub fn weight_decay(self, weight_decay: f64) -> Self {
        Adam {
            weight_decay,
            ..self
        }
    }

    /// Whether to apply non-finite gradients instead of refusing them (default `false`:
    /// `update` returns [`Error::NonFinite`] and moves nothing).
    #[must_use]
    pub fn allow_non_finite(self, allow: bool) -> Self {
        Adam {
            allow_non_finite: allow,
            ..self
        }
    }

    /// `"Adam"`, or `"AdamW"` with decoupled weight decay.
    fn kind(&self) -> &'static str {
        if self.decoupled { "AdamW" } else { "Adam" }
    }

    /// PyTorch's checks of `torch.optim.Adam`'s arguments, made before a step moves anything;
    /// stricter on `eps`, which must be above 0 (with 0, a zero gradient gives `0 / 0`).
    fn check_settings(&self) -> Result<()> {
        let op = self.kind();
        self.learning_rate.check(op)?;
        setting_below_one(op, "beta1", self.beta1)?;
        setting_below_one(op, "beta2", self.beta2)?;
        setting_at_least_zero(op, "weight decay", self.weight_decay)?;
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::InvalidSetting {
                op,
                setting: "eps",
                value: self.eps,
                expected: "finite and greater than 0",
            });
        }
        Ok(())
    }

    /// The first moment `m` of the param at `path`.
    #[must_use]
    pub fn first_moment(&self, path: &str) -> Option<&ArrayD<A>> {
        self.first.get(path)
    }

    /// The second moment `v` of the param at `path`.
    #[must_use]
    pub fn second_moment(&self, path: &str) -> Option<&ArrayD<A>> {
        self.second.get(path)
    }
}

impl<A: Float> Optimizer<A> for Adam<A> {
    fn update(&mut self, params: &mut Params<A>, grads: &Grads<A>) -> Result<()> {
        self.check_settings()?;
        check_gradients("Adam::update", params, grads, self.allow_non_finite)?;
        check_state_shapes("Adam::update", &self.first, grads)?;
        check_state_shapes("Adam::update", &self.second, grads)?;
        let lr = self.learning_rate.finite_at("Adam::update", self.steps)?;
        let t = self.steps.saturating_add(1);
        let (b1, b2) = (A::of(self.beta1), A::of(self.beta2));
        let correction1 = 1.0 - power(self.beta1, t);
        let correction2 = 1.0 - power(self.beta2, t);
        let moments = Moments {
            b1,
            b2,
            step_size: A::of(lr / correction1),
            correction2_sqrt: A::of(correction2.sqrt()),
            eps: A::of(self.eps),
        };
        let decay = match (self.weight_decay != 0.0, self.decoupled) {
            (false, _) => Decay::None,
            (true, false) => Decay::L2(A::of(self.weight_decay)),
            (true, true) => Decay::Decoupled(A::of(lr) * A::of(self.weight_decay)),
        };
        let first = state_for_each_gradient(&mut self.first, grads);
        let second = state_for_each_gradient(&mut self.second, grads);
        // As in SGD: params in standard layout in one elementwise pass over the threads, any
        // other on the caller through `Zip`. Params and grads have the same paths in the
        // same order (checked above).
        let mut parts = Vec::new();
        let states = first.into_iter().zip(second);
        for (((_, p), (_, g)), (m, v)) in params.iter_mut().zip(grads.iter()).zip(states) {
            let standard = p.is_standard_layout() && m.is_standard_layout();
            match (standard && v.is_standard_layout(), g.as_slice()) {
                (true, Some(g)) => parts.push((
                    p.as_slice_mut().expect("standard"),
                    m.as_slice_mut().expect("standard"),
                    v.as_slice_mut().expect("standard"),
                    g,
                )),
                _ => Zip::from(p).and(m).and(v).and(g).for_each(|p, m, v, &g| {
                    let g = decay.apply(p, g);
                    moments.step(p, m, v, g);
                }),
            }
        }
        chunks::for_each_elementwise(parts, |path, (p, m, v, g)| {
            simd::vectorized_on(
                path,
                #[inline(always)]
                || adam_step(p, m, v, g, &moments, decay),
            );
        });
        self.steps += 1;
        Ok(())
    }

    fn steps(&self) -> usize {
        self.steps
    }

    fn state(&self) -> OptimizerState<A> {
        let slots = [("mu", &self.first), ("nu", &self.second)];
        OptimizerState::new(self.kind(), self.steps, slots)
    }

    fn load_state(&mut self, state: OptimizerState<A>) -> Result<()> {
        let (steps, mut slots) =
            state.into_slots("Adam::load_state", self.kind(), &["mu", "nu"])?;
        self.first = slots.remove("mu").unwrap_or_default();
        self.second = slots.remove("nu").unwrap_or_default();
        self.steps = steps;
        Ok(())
    }
}

/// The constants of one Adam step: `lr / (1 − β₁ᵗ)` and `√(1 − β₂ᵗ)`, as PyTorch computes
/// them, so that the step is `step_size · m / (√v / √(1 − β₂ᵗ) + ε)`: no intermediate exceeds
/// the gradient's square times `1 − β₂`, and a large finite gradient (1e20 in `f32`, whose
/// `v / (1 − β₂)` would overflow) moves a param by about the learning rate, as in PyTorch.
struct Moments<A> {
    b1: A,
    b2: A,
    step_size: A,
    correction2_sqrt: A,
    eps: A,
}

impl<A: Float> Moments<A> {
    /// `m`, `v` and `p` after one step with gradient `g` (weight decay already applied).
    #[inline(always)]
    fn step(&self, p: &mut A, m: &mut A, v: &mut A, g: A) {
        *m = self.b1 * *m + (A::one() - self.b1) * g;
        *v = self.b2 * *v + (A::one() - self.b2) * g * g;
        let denominator = v.sqrt() / self.correction2_sqrt + self.eps;
        *p -= self.step_size * (*m / denominator);
    }
}

/// Weight decay, as it enters a step.
#[derive(Clone, Copy)]
enum Decay<A> {
    None,
    /// L2: `λ p` added to the gradient.
    L2(A),
    /// Decoupled (AdamW): `p ← p − (lr λ) p` before the step.
    Decoupled(A),
}

impl<A: Float> Decay<A> {
    /// The gradient the step sees, after decaying `p` if decoupled.
    #[inline(always)]
    fn apply(self, p: &mut A, g: A) -> A {
        match self {
            Decay::None => g,
            Decay::L2(lambda) => g + lambda * *p,
            Decay::Decoupled(lr_lambda) => {
                *p = *p - lr_lambda * *p;
                g
            }
        }
    }
}

/// One step over slices: a copy of the loop for each kind of decay, in which the decay's
/// branch is resolved (the loop then vectorises).
#[inline(always)]
fn adam_step<A: Float>(
    p: &mut [A],
    m: &mut [A],
    v: &mut [A],
    g: &[A],
    moments: &Moments<A>,
    decay: Decay<A>,
) {
    #[inline(always)]
    fn each<A: Float>(p: &mut [A], m: &mut [A], v: &mut [A], g: &[A], c: &Moments<A>, d: Decay<A>) {
        for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            let g = d.apply(p, g);
            c.step(p, m, v, g);
        }
    }
    match decay {
        Decay::None => each(p, m, v, g, moments, Decay::None),
        Decay::L2(lambda) => each(p, m, v, g, moments, Decay::L2(lambda)),
        Decay::Decoupled(lr_lambda) => each(p, m, v, g, moments, Decay::Decoupled(lr_lambda)),
    }
}
