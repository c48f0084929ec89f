//! Flax-style modules: a [`Module`] describes a computation; a [`Scope`] hands it its
//! variables by path; [`ModuleExt::init`] creates them and [`ModuleExt::apply`] runs with them.

pub(crate) mod apply;
pub(crate) mod context;
pub(crate) mod remat;
pub(crate) mod scope;
pub(crate) mod variable;

pub use apply::{ApplyOptions, ModuleExt};
pub use scope::{Initializer, Module, Scope};
pub use variable::Variable;
