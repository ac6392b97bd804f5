//! The differentiable ops, one file per family. Each file holds the public methods (forward),
//! their shape checks, and the family's backward rules, written with tensor ops so that they
//! run on every backend and can themselves be differentiated.

pub(crate) mod conv;
pub(crate) mod custom;
pub(crate) mod elementwise;
pub(crate) mod index;
pub(crate) mod loss;
pub(crate) mod matmul;
pub(crate) mod norm;
pub(crate) mod optim;
pub(crate) mod reduce;
pub(crate) mod view;
