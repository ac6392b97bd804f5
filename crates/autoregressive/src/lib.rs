//! kiln-autoregressive: PixelCNN (van den Oord et al., 2016, "Pixel Recurrent Neural
//! Networks") on 28×28 images. The model factorises p(x) = Π_i p(x_i | x_<i) over the pixels
//! in raster order, each conditional computed by convolutions masked so that no output sees
//! its own pixel or any later one; the likelihood is exact, and sampling draws the 784 pixels
//! one at a time. Pixels are binary (Bernoulli conditionals on dynamically binarized MNIST) or
//! 256 grey levels (categorical conditionals). The run folder, progress bar and command line
//! live elsewhere (kiln-run, the `kiln` binary).

mod config;
mod family;
mod masked;
mod model;
mod trainer;

pub use config::{PixelCnnConfig, PixelLikelihood};
pub use family::{test_line, PixelCnns, FAMILY, TEST_BINARIZE_SEED};
pub use masked::{MaskType, MaskedConv2d};
pub use model::{PixelCnn, GREY_LEVELS, IMAGE_SHAPE, PIXELS};
pub use trainer::{NllReport, PendingMetrics, PixelCnnTrainer, StepMetrics, MODEL_NAME};

pub type Result<T> = std::result::Result<T, kiln_nn::NnError>;
