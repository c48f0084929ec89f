//! Learning-rate schedules.

use crate::error::{Error, Result};
use crate::optim::settings::{count_at_least_one, setting_at_least_zero};

/// A learning rate as a function of the step (0-based).
///
/// ```
/// use tapegrad::optim::LearningRate;
/// let step = LearningRate::Step { initial: 0.1, gamma: 0.5, every: 10 };
/// assert_eq!(step.at(0), 0.1);
/// assert_eq!(step.at(10), 0.05);
/// let cosine = LearningRate::Cosine { initial: 1.0, final_value: 0.0, steps: 100 };
/// assert!((cosine.at(50) - 0.5).abs() < 1e-12);
/// assert_eq!(cosine.at(1000), 0.0); // past its steps it stays at final_value (as optax)
/// let warm = LearningRate::WarmupCosine { peak: 1.0, warmup: 10, steps: 110, final_value: 0.0 };
/// assert_eq!(warm.at(0), 0.0);
/// assert_eq!(warm.at(5), 0.5);
/// assert_eq!(warm.at(10), 1.0);
/// assert!((warm.at(60) - 0.5).abs() < 1e-12);
/// let milestones = LearningRate::MultiStep { initial: 1.0, gamma: 0.1, milestones: vec![3, 5] };
/// assert_eq!([milestones.at(2), milestones.at(3), milestones.at(5)], [1.0, 0.1, 0.1 * 0.1]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum LearningRate {
    /// The same rate at every step.
    Constant(f64),
    /// `initial · gamma^(step / every)` (PyTorch `StepLR`).
    Step {
        /// The rate at step 0.
        initial: f64,
        /// The factor applied every `every` steps.
        gamma: f64,
        /// Steps between decays.
        every: usize,
    },
    /// `initial · gamma^(number of milestones ≤ step)` (PyTorch `MultiStepLR`, optax
    /// `piecewise_constant_schedule`).
    MultiStep {
        /// The rate at step 0.
        initial: f64,
        /// The factor applied at each milestone.
        gamma: f64,
        /// The steps at which the rate is multiplied by `gamma`.
        milestones: Vec<usize>,
    },
    /// `initial · gamma^step` (PyTorch `ExponentialLR`, optax `exponential_decay` with
    /// `transition_steps = 1`).
    Exponential {
        /// The rate at step 0.
        initial: f64,
        /// The factor applied at every step.
        gamma: f64,
    },
    /// Cosine decay from `initial` to `final_value` over `steps`, then flat at
    /// `final_value`. This is optax's `cosine_decay_schedule`. PyTorch's
    /// `CosineAnnealingLR` with `T_max = steps` agrees up to `steps` and then goes on along
    /// the cosine, rising back towards `initial` (a period of `2 · steps`); tapegrad follows
    /// optax, because a schedule that climbs again after its end is rarely what a run that
    /// outlives its plan wants. For restarts, use a schedule per phase.
    Cosine {
        /// The rate at step 0.
        initial: f64,
        /// The rate from `steps` on.
        final_value: f64,
        /// The length of the decay.
        steps: usize,
    },
    /// Linear warm-up from 0 to `peak` over `warmup` steps, then cosine decay to
    /// `final_value` at step `steps` (counted from 0, warm-up included), then flat. optax:
    /// `warmup_cosine_decay_schedule(0, peak, warmup, steps, final_value)`.
    WarmupCosine {
        /// The rate at the end of the warm-up.
        peak: f64,
        /// Steps of linear warm-up.
        warmup: usize,
        /// The step at which the decay reaches `final_value`.
        steps: usize,
        /// The rate from `steps` on.
        final_value: f64,
    },
}

impl LearningRate {
    /// The rate at `step`.
    #[must_use]
    pub fn at(&self, step: usize) -> f64 {
        match *self {
            LearningRate::Constant(rate) => rate,
            LearningRate::Step {
                initial,
                gamma,
                every,
            } => initial * power(gamma, step / every.max(1)),
            LearningRate::MultiStep {
                initial,
                gamma,
                ref milestones,
            } => {
                let passed = milestones.iter().filter(|&&m| m <= step).count();
                initial * power(gamma, passed)
            }
            LearningRate::Exponential { initial, gamma } => initial * gamma.powf(step as f64),
            LearningRate::Cosine {
                initial,
                final_value,
                steps,
            } => cosine_decay(initial, final_value, step.min(steps), steps),
            LearningRate::WarmupCosine {
                peak,
                warmup,
                steps,
                final_value,
            } => {
                if step < warmup {
                    peak * step as f64 / warmup as f64
                } else {
                    let decay = steps.saturating_sub(warmup);
                    cosine_decay(peak, final_value, (step - warmup).min(decay), decay)
                }
            }
        }
    }

    /// The rate at `step`, or an error naming `op`, the step and the rate if it is not
    /// finite (an exponential schedule that grew past `f64`'s range): checked before an
    /// optimizer moves anything.
    pub(crate) fn finite_at(&self, op: &'static str, step: usize) -> Result<f64> {
        let rate = self.at(step);
        if rate.is_finite() {
            Ok(rate)
        } else {
            Err(Error::NonFinite {
                op,
                name: format!("the learning rate at step {step} ({rate})"),
            })
        }
    }

    /// Checks the schedule's settings: every rate and factor finite and at least 0, as
    /// PyTorch's `ValueError`s ask of a learning rate. `op` names the optimizer.
    pub(crate) fn check(&self, op: &'static str) -> Result<()> {
        let rate = |setting, value: f64| setting_at_least_zero(op, setting, value);
        match *self {
            LearningRate::Constant(value) => rate("learning rate", value),
            LearningRate::Step {
                initial,
                gamma,
                every,
            } => {
                rate("learning rate", initial)?;
                rate("gamma", gamma)?;
                count_at_least_one(op, "steps between decays", every)
            }
            LearningRate::MultiStep { initial, gamma, .. }
            | LearningRate::Exponential { initial, gamma } => {
                rate("learning rate", initial)?;
                rate("gamma", gamma)
            }
            LearningRate::Cosine {
                initial,
                final_value,
                steps,
            } => {
                rate("learning rate", initial)?;
                rate("final learning rate", final_value)?;
                count_at_least_one(op, "decay steps", steps)
            }
            LearningRate::WarmupCosine {
                peak,
                warmup,
                steps,
                final_value,
            } => {
                rate("peak learning rate", peak)?;
                rate("final learning rate", final_value)?;
                // A warm-up as long as the schedule would never decay (optax refuses it too).
                if warmup >= steps {
                    return Err(Error::InvalidSetting {
                        op,
                        setting: "warm-up steps",
                        value: warmup as f64,
                        expected: "fewer than the schedule's steps",
                    });
                }
                Ok(())
            }
        }
    }
}

/// `base` to the power `n`, for any count `n`: `powi` where `n` fits its `i32` (the same bits
/// as before for every step a run reaches), `powf` beyond, never a count wrapped negative.
pub(crate) fn power(base: f64, n: usize) -> f64 {
    match i32::try_from(n) {
        Ok(n) => base.powi(n),
        Err(_) => base.powf(n as f64),
    }
}

/// From `from` at step 0 to `to` at step `steps`, along half a cosine.
fn cosine_decay(from: f64, to: f64, step: usize, steps: usize) -> f64 {
    let progress = step as f64 / steps.max(1) as f64;
    to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

impl From<f64> for LearningRate {
    fn from(rate: f64) -> Self {
        LearningRate::Constant(rate)
    }
}
