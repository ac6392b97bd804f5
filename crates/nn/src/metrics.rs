//! A training step's scalar measurements kept on the device until a loop logs them: one
//! `[k]` f32 tensor, read back in one transfer, so the steps in between never make the host
//! wait for a GPU. Not for the measurements of a whole set (evaluation reads at once).

use kiln_tensor::{DType, Tensor};

use crate::parallel::{DataParallel, Rows};
use crate::Result;

/// Scalars (each a one-element tensor of any float dtype, detached from the graph) gathered
/// into one device tensor, in the order given.
#[derive(Debug, Clone)]
pub struct DeviceScalars {
    /// `[k]`, f32, on the scalars' device.
    values: Tensor,
    /// In a data-parallel run: the ranks, and this rank's share of the batch.
    ranks: Option<(DataParallel, f64)>,
}

impl DeviceScalars {
    /// Gathers `scalars` (one element each) on their device; nothing is read back.
    pub fn new(scalars: &[&Tensor]) -> Result<DeviceScalars> {
        let flat: Vec<Tensor> = scalars
            .iter()
            .map(|t| t.detach().to_dtype(DType::F32)?.reshape([1]))
            .collect::<kiln_tensor::Result<_>>()?;
        let parts: Vec<&Tensor> = flat.iter().collect();
        Ok(DeviceScalars {
            values: Tensor::cat(&parts, 0)?, // [k]
            ranks: None,
        })
    }

    /// The same scalars as means over `rows` of a batch, read as the whole batch's means over
    /// `parallel`'s ranks (each rank's weighted by its share). Every rank must then read the
    /// same steps' scalars. Without `parallel`, nothing changes.
    pub fn over_ranks(self, parallel: Option<&DataParallel>, rows: Rows) -> DeviceScalars {
        DeviceScalars {
            ranks: parallel.map(|p| (p.clone(), rows.share())),
            ..self
        }
    }

    /// The values in the order given to [`DeviceScalars::new`], read back in one transfer
    /// (f32, widened exactly to f64).
    pub fn read(&self) -> Result<Vec<f64>> {
        let values: Vec<f64> = self
            .values
            .to_vec::<f32>()?
            .into_iter()
            .map(f64::from)
            .collect();
        match &self.ranks {
            Some((parallel, share)) => parallel.weighted_mean(&values, *share),
            None => Ok(values),
        }
    }
}

#[cfg(test)]
mod tests {
    use kiln_tensor::Device;

    use super::*;

    #[test]
    fn values_come_back_in_order_as_f32() -> Result<()> {
        let a = Tensor::from_vec(vec![0.1f64], [1], Device::Cpu)?;
        let b = Tensor::from_vec(vec![2.5f32], [], Device::Cpu)?;
        let scalars = DeviceScalars::new(&[&a, &b, &a])?;
        assert_eq!(scalars.read()?, vec![0.1f32 as f64, 2.5, 0.1f32 as f64]);
        Ok(())
    }
}
