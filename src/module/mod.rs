//! Flax-style modules: a [`Module`] describes a computation; a [`Scope`] hands it its
//! variables by path; [`ModuleExt::init`] creates them and [`ModuleExt::apply`] runs with them.

mod apply;
mod scope;

pub use apply::{Apply, Module, ModuleExt};
pub use scope::{Initializer, Scope, Variable};
