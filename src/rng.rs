//! A small, stable random number generator: SplitMix64 with Box-Muller normals, usable with
//! `rand`.
//!
//! tapegrad owns its generator instead of using `rand`'s `StdRng` because invariant 7 of the
//! design (same seed, same variables) must hold across dependency upgrades, and `StdRng`'s
//! algorithm may change between `rand` releases. SplitMix64 is also the generator of the
//! benchmark workload and of the reference fixtures, so the two line up exactly.
//!
//! It implements `rand_core`'s [`Rng`](rand_core::Rng) (through `TryRng` with an infallible
//! error, as `rand_core` 0.10 asks) and [`SeedableRng`], so everything in `rand` and
//! `rand_distr` draws from it: `rng.random::<f32>()`, `slice.shuffle(&mut rng)`,
//! `Normal::new(0.0, 1.0)?.sample(&mut rng)`. The algorithm is fixed here; what `rand` builds
//! on top (its float conversion, its shuffle) is `rand`'s and may change with a `rand` minor
//! release, which `tests/rand_stability.rs` would catch.

use std::convert::Infallible;

use rand_core::{SeedableRng, TryRng};

/// The SplitMix64 generator (Steele, Lea and Flood, 2014): 64 bits of state, passes BigCrush,
/// and every seed is a good seed.
///
/// ```
/// use tapegrad::SplitMix64;
/// let mut a = SplitMix64::new(42);
/// let mut b = SplitMix64::new(42);
/// assert_eq!(a.next_u64(), b.next_u64());
/// let u = a.uniform();
/// assert!(u > 0.0 && u < 1.0);
/// ```
///
/// With `rand`:
///
/// ```
/// use rand::{RngExt, SeedableRng, seq::SliceRandom};
/// use tapegrad::SplitMix64;
/// let mut rng = SplitMix64::seed_from_u64(7); // the same stream as SplitMix64::new(7)
/// let coin: bool = rng.random_bool(0.5);
/// let mut order: Vec<usize> = (0..10).collect();
/// order.shuffle(&mut rng);
/// # let _ = coin;
/// assert_eq!(order.len(), 10);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// A generator for one named stream: `seed` mixed with a stable hash (FNV-1a) of `path`,
    /// so a variable's initial value depends on its path, not on the order of creation
    /// (Flax derives its RNG streams the same way).
    #[must_use]
    pub fn for_path(seed: u64, path: &str) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in path.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        // One SplitMix step over the combination decorrelates nearby seeds and hashes.
        let mut mix = SplitMix64::new(seed ^ hash.rotate_left(17));
        SplitMix64::new(mix.next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in the open interval (0, 1), 53 bits.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal by Box-Muller (the second value is not cached, so each call uses two
    /// uniforms, as the benchmark workload's generator does).
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Uniform integer in `0..n` (`n > 0`), by rejection so it is unbiased.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no value to return");
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Shuffles `items` in place (Fisher-Yates with [`SplitMix64::below`]). `rand`'s
    /// `SliceRandom::shuffle` works too, with `rand`'s own (different) index draws.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// The `rand_core` 0.10 generator interface: `Rng` follows from an infallible `TryRng`.
impl TryRng for SplitMix64 {
    type Error = Infallible;

    /// The high half of the next 64 bits (the better half of most generators, and what
    /// `rand_core` recommends for 64-bit generators).
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((SplitMix64::next_u64(self) >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(SplitMix64::next_u64(self))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        rand_core::utils::fill_bytes_via_next_word(dst, || self.try_next_u64())
    }
}

impl SeedableRng for SplitMix64 {
    /// SplitMix64's whole state: 8 bytes, little-endian.
    type Seed = [u8; 8];

    fn from_seed(seed: [u8; 8]) -> Self {
        SplitMix64::new(u64::from_le_bytes(seed))
    }

    /// Overridden so that `seed_from_u64(s)` is `SplitMix64::new(s)`: every `u64` is a good
    /// SplitMix64 seed, and one seed should mean one stream however it is passed.
    fn seed_from_u64(state: u64) -> Self {
        SplitMix64::new(state)
    }
}

/// A root seed for [`init`](crate::ModuleExt::init) and for the random streams of
/// [`ApplyOptions::rng`](crate::ApplyOptions::rng): a `u64` as it is, or one draw from a
/// user's `rand` generator.
///
/// Either way only the root comes from it: each variable's stream is then derived from the
/// root and the variable's path (design invariant 7), so values never depend on the order
/// in which layers are created, and one root always gives the same variables.
///
/// ```
/// use rand::SeedableRng;
/// use tapegrad::{ModuleExt, Tensor, nn::Dense};
/// let x = Tensor::constant(ndarray::Array2::<f64>::zeros((1, 3)));
/// let from_seed = Dense::new(2).init(5, &x)?;
/// // A user's generator (rand_pcg, rand_chacha, or tapegrad's own) gives its next u64:
/// let mut rng = tapegrad::SplitMix64::seed_from_u64(1);
/// let drawn = rand::Rng::next_u64(&mut tapegrad::SplitMix64::seed_from_u64(1));
/// let from_rng = Dense::new(2).init(&mut rng, &x)?;
/// assert_eq!(from_rng, Dense::new(2).init(drawn, &x)?);
/// assert_ne!(from_rng, from_seed);
/// # Ok::<(), tapegrad::Error>(())
/// ```
pub trait IntoSeed {
    /// The root seed.
    fn into_seed(self) -> u64;
}

impl IntoSeed for u64 {
    fn into_seed(self) -> u64 {
        self
    }
}

impl<R: rand_core::Rng + ?Sized> IntoSeed for &mut R {
    /// Draws one `u64`: the generator advances by one step.
    fn into_seed(self) -> u64 {
        self.next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_splitmix64_sequence() {
        // First outputs of SplitMix64 seeded with 0, as published with the algorithm.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn paths_give_different_streams() {
        let a = SplitMix64::for_path(0, "params/Dense_0/kernel").next_u64();
        let b = SplitMix64::for_path(0, "params/Dense_1/kernel").next_u64();
        assert_ne!(a, b);
    }

    #[test]
    fn the_rand_interface_draws_the_same_stream() {
        use rand_core::Rng;
        let mut ours = SplitMix64::new(11);
        let mut theirs = <SplitMix64 as SeedableRng>::seed_from_u64(11);
        let expected: Vec<u64> = (0..3).map(|_| ours.next_u64()).collect();
        let drawn: Vec<u64> = (0..3).map(|_| Rng::next_u64(&mut theirs)).collect();
        assert_eq!(drawn, expected);
        let mut bytes = [0u8; 12];
        SplitMix64::from_seed(11u64.to_le_bytes()).fill_bytes(&mut bytes);
        assert_eq!(bytes[..8], expected[0].to_le_bytes());
        assert_eq!(bytes[8..], expected[1].to_le_bytes()[..4]);
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<u32> = (0..100).collect();
        SplitMix64::new(3).shuffle(&mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }
}
