//! Batch norm's and group norm's CPU kernels over `x [N, C, *]` read as `(outer, channels,
//! inner)` in row-major order: batch norm's per-channel statistics (group norm's too, each
//! (sample, group) a channel of `[1, N·G, C/G·*]`), the normalising forwards with the affine
//! map in the same pass, and the fused training-mode backwards. Batch norm's are the
//! references of kernels/norm.cu; CUDA runs group norm as batch norm's kernels composed with
//! broadcast ops (`backend::group_norm_forward_composed`). Layer norm is composed from tensor
//! ops.

use std::mem::MaybeUninit;

use num_traits::One;
use rayon::prelude::*;

use super::elementwise::{self, LeakyReluFactors};
use super::filled;
use super::index::row_major;
use crate::{Activation, FloatDType, Layout};

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
    totals(sums)
}

/// The two sums `LaneSums` hold: each one's lanes in order, then its rest.
fn totals(sums: LaneSums) -> [f64; 2] {
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

/// Channels per task of [`column_sums`] once the input is large enough to split.
const COLUMN_BLOCK: usize = 256;

/// [`lane_sums_zip`] of each channel `c` of row-major `[outer, C]` pairs `a`, `b` (inner 1,
/// as BatchNorm1d's inputs are): each channel's values are runs of one, which that adds one
/// by one in row order into its remainder sum; here the same sums in the same order, the
/// channels side by side along each row, so the loop runs across channels in vectors where a
/// call per value had cost 3.6% of a DCGAN step (its generator's BatchNorm1d of 6,272
/// features). Returns `[Σ first terms, Σ second terms]` per channel.
fn column_sums<T: Copy + Sync>(
    (a, b): (&[T], &[T]),
    channels: usize,
    terms: impl Fn(usize, T, T) -> [f64; 2] + Sync,
) -> Vec<[f64; 2]> {
    let mut sums = vec![[0.0f64; 2]; channels];
    if channels == 0 {
        return sums;
    }
    let block = |(index, sums): (usize, &mut [[f64; 2]])| {
        let (mut first, mut second) = (vec![0.0f64; sums.len()], vec![0.0f64; sums.len()]);
        let first_channel = index * COLUMN_BLOCK;
        let columns = first_channel..first_channel + sums.len();
        let rows = a.chunks_exact(channels).zip(b.chunks_exact(channels));
        for (row_a, row_b) in rows {
            let (a, b) = (&row_a[columns.clone()], &row_b[columns.clone()]);
            add_row(&mut first, &mut second, first_channel, a, b, &terms);
        }
        for (sum, (first, second)) in sums.iter_mut().zip(first.into_iter().zip(second)) {
            // As `lane_sums_zip` ends: its lane sums (all zero here) plus the remainder.
            *sum = [0.0 + first, 0.0 + second];
        }
    };
    if a.len() < PARALLEL_MIN {
        sums.chunks_mut(COLUMN_BLOCK).enumerate().for_each(block);
    } else {
        sums.par_chunks_mut(COLUMN_BLOCK)
            .enumerate()
            .for_each(block);
    }
    sums
}

super::loops::simd_versions! {
    /// Adds `terms(first_channel + i, a[i], b[i])` to `(first[i], second[i])` for each `i`
    /// (one row of [`column_sums`]), compiled for the CPU's widest vectors.
    fn add_row<T: Copy, F: Fn(usize, T, T) -> [f64; 2]>(
        first: &mut [f64],
        second: &mut [f64],
        first_channel: usize,
        a: &[T],
        b: &[T],
        terms: &F,
    ) {
        let values = first.iter_mut().zip(second.iter_mut()).zip(a.iter().zip(b));
        for (i, ((first, second), (&u, &v))) in values.enumerate() {
            let [x, y] = terms(first_channel + i, u, v);
            *first += x;
            *second += y;
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
    let round = |v: f64| T::from_math(T::math_from_f64(v));
    let channel = |c: usize| {
        let value = |v: T| T::math_to_f64(v.to_math());
        let sum = lane_sums(runs_of(&x, split, c), value);
        let mean = sum / count;
        let squares = lane_sums(runs_of(&x, split, c), |v| {
            let deviation = value(v) - mean;
            deviation * deviation
        });
        (round(mean), round(squares / count))
    };
    if inner == 1 {
        // The same sums, channels side by side ([`column_sums`]).
        let value = |v: T| T::math_to_f64(v.to_math());
        let sums = column_sums((&x, &x), channels, |_, v, _| [value(v), 0.0]);
        let means: Vec<f64> = sums.iter().map(|[sum, _]| sum / count).collect();
        let squares = column_sums((&x, &x), channels, |c, v, _| {
            let deviation = value(v) - means[c];
            [deviation * deviation, 0.0]
        });
        let variances = squares.iter().map(|[squares, _]| round(squares / count));
        return (
            means.iter().map(|&m| round(m)).collect(),
            variances.collect(),
        );
    }
    let stats: Vec<(T, T)> = if x.len() < PARALLEL_MIN {
        (0..channels).map(channel).collect()
    } else {
        (0..channels).into_par_iter().map(channel).collect()
    };
    stats.into_iter().unzip()
}

/// The per-channel constants of the forward in the math type: `(mean, invstd, weight, bias)`,
/// weight and bias `None` when absent.
type Channel<M> = (M, M, Option<M>, Option<M>);

/// `((x - mean[c])·invstd[c])·weight[c] + bias[c]` in the math type, in that order, each
/// operation rounded once (the CUDA kernel follows the same order with `_rn` intrinsics, so
/// the two agree bit for bit). A missing weight or bias skips its operation. `activation`
/// then maps each value as `unary` would (in the same pass, while the values are in cache):
/// the composition's bits where the math type is `T` itself (f32, f64).
pub(crate) fn batch_norm_forward<T: FloatDType>(
    data: &[T],
    layout: &Layout,
    (mean, invstd): (&[T], &[T]),
    (weight, bias): (Option<&[T]>, Option<&[T]>),
    activation: Activation,
) -> Vec<T> {
    let (_, channels, inner) = channel_split(layout);
    let constants: Vec<Channel<T::Math>> = (0..channels)
        .map(|c| channel_constants((mean, invstd, c), (weight, bias, c)))
        .collect();
    normalise_planes(&row_major(data, layout), inner, &constants, activation)
}

/// Group norm's forward over `x [N, C, *]`: `((x - mean[s])·invstd[s])·weight[c] + bias[c]`
/// for channel `c` of sample `n`, `s = n·groups + c / (C / groups)` its group's statistics
/// (`mean` and `invstd` are `[N·groups]`), in the order and rounding of
/// [`batch_norm_forward`]: one pass, the affine map included.
pub(crate) fn group_norm_forward<T: FloatDType>(
    data: &[T],
    layout: &Layout,
    groups: usize,
    (mean, invstd): (&[T], &[T]),
    (weight, bias): (Option<&[T]>, Option<&[T]>),
) -> Vec<T> {
    let (outer, channels, inner) = channel_split(layout);
    let constants: Vec<Channel<T::Math>> = (0..outer * channels)
        .map(|p| {
            let (group, c) = (group_of(p, channels, groups), p % channels);
            channel_constants((mean, invstd, group), (weight, bias, c))
        })
        .collect();
    normalise_planes(
        &row_major(data, layout),
        inner,
        &constants,
        Activation::Identity,
    )
}

/// The group whose statistics plane `p` (sample `p / C`, channel `p % C`) of `[N, C, *]`
/// is normalised with, of `groups` per sample.
fn group_of(p: usize, channels: usize, groups: usize) -> usize {
    p / channels * groups + p % channels / (channels / groups)
}

/// `(mean[s], invstd[s], weight[c], bias[c])` in the math type.
fn channel_constants<T: FloatDType>(
    (mean, invstd, s): (&[T], &[T], usize),
    (weight, bias, c): (Option<&[T]>, Option<&[T]>, usize),
) -> Channel<T::Math> {
    (
        mean[s].to_math(),
        invstd[s].to_math(),
        weight.map(|w| w[c].to_math()),
        bias.map(|b| b[c].to_math()),
    )
}

/// Planes per block of [`normalise_planes`]: at least this many values (a block's
/// activation is one call, where planes can be a single value, as BatchNorm1d's are).
const ACTIVATION_BLOCK: usize = 4096;

/// Each `[inner]` plane `p` of a row-major `x` normalised with `constants[p %
/// constants.len()]`: `((x - mean)·invstd)·weight + bias`, each operation rounded once, then
/// `activation` over each block of planes as soon as it is written.
fn normalise_planes<T: FloatDType>(
    x: &[T],
    inner: usize,
    constants: &[Channel<T::Math>],
    activation: Activation,
) -> Vec<T> {
    let inner = inner.max(1);
    let planes_per_block = ACTIVATION_BLOCK.div_ceil(inner);
    let block = |(b, (out, x)): (usize, (&mut [MaybeUninit<T>], &[T]))| {
        let first = b * planes_per_block;
        for (p, (out, x)) in out.chunks_mut(inner).zip(x.chunks(inner)).enumerate() {
            normalise_plane(out, x, constants[(first + p) % constants.len()]);
        }
        if activation != Activation::Identity {
            // SAFETY: `normalise_plane` wrote every value of every plane of the block.
            let out = unsafe { &mut *(out as *mut [MaybeUninit<T>] as *mut [T]) };
            elementwise::activate(out, activation);
        }
    };
    let block_len = planes_per_block * inner;
    // Every value is written by its plane.
    filled(x.len(), |out| {
        if x.len() < PARALLEL_MIN {
            out.chunks_mut(block_len)
                .zip(x.chunks(block_len))
                .enumerate()
                .for_each(block);
        } else {
            out.par_chunks_mut(block_len)
                .zip(x.par_chunks(block_len))
                .enumerate()
                .for_each(block);
        }
    })
}

super::loops::simd_versions! {
    /// `out = ((x - mean)·invstd)·weight + bias` for one plane and its channel's constants,
    /// compiled for the CPU's widest vectors (the same operations, each rounded once).
    fn normalise_plane<T: FloatDType>(
        out: &mut [MaybeUninit<T>],
        x: &[T],
        constants: Channel<T::Math>,
    ) {
        let (m, s, w, b) = constants;
        for (o, &v) in out.iter_mut().zip(x) {
            let mut y = (v.to_math() - m) * s;
            if let Some(w) = w {
                y = y * w;
            }
            if let Some(b) = b {
                y = y + b;
            }
            o.write(T::from_math(y));
        }
    }
}

/// A (leaky) ReLU after a batch norm, fused into its backward: the activation's output
/// (row-major, the normalisation's shape) and its derivative's factors.
type FusedRelu<'a, T> = (std::borrow::Cow<'a, [T]>, LeakyReluFactors<T>);

/// `(dx, dweight, dbias)` of the training-mode forward with batch statistics: per channel
/// `Σ dy` and `Σ dy·xhat` in f64 (`xhat = (x - mean)·invstd` in the math type), then
/// `dx = (invstd·weight)·((dy - mean(dy)) - xhat·mean(dy·xhat))` in the math type, in that
/// order (the CUDA kernels' order too).
///
/// With `relu` (`(y, slope)`: the output of a leaky ReLU, ReLU's at slope 0, applied to the
/// normalisation), `dy` is first the gradient through it, `dy·leaky_relu'(y)` rounded as
/// `leaky_relu_gradient` rounds it, so the results have the composition's bits; it is taken
/// run by run into a buffer of one run where it is used, in both passes, where the
/// composition wrote it whole and read it twice.
pub(crate) fn batch_norm_backward<T: FloatDType>(
    (grad, grad_layout): (&[T], &Layout),
    (data, layout): (&[T], &Layout),
    (mean, invstd): (&[T], &[T]),
    weight: Option<&[T]>,
    relu: Option<((&[T], &Layout), f64)>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut dy = row_major(grad, grad_layout);
    let x = row_major(data, layout);
    let split @ (outer, channels, inner) = channel_split(layout);
    let mut relu: Option<FusedRelu<'_, T>> =
        relu.map(|((y, y_layout), slope)| (row_major(y, y_layout), LeakyReluFactors::new(slope)));
    if let (Some((y, factors)), 1) = (&relu, inner) {
        // Runs of one value (BatchNorm1d): the gradient through the ReLU first, whole.
        let through = dy
            .iter()
            .zip(y.iter())
            .map(|(&g, &v)| factors.gradient(g, v));
        dy = std::borrow::Cow::Owned(through.collect());
        relu = None;
    }
    let count = (outer * inner) as f64;
    let sums = |c: usize| {
        let (m, s) = (mean[c].to_math(), invstd[c].to_math());
        let terms = |g: T, v: T| {
            let g = T::math_to_f64(g.to_math());
            [g, g * T::math_to_f64((v.to_math() - m) * s)]
        };
        let [sum_dy, sum_dy_xhat] = match &relu {
            None => lane_sums_zip(runs_of(&dy, split, c).zip(runs_of(&x, split, c)), terms),
            Some((y, factors)) => {
                // The same sums as over the composition's gradient, run by run.
                let mut through = vec![T::from_math(T::math_from_f64(0.0)); inner];
                let mut sums: LaneSums = [([0.0; SUM_LANES], 0.0); 2];
                let runs = runs_of(&dy, split, c).zip(runs_of(y, split, c));
                for ((g, y), v) in runs.zip(runs_of(&x, split, c)) {
                    relu_gradient_run(&mut through, g, y, *factors);
                    add_runs(&mut sums, &through, v, &terms);
                }
                totals(sums)
            }
        };
        (sum_dy, sum_dy_xhat)
    };
    let sums: Vec<(f64, f64)> = if inner == 1 {
        // The same sums, channels side by side ([`column_sums`]).
        let sums = column_sums((&dy, &x), channels, |c, g, v| {
            let (m, s) = (mean[c].to_math(), invstd[c].to_math());
            let g = T::math_to_f64(g.to_math());
            [g, g * T::math_to_f64((v.to_math() - m) * s)]
        });
        sums.into_iter().map(|[a, b]| (a, b)).collect()
    } else if x.len() < PARALLEL_MIN {
        (0..channels).map(sums).collect()
    } else {
        (0..channels).into_par_iter().map(sums).collect()
    };
    let round = |v: f64| T::from_math(T::math_from_f64(v));
    let grad_weight = sums.iter().map(|&(_, s)| round(s)).collect();
    let grad_bias = sums.iter().map(|&(s, _)| round(s)).collect();
    let constants: Vec<PlaneGradient<T::Math>> = (0..channels)
        .map(|c| {
            let (m, s) = (mean[c].to_math(), invstd[c].to_math());
            let (sum_dy, sum_dy_xhat) = sums[c];
            PlaneGradient {
                mean: m,
                invstd: s,
                scale: weight.map_or(s, |w| s * w[c].to_math()),
                weight: T::Math::one(),
                mean_g: T::math_from_f64(sum_dy / count),
                mean_g_xhat: T::math_from_f64(sum_dy_xhat / count),
            }
        })
        .collect();
    let relu = relu.as_ref().map(|(y, factors)| (&y[..], *factors));
    let dx = input_gradient_planes(&dy, &x, inner, &constants, relu);
    (dx, grad_weight, grad_bias)
}

super::loops::simd_versions! {
    /// `out[i] = dy[i] · leaky_relu'(y[i])` with `factors` (see [`FusedRelu`]), compiled for
    /// the CPU's widest vectors.
    fn relu_gradient_run<T: FloatDType>(
        out: &mut [T],
        dy: &[T],
        y: &[T],
        factors: LeakyReluFactors<T>,
    ) {
        for ((o, &g), &v) in out.iter_mut().zip(dy).zip(y) {
            *o = factors.gradient(g, v);
        }
    }
}

/// Group norm's backward over `x [N, C, *]` with the statistics of [`group_norm_forward`]:
/// per plane (sample, channel) `Σ dy` and `Σ dy·xhat` in f64 as batch norm's backward sums
/// them; `dbias[c]` and `dweight[c]` those summed over the samples in order; per group of a
/// sample the means of `g = dy·weight` and `g·xhat` from them; then `dx = invstd·((dy·weight -
/// mean(g)) - xhat·mean(g·xhat))` in the math type. Two passes over `dy` and `x`, where the
/// composition of batch norm's backward with a broadcast product and sums took six.
pub(crate) fn group_norm_backward<T: FloatDType>(
    (grad, grad_layout): (&[T], &Layout),
    (data, layout): (&[T], &Layout),
    groups: usize,
    (mean, invstd): (&[T], &[T]),
    weight: Option<&[T]>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let dy = row_major(grad, grad_layout);
    let x = row_major(data, layout);
    let (outer, channels, inner) = channel_split(layout);
    let plane_sums = |p: usize| {
        let group = group_of(p, channels, groups);
        let (m, s) = (mean[group].to_math(), invstd[group].to_math());
        let run = (&dy[p * inner..][..inner], &x[p * inner..][..inner]);
        lane_sums_zip(std::iter::once(run), |g, v| {
            let g = T::math_to_f64(g.to_math());
            [g, g * T::math_to_f64((v.to_math() - m) * s)]
        })
    };
    let planes = outer * channels;
    let sums: Vec<[f64; 2]> = if x.len() < PARALLEL_MIN {
        (0..planes).map(plane_sums).collect()
    } else {
        (0..planes).into_par_iter().map(plane_sums).collect()
    };
    let (mut grad_weight, mut grad_bias) = (vec![0.0f64; channels], vec![0.0f64; channels]);
    for (p, [sum_dy, sum_dy_xhat]) in sums.iter().enumerate() {
        grad_bias[p % channels] += sum_dy;
        grad_weight[p % channels] += sum_dy_xhat;
    }
    let weight_of = |c: usize| weight.map_or(T::Math::one(), |w| w[c].to_math());
    // Per group of each sample, Σ g and Σ g·xhat over its channels in order.
    let per_group = channels / groups;
    let count = (per_group * inner) as f64;
    let group_means: Vec<(T::Math, T::Math)> = sums
        .chunks(per_group.max(1))
        .enumerate()
        .map(|(group, sums)| {
            let first = group % groups * per_group;
            let (mut sum_g, mut sum_g_xhat) = (0.0, 0.0);
            for (c, [sum_dy, sum_dy_xhat]) in (first..).zip(sums) {
                let w = T::math_to_f64(weight_of(c));
                sum_g += w * sum_dy;
                sum_g_xhat += w * sum_dy_xhat;
            }
            (
                T::math_from_f64(sum_g / count),
                T::math_from_f64(sum_g_xhat / count),
            )
        })
        .collect();
    let constants: Vec<PlaneGradient<T::Math>> = (0..planes)
        .map(|p| {
            let group = group_of(p, channels, groups);
            let (mean_g, mean_g_xhat) = group_means[group];
            let s = invstd[group].to_math();
            PlaneGradient {
                mean: mean[group].to_math(),
                invstd: s,
                scale: s,
                weight: weight_of(p % channels),
                mean_g,
                mean_g_xhat,
            }
        })
        .collect();
    let dx = input_gradient_planes(&dy, &x, inner, &constants, None);
    let round = |v: f64| T::from_math(T::math_from_f64(v));
    (
        dx,
        grad_weight.into_iter().map(round).collect(),
        grad_bias.into_iter().map(round).collect(),
    )
}

/// The constants of one plane of a normalisation's input gradient (see
/// [`input_gradient_planes`]), in the math type.
#[derive(Clone, Copy)]
struct PlaneGradient<M> {
    mean: M,
    invstd: M,
    scale: M,
    weight: M,
    mean_g: M,
    mean_g_xhat: M,
}

/// One `[inner]` plane of the input gradient: its index, then (dx out, dy, x).
type BackwardPlane<'a, T> = (usize, ((&'a mut [MaybeUninit<T>], &'a [T]), &'a [T]));

/// `dx = scale·((dy·weight - mean_g) - xhat·mean_g_xhat)`, `xhat = (x - mean)·invstd`, in
/// the math type in that order, for each `[inner]` plane `p` of row-major `dy` and `x` with
/// `constants[p % constants.len()]`. Batch norm folds its weight into `scale` (its `weight`
/// is 1, a product that changes nothing); group norm's weight varies within a group.
fn input_gradient_planes<T: FloatDType>(
    dy: &[T],
    x: &[T],
    inner: usize,
    constants: &[PlaneGradient<T::Math>],
    relu: Option<(&[T], LeakyReluFactors<T>)>,
) -> Vec<T> {
    let inner = inner.max(1);
    let plane = |(p, ((out, dy), x)): BackwardPlane<'_, T>| {
        let c = constants[p % constants.len()];
        match relu {
            // `dy` through the (leaky) ReLU first (see [`batch_norm_backward`]).
            Some((y, factors)) => {
                let y = &y[p * inner..][..dy.len()];
                input_gradient_plane_relu(out, (dy, y, factors), x, c);
            }
            None => input_gradient_plane(out, dy, x, c),
        }
    };
    // Every value is written by its plane.
    filled(x.len(), |dx| {
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
    })
}

super::loops::simd_versions! {
    /// One plane of [`input_gradient_planes`] with its constants, compiled for the CPU's
    /// widest vectors (the same operations, each rounded once).
    fn input_gradient_plane<T: FloatDType>(
        out: &mut [MaybeUninit<T>],
        dy: &[T],
        x: &[T],
        c: PlaneGradient<T::Math>,
    ) {
        for ((o, &g), &v) in out.iter_mut().zip(dy).zip(x) {
            o.write(input_gradient(g, v, c));
        }
    }
}

super::loops::simd_versions! {
    /// [`input_gradient_plane`] of the gradient through a (leaky) ReLU with output `y`,
    /// `dy·leaky_relu'(y)` (see [`FusedRelu`]), compiled for the CPU's widest vectors.
    fn input_gradient_plane_relu<T: FloatDType>(
        out: &mut [MaybeUninit<T>],
        relu: (&[T], &[T], LeakyReluFactors<T>),
        x: &[T],
        c: PlaneGradient<T::Math>,
    ) {
        let (dy, y, factors) = relu;
        for (((o, &g), &y), &v) in out.iter_mut().zip(dy).zip(y).zip(x) {
            o.write(input_gradient(factors.gradient(g, y), v, c));
        }
    }
}

/// One value of [`input_gradient_planes`]: `scale·((dy·weight - mean_g) - xhat·mean_g_xhat)`.
#[inline(always)]
fn input_gradient<T: FloatDType>(g: T, v: T, c: PlaneGradient<T::Math>) -> T {
    let xhat = (v.to_math() - c.mean) * c.invstd;
    let g = g.to_math() * c.weight;
    T::from_math(c.scale * ((g - c.mean_g) - xhat * c.mean_g_xhat))
}

#[cfg(test)]
mod tests {
    use super::super::CpuStorage;
    use crate::backend::{
        group_norm_backward_composed, group_norm_forward_composed, BackendStorage, Operand,
    };
    use crate::Layout;

    /// `n` values in [-2, 2) from a fixed sequence, plus `offset`.
    fn values(n: usize, seed: usize, offset: f64) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f64 / 250.0 - 2.0 + offset)
            .collect()
    }

    fn close(what: &str, got: &CpuStorage, expected: &CpuStorage) {
        let (got, expected) = (got.as_slice::<f64>(), expected.as_slice::<f64>());
        let (got, expected) = (got.unwrap(), expected.unwrap());
        assert_eq!(got.len(), expected.len(), "{what}");
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            assert!(
                (g - e).abs() <= 1e-12 * (1.0 + e.abs()),
                "{what}[{i}]: {g} vs {e}"
            );
        }
    }

    /// BatchNorm1d's sums (inner 1) run channels side by side in `column_sums`: the same
    /// bits as `lane_sums_zip` over each channel's runs of one value, serial and parallel.
    #[test]
    fn column_sums_equal_the_per_channel_lane_sums() {
        for (outer, channels) in [(3, 5), (64, 300), (64, 2000)] {
            let a = values(outer * channels, 5, 0.25);
            let b = values(outer * channels, 6, -0.5);
            let terms = |c: usize, u: f64, v: f64| [u * (c as f64 + 0.5), u * v];
            let got = super::column_sums((&a, &b), channels, terms);
            let split = (outer, channels, 1);
            for (c, got) in got.iter().enumerate() {
                let runs = super::runs_of(&a, split, c).zip(super::runs_of(&b, split, c));
                let expected = super::lane_sums_zip(runs, |u, v| terms(c, u, v));
                assert_eq!(
                    got.map(f64::to_bits),
                    expected.map(f64::to_bits),
                    "channel {c}"
                );
            }
        }
    }

    /// The CPU's one-pass group norm kernels against the composition of batch norm's kernels
    /// and broadcast ops that the CUDA backend runs (the trait's default), on the CPU: the
    /// same values and gradients, so the composition CUDA relies on is checked on any machine.
    #[test]
    fn group_norm_kernels_equal_the_composition_cuda_runs() {
        for (dims, groups) in [([3, 6, 10], 2), ([2, 4, 1], 4), ([64, 32, 49], 8)] {
            let [n, c, inner] = dims;
            let layout = Layout::contiguous(dims);
            let x = CpuStorage::from_vec(values(n * c * inner, 1, 0.5));
            let dy = CpuStorage::from_vec(values(n * c * inner, 2, 0.0));
            let weight = CpuStorage::from_vec(values(c, 3, 1.0));
            let bias = CpuStorage::from_vec(values(c, 4, 0.0));
            let grouped = Layout::contiguous([1, n * groups, c / groups * inner]);
            let (mean, var) = x.batch_norm_stats(&grouped).unwrap();
            let invstd = CpuStorage::from_vec(
                var.as_slice::<f64>()
                    .unwrap()
                    .iter()
                    .map(|v| 1.0 / (v + 1e-5).sqrt())
                    .collect::<Vec<f64>>(),
            );
            let stats = (&mean, &invstd);
            for (w, b) in [(Some(&weight), Some(&bias)), (None, None)] {
                let what = format!("{dims:?} in {groups} groups, affine {}", w.is_some());
                let y = x.group_norm_forward(&layout, groups, stats, w, b).unwrap();
                let expected = group_norm_forward_composed(&x, &layout, groups, stats, w, b);
                close(&format!("{what}: y"), &y, &expected.unwrap());
                let x = Operand::new(&x, &layout);
                let got = dy
                    .group_norm_backward(&layout, x, groups, stats, w)
                    .unwrap();
                let expected =
                    group_norm_backward_composed(&dy, &layout, x, groups, stats, w).unwrap();
                close(&format!("{what}: dx"), &got.0, &expected.0);
                close(&format!("{what}: dweight"), &got.1, &expected.1);
                close(&format!("{what}: dbias"), &got.2, &expected.2);
            }
        }
    }
}
