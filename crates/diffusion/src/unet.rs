//! The noise-prediction network ε_θ(x_t, t): a small U-Net over 28×28 images in the layout of
//! Ho et al.'s (2020) — residual blocks with group norm and SiLU, the timestep's sinusoidal
//! embedding added inside every block, strided convolutions down, nearest upsampling and a
//! convolution up, and the encoder's features concatenated onto the decoder's at each
//! resolution. Three resolutions (28, 14, 7), one residual block each way per level and one in
//! the middle; no self-attention (the issue leaves it optional, and at 7×7 with these widths
//! it would cost more than it brings on a CPU).
//!
//! ```text
//! x [B, 1, 28, 28] ─ conv_in ─ down.0 ─────────────────────────────── cat ─ up.0 ─ out ─ ε̂
//!                                 └ downsample.0 ─ down.1 ───── cat ─ up.1 ┘
//!                                                    └ downsample.1 ─ down.2 ─ middle ─ cat ─ up.2 ┘
//! ```
//! (each `up.N`'s output is upsampled and convolved before the next level up.)
//!
//! Tensors are named as a PyTorch module written the same way would name them.

use kiln_nn::layers::{Conv2d, Conv2dConfig, GroupNorm, Linear};
use kiln_nn::{Init, Module, ParamStore, Path};
use kiln_tensor::{DType, Device, Tensor};

use crate::{DdpmConfig, Result};

/// `[channels, height, width]` of the images: MNIST's.
pub const IMAGE_SHAPE: [usize; 3] = [1, 28, 28];

/// The U-Net; see the module's documentation.
pub struct UNet {
    store: ParamStore,
    embedding_dim: usize,
    time_mlp: [Linear; 2],
    conv_in: Conv2d,
    down: [ResBlock; 3],
    downsample: [Conv2d; 2],
    middle: ResBlock,
    up: [ResBlock; 3],
    upsample: [Conv2d; 2],
    out_norm: GroupNorm,
    conv_out: Conv2d,
}

impl UNet {
    /// The network of `config`, its tensors of `dtype` (f32 to train; f64 for gradient
    /// checks) drawn from the Philox stream `seed`: PyTorch's default initialisation, except
    /// that the last convolution of every residual block and of the network start at zero (as
    /// Ho et al.'s), so each block starts as the identity and the network predicts ε̂ = 0.
    pub fn new(config: &DdpmConfig, device: Device, dtype: DType, seed: u64) -> Result<UNet> {
        let store = ParamStore::new(device, dtype, seed);
        let root = store.root();
        let [c0, c1, c2] = config.channels;
        let groups = config.groups;
        let embedding_dim = 4 * c0;
        let time = root.sub("time_mlp");
        let time_mlp = [
            Linear::new(&time.sub(0), c0, embedding_dim)?,
            Linear::new(&time.sub(2), embedding_dim, embedding_dim)?,
        ];
        let block = |path: Path, cin, cout| ResBlock::new(&path, cin, cout, embedding_dim, groups);
        let (down, up) = (root.sub("down"), root.sub("up"));
        let stride_two = Conv2dConfig {
            stride: [2, 2],
            padding: [1, 1],
            ..Default::default()
        };
        Ok(UNet {
            time_mlp,
            conv_in: conv3x3(&root.sub("conv_in"), IMAGE_SHAPE[0], c0, false)?,
            down: [
                block(down.sub(0), c0, c0)?,
                block(down.sub(1), c0, c1)?,
                block(down.sub(2), c1, c2)?,
            ],
            downsample: [
                Conv2d::new(&root.sub("downsample").sub(0), c0, c0, [3, 3], stride_two)?,
                Conv2d::new(&root.sub("downsample").sub(1), c1, c1, [3, 3], stride_two)?,
            ],
            middle: block(root.sub("middle"), c2, c2)?,
            // Each level up takes its own output concatenated with the encoder's at that level.
            up: [
                block(up.sub(0), c1 + c0, c0)?,
                block(up.sub(1), c2 + c1, c1)?,
                block(up.sub(2), c2 + c2, c2)?,
            ],
            upsample: [
                conv3x3(&root.sub("upsample").sub(0), c1, c1, false)?,
                conv3x3(&root.sub("upsample").sub(1), c2, c2, false)?,
            ],
            out_norm: GroupNorm::new(&root.sub("out_norm"), groups, c0)?,
            conv_out: conv3x3(&root.sub("conv_out"), c0, IMAGE_SHAPE[0], true)?,
            embedding_dim: c0,
            store,
        })
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// ε̂ `[B, 1, 28, 28]` for noisy images `x [B, 1, 28, 28]` at (0-based) steps `t [B]`.
    pub fn forward(&self, x: &Tensor, t: &[usize]) -> Result<Tensor> {
        let sinusoid = timestep_embedding(t, self.embedding_dim, x.dtype(), x.device())?;
        let hidden = self.time_mlp[0].forward(&sinusoid)?.silu()?;
        let embedding = self.time_mlp[1].forward(&hidden)?; // [B, 4·c0]
                                                            // The blocks take SiLU of the embedding, as Ho et al.'s do; computed once here.
        let embedding = embedding.silu()?;

        let h = self.conv_in.forward(x)?; // [B, c0, 28, 28]
        let skip0 = self.down[0].forward(&h, &embedding)?; // [B, c0, 28, 28]
        let h = self.downsample[0].forward(&skip0)?; // [B, c0, 14, 14]
        let skip1 = self.down[1].forward(&h, &embedding)?; // [B, c1, 14, 14]
        let h = self.downsample[1].forward(&skip1)?; // [B, c1, 7, 7]
        let skip2 = self.down[2].forward(&h, &embedding)?; // [B, c2, 7, 7]
        let h = self.middle.forward(&skip2, &embedding)?; // [B, c2, 7, 7]

        let h = self.up[2].forward(&Tensor::cat(&[&h, &skip2], 1)?, &embedding)?; // [B, c2, 7, 7]
        let h = self.upsample[1].forward(&h.upsample_nearest2d(14, 14)?)?; // [B, c2, 14, 14]
        let h = self.up[1].forward(&Tensor::cat(&[&h, &skip1], 1)?, &embedding)?; // [B, c1, 14, 14]
        let h = self.upsample[0].forward(&h.upsample_nearest2d(28, 28)?)?; // [B, c1, 28, 28]
        let h = self.up[0].forward(&Tensor::cat(&[&h, &skip0], 1)?, &embedding)?; // [B, c0, 28, 28]
        self.conv_out.forward(&self.out_norm.forward(&h)?.silu()?)
    }
}

/// A residual block: GroupNorm, SiLU, 3×3 conv; + a projection of the time embedding per
/// channel; GroupNorm, SiLU, 3×3 conv (zero to start); added to the input (through a 1×1
/// conv where the channels change).
struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    skip: Option<Conv2d>,
}

impl ResBlock {
    fn new(path: &Path, cin: usize, cout: usize, embedding: usize, groups: usize) -> Result<Self> {
        Ok(ResBlock {
            norm1: GroupNorm::new(&path.sub("norm1"), groups, cin)?,
            conv1: conv3x3(&path.sub("conv1"), cin, cout, false)?,
            time: Linear::new(&path.sub("time"), embedding, cout)?,
            norm2: GroupNorm::new(&path.sub("norm2"), groups, cout)?,
            conv2: conv3x3(&path.sub("conv2"), cout, cout, true)?,
            skip: (cin != cout)
                .then(|| Conv2d::new(&path.sub("skip"), cin, cout, [1, 1], Default::default()))
                .transpose()?,
        })
    }

    /// `x [B, cin, H, W]`, `embedding [B, E]` (after SiLU) → `[B, cout, H, W]`.
    fn forward(&self, x: &Tensor, embedding: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?; // [B, cout, H, W]
        let shift = self.time.forward(embedding)?; // [B, cout]
        let h = h.add(&shift.reshape([shift.dims()[0], shift.dims()[1], 1, 1])?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        let skip = match &self.skip {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        Ok(skip.add(&h)?)
    }
}

/// A 3×3 convolution, padding 1; `zero` starts its weight and bias at 0.
fn conv3x3(path: &Path, cin: usize, cout: usize, zero: bool) -> Result<Conv2d> {
    let mut config = Conv2dConfig {
        padding: [1, 1],
        ..Default::default()
    };
    if zero {
        config.weight_init = Init::Constant(0.0);
        config.bias_init = Some(Init::Constant(0.0));
    }
    Conv2d::new(path, cin, cout, [3, 3], config)
}

/// The Transformer's sinusoidal position embedding of each step, `[B, dim]`: for
/// i < dim/2, sin(t·f_i) in column i and cos(t·f_i) in column dim/2 + i, with
/// f_i = 10000^(-i / (dim/2 - 1)) (Ho et al.'s `get_timestep_embedding`); an odd dim's last
/// column is 0.
pub fn timestep_embedding(t: &[usize], dim: usize, dtype: DType, device: Device) -> Result<Tensor> {
    let half = dim / 2;
    let scale = (10_000f64).ln() / (half.max(2) - 1) as f64;
    let mut values = vec![0.0f64; t.len() * dim];
    for (row, &step) in values.chunks_mut(dim).zip(t) {
        for i in 0..half {
            let angle = step as f64 * (-scale * i as f64).exp();
            row[i] = angle.sin();
            row[half + i] = angle.cos();
        }
    }
    Ok(Tensor::from_vec(values, [t.len(), dim], device)?.to_dtype(dtype)?)
}
