//! The largest sizes a model configuration or a command may ask for. A configuration comes from
//! the command line or from a checkpoint file, and either may hold any number: checked against
//! these before anything is allocated, a size too large to build is a one-line error naming the
//! setting and its limit, never an abort ("capacity overflow", "memory allocation failed") or a
//! machine driven into swap. The limits leave every published model room (the defaults are
//! 10-100x below them) while keeping the largest network and its Adam state within a few GiB.

/// A layer's width, a latent's size, an MLP's hidden width.
pub const MAX_WIDTH: usize = 4_096;
/// A convolution's channels.
pub const MAX_CHANNELS: usize = 1_024;
/// Layers in a configurable stack (a GAN's MLP widths), residual blocks.
pub const MAX_LAYERS: usize = 64;
/// Images in a training batch.
pub const MAX_BATCH: usize = 8_192;
/// A diffusion schedule's steps.
pub const MAX_TIMESTEPS: usize = 100_000;
/// Images drawn or scored in one command (`kiln sample --n`, `kiln eval --n`).
pub const MAX_IMAGES: usize = 100_000;
/// Importance samples per image (`kiln eval --iw-samples`).
pub const MAX_IMPORTANCE_SAMPLES: usize = 100_000;

/// `Err("the {what} is {value}; kiln takes at most {limit}")` when `value` > `limit`.
pub fn at_most(what: &str, value: usize, limit: usize) -> Result<(), String> {
    match value <= limit {
        true => Ok(()),
        false => Err(format!("the {what} is {value}; kiln takes at most {limit}")),
    }
}

/// The first of `checks` (each `(what, value, limit)`) whose value is above its limit.
pub fn all_at_most(checks: &[(&str, usize, usize)]) -> Result<(), String> {
    checks
        .iter()
        .try_for_each(|&(what, value, limit)| at_most(what, value, limit))
}
