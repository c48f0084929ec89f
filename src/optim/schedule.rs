//! Learning-rate schedules.

/// A learning rate as a function of the step (0-based).
///
/// ```
/// use tapegrad::optim::LearningRate;
/// let step = LearningRate::Step { initial: 0.1, gamma: 0.5, every: 10 };
/// assert_eq!(step.at(0), 0.1);
/// assert_eq!(step.at(10), 0.05);
/// let cosine = LearningRate::Cosine { initial: 1.0, final_value: 0.0, steps: 100 };
/// assert!((cosine.at(50) - 0.5).abs() < 1e-12);
/// assert_eq!(cosine.at(1000), 0.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
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
    /// Cosine decay from `initial` to `final_value` over `steps`, then flat
    /// (PyTorch `CosineAnnealingLR`, optax `cosine_decay_schedule`).
    Cosine {
        /// The rate at step 0.
        initial: f64,
        /// The rate from `steps` on.
        final_value: f64,
        /// The length of the decay.
        steps: usize,
    },
}

impl LearningRate {
    /// The rate at `step`.
    pub fn at(&self, step: usize) -> f64 {
        match *self {
            LearningRate::Constant(rate) => rate,
            LearningRate::Step {
                initial,
                gamma,
                every,
            } => initial * gamma.powi((step / every.max(1)) as i32),
            LearningRate::Cosine {
                initial,
                final_value,
                steps,
            } => {
                let progress = step.min(steps) as f64 / steps.max(1) as f64;
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                final_value + (initial - final_value) * cosine
            }
        }
    }
}

impl From<f64> for LearningRate {
    fn from(rate: f64) -> Self {
        LearningRate::Constant(rate)
    }
}
