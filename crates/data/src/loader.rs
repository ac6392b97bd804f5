//! The batch loader: a seeded shuffle per epoch, fixed-size batches, pixels scaled to [-1, 1]
//! or [0, 1], returned as kiln tensors on the device asked for. On a GPU the whole dataset is
//! held on the device and batches are gathered there (one upload of the epoch's order, then no
//! host-to-device copy per batch). Not for augmentation.

use std::ops::Range;
use std::sync::Arc;

use kiln_tensor::{DType, Device, Generator, Tensor};

use crate::dataset::{Dataset, IMAGE_SIZE};
use crate::error::{DataError, Result};

/// The range pixel values are mapped to (and, for [`crate::grid`], read from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scale {
    /// 0 → -1, 255 → 1: what a tanh generator produces.
    #[default]
    MinusOneToOne,
    /// 0 → 0, 255 → 1.
    ZeroToOne,
}

impl Scale {
    /// u8 `pixels` (any shape) as f32 in this range. Divisions, not multiplications by 1/255
    /// or 1/127.5, so that 0 and 255 land exactly on the ends of the range.
    pub fn to_float(self, pixels: &Tensor) -> Result<Tensor> {
        let values = pixels.to_dtype(DType::F32)?; // 0..255
        Ok(match self {
            Scale::ZeroToOne => values.div(&values.scalar_like(255.0)?)?,
            Scale::MinusOneToOne => values.div(&values.scalar_like(127.5)?)?.add_scalar(-1.0)?,
        })
    }
}

/// The part of every batch one process takes in a data-parallel run of `world` processes
/// (a distributed sampler): rank `r` takes rows `B·r/world .. B·(r+1)/world` of each batch of
/// `B` images, so the ranks' shards together are exactly the batch one process would take,
/// in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// The whole batch: one process.
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    /// This rank's rows of a batch of `global` images.
    pub fn rows(&self, global: usize) -> Range<usize> {
        let at = |rank: usize| global * rank / self.world.max(1);
        at(self.rank)..at(self.rank + 1)
    }
}

impl Default for Shard {
    fn default() -> Self {
        Shard::WHOLE
    }
}

/// How a [`Loader`] batches.
#[derive(Debug, Clone)]
pub struct LoaderOptions {
    /// Images per batch (at least 1).
    pub batch_size: usize,
    /// Leave out the last batch of an epoch when it is smaller than `batch_size`.
    pub drop_last: bool,
    pub scale: Scale,
    /// The shuffle's seed: the same seed gives the same order every run.
    pub seed: u64,
    /// Where the batches' tensors are made.
    pub device: Device,
    /// The rows of each batch this process takes (data-parallel training); the order, the
    /// batch size and the number of batches are those of the whole batch.
    pub shard: Shard,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            batch_size: 64,
            drop_last: false,
            scale: Scale::MinusOneToOne,
            seed: 0,
            device: Device::Cpu,
            shard: Shard::WHOLE,
        }
    }
}

/// One batch: `images` [B, 1, 28, 28] f32 in the loader's scale, `labels` [B] u32. In a
/// data-parallel run, B is this rank's shard of a batch of `global` images, starting at row
/// `offset` of it; otherwise `global` = B and `offset` = 0.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
    pub global: usize,
    pub offset: usize,
}

impl Batch {
    /// The rows of the whole batch this one holds.
    pub fn rows(&self) -> Range<usize> {
        self.offset..self.offset + self.images.dims()[0]
    }
}

/// Batches over a dataset's images, in a new seeded order each epoch.
///
/// The order of epoch `e` is a Fisher–Yates shuffle driven by the Philox stream of `seed`
/// starting at word `e * 2^33` (a shuffle of `n < 2^32` items reads `2(n - 1)` words), so any
/// epoch's order can be recomputed alone, e.g. when training resumes from a checkpoint.
#[derive(Debug, Clone)]
pub struct Loader {
    images: Arc<[u8]>,
    labels: Arc<[u8]>,
    len: usize,
    options: LoaderOptions,
    /// The dataset on a GPU: `[N, 784]` u8 pixels and `[N]` u32 labels.
    resident: Option<(Tensor, Tensor)>,
}

impl Loader {
    pub fn new(dataset: &Dataset, options: LoaderOptions) -> Result<Loader> {
        if options.batch_size == 0 {
            return Err(DataError::invalid(
                "Loader::new",
                "batch size must be at least 1",
            ));
        }
        // A device this build cannot use fails here, not at the first batch.
        Tensor::zeros([1], DType::U8, options.device)?;
        let images = dataset.images_shared();
        let labels = dataset.labels_shared();
        let len = dataset.len();
        let resident = match options.device {
            Device::Cpu => None,
            device => {
                let pixels =
                    Tensor::from_vec(images.to_vec(), [len, IMAGE_SIZE * IMAGE_SIZE], device)?;
                let labels = labels.iter().map(|&l| u32::from(l)).collect();
                Some((pixels, Tensor::from_vec(labels, [len], device)?))
            }
        };
        Ok(Loader {
            images,
            labels,
            len,
            options,
            resident,
        })
    }

    pub fn options(&self) -> &LoaderOptions {
        &self.options
    }

    /// The number of images an epoch draws from.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many batches each epoch yields.
    pub fn batches_per_epoch(&self) -> usize {
        let batch_size = self.options.batch_size;
        if self.options.drop_last {
            self.len / batch_size
        } else {
            self.len.div_ceil(batch_size)
        }
    }

    /// The order in which epoch `epoch` visits the images: a permutation of `0..len`.
    pub fn permutation(&self, epoch: u64) -> Vec<u32> {
        let n = self.len;
        // Dataset sizes come from IDX dimensions, which are u32.
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut generator = Generator::new(self.options.seed);
        generator.set_offset(epoch.wrapping_mul(1 << 33));
        let draws = generator.uniform_f64(n.saturating_sub(1));
        for (draw, i) in draws.into_iter().zip((1..n).rev()) {
            // j uniform in 0..=i; `min` guards the rounding of draw * (i + 1) up to i + 1.
            let j = ((draw * (i + 1) as f64) as usize).min(i);
            order.swap(i, j);
        }
        order
    }

    /// The batches of epoch `epoch`, in its shuffled order.
    pub fn epoch(&self, epoch: u64) -> Epoch<'_> {
        let order = self.permutation(epoch);
        // On a GPU the order goes over once, and each batch is a slice of it.
        let device_order = self
            .resident
            .as_ref()
            .map(|_| Tensor::from_vec(order.clone(), [order.len()], self.options.device));
        Epoch {
            loader: self,
            order,
            device_order,
            next: 0,
            remaining: self.batches_per_epoch(),
        }
    }

    /// The batch of the images that `indices` (`[B]` u32 on the loader's device) names,
    /// gathered on the device from the resident dataset.
    fn gather(&self, (pixels, labels): &(Tensor, Tensor), indices: &Tensor) -> Result<Batch> {
        let batch = indices.dims()[0];
        let pixels = pixels
            .index_select(0, indices)? // [B, 784] u8
            .reshape([batch, 1, IMAGE_SIZE, IMAGE_SIZE])?;
        Ok(Batch {
            images: self.options.scale.to_float(&pixels)?, // [B, 1, 28, 28] f32
            labels: labels.index_select(0, indices)?,      // [B] u32
            global: batch,
            offset: 0,
        })
    }

    /// The batch of the images at `indices`, in that order.
    pub fn batch(&self, indices: &[u32]) -> Result<Batch> {
        let size = IMAGE_SIZE * IMAGE_SIZE;
        if let Some(&bad) = indices.iter().find(|&&i| i as usize >= self.len) {
            return Err(DataError::invalid(
                "Loader::batch",
                format!("index {bad} is past the {} images", self.len),
            ));
        }
        // Gathered on the host, then one upload of B x 784 bytes: kiln-tensor's CPU
        // index_select copies its whole input first, which for all of MNIST is 47 MB a batch.
        let mut pixels = Vec::with_capacity(indices.len() * size);
        for &i in indices {
            pixels.extend_from_slice(&self.images[i as usize * size..][..size]);
        }
        let labels: Vec<u32> = indices
            .iter()
            .map(|&i| u32::from(self.labels[i as usize]))
            .collect();
        let device = self.options.device;
        let batch = indices.len();
        let pixels = Tensor::from_vec(pixels, [batch, 1, IMAGE_SIZE, IMAGE_SIZE], device)?;
        let images = self.options.scale.to_float(&pixels)?; // [B, 1, 28, 28] f32
        Ok(Batch {
            images,
            labels: Tensor::from_vec(labels, [batch], device)?,
            global: batch,
            offset: 0,
        })
    }
}

/// The batches of one epoch; see [`Loader::epoch`].
pub struct Epoch<'a> {
    loader: &'a Loader,
    order: Vec<u32>,
    /// `order` on the device, when the dataset is held there.
    device_order: Option<kiln_tensor::Result<Tensor>>,
    next: usize,
    remaining: usize,
}

impl Epoch<'_> {
    /// The epoch's visiting order (the loader's [`Loader::permutation`]).
    pub fn order(&self) -> &[u32] {
        &self.order
    }
}

impl Iterator for Epoch<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let (start, end) = (
            self.next,
            (self.next + self.loader.options.batch_size).min(self.order.len()),
        );
        self.next = end;
        // This rank's rows of the whole batch.
        let global = end - start;
        let rows = self.loader.options.shard.rows(global);
        let (start, end) = (start + rows.start, start + rows.end);
        let batch = match (&self.loader.resident, &self.device_order) {
            (Some(resident), Some(order)) => match order {
                Ok(order) => order
                    .narrow(0, start, end - start)
                    .map_err(DataError::from)
                    .and_then(|indices| self.loader.gather(resident, &indices)),
                Err(e) => Err(e.clone().into()),
            },
            _ => self.loader.batch(&self.order[start..end]),
        };
        Some(batch.map(|batch| Batch {
            global,
            offset: rows.start,
            ..batch
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }

    /// Skips `n` batches without making them (a resumed run skips most of an epoch).
    fn nth(&mut self, n: usize) -> Option<Result<Batch>> {
        let skipped = n.min(self.remaining);
        self.remaining -= skipped;
        self.next = (self.next + skipped * self.loader.options.batch_size).min(self.order.len());
        self.next()
    }
}

impl ExactSizeIterator for Epoch<'_> {}
