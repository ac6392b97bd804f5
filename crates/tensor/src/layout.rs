//! How a tensor's elements sit in its storage: shape, strides (in elements) and offset. Views
//! (permute, broadcast, narrow, reshape of contiguous data) are new layouts over the same
//! storage. `Runs` walks one or more same-shaped layouts in row-major order, a contiguous-ish
//! run at a time; every CPU kernel that reads strided data goes through it.

use crate::{Error, Result, Shape};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    pub fn contiguous(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let strides = shape.contiguous_strides();
        Layout {
            shape,
            strides,
            offset: 0,
        }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }

    /// Row-major with no gaps (dims of size 1 may have any stride).
    /// The `[N, C, H, W]` of a rank-4 layout (images, conv weights), or an error naming `op`:
    /// what the image kernels of every backend take.
    pub(crate) fn image_dims(&self, op: &'static str) -> Result<[usize; 4]> {
        match *self.dims() {
            [n, c, h, w] => Ok([n, c, h, w]),
            _ => Err(Error::invalid(
                op,
                format!(
                    "expected a rank-4 [N, C, H, W] layout, got {}",
                    self.shape()
                ),
            )),
        }
    }

    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&dim, &stride) in self.dims().iter().zip(&self.strides).rev() {
            if dim != 1 && stride != expected {
                return false;
            }
            expected *= dim;
        }
        true
    }

    /// The range of storage this layout reads when it is contiguous.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        self.is_contiguous()
            .then(|| self.offset..self.offset + self.elem_count())
    }

    /// Reorders the dims: dim `i` of the result is dim `perm[i]` of `self`.
    pub fn permute(&self, perm: &[usize]) -> Result<Layout> {
        let rank = self.shape.rank();
        let mut seen = vec![false; rank];
        let valid = perm.len() == rank
            && perm
                .iter()
                .all(|&d| d < rank && !std::mem::replace(&mut seen[d], true));
        if !valid {
            return Err(Error::invalid(
                "permute",
                format!(
                    "{perm:?} is not a permutation of the dims of {}",
                    self.shape
                ),
            ));
        }
        Ok(Layout {
            shape: perm
                .iter()
                .map(|&d| self.dims()[d])
                .collect::<Vec<_>>()
                .into(),
            strides: perm.iter().map(|&d| self.strides[d]).collect(),
            offset: self.offset,
        })
    }

    /// A view with `shape`, repeating dims of size 1 (stride 0) and adding leading dims.
    pub fn broadcast_as(&self, shape: &Shape) -> Result<Layout> {
        let error = || Error::Broadcast {
            op: "broadcast_as",
            lhs: self.shape.clone(),
            rhs: shape.clone(),
        };
        let extra = shape
            .rank()
            .checked_sub(self.shape.rank())
            .ok_or_else(error)?;
        shape.checked_elem_count("broadcast_as", 1)?;
        let mut strides = vec![0; shape.rank()];
        for (i, (&dim, &stride)) in self.dims().iter().zip(&self.strides).enumerate() {
            let target = shape.dims()[extra + i];
            if dim == target {
                strides[extra + i] = stride;
            } else if dim != 1 {
                return Err(error());
            }
        }
        Ok(Layout {
            shape: shape.clone(),
            strides,
            offset: self.offset,
        })
    }

    /// Elements `start..start + len` of `dim`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Layout> {
        let size = self.shape.dim("narrow", dim)?;
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::invalid(
                "narrow",
                format!(
                    "range {start}..{} is out of bounds for dim {dim} of shape {}",
                    start.saturating_add(len),
                    self.shape
                ),
            ));
        }
        let mut dims = self.dims().to_vec();
        dims[dim] = len;
        Ok(Layout {
            shape: dims.into(),
            strides: self.strides.clone(),
            offset: self.offset + start * self.strides[dim],
        })
    }

    /// Without dim `dim`, which must have size 1 (checked by the caller).
    pub fn squeeze(&self, dim: usize) -> Layout {
        let (mut dims, mut strides) = (self.dims().to_vec(), self.strides.clone());
        dims.remove(dim);
        strides.remove(dim);
        Layout {
            shape: dims.into(),
            strides,
            offset: self.offset,
        }
    }

    /// With a new dim of size 1 at `dim` (0..=rank, checked by the caller). Its stride is
    /// irrelevant to addressing; the inner dim's extent keeps a contiguous layout contiguous.
    pub fn unsqueeze(&self, dim: usize) -> Layout {
        let (mut dims, mut strides) = (self.dims().to_vec(), self.strides.clone());
        let stride = match dim {
            d if d < dims.len() => dims[d] * strides[d],
            _ => 1,
        };
        dims.insert(dim, 1);
        strides.insert(dim, stride);
        Layout {
            shape: dims.into(),
            strides,
            offset: self.offset,
        }
    }

    /// The same elements under a new shape, if this layout is contiguous (otherwise `None`:
    /// the data must be copied first).
    pub fn reshape(&self, shape: &Shape) -> Option<Layout> {
        (self.is_contiguous() && shape.elem_count() == self.elem_count()).then(|| Layout {
            shape: shape.clone(),
            strides: shape.contiguous_strides(),
            offset: self.offset,
        })
    }
}

/// Row-major iteration over `N` layouts that share one shape, in runs: each run is `len`
/// consecutive logical elements, starting at one storage offset per layout and stepping by one
/// stride per layout. Dims of size 1 are dropped and dims that are contiguous with their inner
/// neighbour in every layout are merged, so a contiguous tensor is a single run.
pub(crate) struct Runs<const N: usize> {
    /// Outer dims (all but the innermost merged dim) and their strides per layout.
    outer_dims: Vec<usize>,
    outer_strides: Vec<[usize; N]>,
    offsets: [usize; N],
    run_len: usize,
    run_strides: [usize; N],
}

impl<const N: usize> Runs<N> {
    pub fn new(shape: &Shape, layouts: [(&[usize], usize); N]) -> Self {
        let mut dims: Vec<(usize, [usize; N])> = Vec::new();
        for (d, &size) in shape.dims().iter().enumerate() {
            if size == 1 {
                continue;
            }
            let strides = std::array::from_fn(|k| layouts[k].0[d]);
            match dims.last_mut() {
                Some((outer_size, outer_strides))
                    if (0..N).all(|k| outer_strides[k] == strides[k] * size) =>
                {
                    *outer_size *= size;
                    *outer_strides = strides;
                }
                _ => dims.push((size, strides)),
            }
        }
        let offsets = std::array::from_fn(|k| layouts[k].1);
        let (run_len, run_strides) = dims.pop().unwrap_or((1, [0; N]));
        Runs {
            outer_dims: dims.iter().map(|(size, _)| *size).collect(),
            outer_strides: dims.iter().map(|(_, strides)| *strides).collect(),
            offsets,
            run_len,
            run_strides,
        }
    }

    pub fn for_layouts(layouts: [&Layout; N]) -> Self {
        let shape = layouts[0].shape();
        debug_assert!(layouts.iter().all(|l| l.shape() == shape));
        Self::new(shape, layouts.map(|l| (l.strides(), l.offset())))
    }

    pub fn run_strides(&self) -> [usize; N] {
        self.run_strides
    }

    /// Calls `f(start_offsets, len)` for each span of consecutive logical elements in `elems`
    /// (a span is a run, or the part of one that `elems` cuts), in row-major order. Within a
    /// span, element `i` of layout `k` is at `start_offsets[k] + i * run_strides()[k]`.
    pub fn for_each_span(
        &self,
        elems: std::ops::Range<usize>,
        mut f: impl FnMut([usize; N], usize),
    ) {
        if elems.is_empty() {
            return;
        }
        let (first_run, mut within) = (elems.start / self.run_len, elems.start % self.run_len);
        // Multi-index of the first run over the outer dims, then step it like an odometer.
        let mut index = vec![0; self.outer_dims.len()];
        let mut rest = first_run;
        let mut offsets = self.offsets;
        for d in (0..index.len()).rev() {
            index[d] = rest % self.outer_dims[d];
            rest /= self.outer_dims[d];
            for (k, offset) in offsets.iter_mut().enumerate() {
                *offset += index[d] * self.outer_strides[d][k];
            }
        }
        let mut position = elems.start;
        while position < elems.end {
            let len = (self.run_len - within).min(elems.end - position);
            f(
                std::array::from_fn(|k| offsets[k] + within * self.run_strides[k]),
                len,
            );
            position += len;
            within = 0;
            for d in (0..index.len()).rev() {
                index[d] += 1;
                for (k, offset) in offsets.iter_mut().enumerate() {
                    *offset += self.outer_strides[d][k];
                }
                if index[d] < self.outer_dims[d] {
                    break;
                }
                for (k, offset) in offsets.iter_mut().enumerate() {
                    *offset -= self.outer_strides[d][k] * self.outer_dims[d];
                }
                index[d] = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(layout: &Layout) -> Vec<usize> {
        spans(layout, 0..layout.elem_count())
    }

    fn spans(layout: &Layout, elems: std::ops::Range<usize>) -> Vec<usize> {
        let runs = Runs::for_layouts([layout]);
        let mut out = Vec::new();
        runs.for_each_span(elems, |[start], len| {
            out.extend((0..len).map(|i| start + i * runs.run_strides()[0]));
        });
        out
    }

    #[test]
    fn contiguous_layout_is_one_run() {
        let layout = Layout::contiguous([2, 3, 4]);
        let runs = Runs::for_layouts([&layout]);
        assert_eq!(runs.run_len, 24);
        assert_eq!(offsets(&layout), (0..24).collect::<Vec<_>>());
    }

    #[test]
    fn transposed_layout_walks_columns() {
        // [[0, 1, 2], [3, 4, 5]] transposed is [[0, 3], [1, 4], [2, 5]].
        let layout = Layout::contiguous([2, 3]).permute(&[1, 0]).unwrap();
        assert!(!layout.is_contiguous());
        assert_eq!(offsets(&layout), vec![0, 3, 1, 4, 2, 5]);
    }

    #[test]
    fn narrowed_broadcast_layout() {
        // Rows 1..3 of a [4, 2] matrix, broadcast to [3, 2, 2].
        let layout = Layout::contiguous([4, 2])
            .narrow(0, 1, 2)
            .unwrap()
            .broadcast_as(&Shape::from([3, 2, 2]))
            .unwrap();
        assert_eq!(layout.strides(), &[0, 2, 1]);
        assert_eq!(offsets(&layout), [2, 3, 4, 5].repeat(3));
    }

    #[test]
    fn spans_can_start_and_end_mid_run() {
        // The transpose of a [3, 4] matrix has 4 runs of 3: offsets 0 4 8 | 1 5 9 | 2 6 10 | ...
        let layout = Layout::contiguous([3, 4]).permute(&[1, 0]).unwrap();
        assert_eq!(spans(&layout, 2..8), vec![8, 1, 5, 9, 2, 6]);
        assert_eq!(spans(&layout, 11..12), vec![11]);
        assert!(spans(&layout, 5..5).is_empty());
    }

    #[test]
    fn bad_views_are_errors() {
        let layout = Layout::contiguous([2, 3]);
        assert!(layout.permute(&[0, 0]).is_err());
        assert!(layout.narrow(1, 2, 2).is_err());
        assert!(layout.narrow(2, 0, 1).is_err());
        assert!(layout.broadcast_as(&Shape::from([2, 4])).is_err());
        assert!(layout.broadcast_as(&Shape::from([3])).is_err());
    }
}
