//! The PixelCNN network of van den Oord et al. (2016), Fig. 5: a mask-A 7×7 convolution,
//! residual blocks around a mask-B 3×3 convolution, and two 1×1 convolutions to the logits of
//! each pixel's conditional. Tensors are registered under the names of the equivalent PyTorch
//! module (`input_conv`, `blocks.N.conv1` … `conv3`, `output.1`, `output.3`), so a
//! checkpoint's weights load into it one to one.

use kiln_nn::layers::{Conv2d, Conv2dConfig, ReLU, Sequential};
use kiln_nn::loss::{binary_cross_entropy_with_logits, cross_entropy, Reduction};
use kiln_nn::{Module, ModuleT, NnError, ParamStore, Path};
use kiln_tensor::{Activation, DType, Device, Tensor};

use crate::{MaskType, MaskedConv2d, PixelCnnConfig, PixelLikelihood, Result};

/// `[channels, height, width]` of the images: MNIST's.
pub const IMAGE_SHAPE: [usize; 3] = [1, 28, 28];
pub const PIXELS: usize = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2];
/// The values a categorical pixel takes: grey levels 0..=255, level k being k/255.
pub const GREY_LEVELS: usize = 256;
/// The first layer's kernel size (the paper's 7×7).
const INPUT_KERNEL: usize = 7;

/// Fig. 5's residual block, `[B, h, H, W] → [B, h, H, W]`: x + conv3(relu(conv2(relu(conv1(
/// relu(x)))))) with conv1 a 1×1 h → h/2, conv2 a mask-B 3×3 h/2 → h/2, conv3 a 1×1 h/2 → h.
struct ResidualBlock {
    conv1: Conv2d,
    conv2: MaskedConv2d,
    conv3: Conv2d,
}

impl ResidualBlock {
    fn new(path: &Path, channels: usize) -> Result<ResidualBlock> {
        let half = channels / 2;
        Ok(ResidualBlock {
            conv1: Conv2d::new(
                &path.sub("conv1"),
                channels,
                half,
                [1, 1],
                Conv2dConfig::default(),
            )?,
            conv2: MaskedConv2d::new(&path.sub("conv2"), half, half, 3, MaskType::B)?,
            conv3: Conv2d::new(
                &path.sub("conv3"),
                half,
                channels,
                [1, 1],
                Conv2dConfig::default(),
            )?,
        })
    }

    /// conv1 and conv2 apply the ReLU after them as they write their outputs.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = relu_after(&self.conv1, &x.relu()?)?; // [B, h/2, H, W]
        let y = relu_after(&self.conv2, &y)?; // [B, h/2, H, W]
        let y = self.conv3.forward(&y)?; // [B, h, H, W]
        Ok(x.add(&y)?)
    }
}

/// `relu(layer(x))`, in one op where the layer applies the ReLU as it writes its output.
fn relu_after(layer: &dyn Module, x: &Tensor) -> Result<Tensor> {
    match layer.forward_activated(x, Activation::Relu) {
        Some(y) => Ok(y?),
        None => Ok(layer.forward(x)?.relu()?),
    }
}

/// PixelCNN: images `[B, 1, H, W]` → logits `[B, C, H, W]` of each pixel's conditional given
/// the pixels before it in raster order (C = 1 Bernoulli logit, or 256 grey-level logits).
/// The logits at (i, j) depend only on the input pixels before (i, j), and only on those at
/// most [`PixelCnn::rows_seen`] rows up.
pub struct PixelCnn {
    store: ParamStore,
    likelihood: PixelLikelihood,
    input_conv: MaskedConv2d,
    blocks: Vec<ResidualBlock>,
    /// ReLU, 1×1 h → h, ReLU, 1×1 h → C.
    output: Sequential,
}

impl PixelCnn {
    /// The network of `config`, its tensors of `dtype` (f32 to train; f64 for gradient checks)
    /// drawn from the Philox stream `seed` with PyTorch's default initialisation.
    pub fn new(
        config: &PixelCnnConfig,
        device: Device,
        dtype: DType,
        seed: u64,
    ) -> Result<PixelCnn> {
        config
            .validate()
            .map_err(|message| NnError::invalid("PixelCNN config", message))?;
        let store = ParamStore::new(device, dtype, seed);
        let root = store.root();
        let h = config.hidden_channels;
        let input_conv =
            MaskedConv2d::new(&root.sub("input_conv"), 1, h, INPUT_KERNEL, MaskType::A)?;
        let blocks_path = root.sub("blocks");
        let blocks = (0..config.residual_blocks)
            .map(|i| ResidualBlock::new(&blocks_path.sub(i), h))
            .collect::<Result<Vec<_>>>()?;
        let output_path = root.sub("output");
        let classes = config.likelihood.output_channels();
        let output = Sequential::new()
            .add(ReLU)
            .add(Conv2d::new(
                &output_path.sub(1),
                h,
                h,
                [1, 1],
                Conv2dConfig::default(),
            )?)
            .add(ReLU)
            .add(Conv2d::new(
                &output_path.sub(3),
                h,
                classes,
                [1, 1],
                Conv2dConfig::default(),
            )?);
        Ok(PixelCnn {
            store,
            likelihood: config.likelihood,
            input_conv,
            blocks,
            output,
        })
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    pub fn likelihood(&self) -> PixelLikelihood {
        self.likelihood
    }

    /// How many rows above a pixel its logits can see: 3 through the 7×7 input convolution
    /// and 1 through each block's 3×3. Sampling row i needs only rows i - rows_seen ..= i.
    pub fn rows_seen(&self) -> usize {
        INPUT_KERNEL / 2 + self.blocks.len()
    }

    /// `images [B, 1, H, W]` (binary for Bernoulli pixels, grey levels in [0, 1] for
    /// categorical ones) → logits `[B, C, H, W]`. Any H and W: sampling runs it on strips.
    pub fn logits(&self, images: &Tensor) -> Result<Tensor> {
        if images.rank() != 4 || images.dims()[1] != IMAGE_SHAPE[0] {
            return Err(NnError::invalid(
                "PixelCNN",
                format!("expected images [B, 1, H, W], got {}", images.shape()),
            ));
        }
        let mut x = self.input_conv.forward(images)?; // [B, h, H, W]
        for block in &self.blocks {
            x = block.forward(&x)?; // [B, h, H, W]
        }
        self.output.forward_t(&x, true) // [B, C, H, W]
    }

    /// -log p(x) of each of `images [B, 1, 28, 28]`, summed over the pixels: `[B]` nats,
    /// exact. Bernoulli: the images must be binary; Σ softplus(l) - l·x. Categorical: grey
    /// levels in [0, 1], each pixel's class round(255·x); Σ -log softmax(l)[class].
    pub fn nll_per_image(&self, images: &Tensor) -> Result<Tensor> {
        let batch = match images.dims() {
            [b, rest @ ..] if rest == IMAGE_SHAPE => *b,
            _ => {
                return Err(NnError::invalid(
                    "PixelCNN",
                    format!("expected images [B, 1, 28, 28], got {}", images.shape()),
                ))
            }
        };
        let logits = self.logits(images)?; // [B, C, 28, 28]
        match self.likelihood {
            PixelLikelihood::Bernoulli => {
                let per_pixel = binary_cross_entropy_with_logits(&logits, images, Reduction::None)?; // [B, 1, 28, 28]
                Ok(per_pixel.sum(&[1, 2, 3], false)?) // [B]
            }
            PixelLikelihood::Categorical => {
                // +0.5 then truncation: round to the nearest level.
                let classes = images
                    .affine((GREY_LEVELS - 1) as f64, 0.5)?
                    .to_dtype(DType::U32)?
                    .reshape([batch * PIXELS])?; // [B·784]
                let logits = logits
                    .permute(&[0, 2, 3, 1])? // [B, 28, 28, 256]
                    .contiguous()?
                    .reshape([batch * PIXELS, GREY_LEVELS])?; // [B·784, 256]
                let per_pixel = cross_entropy(&logits, &classes, Reduction::None)?; // [B·784]
                Ok(per_pixel.reshape([batch, PIXELS])?.sum(&[1], false)?) // [B]
            }
        }
    }
}
