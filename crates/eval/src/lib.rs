//! kiln-eval: evidence for what generators make. A small CNN classifier trained by kiln on
//! MNIST (or Fashion-MNIST) supplies features and class probabilities; on them, the Fréchet
//! distance between real and generated sets, the classifier score, class coverage and
//! precision/recall; and for reconstructions, MSE, PSNR and SSIM.

pub mod classifier;
pub mod frechet;
pub mod scores;
pub mod similarity;
