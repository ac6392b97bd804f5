//! Batch norm's CPU kernels: per-channel batch statistics, the normalising forward and the
//! fused training-mode backward, over `x [N, C, *]` read as `(outer, channels, inner)` in
//! row-major order. They are the references of kernels/norm.cu. kiln-nn's group norm runs on
//! them too, each (sample, group) a channel of `[1, N·G, C/G·*]`; layer norm is composed from
//! tensor ops.

use rayon::prelude::*;

use super::index::row_major;
use crate::{FloatDType, Layout};

/// Channels handled per rayon task once the input is large enough to split.
const PARALLEL_MIN: usize = 1 << 16;

/// `x [N, C, *]` as `(N, C, product of the trailing dims)`.
pub(crate) fn channel_split(layout: &Layout) -> (usize, usize, usize) {
    let dims = layout.dims();
    (dims[0], dims[1], dims[2..].iter().product())
}

/// Calls `f(c, run)` for every contiguous run of channel `c` in a row-major `[outer, C, inner]`
/// slice: `outer` runs of `inner` elements each.
fn runs_of<T>(
    data: &[T],
    (outer, channels, inner): (usize, usize, usize),
    c: usize,
) -> impl Iterator<Item = &[T]> {
    (0..outer).map(move |n| {
        let start = (n * channels + c) * inner;
        &data[start..start + inner]
    })
}

/// Running sums per lane in [`lane_sums`]: independent chains of additions, which the
/// compiler keeps in vector registers (one f64 sum in a chain costs an add's latency per
/// value; 4% of a DDPM step went to these sums before).
const SUM_LANES: usize = 8;

/// Two sums in f64 as [`lane_sums_zip`] keeps them: `SUM_LANES` running sums each, and one
/// for runs' last values.
type LaneSums = [([f64; SUM_LANES], f64); 2];

/// `Σ term(v)` in f64 over every value of `runs`: value `i` of each run adds to running sum
/// `i % SUM_LANES` (a run's last `len % SUM_LANES` values to one more), and those add up in
/// lane order at the end: one order whatever the thread count.
fn lane_sums<'a, T: Copy + 'a>(
    runs: impl Iterator<Item = &'a [T]>,
    term: impl Fn(T) -> f64,
) -> f64 {
    lane_sums_zip(runs.map(|run| (run, run)), |v, _| [term(v), 0.0])[0]
}

/// Two sums as [`lane_sums`] over pairs of equally long runs, `terms` of their values side
/// by side.
fn lane_sums_zip<'a, T: Copy + 'a>(
    runs: impl Iterator<Item = (&'a [T], &'a [T])>,
    terms: impl Fn(T, T) -> [f64; 2],
) -> [f64; 2] {
    let mut sums: LaneSums = [([0.0; SUM_LANES], 0.0); 2];
    for (a, b) in runs {
        add_runs(&mut sums, a, b, &terms);
    }
    sums.map(|(lanes, rest)| lanes.iter().sum::<f64>() + rest)
}

super::loops::simd_versions! {
    /// Adds `terms(a[i], b[i])` to `sums` (see [`lane_sums_zip`]), compiled for the CPU's
    /// widest vectors.
    fn add_runs<T: Copy, F: Fn(T, T) -> [f64; 2]>(
        sums: &mut LaneSums,
        a: &[T],
        b: &[T],
        terms: &F,
    ) {
        let (a_chunks, b_chunks) = (a.chunks_exact(SUM_LANES), b.chunks_exact(SUM_LANES));
        for (&u, &v) in a_chunks.remainder().iter().zip(b_chunks.remainder()) {
            for ((_, rest), term) in sums.iter_mut().zip(terms(u, v)) {
                *rest += term;
            }
        }
        let [(first, _), (second, _)] = sums;
        for (a, b) in a_chunks.zip(b_chunks) {
            for lane in 0..SUM_LANES {
                let [u, v] = terms(a[lane], b[lane]);
                first[lane] += u;
                second[lane] += v;
            }
        }
    }
}

/// Per channel the mean and the biased variance, `[C]` each. Two passes in f64 over a
/// row-major view (the exact reference the CUDA one-pass Welford is compared with): the
/// mean, then the mean of squared deviations from it, so nothing cancels.
pub(crate) fn batch_norm_stats<T: FloatDType>(data: &[T], layout: &Layout) -> (Vec<T>, Vec<T>) {
    let x = row_major(data, layout);
    let split @ (outer, channels, inner) = channel_split(layout);
    let count = (outer * inner) as f64;
    let channel = |c: usize| {
        let value = |v: T| T::math_to_f64(v.to_math());
        let sum = lane_sums(runs_of(&x, split, c), value);
        let mean = sum / count;
        let squares = lane_sums(runs_of(&x, split, c), |v| {
            let deviation = value(v) - mean;
            deviation * deviation
        });
        let round = |v: f64| T::from_math(T::math_from_f64(v));
        (round(mean), round(squares / count))
    };
    let stats: Vec<(T, T)> = if x.len() < PARALLEL_MIN {
        (0..channels).map(channel).collect()
    } else {
        (0..channels).into_par_iter().map(channel).collect()
    };
    stats.into_iter().unzip()
}

/// One `[inner]` plane of the backward: its index, then (dx out, dy, x).
type BackwardPlane<'a, T> = (usize, ((&'a mut [T], &'a [T]), &'a [T]));

/// The per-channel constants of the forward in the math type: `(mean, invstd, weight, bias)`,
/// weight and bias `None` when absent.
type Channel<M> = (M, M, Option<M>, Option<M>);

/// `((x - mean[c])·invstd[c])·weight[c] + bias[c]` in the math type, in that order, each
/// operation rounded once (the CUDA kernel follows the same order with `_rn` intrinsics, so
/// the two agree bit for bit). A missing weight or bias skips its operation.
pub(crate) fn batch_norm_forward<T: FloatDType>(
    data: &[T],
    layout: &Layout,
    mean: &[T],
    invstd: &[T],
    weight: Option<&[T]>,
    bias: Option<&[T]>,
) -> Vec<T> {
    let x = row_major(data, layout);
    let (_, channels, inner) = channel_split(layout);
    let constants: Vec<Channel<T::Math>> = (0..channels)
        .map(|c| {
            (
                mean[c].to_math(),
                invstd[c].to_math(),
                weight.map(|w| w[c].to_math()),
                bias.map(|b| b[c].to_math()),
            )
        })
        .collect();
    let mut out = vec![T::default(); x.len()];
    let plane = |(p, (out, x)): (usize, (&mut [T], &[T]))| {
        let (m, s, w, b) = constants[p % channels];
        for (o, &v) in out.iter_mut().zip(x) {
            let mut y = (v.to_math() - m) * s;
            if let Some(w) = w {
                y = y * w;
            }
            if let Some(b) = b {
                y = y + b;
            }
            *o = T::from_math(y);
        }
    };
    let inner = inner.max(1);
    if x.len() < PARALLEL_MIN {
        out.chunks_mut(inner)
            .zip(x.chunks(inner))
            .enumerate()
            .for_each(plane);
    } else {
        out.par_chunks_mut(inner)
            .zip(x.par_chunks(inner))
            .enumerate()
            .for_each(plane);
    }
    out
}

/// `(dx, dweight, dbias)` of the training-mode forward with batch statistics: per channel
/// `Σ dy` and `Σ dy·xhat` in f64 (`xhat = (x - mean)·invstd` in the math type), then
/// `dx = (invstd·weight)·((dy - mean(dy)) - xhat·mean(dy·xhat))` in the math type, in that
/// order (the CUDA kernels' order too).
pub(crate) fn batch_norm_backward<T: FloatDType>(
    (grad, grad_layout): (&[T], &Layout),
    (data, layout): (&[T], &Layout),
    mean: &[T],
    invstd: &[T],
    weight: Option<&[T]>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let dy = row_major(grad, grad_layout);
    let x = row_major(data, layout);
    let split @ (outer, channels, inner) = channel_split(layout);
    let count = (outer * inner) as f64;
    let sums = |c: usize| {
        let (m, s) = (mean[c].to_math(), invstd[c].to_math());
        let pairs = runs_of(&dy, split, c).zip(runs_of(&x, split, c));
        let [sum_dy, sum_dy_xhat] = lane_sums_zip(pairs, |g, v| {
            let g = T::math_to_f64(g.to_math());
            [g, g * T::math_to_f64((v.to_math() - m) * s)]
        });
        (sum_dy, sum_dy_xhat)
    };
    let sums: Vec<(f64, f64)> = if x.len() < PARALLEL_MIN {
        (0..channels).map(sums).collect()
    } else {
        (0..channels).into_par_iter().map(sums).collect()
    };
    let round = |v: f64| T::from_math(T::math_from_f64(v));
    let grad_weight = sums.iter().map(|&(_, s)| round(s)).collect();
    let grad_bias = sums.iter().map(|&(s, _)| round(s)).collect();
    let constants: Vec<[T::Math; 5]> = (0..channels)
        .map(|c| {
            let (m, s) = (mean[c].to_math(), invstd[c].to_math());
            let scale = match weight {
                Some(w) => s * w[c].to_math(),
                None => s,
            };
            let (sum_dy, sum_dy_xhat) = sums[c];
            [
                m,
                s,
                scale,
                T::math_from_f64(sum_dy / count),
                T::math_from_f64(sum_dy_xhat / count),
            ]
        })
        .collect();
    let mut dx = vec![T::default(); x.len()];
    let plane = |(p, ((out, dy), x)): BackwardPlane<'_, T>| {
        let [m, s, scale, mean_dy, mean_dy_xhat] = constants[p % channels];
        for ((o, &g), &v) in out.iter_mut().zip(dy).zip(x) {
            let xhat = (v.to_math() - m) * s;
            *o = T::from_math(scale * ((g.to_math() - mean_dy) - xhat * mean_dy_xhat));
        }
    };
    let inner = inner.max(1);
    if x.len() < PARALLEL_MIN {
        dx.chunks_mut(inner)
            .zip(dy.chunks(inner))
            .zip(x.chunks(inner))
            .enumerate()
            .for_each(plane);
    } else {
        dx.par_chunks_mut(inner)
            .zip(dy.par_chunks(inner))
            .zip(x.par_chunks(inner))
            .enumerate()
            .for_each(plane);
    }
    (dx, grad_weight, grad_bias)
}
