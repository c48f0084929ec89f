//! Pins what tapegrad draws through `rand`, so that an upgrade of `rand`, `rand_distr` or of
//! our generator that changes initial values, dropout masks or a data shuffle fails here,
//! loudly, instead of silently changing every user's seeded run (design invariant 7).
//!
//! The pinned numbers were printed by this file's own code on the commit that added it (with
//! `rand` 0.10.4 and `rand_distr` 0.6.0): they are a record, not a derivation. If an upgrade changes them on
//! purpose, say so in the changelog and re-pin.

use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Normal};
use tapegrad::nn::{Dense, Dropout};
use tapegrad::{ApplyOptions, ModuleExt, SplitMix64, Tensor};

fn input() -> Tensor<f64> {
    Tensor::constant(Array2::<f64>::ones((4, 3)))
}

#[test]
fn init_values_are_pinned() {
    let vars = Dense::new(2).init(0, &input()).unwrap();
    let kernel = vars.get("params/kernel").unwrap();
    let first: Vec<f64> = kernel.iter().take(3).copied().collect();
    assert_eq!(first, PINNED_KERNEL);
}

#[test]
fn init_from_a_user_generator_draws_one_root_seed() {
    let mut rng = SplitMix64::seed_from_u64(9);
    let from_rng = Dense::new(2).init(&mut rng, &input()).unwrap();
    let root = rand::Rng::next_u64(&mut SplitMix64::seed_from_u64(9));
    assert_eq!(from_rng, Dense::new(2).init(root, &input()).unwrap());
    // The generator moved on by exactly one draw.
    let mut reference = SplitMix64::new(9);
    reference.next_u64();
    assert_eq!(rng, reference);
}

#[test]
fn a_shuffle_is_pinned() {
    let mut order: Vec<usize> = (0..10).collect();
    order.shuffle(&mut SplitMix64::new(42));
    assert_eq!(order, PINNED_SHUFFLE);
}

#[test]
fn a_dropout_mask_is_pinned() {
    let model = Dropout::new(0.5);
    let vars = ModuleExt::<f64>::init(&model, 0, &input()).unwrap();
    let options = ApplyOptions::train().rng("dropout", 3);
    let (y, _) = model.apply(&vars, &input(), &options).unwrap();
    let mask: Vec<u8> = y.value().iter().map(|&v| u8::from(v != 0.0)).collect();
    assert_eq!(mask, PINNED_MASK);
}

#[test]
fn rand_and_rand_distr_draws_are_pinned() {
    let mut rng = SplitMix64::new(5);
    let uniform: f64 = rng.random();
    let normal = Normal::new(0.0, 1.0).unwrap().sample(&mut rng);
    assert_eq!((uniform, normal), PINNED_DRAWS);
}

const PINNED_KERNEL: [f64; 3] = [0.2632095293631213, 0.6838651296993649, -0.6427583486624274];
const PINNED_SHUFFLE: [usize; 10] = [0, 5, 6, 4, 1, 3, 7, 8, 9, 2];
const PINNED_MASK: [u8; 12] = [0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 1];
const PINNED_DRAWS: (f64, f64) = (0.386768045983934, 0.24597106496105628);
