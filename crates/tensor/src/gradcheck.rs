//! Gradient checking: autograd against central finite differences, in f64 on the CPU. Used by
//! the property tests of every differentiable op, here and in the crates built on this one.

use crate::rng::Generator;
use crate::{DType, Device, Result, Tensor};

/// Step and tolerances of a check. The defaults suit f64 inputs of magnitude ~1: the central
/// difference's truncation error is ~eps² and its rounding error ~1e-16 / eps.
#[derive(Debug, Clone, Copy)]
pub struct GradCheck {
    pub eps: f64,
    pub atol: f64,
    pub rtol: f64,
    /// Seed of the random weights that project the output to a scalar.
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            eps: 1e-6,
            atol: 1e-6,
            rtol: 1e-5,
            seed: 0x6b69_6c6e,
        }
    }
}

impl GradCheck {
    /// Checks the gradient of `f` at `inputs` (any float dtype; converted to f64). The output
    /// is reduced to `sum(f(x) * w)` with fixed random `w`, so every output element's gradient
    /// counts with a different weight (a plain sum would hide errors that cancel). Returns a
    /// description of the first mismatch, or of the error `f` returned.
    pub fn check(
        &self,
        f: impl Fn(&[Tensor]) -> Result<Tensor>,
        inputs: &[Tensor],
    ) -> std::result::Result<(), String> {
        self.run(f, inputs)
            .map_err(|e| format!("the function failed: {e}"))?
    }

    fn run(
        &self,
        f: impl Fn(&[Tensor]) -> Result<Tensor>,
        inputs: &[Tensor],
    ) -> Result<std::result::Result<(), String>> {
        let values: Vec<Vec<f64>> = inputs
            .iter()
            .map(|x| x.to_dtype(DType::F64)?.to_vec::<f64>())
            .collect::<Result<_>>()?;
        let leaves = |values: &[Vec<f64>]| -> Result<Vec<Tensor>> {
            values
                .iter()
                .zip(inputs)
                .map(|(v, x)| Tensor::from_slice(v, x.shape(), Device::Cpu))
                .collect()
        };
        let tracked: Vec<Tensor> = leaves(&values)?
            .iter()
            .map(Tensor::track)
            .collect::<Result<_>>()?;
        let output = f(&tracked)?;
        let mut generator = Generator::new(self.seed);
        let weights = Tensor::randn(
            output.shape(),
            0.0,
            1.0,
            DType::F64,
            Device::Cpu,
            &mut generator,
        )?;
        let objective = |output: &Tensor| -> Result<f64> {
            output
                .to_dtype(DType::F64)?
                .mul(&weights)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        let grads = output
            .to_dtype(DType::F64)?
            .mul(&weights)?
            .sum_all()?
            .backward()?;

        for (i, leaf) in tracked.iter().enumerate() {
            let analytic = match grads.get(leaf) {
                Some(g) => g.to_vec::<f64>()?,
                None => vec![0.0; leaf.elem_count()],
            };
            for j in 0..values[i].len() {
                // Untracked inputs with grad enabled: `f` may take gradients inside itself.
                let mut shifted = values.to_vec();
                shifted[i][j] = values[i][j] + self.eps;
                let plus = objective(&f(&leaves(&shifted)?)?)?;
                shifted[i][j] = values[i][j] - self.eps;
                let minus = objective(&f(&leaves(&shifted)?)?)?;
                let numeric = (plus - minus) / (2.0 * self.eps);
                let tolerance = self.atol + self.rtol * numeric.abs().max(analytic[j].abs());
                // Written so that a NaN on either side fails the check.
                let agrees = (analytic[j] - numeric).abs() <= tolerance;
                if !agrees {
                    return Ok(Err(format!(
                        "input {i} (shape {}), element {j} (value {}): autograd {} vs finite differences {} (tolerance {tolerance:.1e})",
                        inputs[i].shape(),
                        values[i][j],
                        analytic[j],
                        numeric
                    )));
                }
            }
        }
        Ok(Ok(()))
    }
}
