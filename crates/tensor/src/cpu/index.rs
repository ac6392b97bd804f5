//! Concatenation and indexing kernels on the CPU: cat, index_select/index_add (whole slices
//! along a dim) and gather/scatter_add (one element per index). Each add kernel is the
//! transpose of its select kernel, which is what their backward rules rely on.

use std::borrow::Cow;

use super::map1;
use crate::layout::Runs;
use crate::{FloatDType, Layout, Shape, WithDType};

/// The elements of `layout` in row-major order: borrowed when already contiguous (selecting a
/// batch from a dataset must not copy the dataset), copied otherwise.
pub(crate) fn row_major<'a, T: WithDType>(data: &'a [T], layout: &Layout) -> Cow<'a, [T]> {
    match layout.contiguous_range() {
        Some(range) => Cow::Borrowed(&data[range]),
        None => Cow::Owned(map1(data, layout, |x| x)),
    }
}

/// Sizes of the dims before `dim`, of `dim`, and after it.
fn split_at_dim(dims: &[usize], dim: usize) -> (usize, usize, usize) {
    let outer = dims[..dim].iter().product();
    let inner = dims[dim + 1..].iter().product();
    (outer, dims[dim], inner)
}

pub(crate) fn cat<T: WithDType>(parts: &[(&[T], &Layout)], dim: usize) -> Vec<T> {
    let mut out_dims = parts[0].1.dims().to_vec();
    out_dims[dim] = parts.iter().map(|(_, layout)| layout.dims()[dim]).sum();
    let out_layout = Layout::contiguous(out_dims);
    let mut out = vec![T::default(); out_layout.elem_count()];
    let mut start = 0;
    for (data, layout) in parts {
        let len = layout.dims()[dim];
        let target = out_layout
            .narrow(dim, start, len)
            .expect("parts fit the concatenated shape");
        let runs = Runs::for_layouts([layout, &target]);
        let [src_stride, dst_stride] = runs.run_strides();
        runs.for_each_span(0..layout.elem_count(), |[src, dst], len| {
            for i in 0..len {
                out[dst + i * dst_stride] = data[src + i * src_stride];
            }
        });
        start += len;
    }
    out
}

pub(crate) fn index_select<T: WithDType>(
    data: &[T],
    layout: &Layout,
    indices: &[usize],
    dim: usize,
) -> Vec<T> {
    let data = row_major(data, layout);
    let (outer, size, inner) = split_at_dim(layout.dims(), dim);
    let mut out = Vec::with_capacity(outer * indices.len() * inner);
    for o in 0..outer {
        for &index in indices {
            out.extend_from_slice(&data[(o * size + index) * inner..][..inner]);
        }
    }
    out
}

pub(crate) fn index_add<T: FloatDType>(
    data: &[T],
    layout: &Layout,
    indices: &[usize],
    source: &[T],
    source_layout: &Layout,
    dim: usize,
) -> Vec<T> {
    let mut out = map1(data, layout, |x| x.to_math());
    let source = map1(source, source_layout, |x| x.to_math());
    let (outer, size, inner) = split_at_dim(layout.dims(), dim);
    for o in 0..outer {
        for (j, &index) in indices.iter().enumerate() {
            let dst = &mut out[(o * size + index) * inner..][..inner];
            let src = &source[(o * indices.len() + j) * inner..][..inner];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = *d + s;
            }
        }
    }
    out.into_iter().map(T::from_math).collect()
}

/// Offsets into a contiguous tensor of `dims` for each position of `index_shape` (row-major),
/// with the position along `dim` left out; the caller adds `index * stride_of_dim`.
fn offsets_without_dim(dims: &[usize], index_shape: &Shape, dim: usize) -> (Vec<usize>, usize) {
    let mut strides = Shape::from(dims).contiguous_strides();
    let dim_stride = std::mem::replace(&mut strides[dim], 0);
    let runs = Runs::new(index_shape, [(&strides, 0)]);
    let [stride] = runs.run_strides();
    let mut offsets = Vec::with_capacity(index_shape.elem_count());
    runs.for_each_span(0..index_shape.elem_count(), |[start], len| {
        offsets.extend((0..len).map(|i| start + i * stride));
    });
    (offsets, dim_stride)
}

pub(crate) fn gather<T: WithDType>(
    data: &[T],
    layout: &Layout,
    indices: &[usize],
    index_shape: &Shape,
    dim: usize,
) -> Vec<T> {
    let data = row_major(data, layout);
    let (offsets, dim_stride) = offsets_without_dim(layout.dims(), index_shape, dim);
    offsets
        .iter()
        .zip(indices)
        .map(|(&offset, &index)| data[offset + index * dim_stride])
        .collect()
}

pub(crate) fn scatter_add<T: FloatDType>(
    data: &[T],
    layout: &Layout,
    indices: &[usize],
    source: &[T],
    source_layout: &Layout,
    dim: usize,
) -> Vec<T> {
    let mut out = map1(data, layout, |x| x.to_math());
    let source = map1(source, source_layout, |x| x.to_math());
    let (offsets, dim_stride) = offsets_without_dim(layout.dims(), source_layout.shape(), dim);
    for ((&offset, &index), &value) in offsets.iter().zip(indices).zip(&source) {
        let slot = &mut out[offset + index * dim_stride];
        *slot = *slot + value;
    }
    out.into_iter().map(T::from_math).collect()
}
