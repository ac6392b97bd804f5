//! Register-tiled direct convolutions for f32 on AVX-512 and AVX2+FMA: conv2d, its input
//! gradient (a transposed convolution's forward) and its weight gradient, with no columns and
//! no packing of the image. Convolutions that would leave most of a tile's channel lanes empty
//! (one to fifteen channels), f64, and CPUs without AVX2 take the GEMM-based kernels of
//! `cpu/conv.rs`, which stay the fallback; `im2col` and a matrix product stay the reference
//! both are tested against. Except at stride 1: there a forward pass or weight gradient with
//! one to fifteen output channels (the U-Net's and the PixelCNN's last layers) runs along the
//! output rows instead, 16 columns a run (`few_channels_conv2d`).
//!
//! Each kernel keeps a tile of output positions x channels in registers: 8 x 32 (16 zmm
//! accumulators) on AVX-512 from 32 channels (7 x 32 for planes that sevens fill and eights
//! do not, as 7 x 7 and 14 x 14) and 14 x 16 (14 zmm) from 16, 6 x 16 (12 ymm) on AVX2+FMA
//! (5 x 16 for 7 x 7 planes), chosen at run time like the GEMM's micro-kernel. Per step of the
//! reduction (a channel and a kernel tap) it loads the tile's weights and broadcasts a pixel
//! per position, each read from the zero-padded image at its position's offset plus the
//! tap's, so any stride and dilation is only a table of offsets:
//!
//! ```text
//! out[n, m, q] = Σ_k source[n][position(q) + tap(k)] · weights[k, m]
//! ```
//!
//! The forward pass reads the padded image (`k` = input channel, kernel row, kernel column);
//! the input gradient reads the padded output gradient, once per phase of the stride (the
//! input pixels `(s·i + a, s·j + b)` of one phase `(a, b)` see the kernel taps `(a + s·t,
//! b + s·u)` only: a stride-1 correlation with that sub-kernel); the weight gradient sums the
//! same products as the forward pass over positions instead of over taps (where it multiplies
//! less, a tile's taps one kernel position's channels, over the positions whose pixel is in
//! the unpadded image); the forward pass and input gradient skip, for each group of
//! positions, the taps at which every one of them reads the padding ([`Tiling`]). Work splits
//! over images (forward, input gradient) or over taps (weight gradient), and every sum runs in
//! one order whatever the thread count.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv::{self as packed, for_each_chunk, parallel_product};
use super::filled;
use super::gemm::{gemm_with, AlignedF32, Kernel, Operand};
use crate::ops::conv::Conv2dGeometry;

/// Positions the weight-gradient kernel sums over per call, at least (whole images).
const GROUP_POSITIONS: usize = 512;

/// The most bytes of source images and transposed gradients one such group of images may
/// take: half of a 1 MiB L2 cache. Every tile of a task walks the whole group, and DCGAN's
/// 64@14 → 128 layer's 11 images of 75 KiB (826 KiB) had spilled to L3 on the 2-core AMD
/// EPYC (Zen 4): 6 images of it took 9% less time (avx2+fma, 1 thread, `op_time conv-dw 64
/// 64 14 128 4 2 1`). No other layer kiln's models train groups past this.
const GROUP_BYTES: usize = 512 * 1024;

/// Values of a padded copy that cost a weight-gradient tile row's products at one position,
/// in [`WeightGradPlan`]'s choice. Fitted on the 2-core AMD EPYC (Zen 4) with avx2+fma, 1
/// thread, 8 alternating rounds per layer: the DDPM's stride-2 layers (16@28 and 32@14, 3 x 3)
/// took 17-20% less time by kernel position than padded, where counting products alone had
/// picked the padded copy (it multiplies 2-7% less); its stride-1 layers ran within the noise
/// of each other either way, and this weight leaves them as they were.
const PADDED_VALUES_PER_PRODUCT: usize = 4;

/// The most rows of a tile (AVX-512's 14 x 16).
const MAX_ROWS: usize = 14;

/// The forward and input-gradient kernel: `out[r][m] = Σ_k rows[r][taps[k]] · weights[k,
/// m]` for the tile's `rows` positions and `lanes` channels (see `x86::tile_kernels!`): each
/// tile row's lanes stored where its own pointer says, so a group of positions anywhere in a
/// plane writes its rows in place.
type CorrelateKernel = unsafe fn(
    depth: usize,
    weights: *const f32,
    rows: &[*const f32],
    taps: *const usize,
    out: &[*mut f32],
);

/// The forward kernel over a table of steps ([`Step`]) rather than every tap in order.
type CorrelateStepsKernel =
    unsafe fn(steps: &[Step], weights: *const f32, rows: &[*const f32], out: &[*mut f32]);

/// One step of a reduction a tile takes: the tap's offset in a source image and the offset
/// of its lanes' weights.
#[derive(Clone, Copy, Debug)]
struct Step {
    tap: usize,
    weight: usize,
}

/// The weight-gradient kernel: `sums[r · stride + first_lane + m] += Σ_(at, q) image[at +
/// taps[r]] · grads[q · stride + first_lane + m]` over the positions `(at, q)` of `runs` (each
/// run's `at` stepping by `at_step`), for the tile's `rows` taps and `lanes` lanes, over each
/// `(image, grads)`: the running sums are read and written where they are, rows of `stride`
/// values like the gradient's.
type WeightGradKernel = unsafe fn(
    images: &[(&[f32], &[f32])],
    stride_and_first_lane: (usize, usize),
    runs_and_step: (&[PositionRun], usize),
    taps: &[usize],
    sums: &mut [f32],
);

/// Positions `(at + i · step, q + i)` for `i < len`, where `step` is a pass's: a row of output
/// positions, whose pixels lie `step` apart. A kernel walking a run computes each position's
/// offsets instead of loading them (two loads a step fewer, of the AVX2 weight-gradient
/// tile's ten).
#[derive(Clone, Copy, Debug, PartialEq)]
struct PositionRun {
    at: usize,
    q: usize,
    len: usize,
}

/// `positions` (in order) as runs: consecutive positions whose `at` is `step` on from the one
/// before and whose `q` is one on.
fn position_runs(positions: &[(usize, usize)], step: usize) -> Vec<PositionRun> {
    let mut runs: Vec<PositionRun> = Vec::new();
    for &(at, q) in positions {
        match runs.last_mut() {
            Some(run) if run.at + run.len * step == at && run.q + run.len == q => run.len += 1,
            _ => runs.push(PositionRun { at, q, len: 1 }),
        }
    }
    runs
}

/// Writes tile rows out as planes: `out[m · out_plane + q] = sums[q · stride + m]` for `q <
/// positions`, `m < lanes` (see [`to_planes`]). A strided transpose, so the weights before
/// packing ([`transposed`]) and the weight gradient's operand and result go through it too.
type PlanesKernel = unsafe fn(
    sums: &[f32],
    stride: usize,
    positions_and_lanes: (usize, usize),
    out: &mut [f32],
    out_plane: usize,
);

/// A register tile: `rows` output positions (taps, for the weight gradient) x `lanes`
/// channels, and its kernels for one instruction set.
#[derive(Clone, Copy)]
struct Tile {
    lanes: usize,
    rows: usize,
    correlate: CorrelateKernel,
    correlate_steps: CorrelateStepsKernel,
    weight_grad: WeightGradKernel,
    to_planes: PlanesKernel,
    /// The tile of the same lanes with fewer rows, for position counts it fills better
    /// ([`Tiling::new`] weighs the two).
    fewer_rows: Option<&'static Tile>,
}

/// The tile for a convolution with `lanes` channels on the vectorised side, chosen like the
/// GEMM's micro-kernel (`KILN_CPU_KERNEL` included): AVX-512's 8 x 32 from 32 lanes and its
/// 14 x 16 from 16, AVX2's 6 x 16 from 16, none (the GEMM-based kernels) below that or for
/// the portable kernel.
fn tile_for(kernel: &Kernel<f32>, lanes: usize) -> Option<Tile> {
    match kernel.name {
        "avx512f" if lanes >= x86::AVX512.lanes => Some(x86::AVX512),
        "avx512f" if lanes >= x86::AVX512_NARROW.lanes => Some(x86::AVX512_NARROW),
        "avx2+fma" if lanes >= x86::AVX2.lanes => Some(x86::AVX2),
        _ => None,
    }
}

/// `len` zeros, written over rayon's threads when there are enough of them: the buffers here
/// are megabytes, and a memset on one thread was a tenth of a 2-thread convolution.
fn zeroed(len: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    if len >= packed::PARALLEL_MIN {
        out.par_extend(rayon::iter::repeat_n(0.0f32, len));
    } else {
        out.resize(len, 0.0);
    }
    out
}

/// How a convolution pads its `[N, C, H, W]` images: each `[H, W]` plane at row `top`,
/// column `left` of an `[hp, wp]` one, zeros around it.
#[derive(Clone, Copy)]
struct Padding {
    /// `(N, C, H, W)`.
    shape: (usize, usize, usize, usize),
    /// `(top, left)`.
    corner: (usize, usize),
    /// `(hp, wp)`.
    size: (usize, usize),
}

impl Padding {
    /// The padding of `g`'s input: `g.padding` on each side.
    fn of(g: &Conv2dGeometry) -> Padding {
        Padding {
            shape: (g.batch, g.channels, g.height, g.width),
            corner: (g.padding[0], g.padding[1]),
            size: (g.height + 2 * g.padding[0], g.width + 2 * g.padding[1]),
        }
    }

    /// Whether the padded images are the images themselves (no zeros around them).
    fn adds_nothing(&self) -> bool {
        let (_, _, height, width) = self.shape;
        self.corner == (0, 0) && self.size == (height, width)
    }

    /// Values of one padded image.
    fn image_len(&self) -> usize {
        self.shape.1 * self.size.0 * self.size.1
    }

    /// Plane `plane` of `data` padded into `dest` (`hp · wp` values), each value written once.
    fn plane(&self, data: &[f32], plane: usize, dest: &mut [MaybeUninit<f32>]) {
        let (_, _, height, width) = self.shape;
        let ((top, left), (_, wp)) = (self.corner, self.size);
        let zero = MaybeUninit::new(0.0f32);
        if height == 0 || width == 0 {
            dest.fill(zero); // only padding
            return;
        }
        let source = &data[plane * height * width..][..height * width];
        let (above, rest) = dest.split_at_mut(top * wp);
        let (rows, below) = rest.split_at_mut(height * wp);
        above.fill(zero);
        below.fill(zero);
        for (row, values) in rows.chunks_exact_mut(wp).zip(source.chunks_exact(width)) {
            let (before, rest) = row.split_at_mut(left);
            let (middle, after) = rest.split_at_mut(width);
            before.fill(zero);
            for (dest, &value) in middle.iter_mut().zip(values) {
                dest.write(value);
            }
            after.fill(zero);
        }
    }

    /// Image `n` of `data`, padded (where it is if the padding adds nothing).
    fn image<'d>(&self, data: &'d [f32], n: usize) -> std::borrow::Cow<'d, [f32]> {
        if self.adds_nothing() {
            let len = self.image_len();
            return std::borrow::Cow::Borrowed(&data[n * len..][..len]);
        }
        let (channels, plane) = (self.shape.1, self.size.0 * self.size.1);
        // Every value of every plane is written by `plane`.
        std::borrow::Cow::Owned(filled(self.image_len(), |out| {
            for (c, dest) in out.chunks_exact_mut(plane.max(1)).enumerate() {
                self.plane(data, n * channels + c, dest);
            }
        }))
    }

    /// Every image of `data`, padded: `[N, C, hp, wp]`, planes over the threads.
    fn batch(&self, data: &[f32]) -> Vec<f32> {
        let len = self.shape.0 * self.image_len();
        let plane = self.size.0 * self.size.1;
        // Every value of every plane is written by `plane`.
        filled(len, |out| {
            if len > 0 {
                let parallel = len >= packed::PARALLEL_MIN;
                for_each_chunk(out, plane, parallel, |p, dest| self.plane(data, p, dest));
            }
        })
    }
}

/// `weights[k, m]` for `m` in `0..lanes` packed as blocks of a tile's lanes, `[lanes /
/// block][depth][block]`, zero past the last lane; `weights[k, ·]` is row `row(k)` of
/// `rows`, rows of `lanes` values (the weight transposed by [`transposed`] so that each
/// step's lanes lie side by side: a copy per step and block, where reading them `depth`
/// apart from the weight as it is had cost 4% of a DCGAN convolution).
fn pack_lanes(
    rows: &[f32],
    depth: usize,
    (lanes, block_lanes): (usize, usize),
    row: impl Fn(usize) -> usize,
) -> AlignedF32 {
    let blocks = lanes.div_ceil(block_lanes);
    let mut packed = AlignedF32::zeroed(blocks * depth * block_lanes, false);
    if depth == 0 {
        return packed;
    }
    for (block, packed) in packed.chunks_exact_mut(depth * block_lanes).enumerate() {
        let first = block * block_lanes;
        let live = (lanes - first).min(block_lanes);
        for (k, packed) in packed.chunks_exact_mut(block_lanes).enumerate() {
            packed[..live].copy_from_slice(&rows[row(k) * lanes + first..][..live]);
        }
    }
    packed
}

/// Each of the `[rows, cols]` matrices of `matrices` transposed to `[cols, rows]`, by the
/// tile's transposing write-out.
fn transposed(tile: Tile, matrices: &[f32], (rows, cols): (usize, usize)) -> Vec<f32> {
    let mut out = vec![0.0f32; matrices.len()];
    if rows * cols > 0 {
        for (matrix, out) in matrices
            .chunks_exact(rows * cols)
            .zip(out.chunks_exact_mut(rows * cols))
        {
            // SAFETY: `matrix` holds `rows` rows of `cols` values, `out` `cols` rows of `rows`.
            unsafe { (tile.to_planes)(matrix, cols, (rows, cols), out, rows) };
        }
    }
    out
}

/// One correlation pass over every image: `out[n][m·out_plane + position.1] = Σ_k
/// source[n][position.0 + taps[k]] · weights[k, m]` for each `position` and `m < lanes`.
struct Pass {
    /// Offsets of the reduction's steps in an image's source.
    taps: Vec<usize>,
    /// (offset in an image's source, offset in an output plane) of each output position.
    positions: Vec<(usize, usize)>,
    /// `[lanes / block][taps.len()][block]` for the tile's lanes ([`pack_lanes`]).
    weights: AlignedF32,
}

/// The most lanes of a tile (AVX-512's 8 x 32).
const MAX_LANES: usize = 32;

/// Up to a tile's rows of a pass's positions, computed together, and the steps they take.
struct TileGroup {
    /// Indices into the pass's positions; the first `len` are the group's.
    positions: [usize; MAX_ROWS],
    len: usize,
    /// The class of steps ([`Tiling::classes`]) the group takes, or `None` for every tap.
    class: Option<usize>,
}

/// How a pass's positions go to a tile's groups. A position at the border of its plane reads
/// the padding's zeros at some taps: DCGAN's 4 x 4 stride-2 layers on 7 x 7 planes at a
/// seventh of their products, a 3 x 3 layer at nearly a fifth on 7 x 7 and an eleventh on
/// 14 x 14. A group whose positions all read zeros at a tap skips it (the sums are the same:
/// an FMA with a zero product leaves its accumulator as it was), so positions with the same
/// taps inside go to groups of their own where that skips more products than it leaves rows
/// empty: DCGAN's 7 x 7 layers ran 7-9% faster (avx2+fma, 1 thread, op_time) and its step 5%.
struct Tiling {
    tile: Tile,
    groups: Vec<TileGroup>,
    /// Each class's steps, its live taps in order: (tap, offset of the step's weights in a
    /// lane block).
    classes: Vec<Vec<Step>>,
}

impl Tiling {
    /// The cheaper grouping of `pass` for `tile` or the tile of its lanes with fewer rows,
    /// in products: each group costs its tile's rows times its steps.
    fn new(tile: Tile, pass: &Pass, padding: &Padding) -> Tiling {
        let masks = live_taps(pass, padding);
        let candidates = std::iter::once(tile).chain(tile.fewer_rows.copied());
        // Without padding to skip, bucketing groups the positions in order too.
        let orderings: &[bool] = if masks.is_some() {
            &[false, true]
        } else {
            &[false]
        };
        let mut best: Option<(usize, Tiling)> = None;
        for tile in candidates {
            for &bucketed in orderings {
                let tiling = Tiling::grouped(tile, pass, masks.as_ref(), bucketed);
                let cost = tiling.products(pass.taps.len());
                if best.as_ref().is_none_or(|(least, _)| cost < *least) {
                    best = Some((cost, tiling));
                }
            }
        }
        best.expect("a tile to group for").1
    }

    /// Products per image and lane block.
    fn products(&self, depth: usize) -> usize {
        let steps = |g: &TileGroup| g.class.map_or(depth, |c| self.classes[c].len());
        self.groups.iter().map(|g| self.tile.rows * steps(g)).sum()
    }

    /// Groups of `tile.rows` positions in order, or (`bucketed`) first the whole groups of
    /// positions with the same live taps, then the rest in order; each group skips the taps
    /// at which all its positions read padding.
    fn grouped(tile: Tile, pass: &Pass, masks: Option<&LiveTaps>, bucketed: bool) -> Tiling {
        let rows = tile.rows;
        let mut order: Vec<usize> = Vec::with_capacity(pass.positions.len());
        if let (Some(masks), true) = (masks, bucketed) {
            let mut buckets: Vec<(u64, Vec<usize>)> = Vec::new();
            for (q, &mask) in masks.by_position.iter().enumerate() {
                match buckets.iter_mut().find(|(m, _)| *m == mask) {
                    Some((_, bucket)) => bucket.push(q),
                    None => buckets.push((mask, vec![q])),
                }
            }
            let mut rest = Vec::new();
            for (_, bucket) in &buckets {
                let cut = bucket.len() / rows * rows;
                order.extend_from_slice(&bucket[..cut]);
                rest.extend_from_slice(&bucket[cut..]);
            }
            rest.sort_unstable();
            order.extend(rest);
        } else {
            order.extend(0..pass.positions.len());
        }
        let mut classes: Vec<(u64, Vec<Step>)> = Vec::new();
        let groups = (order.chunks(rows))
            .map(|members| {
                let mut positions = [0; MAX_ROWS];
                positions[..members.len()].copy_from_slice(members);
                let class = masks.and_then(|masks| {
                    let live = members.iter().fold(0, |m, &q| m | masks.by_position[q]);
                    if live == masks.all {
                        return None;
                    }
                    let found = classes.iter().position(|(m, _)| *m == live);
                    Some(found.unwrap_or_else(|| {
                        classes.push((live, masks.steps(live, &pass.taps, tile.lanes)));
                        classes.len() - 1
                    }))
                });
                TileGroup {
                    positions,
                    len: members.len(),
                    class,
                }
            })
            .collect();
        Tiling {
            tile,
            groups,
            classes: classes.into_iter().map(|(_, steps)| steps).collect(),
        }
    }
}

/// Which of a pass's taps read a real pixel, by position: the taps' distinct offsets within
/// a plane (`tap % plane`), at most 64, numbered in order and sets of them as bits.
struct LiveTaps {
    /// Each tap's offset's number.
    tap_offset: Vec<u8>,
    /// Each position's set of offsets at which it reads inside the image.
    by_position: Vec<u64>,
    /// Every offset.
    all: u64,
}

impl LiveTaps {
    /// The steps `k`, in order, of `taps` whose offsets are in `live`: (`taps[k]`, `k ·
    /// lanes`).
    fn steps(&self, live: u64, taps: &[usize], lanes: usize) -> Vec<Step> {
        (self.tap_offset.iter().zip(taps).enumerate())
            .filter(|(_, (&o, _))| live >> o & 1 == 1)
            .map(|(k, (_, &tap))| Step {
                tap,
                weight: k * lanes,
            })
            .collect()
    }
}

/// The [`LiveTaps`] of `pass` over images padded by `padding`, or `None` where every position
/// reads a real pixel at every tap or the taps have more than 64 offsets within a plane.
fn live_taps(pass: &Pass, padding: &Padding) -> Option<LiveTaps> {
    if padding.adds_nothing() {
        return None;
    }
    let (_, _, height, width) = padding.shape;
    let ((top, left), (hp, wp)) = (padding.corner, padding.size);
    let plane = hp * wp;
    let mut offsets: Vec<usize> = Vec::new();
    let mut tap_offset = Vec::with_capacity(pass.taps.len());
    for &tap in &pass.taps {
        let within = tap % plane;
        let number = match offsets.iter().position(|&o| o == within) {
            Some(number) => number,
            None => {
                offsets.push(within);
                offsets.len() - 1
            }
        };
        if number >= 64 {
            return None;
        }
        tap_offset.push(number as u8);
    }
    let inside = |at: usize| {
        let (y, x) = (at / wp, at % wp);
        (top..top + height).contains(&y) && (left..left + width).contains(&x)
    };
    let by_position: Vec<u64> = (pass.positions.iter())
        .map(|&(at, _)| {
            (offsets.iter().enumerate())
                .filter(|(_, &o)| inside(at % plane + o))
                .fold(0, |mask, (number, _)| mask | 1 << number)
        })
        .collect();
    let all = if offsets.len() == 64 {
        u64::MAX
    } else {
        (1 << offsets.len()) - 1
    };
    if by_position.iter().all(|&mask| mask == all) {
        return None;
    }
    Some(LiveTaps {
        tap_offset,
        by_position,
        all,
    })
}

/// Runs `passes` over each image of `source`, padded by `padding`, into `out` (`lanes` planes
/// of `out_plane` values per image), images split over the threads. Each image is padded by
/// the thread that runs it, just before its tiles read it, so the copy is still in that
/// core's cache for them (a batch's padded copy, megabytes, had gone out to memory and come
/// back).
fn correlate(
    tile: Tile,
    (source, padding): (&[f32], Padding),
    passes: &[Pass],
    (lanes, out_plane): (usize, usize),
    (out, finish): (&mut [f32], Finish<'_>),
) {
    let image_len = lanes * out_plane;
    if image_len == 0 {
        return;
    }
    let source_len = padding.image_len();
    // A pass with no taps (no input channels) adds nothing to the zeroed output.
    let passes: Vec<&Pass> = passes.iter().filter(|p| !p.taps.is_empty()).collect();
    for pass in &passes {
        let furthest = pass.positions.iter().map(|p| p.0).max().unwrap_or(0)
            + pass.taps.iter().copied().max().unwrap_or(0);
        assert!(pass.positions.is_empty() || furthest < source_len);
    }
    let tilings: Vec<Tiling> = (passes.iter())
        .map(|pass| Tiling::new(tile, pass, &padding))
        .collect();
    let per_image: usize = passes
        .iter()
        .map(|p| p.positions.len() * p.taps.len())
        .sum();
    let parallel = parallel_product(per_image, lanes, out.len() / image_len);
    for_each_chunk(out, image_len, parallel, |n, image_out| {
        if !passes.is_empty() {
            let image = padding.image(source, n);
            correlate_image(&tilings, &image, &passes, (lanes, out_plane), image_out);
        }
        finish(image_out);
    });
}

/// What a convolution does to each image of its output once the image is written, while it
/// is still in the core's cache: the bias and activation of a fused `conv_bias_act`, or
/// nothing ([`UNFINISHED`]).
pub(crate) type Finish<'a> = &'a (dyn Fn(&mut [f32]) + Sync);

/// The [`Finish`] of a plain convolution.
const UNFINISHED: Finish<'static> = &|_| {};

/// `finish` over each image of `out` (`image_len` values each) that a kernel without a
/// per-image hook wrote, over the threads when there are enough of them.
fn finish_each(out: &mut [f32], image_len: usize, finish: Finish<'_>) {
    if image_len > 0 {
        let parallel = out.len() >= packed::PARALLEL_MIN;
        for_each_chunk(out, image_len, parallel, |_, image| finish(image));
    }
}

/// One image of [`correlate`]: per block of the tile's lanes, every pass's groups of
/// positions into a row of lanes per output position, then the block written out as planes by
/// a transpose (`Tile::to_planes`: 16 x 16 blocks in registers on AVX-512). The kernel stores
/// each of a group's rows through a pointer of its own, so a group of positions anywhere in
/// the plane writes in place (copying the rows of groups whose positions are not consecutive
/// had cost 2% of a 28 x 28 convolution with 16 channels on AVX-512, and 11% of the U-Net's
/// strided 16@28 input gradient on AVX2+FMA). Scattering tiles' values into their
/// planes one at a time had cost 11% of a convolution (perf, DDPM's and DCGAN's layers, 1
/// thread) and, for a strided input gradient's phases, whose positions lie two apart, 9% of
/// DCGAN's 64@14 → 128 one.
fn correlate_image(
    tilings: &[Tiling],
    image: &[f32],
    passes: &[&Pass],
    (lanes, out_plane): (usize, usize),
    out: &mut [f32],
) {
    let Some(first) = tilings.first() else {
        return;
    };
    // Every pass's tile has the same lanes. A row of them per output position of `sums`;
    // those no pass writes stay zero.
    let block_lanes = first.tile.lanes;
    let mut sums = AlignedF32::zeroed(out_plane * block_lanes, false);
    let mut rows = [std::ptr::null::<f32>(); MAX_ROWS];
    let mut dests = [std::ptr::null_mut::<f32>(); MAX_ROWS];
    let mut spare = [0.0f32; MAX_LANES];
    for block in 0..lanes.div_ceil(block_lanes) {
        for (pass, tiling) in passes.iter().zip(tilings) {
            let tile = tiling.tile;
            debug_assert_eq!(tile.lanes, block_lanes);
            let depth = pass.taps.len();
            let weights = &pass.weights[block * depth * tile.lanes..][..depth * tile.lanes];
            let rows = &mut rows[..tile.rows];
            let dests = &mut dests[..tile.rows];
            for group in &tiling.groups {
                let members = &group.positions[..group.len];
                // A short group repeats its last position; those results are dropped.
                for (r, row) in rows.iter_mut().enumerate() {
                    *row = image[pass.positions[members[r.min(group.len - 1)]].0..].as_ptr();
                }
                // The group's rows go to their positions' rows of `sums`; a short group's
                // extra rows all to `spare`.
                for (r, dest) in dests.iter_mut().enumerate() {
                    *dest = match members.get(r) {
                        Some(&i) => {
                            sums[pass.positions[i].1 * block_lanes..][..block_lanes].as_mut_ptr()
                        }
                        None => spare.as_mut_ptr(),
                    };
                }
                // SAFETY: `tile_for` chose a kernel this CPU runs; `weights` holds `depth`
                // steps of the tile's lanes (a class's steps are some of them); `rows` and
                // `dests` hold the tile's rows, each `dests[r]` a row of `block_lanes` values
                // in `sums` or `spare`; every `rows[r] + taps[k]` lies inside `image`
                // (asserted in `correlate`).
                unsafe {
                    match group.class {
                        None => (tile.correlate)(
                            depth,
                            weights.as_ptr(),
                            rows,
                            pass.taps.as_ptr(),
                            dests,
                        ),
                        Some(class) => (tile.correlate_steps)(
                            &tiling.classes[class],
                            weights.as_ptr(),
                            rows,
                            dests,
                        ),
                    }
                }
            }
        }
        let first_lane = block * block_lanes;
        let live_lanes = (lanes - first_lane).min(block_lanes);
        let out = &mut out[first_lane * out_plane..];
        // SAFETY: `sums` holds a `block_lanes` row per position, `out` `live_lanes` planes.
        unsafe {
            (first.tile.to_planes)(&sums, block_lanes, (out_plane, live_lanes), out, out_plane)
        };
    }
}

/// `out[m · out_plane + q] = sums[q · stride + m]` for `q < positions` and `m < lanes`: a
/// block of tile rows (positions by lanes) written out as planes, one value at a time; the
/// portable version of `x86::avx512_to_planes`.
///
/// # Safety
/// None beyond the bounds, which are checked: it is `unsafe` to share the AVX-512 version's
/// type.
unsafe fn to_planes(
    sums: &[f32],
    stride: usize,
    (positions, lanes): (usize, usize),
    out: &mut [f32],
    out_plane: usize,
) {
    for (q, row) in sums.chunks(stride).take(positions).enumerate() {
        for (m, &value) in row[..lanes].iter().enumerate() {
            out[m * out_plane + q] = value;
        }
    }
}

/// Channels on each side from which a pointwise convolution runs as products per image.
const POINTWISE_MIN_CHANNELS: usize = 8;

/// Whether `g` is a pointwise convolution (a 1x1 kernel, stride 1, no padding, an output
/// plane the input's) between at least [`POINTWISE_MIN_CHANNELS`] channels on each side, on a
/// CPU with the SIMD GEMM: each image's output is then one matrix product of the weight and
/// the image, which the GEMM runs faster than tiles whose reductions are a few channels long.
/// The planes can differ: a transposed convolution's output padding makes the input gradient's
/// plane wider or taller than the gradient's.
fn pointwise(kernel: &Kernel<f32>, g: &Conv2dGeometry, out_channels: usize) -> bool {
    kernel.name != "portable"
        && g.kernel == [1, 1]
        && g.stride == [1, 1]
        && g.padding == [0, 0]
        && [g.out_height, g.out_width] == [g.height, g.width]
        && g.channels.min(out_channels) >= POINTWISE_MIN_CHANNELS
}

/// `out[n] = a · b[n]` for each image `n`: `a` is `[rows, depth]`, `b[n]` the contiguous
/// `[depth, positions]` at `n · depth · positions`, `out[n]` `[rows, positions]`; images
/// split over the threads, each product on one.
fn products_per_image(
    kernel: Kernel<f32>,
    a: Operand<'_, f32>,
    b: &[f32],
    (rows, depth, positions): (usize, usize, usize),
    out: &mut [f32],
) {
    if out.is_empty() {
        return;
    }
    let parallel = parallel_product(out.len(), depth, 1);
    for_each_chunk(out, rows * positions, parallel, |n, image_out| {
        let image = Operand {
            data: b,
            offset: n * depth * positions,
            row_stride: positions,
            col_stride: 1,
        };
        gemm_with(
            kernel,
            (rows, positions, depth),
            a,
            &image,
            image_out,
            false,
        );
    });
}

/// The offset in a padded `[C, hp, wp]` image of each step `(c, ki, kj)` of a convolution's
/// reduction.
fn forward_taps(g: &Conv2dGeometry, wp: usize) -> Vec<usize> {
    let [kh, kw] = g.kernel;
    let plane = (g.height + 2 * g.padding[0]) * wp;
    (0..g.channels * kh * kw)
        .map(|k| {
            let (c, ki, kj) = (k / (kh * kw), k / kw % kh, k % kw);
            c * plane + ki * g.dilation[0] * wp + kj * g.dilation[1]
        })
        .collect()
}

/// (offset of its window in a padded image, offset in an output plane) of each output
/// position `(oh, ow)`.
fn forward_positions(g: &Conv2dGeometry, wp: usize) -> Vec<(usize, usize)> {
    (0..g.out_height * g.out_width)
        .map(|q| {
            let (oh, ow) = (q / g.out_width, q % g.out_width);
            (oh * g.stride[0] * wp + ow * g.stride[1], q)
        })
        .collect()
}

/// The forward pass of `g` with `weight` (`[OC, C, kh, kw]`) for `tile`, over images padded
/// to rows of `wp`.
fn forward_pass(
    tile: Tile,
    weight: &[f32],
    out_channels: usize,
    g: &Conv2dGeometry,
    wp: usize,
) -> Pass {
    let depth = g.channels * g.kernel[0] * g.kernel[1];
    Pass {
        taps: forward_taps(g, wp),
        positions: forward_positions(g, wp),
        // weights[k, m] = weight[m, c, ki, kj]
        weights: pack_lanes(
            &transposed(tile, weight, (out_channels, depth)),
            depth,
            (out_channels, tile.lanes),
            |k| k,
        ),
    }
}

/// `[N, C, H, W] ⋆ [OC, C, kh, kw] → [N, OC, OH, OW]`.
pub(crate) fn conv2d(
    kernel: Kernel<f32>,
    image: &[f32],
    weight: &[f32],
    out_channels: usize,
    g: &Conv2dGeometry,
) -> Vec<f32> {
    conv2d_then(kernel, image, weight, out_channels, g, UNFINISHED)
}

/// [`conv2d`], each image of the output through `finish` once written.
pub(crate) fn conv2d_then(
    kernel: Kernel<f32>,
    image: &[f32],
    weight: &[f32],
    out_channels: usize,
    g: &Conv2dGeometry,
    finish: Finish<'_>,
) -> Vec<f32> {
    let out_plane = g.out_height * g.out_width;
    let image_len = out_channels * out_plane;
    if pointwise(&kernel, g, out_channels) {
        // out[n] [OC, P] = weight [OC, C] · image[n] [C, P]
        let weight = Operand {
            data: weight,
            offset: 0,
            row_stride: g.channels,
            col_stride: 1,
        };
        let mut out = zeroed(g.batch * out_channels * out_plane);
        let dims = (out_channels, g.channels, out_plane);
        products_per_image(kernel, weight, image, dims, &mut out);
        finish_each(&mut out, image_len, finish);
        return out;
    }
    let Some(tile) = tile_for(&kernel, out_channels) else {
        let mut out = if along_rows(&kernel, g, out_channels) {
            few_channels_conv2d(kernel, image, weight, out_channels, g)
        } else {
            packed::conv2d(kernel, image, weight, out_channels, g)
        };
        finish_each(&mut out, image_len, finish);
        return out;
    };
    let padding = Padding::of(g);
    let pass = forward_pass(tile, weight, out_channels, g, padding.size.1);
    let mut out = zeroed(g.batch * out_channels * out_plane);
    correlate(
        tile,
        (image, padding),
        &[pass],
        (out_channels, out_plane),
        (&mut out, finish),
    );
    out
}

/// Whether conv2d runs as [`few_channels_conv2d`]: stride 1, 1 to 15 output channels (fewer
/// than any tile's lanes), on AVX-512 or AVX2+FMA.
pub(crate) fn along_rows(kernel: &Kernel<f32>, g: &Conv2dGeometry, out_channels: usize) -> bool {
    row_kernels(kernel).is_some()
        && g.stride == [1, 1]
        && (1..x86::AVX512_NARROW.lanes).contains(&out_channels)
}

/// A run of an output row: (offset in an image's source, offset in an output plane, columns,
/// at most `x86::ROW_LANES`).
type Run = (usize, usize, usize);

/// The forward kernel along rows: `plane[offset + j] = Σ_k image[at + taps[k] + j] ·
/// weights[k]` for `j < columns` of each `(at, offset, columns)` of `runs` (see
/// `x86::row_runs`).
type RowsKernel =
    unsafe fn(image: &[f32], weights: &[f32], taps: &[usize], runs: &[Run], plane: &mut [f32]);

/// The weight-gradient kernel along rows: `sums[t] = Σ_(image, grads) Σ_runs Σ_j image[at +
/// taps[t] + j] · grads[offset + j]` (see `x86::row_runs_weight_grad`).
type RowsWeightGradKernel =
    unsafe fn(images: &[(&[f32], &[f32])], taps: &[usize], runs: &[Run], sums: &mut [f32]);

/// The kernels that run a convolution along its output rows, for one instruction set.
#[derive(Clone, Copy)]
struct RowKernels {
    /// Runs per call of `forward`, at most.
    runs: usize,
    forward: RowsKernel,
    /// Taps per call of `weight_grad`, at most.
    taps: usize,
    weight_grad: RowsWeightGradKernel,
}

/// The row kernels `kernel`'s instruction set runs, if any: AVX-512's (16 columns a vector)
/// or AVX2's (two vectors of 8 a run of 16).
fn row_kernels(kernel: &Kernel<f32>) -> Option<RowKernels> {
    match kernel.name {
        "avx512f" => Some(x86::AVX512_ROWS),
        "avx2+fma" => Some(x86::AVX2_ROWS),
        _ => None,
    }
}

/// A stride-1 conv2d to fewer output channels than a tile's lanes (the U-Net's and the
/// PixelCNN's last layers, to one channel), on AVX-512 or AVX2+FMA: vectorised along each
/// output row instead, every output `Σ_k source[position + tap(k)] · weight[m, k]` in
/// reduction order from zero as the tiles sum. Images split over the threads.
fn few_channels_conv2d(
    kernel: Kernel<f32>,
    image: &[f32],
    weight: &[f32],
    out_channels: usize,
    g: &Conv2dGeometry,
) -> Vec<f32> {
    let row_kernels = row_kernels(&kernel).expect("a CPU that runs along rows");
    let rows = RowRuns::new(image, g);
    let (depth, out_plane) = (rows.taps.len(), g.out_height * g.out_width);
    let mut out = zeroed(g.batch * out_channels * out_plane);
    if out.is_empty() || depth == 0 {
        return out;
    }
    let parallel = parallel_product(out_plane * depth, out_channels, g.batch);
    for_each_chunk(
        &mut out,
        out_channels * out_plane,
        parallel,
        |n, image_out| {
            let image = rows.sources.image(n);
            for (m, plane) in image_out.chunks_exact_mut(out_plane).enumerate() {
                let weights = &weight[m * depth..][..depth];
                for group in rows.runs.chunks(row_kernels.runs) {
                    // SAFETY: `row_kernels` are for this CPU; every run's `columns` values at
                    // `at + taps[k]` lie inside `image` (they are the forward pass's reads of a
                    // row's outputs) and its outputs inside `plane`.
                    unsafe { (row_kernels.forward)(image, weights, &rows.taps, group, plane) };
                }
            }
        },
    );
    out
}

/// A convolution's images as its kernels read them: zero-padded copies, or the images where
/// they are when they have no padding or the kernel reads only inside them.
struct Sources<'a> {
    data: std::borrow::Cow<'a, [f32]>,
    /// Values per image.
    len: usize,
}

impl<'a> Sources<'a> {
    /// `image` `[N, C, H, W]` padded by `g.padding` (a copy of the batch unless that is
    /// zero), and the padded rows' length.
    fn padded(image: &'a [f32], g: &Conv2dGeometry) -> (Sources<'a>, usize) {
        let padding = Padding::of(g);
        if padding.adds_nothing() {
            return (Sources::unpadded(image, g), padding.size.1);
        }
        let data = std::borrow::Cow::Owned(padding.batch(image));
        let len = padding.image_len();
        (Sources { data, len }, padding.size.1)
    }

    /// `image` `[N, C, H, W]` where it is.
    fn unpadded(image: &'a [f32], g: &Conv2dGeometry) -> Sources<'a> {
        let len = g.channels * g.height * g.width;
        Sources {
            data: std::borrow::Cow::Borrowed(image),
            len,
        }
    }

    /// Image `n`.
    fn image(&self, n: usize) -> &[f32] {
        &self.data[n * self.len..][..self.len]
    }
}

/// A stride-1 convolution's padded images and its output rows cut into runs of up to 16
/// columns, for [`few_channels_conv2d`] and [`few_channels_weight_grad`].
struct RowRuns<'a> {
    sources: Sources<'a>,
    /// Offsets of the reduction's steps in an image's source.
    taps: Vec<usize>,
    /// The output rows' runs.
    runs: Vec<Run>,
}

impl<'a> RowRuns<'a> {
    fn new(image: &'a [f32], g: &Conv2dGeometry) -> RowRuns<'a> {
        // Unpadded images are read where they are (the PixelCNN's 1x1 output layer).
        let (sources, wp) = Sources::padded(image, g);
        let runs = (0..g.out_height)
            .flat_map(|oh| {
                (0..g.out_width).step_by(x86::ROW_LANES).map(move |ow| {
                    let columns = (g.out_width - ow).min(x86::ROW_LANES);
                    (oh * wp + ow, oh * g.out_width + ow, columns)
                })
            })
            .collect();
        RowRuns {
            sources,
            taps: forward_taps(g, wp),
            runs,
        }
    }
}

/// The weight gradient of [`few_channels_conv2d`]: `[OC, C, kh, kw]` with each `Σ_n Σ_q
/// grad[n, m, q] · source[n][position(q) + tap(k)]` summed per lane over the images and each
/// row's runs in order, then across the lanes; a group of taps at a time (eight on AVX-512,
/// six on AVX2), the (channel, group) pairs split over the threads.
fn few_channels_weight_grad(
    kernel: Kernel<f32>,
    image: &[f32],
    grad: &[f32],
    out_channels: usize,
    g: &Conv2dGeometry,
) -> Vec<f32> {
    let row_kernels = row_kernels(&kernel).expect("a CPU that runs along rows");
    let rows = RowRuns::new(image, g);
    let (depth, out_plane) = (rows.taps.len(), g.out_height * g.out_width);
    let mut out = vec![0.0f32; out_channels * depth];
    if out.is_empty() || out_plane == 0 {
        return out;
    }
    let tap_group = row_kernels.taps;
    let groups = depth.div_ceil(tap_group);
    let parallel = parallel_product(depth, out_plane * g.batch, out_channels);
    let task = |index: usize, sums: &mut [f32]| {
        let (m, first) = (index / groups, index % groups * tap_group);
        let images = (0..g.batch).map(|n| {
            let image = rows.sources.image(n);
            (
                image,
                &grad[(n * out_channels + m) * out_plane..][..out_plane],
            )
        });
        let images: Vec<(&[f32], &[f32])> = images.collect();
        let group_taps = &rows.taps[first..][..sums.len()];
        // SAFETY: `row_kernels` are for this CPU; every run's columns at `at + tap` lie
        // inside each image (the forward pass's reads) and at `offset` inside each gradient
        // plane.
        unsafe { (row_kernels.weight_grad)(&images, group_taps, &rows.runs, sums) };
    };
    // out[m, k]: rows of `depth`, cut into groups of taps within each row.
    let chunks = out
        .chunks_mut(depth)
        .flat_map(|row| row.chunks_mut(tap_group));
    if parallel {
        chunks
            .enumerate()
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(|(i, sums)| task(i, sums));
    } else {
        chunks.enumerate().for_each(|(i, sums)| task(i, sums));
    }
    out
}

/// The input gradient `[N, C, H, W]` from the output gradient `[N, OC, OH, OW]` (with no
/// dilation): per phase `(a, b)` of the stride, the input pixels at padded coordinates
/// `(s·i + a, s·j + b)` gather `grad[oc, i - t, j - u] · weight[oc, c, a + s·t, b + s·u]`.
/// The gradient is padded by the widest phase's taps less one above and to the left, so
/// every read lands in the padded copy.
pub(crate) fn conv2d_input_grad(
    kernel: Kernel<f32>,
    grad: &[f32],
    weight: &[f32],
    out_channels: usize,
    g: &Conv2dGeometry,
) -> Vec<f32> {
    conv2d_input_grad_then(kernel, grad, weight, out_channels, g, UNFINISHED)
}

/// [`conv2d_input_grad`], each image of the result through `finish` once written.
pub(crate) fn conv2d_input_grad_then(
    kernel: Kernel<f32>,
    grad: &[f32],
    weight: &[f32],
    out_channels: usize,
    g: &Conv2dGeometry,
    finish: Finish<'_>,
) -> Vec<f32> {
    let image_len = g.channels * g.height * g.width;
    if pointwise(&kernel, g, out_channels) {
        // out[n] [C, P] = weightᵀ [C, OC] · grad[n] [OC, P]
        let weight_t = Operand {
            data: weight,
            offset: 0,
            row_stride: 1,
            col_stride: g.channels,
        };
        let mut out = zeroed(grad.len() / out_channels * g.channels);
        let dims = (g.channels, out_channels, g.height * g.width);
        products_per_image(kernel, weight_t, grad, dims, &mut out);
        finish_each(&mut out, image_len, finish);
        return out;
    }
    let tile = match tile_for(&kernel, g.channels) {
        Some(tile) if g.dilation == [1, 1] => tile,
        _ => {
            let mut out = packed::conv2d_input_grad(kernel, grad, weight, out_channels, g);
            finish_each(&mut out, image_len, finish);
            return out;
        }
    };
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    // Taps of phase `a` along a dim of kernel size `k`: `a, a + s, …`.
    let phase_taps = |k: usize, s: usize, a: usize| k.saturating_sub(a).div_ceil(s);
    let (top, left) = (kh.div_ceil(sh) - 1, kw.div_ceil(sw) - 1);
    // The last phase index an input pixel has: `(H - 1 + p) / s`.
    let (last_i, last_j) = (
        (g.height + ph).saturating_sub(1) / sh,
        (g.width + pw).saturating_sub(1) / sw,
    );
    let hg = top + g.out_height.max(last_i + 1);
    let wg = left + g.out_width.max(last_j + 1);
    let padding = Padding {
        shape: (g.batch, out_channels, g.out_height, g.out_width),
        corner: (top, left),
        size: (hg, wg),
    };
    let taps_total = kh * kw;
    // by_tap[oc, tap, c] = weight[oc, c, tap]
    let by_tap = transposed(tile, weight, (g.channels, taps_total));
    let mut passes = Vec::new();
    for (a, b) in (0..sh).flat_map(|a| (0..sw).map(move |b| (a, b))) {
        let (rows, cols) = (phase_taps(kh, sh, a), phase_taps(kw, sw, b));
        // Input rows `ih = s·i + a - p` in `0..H`, columns likewise.
        let i_range =
            ph.saturating_sub(a).div_ceil(sh)..(g.height + ph).saturating_sub(a).div_ceil(sh);
        let j_range =
            pw.saturating_sub(b).div_ceil(sw)..(g.width + pw).saturating_sub(b).div_ceil(sw);
        if rows == 0 || cols == 0 || i_range.is_empty() || j_range.is_empty() {
            continue; // these pixels meet no tap: their gradient stays zero
        }
        let depth = out_channels * rows * cols;
        let step = |k: usize| (k / (rows * cols), k / cols % rows, k % cols); // (oc, t, u)
        let taps = (0..depth)
            .map(|k| {
                let (oc, t, u) = step(k);
                oc * hg * wg + (top - t) * wg + (left - u)
            })
            .collect();
        let positions = i_range
            .flat_map(|i| j_range.clone().map(move |j| (i, j)))
            .map(|(i, j)| {
                let (ih, iw) = (i * sh + a - ph, j * sw + b - pw);
                (i * wg + j, ih * g.width + iw)
            })
            .collect();
        // weights[k, c] = weight[oc, c, a + s·t, b + s·u] = by_tap[oc, a + s·t, b + s·u, c]
        let weights = pack_lanes(&by_tap, depth, (g.channels, tile.lanes), |k| {
            let (oc, t, u) = step(k);
            oc * taps_total + (a + sh * t) * kw + b + sw * u
        });
        passes.push(Pass {
            taps,
            positions,
            weights,
        });
    }
    let plane = g.height * g.width;
    let mut out = zeroed(g.batch * g.channels * plane);
    correlate(
        tile,
        (grad, padding),
        &passes,
        (g.channels, plane),
        (&mut out, finish),
    );
    out
}

/// The weight gradient `[OC, C, kh, kw]`: `Σ_n Σ_q grad[n, oc, q] · image[n, c, ih(q, ki),
/// iw(q, kj)]`, by the tiles of a [`WeightGradPlan`] (each a tile of taps with the positions
/// it sums over). The gradient is transposed to `[N, OH·OW, OC]` (rows of whole lane blocks)
/// for the kernel's loads; the tiles split over the threads, each summing over images and
/// positions in order.
pub(crate) fn conv2d_weight_grad(
    kernel: Kernel<f32>,
    image: &[f32],
    grad: &[f32],
    out_channels: usize,
    g: &Conv2dGeometry,
) -> Vec<f32> {
    if pointwise(&kernel, g, out_channels) {
        return pointwise_weight_grad(kernel, image, grad, out_channels, g);
    }
    let Some(tile) = tile_for(&kernel, out_channels) else {
        if along_rows(&kernel, g, out_channels) {
            return few_channels_weight_grad(kernel, image, grad, out_channels, g);
        }
        return packed::conv2d_weight_grad(kernel, image, grad, out_channels, g);
    };
    let blocks = out_channels.div_ceil(tile.lanes);
    let plan = WeightGradPlan::new(image, g, (tile.rows, blocks));
    let reads = (plan.runs.iter().flatten())
        .map(|run| run.at + (run.len - 1) * plan.at_step)
        .max();
    if let (Some(at), Some(tap)) = (reads, plan.taps.iter().max()) {
        assert!(
            at + tap < plan.sources.len,
            "a weight-gradient read outside its image"
        );
    }
    let depth = g.channels * g.kernel[0] * g.kernel[1];
    let out_plane = g.out_height * g.out_width;
    let width = blocks * tile.lanes;
    // transposed[n, q, oc] = grad[n, oc, q], zero for oc >= OC: each image's planes read as
    // rows of positions and written out as rows of channels, by the forward pass's
    // transposing write-out (the value-by-value copy had cost 2.4% of a DCGAN step).
    let len = g.batch * out_plane * width;
    let parallel_copy = len >= packed::PARALLEL_MIN;
    let mut transposed = AlignedF32::zeroed(len, parallel_copy);
    let image_grad = out_channels * out_plane;
    for_each_chunk(
        &mut transposed,
        out_plane * width,
        parallel_copy,
        |n, dest| {
            let planes = &grad[n * image_grad..][..image_grad];
            // SAFETY: `planes` holds `out_channels` rows of `out_plane` values and `dest`
            // `out_plane` rows of `width ≥ out_channels`.
            unsafe { (tile.to_planes)(planes, out_plane, (out_channels, out_plane), dest, width) };
        },
    );
    // sums[row, oc] for each row of the plan's tiles: each task a run of whole tiles, all
    // lane blocks of them.
    let tiles = plan.taps.len() / tile.rows;
    // On a cache line's boundary, as each tile row's lanes (a multiple of 16) start on one.
    let mut sums = AlignedF32::zeroed(plan.taps.len() * width, false);
    let threads = rayon::current_num_threads();
    let parallel = parallel_product(depth, out_channels, out_plane * g.batch);
    let tiles_per_task = if parallel {
        tiles.div_ceil(threads * 4)
    } else {
        tiles
    };
    // Images go to the kernel in groups of at least `GROUP_POSITIONS` positions, so the
    // accumulators' loads and stores are few beside the products, but no more than
    // `GROUP_BYTES` of source images and gradients take, so the group stays in the L2 cache
    // while a task's tiles walk it again and again.
    let image_bytes = std::mem::size_of::<f32>() * (plan.sources.len + out_plane * width);
    let group = (GROUP_POSITIONS.div_ceil(out_plane.max(1)))
        .min(GROUP_BYTES / image_bytes.max(1))
        .clamp(1, g.batch.max(1));
    let task = |index: usize, sums: &mut [f32]| {
        let first_tile = index * tiles_per_task;
        for n0 in (0..g.batch).step_by(group) {
            // (source image, transposed gradient) of each image of the group.
            let images: Vec<(&[f32], &[f32])> = (n0..(n0 + group).min(g.batch))
                .map(|n| {
                    let image = plan.sources.image(n);
                    let grads = &transposed[n * out_plane * width..][..out_plane * width];
                    (image, grads)
                })
                .collect();
            for (t, tile_sums) in sums.chunks_exact_mut(tile.rows * width).enumerate() {
                let tile_index = first_tile + t;
                let tile_taps = &plan.taps[tile_index * tile.rows..][..tile.rows];
                let runs = &plan.runs[tile_index / plan.tiles_per_class];
                for block in 0..blocks {
                    // SAFETY: `tile_for` chose a kernel this CPU runs; each image's `grads`
                    // and the tile's sums hold `width` values per row, the block's lanes among
                    // them, at every `q · width` for an output position `q` and at each of
                    // the tile's rows; every offset plus tap lies inside the source image
                    // (`WeightGradPlan::new`).
                    unsafe {
                        (tile.weight_grad)(
                            &images,
                            (width, block * tile.lanes),
                            (runs, plan.at_step),
                            tile_taps,
                            tile_sums,
                        );
                    }
                }
            }
        }
    };
    let chunk = tiles_per_task.max(1) * tile.rows * width;
    for_each_chunk(&mut sums, chunk, parallel, task);
    // by_row[oc, row] = sums[row, oc], then out[oc, ·] from the rows that hold weights.
    let rows = plan.taps.len();
    let mut by_row = vec![0.0f32; out_channels * rows];
    // SAFETY: `sums` holds `rows` rows of `width ≥ out_channels` values, `by_row`
    // `out_channels` rows of `rows`.
    unsafe { (tile.to_planes)(&sums, width, (rows, out_channels), &mut by_row, rows) };
    let mut out = vec![0.0f32; out_channels * depth];
    if depth == 0 {
        return out; // no input channels: no weights
    }
    for (out, by_row) in out.chunks_exact_mut(depth).zip(by_row.chunks_exact(rows)) {
        for (&value, &k) in by_row.iter().zip(&plan.weight_of_row) {
            if k < depth {
                out[k] = value;
            }
        }
    }
    out
}

/// The tiles of a weight gradient: rows of taps (offsets in a source image) in whole tiles,
/// and the positions each tile sums over, one of two ways, whichever costs less (its
/// products, and the padded one's copy, [`PADDED_VALUES_PER_PRODUCT`]):
/// - all taps `(c, ki, kj)` in order over every output position of a zero-padded copy of the
///   image (the forward pass's reads);
/// - by kernel position `(ki, kj)`, a tile's rows being channels of that position, over the
///   output positions whose pixel lies inside the image, read where it is: no padded copy,
///   and no products with the padding's zeros (a sixth of DCGAN's strided layers' and of a
///   3 x 3 layer's on 7 x 7 images), but the channels padded to whole tiles per position (a
///   loss with fewer channels than a tile's rows, as a one-channel first layer).
struct WeightGradPlan<'a> {
    sources: Sources<'a>,
    /// Each tile's taps, `rows` apiece.
    taps: Vec<usize>,
    /// The positions (offset in a source image, output position) a class of tiles sums over,
    /// in order, as runs along output rows.
    runs: Vec<Vec<PositionRun>>,
    /// How far apart a run's pixels lie in a source image: the stride along a row.
    at_step: usize,
    /// Tiles per entry of `runs`: tile `t` sums over `runs[t / tiles_per_class]`.
    tiles_per_class: usize,
    /// The weight `c·kh·kw + ki·kw + kj` each tap row sums for, or past the last for a row
    /// that fills a tile.
    weight_of_row: Vec<usize>,
}

impl<'a> WeightGradPlan<'a> {
    fn new(
        image: &'a [f32],
        g: &Conv2dGeometry,
        (rows, lane_blocks): (usize, usize),
    ) -> WeightGradPlan<'a> {
        let [kh, kw] = g.kernel;
        let depth = g.channels * kh * kw;
        let out_plane = g.out_height * g.out_width;
        let inside = |out: usize, k: usize, axis: usize| {
            let at = (out * g.stride[axis] + k * g.dilation[axis]).checked_sub(g.padding[axis])?;
            (at < [g.height, g.width][axis]).then_some(at)
        };
        let by_position: Vec<Vec<(usize, usize)>> = (0..kh * kw)
            .map(|k| {
                let (ki, kj) = (k / kw, k % kw);
                let rows = (0..g.out_height).filter_map(|oh| Some((oh, inside(oh, ki, 0)?)));
                rows.flat_map(|(oh, ih)| {
                    (0..g.out_width).filter_map(move |ow| {
                        let iw = inside(ow, kj, 1)?;
                        Some((ih * g.width + iw, oh * g.out_width + ow))
                    })
                })
                .collect()
            })
            .collect();
        let slots = g.channels.next_multiple_of(rows);
        let products_by_position = slots * by_position.iter().map(Vec::len).sum::<usize>();
        // Cost of each way per image, in a tile row's products at one position for one block
        // of lanes: the padded plan also writes a padded copy of the image.
        let padding = Padding::of(g);
        let copied = if padding.adds_nothing() {
            0
        } else {
            padding.image_len()
        };
        let padded_cost = depth.next_multiple_of(rows) * out_plane * lane_blocks
            + copied / PADDED_VALUES_PER_PRODUCT;
        if products_by_position * lane_blocks < padded_cost {
            let plane = g.height * g.width;
            // Row `s` is channel slot `s % slots` of kernel position `s / slots`; the slots
            // past the last channel read channel 0, as rows that are dropped.
            let live = |s: usize| Some(s % slots).filter(|&c| c < g.channels);
            let taps = (0..kh * kw * slots)
                .map(|s| live(s).map_or(0, |c| c * plane))
                .collect();
            let weight_of_row = (0..kh * kw * slots)
                .map(|s| live(s).map_or(depth, |c| c * kh * kw + s / slots))
                .collect();
            return WeightGradPlan {
                sources: Sources::unpadded(image, g),
                taps,
                runs: (by_position.iter())
                    .map(|positions| position_runs(positions, g.stride[1]))
                    .collect(),
                at_step: g.stride[1],
                tiles_per_class: slots / rows,
                weight_of_row,
            };
        }
        let (sources, wp) = Sources::padded(image, g);
        let mut taps = forward_taps(g, wp);
        taps.resize(depth.next_multiple_of(rows), 0); // extra taps read pixel 0; dropped
        let positions = forward_positions(g, wp);
        WeightGradPlan {
            sources,
            weight_of_row: (0..taps.len()).collect(),
            taps,
            runs: vec![position_runs(&positions, g.stride[1])],
            at_step: g.stride[1],
            tiles_per_class: depth.div_ceil(rows).max(1),
        }
    }
}

/// A pointwise convolution's weight gradient `[OC, C] = Σ_n grad[n] [OC, P] · image[n]ᵀ
/// [P, C]`: one product per image (images split over the threads), summed in image order.
fn pointwise_weight_grad(
    kernel: Kernel<f32>,
    image: &[f32],
    grad: &[f32],
    out_channels: usize,
    g: &Conv2dGeometry,
) -> Vec<f32> {
    let positions = g.height * g.width;
    let len = out_channels * g.channels;
    let mut per_image = vec![0.0f32; g.batch * len];
    if per_image.is_empty() {
        return vec![0.0; len];
    }
    let parallel = parallel_product(g.batch, len, positions);
    for_each_chunk(&mut per_image, len, parallel, |n, out| {
        let grad = Operand {
            data: grad,
            offset: n * out_channels * positions,
            row_stride: positions,
            col_stride: 1,
        };
        let image_t = Operand {
            data: image,
            offset: n * g.channels * positions,
            row_stride: 1,
            col_stride: positions,
        };
        gemm_with(
            kernel,
            (out_channels, g.channels, positions),
            grad,
            &image_t,
            out,
            false,
        );
    });
    let mut sums = vec![0.0f32; len];
    for image in per_image.chunks_exact(len) {
        for (sum, &value) in sums.iter_mut().zip(image) {
            *sum += value;
        }
    }
    sums
}

mod x86 {
    use super::{RowKernels, Run, Tile};
    use std::arch::x86_64::*;

    /// Columns of an output row per run: a vector of [`row_runs`], two of [`avx2_row_runs`].
    pub(super) const ROW_LANES: usize = 16;
    /// Row runs per call of [`row_runs`]: its independent accumulator chains.
    const ROW_RUNS: usize = 8;
    /// Taps per call of [`row_runs_weight_grad`]: its accumulators.
    const TAP_GROUP: usize = 8;
    /// Row runs per call of [`avx2_row_runs`] and taps per call of
    /// [`avx2_row_runs_weight_grad`]: two ymm accumulators apiece, 12 in all.
    const AVX2_GROUP: usize = 6;

    /// The row kernels on AVX-512.
    pub(super) const AVX512_ROWS: RowKernels = RowKernels {
        runs: ROW_RUNS,
        forward: row_runs,
        taps: TAP_GROUP,
        weight_grad: row_runs_weight_grad,
    };

    /// The row kernels on AVX2+FMA.
    pub(super) const AVX2_ROWS: RowKernels = RowKernels {
        runs: AVX2_GROUP,
        forward: avx2_row_runs,
        taps: AVX2_GROUP,
        weight_grad: avx2_row_runs_weight_grad,
    };

    /// Masks for AVX2's masked loads: the 8 values from `LIVE[8 - n]` keep the first `n`.
    const LIVE: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    /// The masks of a run of `columns ≤ 16` values as two vectors of 8.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn run_masks(columns: usize) -> [__m256i; 2] {
        [columns.min(8), columns.saturating_sub(8).min(8)]
            .map(|live| _mm256_loadu_si256(LIVE.as_ptr().add(8 - live).cast()))
    }

    /// [`row_runs`] on AVX2+FMA, at most [`AVX2_GROUP`] runs: a run's 16 columns as two
    /// vectors, read and written under masks; each output the same sum in the same order.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; as [`row_runs`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_row_runs(
        image: &[f32],
        weights: &[f32],
        taps: &[usize],
        runs: &[Run],
        plane: &mut [f32],
    ) {
        let mut bases = [image.as_ptr(); AVX2_GROUP];
        let mut masks = [[_mm256_setzero_si256(); 2]; AVX2_GROUP];
        for (r, &(at, _, columns)) in runs.iter().enumerate() {
            bases[r] = image.as_ptr().add(at);
            masks[r] = run_masks(columns);
        }
        let mut acc = [[_mm256_setzero_ps(); 2]; AVX2_GROUP];
        for (&tap, &w) in taps.iter().zip(weights) {
            let w = _mm256_set1_ps(w);
            for r in 0..AVX2_GROUP {
                for v in 0..2 {
                    // Addresses past a short run's end are read under an empty mask.
                    let x = _mm256_maskload_ps(bases[r].wrapping_add(tap + 8 * v), masks[r][v]);
                    acc[r][v] = _mm256_fmadd_ps(x, w, acc[r][v]);
                }
            }
        }
        for (r, &(_, offset, _)) in runs.iter().enumerate() {
            for v in 0..2 {
                let at = plane.as_mut_ptr().wrapping_add(offset + 8 * v);
                _mm256_maskstore_ps(at, masks[r][v], acc[r][v]);
            }
        }
    }

    /// [`row_runs_weight_grad`] on AVX2+FMA, at most [`AVX2_GROUP`] taps: per tap two vectors
    /// of partial sums (a run's columns 0..8 and 8..16) over the images and runs in order,
    /// added together and across their lanes at the end.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; as [`row_runs_weight_grad`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_row_runs_weight_grad(
        images: &[(&[f32], &[f32])],
        taps: &[usize],
        runs: &[Run],
        sums: &mut [f32],
    ) {
        let mut offsets = [0usize; AVX2_GROUP];
        offsets[..taps.len()].copy_from_slice(taps);
        let live = taps.len();
        let mut acc = [[_mm256_setzero_ps(); 2]; AVX2_GROUP];
        for (image, grads) in images {
            for &(at, offset, columns) in runs {
                let masks = run_masks(columns);
                let g: [__m256; 2] = std::array::from_fn(|v| {
                    _mm256_maskload_ps(grads.as_ptr().wrapping_add(offset + 8 * v), masks[v])
                });
                let base = image.as_ptr().add(at);
                for t in 0..AVX2_GROUP {
                    // Taps past the last are read under empty masks: nothing.
                    let none = _mm256_setzero_si256();
                    for v in 0..2 {
                        let mask = if t < live { masks[v] } else { none };
                        let x = _mm256_maskload_ps(base.wrapping_add(offsets[t] + 8 * v), mask);
                        acc[t][v] = _mm256_fmadd_ps(x, g[v], acc[t][v]);
                    }
                }
            }
        }
        for (sum, [low, high]) in sums.iter_mut().zip(acc) {
            let both = _mm256_add_ps(low, high);
            let half = _mm_add_ps(
                _mm256_castps256_ps128(both),
                _mm256_extractf128_ps::<1>(both),
            );
            let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
            *sum = _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<1>(pairs, pairs)));
        }
    }

    /// `sums[t] = Σ_(image, grads) Σ_runs Σ_j image[at + taps[t] + j] · grads[offset + j]`
    /// for `j < columns` of each `(at, offset, columns)` of `runs`, `t < taps.len()` (at most
    /// [`TAP_GROUP`]): per tap a vector of partial sums over the images and runs in order,
    /// added across its lanes at the end.
    ///
    /// # Safety
    /// The CPU has AVX-512F; for each `(image, grads)` every `image[at + taps[t] + j]` and
    /// `grads[offset + j]` for `j < columns` is in bounds; `sums` holds `taps.len()` values.
    #[target_feature(enable = "avx512f")]
    unsafe fn row_runs_weight_grad(
        images: &[(&[f32], &[f32])],
        taps: &[usize],
        runs: &[Run],
        sums: &mut [f32],
    ) {
        let mut offsets = [0usize; TAP_GROUP];
        offsets[..taps.len()].copy_from_slice(taps);
        let live = taps.len();
        let mut acc = [_mm512_setzero_ps(); TAP_GROUP];
        for (image, grads) in images {
            for &(at, offset, columns) in runs {
                let mask = ((1u32 << columns) - 1) as __mmask16;
                let g = _mm512_maskz_loadu_ps(mask, grads.as_ptr().add(offset));
                let base = image.as_ptr().add(at);
                for t in 0..TAP_GROUP {
                    // Taps past the last are read under an empty mask: nothing.
                    let mask = if t < live { mask } else { 0 };
                    let x = _mm512_maskz_loadu_ps(mask, base.add(offsets[t]));
                    acc[t] = _mm512_fmadd_ps(x, g, acc[t]);
                }
            }
        }
        for (sum, acc) in sums.iter_mut().zip(acc) {
            *sum = _mm512_reduce_add_ps(acc);
        }
    }

    /// `plane[offset + j] = Σ_k image[at + taps[k] + j] · weights[k]` for `j <
    /// columns` of each `(at, offset, columns)` of `runs` (at most [`ROW_RUNS`]): a vector
    /// of a row's columns per run, each step a broadcast weight times each run's loaded
    /// (masked) columns.
    ///
    /// # Safety
    /// The CPU has AVX-512F; every `image[at + taps[k] + j]` and `plane[offset + j]` for
    /// `j < columns` is in bounds; `weights` holds `taps.len()` values.
    #[target_feature(enable = "avx512f")]
    unsafe fn row_runs(
        image: &[f32],
        weights: &[f32],
        taps: &[usize],
        runs: &[Run],
        plane: &mut [f32],
    ) {
        let mut bases = [image.as_ptr(); ROW_RUNS];
        let mut masks = [0 as __mmask16; ROW_RUNS];
        for (r, &(at, _, columns)) in runs.iter().enumerate() {
            bases[r] = image.as_ptr().add(at);
            masks[r] = ((1u32 << columns) - 1) as __mmask16;
        }
        let mut acc = [_mm512_setzero_ps(); ROW_RUNS];
        for (&tap, &w) in taps.iter().zip(weights) {
            let w = _mm512_set1_ps(w);
            for r in 0..ROW_RUNS {
                let x = _mm512_maskz_loadu_ps(masks[r], bases[r].add(tap));
                acc[r] = _mm512_fmadd_ps(x, w, acc[r]);
            }
        }
        for (r, &(_, offset, _)) in runs.iter().enumerate() {
            _mm512_mask_storeu_ps(plane.as_mut_ptr().add(offset), masks[r], acc[r]);
        }
    }

    /// [`super::to_planes`] by square blocks of `BLOCK` positions x `BLOCK` lanes, each
    /// written by `block(sums + q · stride + m, out + m · out_plane + q)` (its rows `stride`
    /// apart, its planes `out_plane` apart); the positions and lanes past the whole blocks by
    /// the portable version. Inlined into each instruction set's version, with its `block`.
    ///
    /// # Safety
    /// `block` writes a block's transpose, reading and writing nothing else; `sums` holds
    /// `positions` rows of `stride` values, `lanes` of them live, and `out` `lanes` planes of
    /// `out_plane ≥ positions` values.
    #[inline(always)]
    unsafe fn by_blocks<const BLOCK: usize>(
        sums: &[f32],
        stride: usize,
        (positions, lanes): (usize, usize),
        out: &mut [f32],
        out_plane: usize,
        block: impl Fn(*const f32, *mut f32),
    ) {
        if positions == 0 || lanes == 0 {
            return;
        }
        assert!(sums.len() >= positions * stride && lanes <= stride);
        assert!(out.len() >= (lanes - 1) * out_plane + positions);
        let whole_positions = positions / BLOCK * BLOCK;
        let whole_lanes = lanes / BLOCK * BLOCK;
        for q in (0..whole_positions).step_by(BLOCK) {
            for m in (0..whole_lanes).step_by(BLOCK) {
                let at = out.as_mut_ptr().add(m * out_plane + q);
                block(sums.as_ptr().add(q * stride + m), at);
            }
        }
        let rest = (positions - whole_positions, lanes);
        let (rest_sums, rest_out) = (
            &sums[whole_positions * stride..],
            &mut out[whole_positions..],
        );
        super::to_planes(rest_sums, stride, rest, rest_out, out_plane);
        let rest = (whole_positions, lanes - whole_lanes);
        let rest_out = &mut out[whole_lanes * out_plane..];
        super::to_planes(&sums[whole_lanes..], stride, rest, rest_out, out_plane);
    }

    /// [`super::to_planes`] on AVX-512: blocks of 16 positions x 16 lanes transposed in
    /// registers (interleaves of 32 and 64 bits, then two shuffles of 128-bit lanes) and
    /// stored as 16 runs of 16 values of a plane; the rest by the portable version.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `sums` holds `positions` rows of `stride` values, `lanes` of
    /// them live, and `out` `lanes` planes of `out_plane ≥ positions` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512_to_planes(
        sums: &[f32],
        stride: usize,
        dims: (usize, usize),
        out: &mut [f32],
        out_plane: usize,
    ) {
        by_blocks::<16>(sums, stride, dims, out, out_plane, |sums, out| {
            let rows: [__m512; 16] = std::array::from_fn(|r| _mm512_loadu_ps(sums.add(r * stride)));
            // Rows 2i and 2i + 1 interleaved by 32 bits, then 4i..4i + 3 by 64: `b[4i + j]`'s
            // 128-bit lane l holds column 4l + j of rows 4i..4i + 3.
            let a: [__m512; 16] = std::array::from_fn(|i| {
                let (x, y) = (rows[i & !1], rows[i | 1]);
                if i % 2 == 0 {
                    _mm512_unpacklo_ps(x, y)
                } else {
                    _mm512_unpackhi_ps(x, y)
                }
            });
            let b: [__m512; 16] = std::array::from_fn(|i| {
                let (group, j) = (i / 4 * 4, i % 4);
                let x = _mm512_castps_pd(a[group + j / 2]);
                let y = _mm512_castps_pd(a[group + 2 + j / 2]);
                _mm512_castpd_ps(if j % 2 == 0 {
                    _mm512_unpacklo_pd(x, y)
                } else {
                    _mm512_unpackhi_pd(x, y)
                })
            });
            // Column 4l + j gathers lane l of b[j], b[4 + j], b[8 + j], b[12 + j].
            for j in 0..4 {
                let even = |x, y| _mm512_shuffle_f32x4::<0x88>(x, y);
                let odd = |x, y| _mm512_shuffle_f32x4::<0xdd>(x, y);
                let (low, high) = ((b[j], b[4 + j]), (b[8 + j], b[12 + j]));
                let (low_even, low_odd) = (even(low.0, low.1), odd(low.0, low.1));
                let (high_even, high_odd) = (even(high.0, high.1), odd(high.0, high.1));
                let columns = [
                    (j, even(low_even, high_even)),
                    (4 + j, even(low_odd, high_odd)),
                    (8 + j, odd(low_even, high_even)),
                    (12 + j, odd(low_odd, high_odd)),
                ];
                for (column, values) in columns {
                    _mm512_storeu_ps(out.add(column * out_plane), values);
                }
            }
        });
    }

    /// [`super::to_planes`] on AVX2: blocks of 8 positions x 8 lanes transposed in registers
    /// (interleaves of 32 bits, shuffles of 64, then swaps of 128-bit halves) and stored as 8
    /// runs of 8 values of a plane; the rest by the portable version. The scalar write-out had
    /// been 6% of a DCGAN step on AVX2.
    ///
    /// # Safety
    /// The CPU has AVX2; `sums` holds `positions` rows of `stride` values, `lanes` of them
    /// live, and `out` `lanes` planes of `out_plane ≥ positions` values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2_to_planes(
        sums: &[f32],
        stride: usize,
        dims: (usize, usize),
        out: &mut [f32],
        out_plane: usize,
    ) {
        by_blocks::<8>(sums, stride, dims, out, out_plane, |sums, out| {
            let rows: [__m256; 8] = std::array::from_fn(|r| _mm256_loadu_ps(sums.add(r * stride)));
            // Rows 2i and 2i + 1 interleaved by 32 bits: `a[2i]` holds columns 0, 1 | 4, 5 of
            // the pair, `a[2i + 1]` columns 2, 3 | 6, 7.
            let a: [__m256; 8] = std::array::from_fn(|i| {
                let (x, y) = (rows[i & !1], rows[i | 1]);
                if i % 2 == 0 {
                    _mm256_unpacklo_ps(x, y)
                } else {
                    _mm256_unpackhi_ps(x, y)
                }
            });
            // `b[4h + c]` holds column c | c + 4 of rows 4h..4h + 3.
            let b: [__m256; 8] = std::array::from_fn(|i| {
                let (half, c) = (i / 4, i % 4);
                let (x, y) = (a[4 * half + c / 2], a[4 * half + 2 + c / 2]);
                if c % 2 == 0 {
                    _mm256_shuffle_ps::<0x44>(x, y)
                } else {
                    _mm256_shuffle_ps::<0xee>(x, y)
                }
            });
            for c in 0..4 {
                let low = _mm256_permute2f128_ps::<0x20>(b[c], b[4 + c]);
                let high = _mm256_permute2f128_ps::<0x31>(b[c], b[4 + c]);
                _mm256_storeu_ps(out.add(c * out_plane), low);
                _mm256_storeu_ps(out.add((c + 4) * out_plane), high);
            }
        });
    }

    /// The register tile on AVX2+FMA: 6 rows x 16 lanes, 12 ymm accumulators.
    pub(super) const AVX2: Tile = Tile {
        lanes: 16,
        rows: 6,
        correlate: avx2::correlate,
        correlate_steps: avx2::correlate_steps,
        weight_grad: avx2::weight_grad,
        to_planes: avx2_to_planes,
        fewer_rows: Some(&AVX2_FIVE),
    };

    /// AVX2's tile with 5 rows (10 ymm accumulators), for planes that groups of 5 positions
    /// fill better than groups of 6: the 7 x 7 ones (49 positions: 50 rows instead of 54),
    /// DCGAN's and the conv VAE's strided layers and their input gradients' phases.
    const AVX2_FIVE: Tile = Tile {
        lanes: 16,
        rows: 5,
        correlate: avx2_five::correlate,
        correlate_steps: avx2_five::correlate_steps,
        weight_grad: avx2_five::weight_grad,
        to_planes: avx2_to_planes,
        fewer_rows: None,
    };

    /// The register tile on AVX-512: 8 rows x 32 lanes, 16 zmm accumulators (as the GEMM's
    /// 8x32 tile): 16 FMAs of 16 lanes per 2 loads and 8 broadcasts.
    pub(super) const AVX512: Tile = Tile {
        lanes: 32,
        rows: 8,
        correlate: avx512::correlate,
        correlate_steps: avx512::correlate_steps,
        weight_grad: avx512::weight_grad,
        to_planes: avx512_to_planes,
        fewer_rows: Some(&AVX512_SEVEN),
    };

    /// AVX-512's 32-lane tile with 7 rows (14 zmm accumulators), for output planes that
    /// groups of 7 positions fill and groups of 8 do not: the 7 x 7 and 14 x 14 ones, whose
    /// last group of 8 ran part empty (DCGAN's and the conv VAE's strided layers, 12% of
    /// their tiles).
    const AVX512_SEVEN: Tile = Tile {
        lanes: 32,
        rows: 7,
        correlate: avx512_seven::correlate,
        correlate_steps: avx512_seven::correlate_steps,
        weight_grad: avx512_seven::weight_grad,
        to_planes: avx512_to_planes,
        fewer_rows: None,
    };

    /// AVX-512's tile for 16 to 31 lanes (the U-Net's and the PixelCNN's 16-channel sides):
    /// 14 rows x 16 lanes, 14 zmm accumulators, so those convolutions run at AVX-512's width
    /// rather than as AVX2's 6 x 16 tile in ymm registers.
    pub(super) const AVX512_NARROW: Tile = Tile {
        lanes: 16,
        rows: 14,
        correlate: avx512_narrow::correlate,
        correlate_steps: avx512_narrow::correlate_steps,
        weight_grad: avx512_narrow::weight_grad,
        to_planes: avx512_to_planes,
        fewer_rows: None,
    };

    /// A tile's two kernels for one instruction set: `$rows` rows of `$vectors` `$vector`s
    /// of `$width` lanes each, with that set's intrinsics.
    macro_rules! tile_kernels {
        ($module:ident, $feature:literal, $rows:literal, $vectors:literal, $width:literal,
         $vector:ty, $zero:ident, $set1:ident, $load:ident, $store:ident, $fma:ident) => {
            pub(super) mod $module {
                use std::arch::x86_64::*;

                const ROWS: usize = $rows;
                const VECTORS: usize = $vectors;
                const LANES: usize = VECTORS * $width;

                /// A row of the tile's lanes, as vectors.
                type Lanes = [$vector; VECTORS];

                /// A tile's accumulators: a row of vectors per position (or tap).
                type Accumulators = [Lanes; ROWS];

                /// `acc[r] += rows[r][offset] · lanes` for each row: a broadcast pixel times
                /// the tile's lanes.
                ///
                /// # Safety
                /// The CPU has the module's features; every `rows[r] + offset` may be read.
                #[inline]
                #[target_feature(enable = $feature)]
                unsafe fn multiply_add(
                    acc: &mut Accumulators,
                    rows: &[*const f32; ROWS],
                    offset: usize,
                    lanes: Lanes,
                ) {
                    for (row, acc) in rows.iter().zip(acc.iter_mut()) {
                        let x = $set1(*row.add(offset));
                        for (acc, &lanes) in acc.iter_mut().zip(&lanes) {
                            *acc = $fma(x, lanes, *acc);
                        }
                    }
                }

                /// A tile row's lanes from `values`, as vectors.
                ///
                /// # Safety
                /// The CPU has the module's features; `values` holds `LANES` floats.
                #[inline]
                #[target_feature(enable = $feature)]
                unsafe fn lanes(values: *const f32) -> Lanes {
                    std::array::from_fn(|v| $load(values.add(v * $width)))
                }

                /// `out[r][·]` = `acc[r]`.
                ///
                /// # Safety
                /// The CPU has the module's features; each `out[r]` points to `LANES`
                /// writable floats.
                #[inline]
                #[target_feature(enable = $feature)]
                unsafe fn store_rows(acc: &Accumulators, out: &[*mut f32; ROWS]) {
                    for (acc, &out) in acc.iter().zip(out) {
                        for (v, &acc) in acc.iter().enumerate() {
                            $store(out.add(v * $width), acc);
                        }
                    }
                }

                /// `out[r][m] = Σ_k rows[r][taps[k]] · weights[k, m]` for the tile's positions
                /// `r` and lanes `m`: per step, the lanes' weights loaded once and a pixel
                /// broadcast per row.
                ///
                /// # Safety
                /// The CPU has the module's features; `rows` and `out` hold `ROWS` pointers,
                /// each `out[r]` to `LANES` writable floats; `weights` holds `depth · LANES`
                /// values and `taps` `depth` offsets, each of which every `rows[r]` may be
                /// read at.
                #[target_feature(enable = $feature)]
                pub(in super::super) unsafe fn correlate(
                    depth: usize,
                    weights: *const f32,
                    rows: &[*const f32],
                    taps: *const usize,
                    out: &[*mut f32],
                ) {
                    let rows: &[*const f32; ROWS] = rows.try_into().expect("a row per position");
                    let mut acc = [[$zero(); VECTORS]; ROWS];
                    for k in 0..depth {
                        multiply_add(&mut acc, rows, *taps.add(k), lanes(weights.add(k * LANES)));
                    }
                    store_rows(&acc, out.try_into().expect("a row per position"));
                }

                /// As [`correlate`] over some of a reduction's steps only: `out[r][m] =
                /// Σ_i rows[r][steps[i].tap] · weights[steps[i].weight + m]`, a table of
                /// offsets for the weights as for the pixels, so a tile whose positions all
                /// read padding at some taps skips those.
                ///
                /// # Safety
                /// As [`correlate`]'s, with each `steps[i].weight + LANES` values inside
                /// `weights` and each `rows[r] + steps[i].tap` readable.
                #[target_feature(enable = $feature)]
                pub(in super::super) unsafe fn correlate_steps(
                    steps: &[super::super::Step],
                    weights: *const f32,
                    rows: &[*const f32],
                    out: &[*mut f32],
                ) {
                    let rows: &[*const f32; ROWS] = rows.try_into().expect("a row per position");
                    let mut acc = [[$zero(); VECTORS]; ROWS];
                    for step in steps {
                        multiply_add(&mut acc, rows, step.tap, lanes(weights.add(step.weight)));
                    }
                    store_rows(&acc, out.try_into().expect("a row per position"));
                }

                /// `sums[r · stride + first_lane + m] += Σ_(at, q) image[at + taps[r]] ·
                /// grads[q · stride + first_lane + m]` for the tile's taps `r` and lanes `m`,
                /// over each `(image, grads)` of `images` in turn and each position `(at, q)`
                /// of `runs` in order (a run's `at` stepping by `at_step`).
                ///
                /// # Safety
                /// The CPU has the module's features; `taps` holds `ROWS` offsets; `sums`
                /// and each `grads` hold `LANES` values at every `r · stride + first_lane`
                /// (`r < ROWS`) and `q · stride + first_lane` respectively, and every
                /// `at + taps[r]` lies inside each `image`, for the positions of `runs`.
                #[target_feature(enable = $feature)]
                pub(in super::super) unsafe fn weight_grad(
                    images: &[(&[f32], &[f32])],
                    (stride, first_lane): (usize, usize),
                    (runs, at_step): (&[super::super::PositionRun], usize),
                    taps: &[usize],
                    sums: &mut [f32],
                ) {
                    debug_assert!(sums.len() >= (ROWS - 1) * stride + first_lane + LANES);
                    let sums = sums.as_mut_ptr().add(first_lane);
                    let mut acc: Accumulators =
                        std::array::from_fn(|r| lanes(sums.add(r * stride)));
                    for (image, grads) in images {
                        let rows: [*const f32; ROWS] =
                            std::array::from_fn(|r| image.as_ptr().add(taps[r]));
                        let grads = grads.as_ptr().add(first_lane);
                        for run in runs {
                            let mut at = run.at;
                            let mut row = grads.add(run.q * stride);
                            for _ in 0..run.len {
                                multiply_add(&mut acc, &rows, at, lanes(row));
                                at += at_step;
                                row = row.add(stride);
                            }
                        }
                    }
                    store_rows(&acc, &std::array::from_fn(|r| sums.add(r * stride)));
                }
            }
        };
    }

    /// An AVX2+FMA tile's kernels: `$rows` rows of two ymm registers.
    macro_rules! avx2_tile_kernels {
        ($module:ident, $rows:literal) => {
            tile_kernels!(
                $module,
                "avx2,fma",
                $rows,
                2,
                8,
                __m256,
                _mm256_setzero_ps,
                _mm256_set1_ps,
                _mm256_loadu_ps,
                _mm256_storeu_ps,
                _mm256_fmadd_ps
            );
        };
    }

    avx2_tile_kernels!(avx2, 6);
    avx2_tile_kernels!(avx2_five, 5);

    /// An AVX-512 tile's kernels: `$rows` rows of `$vectors` zmm registers.
    macro_rules! avx512_tile_kernels {
        ($module:ident, $rows:literal, $vectors:literal) => {
            tile_kernels!(
                $module,
                "avx512f",
                $rows,
                $vectors,
                16,
                __m512,
                _mm512_setzero_ps,
                _mm512_set1_ps,
                _mm512_loadu_ps,
                _mm512_storeu_ps,
                _mm512_fmadd_ps
            );
        };
    }

    avx512_tile_kernels!(avx512, 8, 2);
    avx512_tile_kernels!(avx512_seven, 7, 2);
    avx512_tile_kernels!(avx512_narrow, 14, 1);
}

#[cfg(test)]
mod tests {
    use super::super::conv::tests::{
        assert_same_bits_on_one_and_two_threads, check_kernels, geometry, on_threads, ConvFn,
    };
    use super::super::gemm::f32_kernels;
    use super::super::CpuStorage;
    use super::*;
    use proptest::prelude::*;

    /// This module's three kernels, with each micro-kernel this CPU runs (so each tile),
    /// against the im2col/col2im compositions (exactly: the tests' values make every sum
    /// exact in any order).
    fn check(g: &Conv2dGeometry, out_channels: usize) {
        for kernel in f32_kernels() {
            check_kernels(kernel, CpuStorage::F32, g, out_channels, kernels());
        }
    }

    fn kernels() -> (ConvFn<f32>, ConvFn<f32>, ConvFn<f32>) {
        (conv2d, conv2d_input_grad, conv2d_weight_grad)
    }

    #[test]
    fn position_runs_join_only_positions_a_step_and_one_output_apart() {
        let run = |at, q, len| PositionRun { at, q, len };
        // Two output rows of three positions at stride 2 in a 9-wide image, then one alone.
        let positions = [(0, 0), (2, 1), (4, 2), (18, 3), (20, 4), (22, 5), (23, 7)];
        assert_eq!(
            position_runs(&positions, 2),
            [run(0, 0, 3), run(18, 3, 3), run(23, 7, 1)]
        );
        assert_eq!(
            position_runs(&[(5, 0), (6, 2)], 1),
            [run(5, 0, 1), run(6, 2, 1)]
        );
        assert!(position_runs(&[], 1).is_empty());
    }

    #[test]
    fn the_models_convolutions_equal_the_reference() {
        // (image, out channels, kernel, stride, padding): DCGAN, the conv VAE, the U-Net's
        // and the PixelCNN's shapes at batch 2, some channel counts cut for test time; the
        // one-channel sides take the fallback.
        let cases = [
            ((2, 1, 28, 28), 64, 4, 2, 1),
            ((2, 16, 14, 14), 32, 4, 2, 1),
            ((2, 32, 14, 14), 16, 4, 2, 1),
            ((2, 16, 28, 28), 16, 3, 1, 1),
            ((2, 16, 28, 28), 16, 3, 2, 1),
            ((2, 32, 7, 7), 64, 3, 1, 1),
            ((2, 96, 14, 14), 32, 1, 1, 0),
            ((2, 1, 28, 28), 32, 7, 1, 3),
            ((2, 32, 28, 28), 16, 1, 1, 0),
            ((2, 16, 28, 28), 1, 3, 1, 1),
            ((2, 32, 28, 28), 1, 1, 1, 0), // few output channels: runs along the rows
            ((2, 5, 9, 37), 3, 3, 1, 2),   // runs of 16, 16 and 5 columns
            ((3, 17, 9, 11), 33, 5, 2, 2), // partial lane blocks, odd sizes
            ((2, 40, 9, 7), 48, 3, 2, 1),  // AVX-512's 32-lane tile, a partial block
        ];
        for (image, out_channels, k, s, p) in cases {
            let g = geometry(image, [k, k], [s, s], [p, p], [1, 1]).unwrap();
            check(&g, out_channels);
        }
    }

    #[test]
    fn empty_images_and_channels_equal_the_reference() {
        // Rows or columns of zero pixels, which padding alone makes room for the kernel in.
        for (height, width) in [(0, 5), (5, 0), (0, 0)] {
            let g = geometry((2, 16, height, width), [3, 3], [1, 1], [2, 2], [1, 1]).unwrap();
            check(&g, 16);
        }
        // No input channels: every output is an empty sum.
        let g = geometry((2, 0, 6, 6), [3, 3], [2, 2], [1, 1], [1, 1]).unwrap();
        check(&g, 16);
    }

    #[test]
    fn skipping_the_paddings_taps_gives_every_taps_bits() {
        // (image, out channels, kernel, stride, padding): DCGAN's and the U-Net's 7 x 7
        // planes, a 14 x 14 one, and odd sizes with a wide padding.
        let cases = [
            ((1, 24, 14, 14), 40, 4, 2, 1),
            ((1, 20, 7, 7), 16, 3, 1, 1),
            ((1, 16, 14, 14), 32, 3, 1, 1),
            ((1, 17, 9, 11), 33, 5, 2, 3),
        ];
        let values = |len: usize, seed: f32| -> Vec<f32> {
            (0..len).map(|i| (i as f32 * 0.618 + seed).sin()).collect()
        };
        for kernel in f32_kernels() {
            for (image, out_channels, k, s, p) in cases {
                let g = geometry(image, [k, k], [s, s], [p, p], [1, 1]).unwrap();
                let Some(tile) = tile_for(&kernel, out_channels) else {
                    continue;
                };
                let depth = g.channels * k * k;
                let weight = values(out_channels * depth, 0.5);
                let source = values(g.channels * g.height * g.width, 0.0);
                let padding = Padding::of(&g);
                let pass = forward_pass(tile, &weight, out_channels, &g, padding.size.1);
                let padded = padding.image(&source, 0);
                let out_plane = g.out_height * g.out_width;
                let run = |tiling: &Tiling| {
                    let mut out = vec![0.0f32; out_channels * out_plane];
                    let (tilings, passes) = (std::slice::from_ref(tiling), [&pass]);
                    correlate_image(
                        tilings,
                        &padded,
                        &passes,
                        (out_channels, out_plane),
                        &mut out,
                    );
                    out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                };
                let skipping = Tiling::new(tile, &pass, &padding);
                let every = Tiling::grouped(skipping.tile, &pass, None, false);
                let case = (kernel.name, image, k);
                assert!(skipping.products(depth) < every.products(depth), "{case:?}");
                assert_eq!(run(&skipping), run(&every), "{case:?}");
            }
        }
    }

    #[test]
    fn dcgans_seven_by_seven_layer_skips_a_tenth_of_its_products() {
        // 4 x 4, stride 2, on 14 x 14: AVX2's 5-row tile takes the 25 inner positions in 5
        // groups of every tap (16 per channel), each edge's 5 in a group of 12, and the 4
        // corners in one of 16: 144 where every group had taken 160.
        let g = geometry((1, 64, 14, 14), [4, 4], [2, 2], [1, 1], [1, 1]).unwrap();
        let padding = Padding::of(&g);
        let wp = padding.size.1;
        let pass = Pass {
            taps: forward_taps(&g, wp),
            positions: forward_positions(&g, wp),
            weights: AlignedF32::zeroed(0, false),
        };
        let tiling = Tiling::new(x86::AVX2, &pass, &padding);
        assert_eq!(tiling.tile.rows, 5);
        assert_eq!(tiling.products(64 * 16), 5 * 64 * 144);
    }

    #[test]
    fn each_tiles_write_out_is_the_portable_transpose() {
        // Whole blocks of 8 and 16 and the rest, in both directions, with rows wider than
        // their live lanes and planes longer than their positions.
        for kernel in f32_kernels() {
            let tiles = [16, 32].map(|lanes| tile_for(&kernel, lanes));
            for tile in tiles.into_iter().flatten() {
                for (positions, lanes) in [(8, 8), (16, 16), (23, 19), (40, 37), (5, 3)] {
                    let (stride, out_plane) = (lanes + 3, positions + 2);
                    let sums: Vec<f32> = (0..positions * stride).map(|i| i as f32).collect();
                    let mut expected = vec![-1.0f32; lanes * out_plane];
                    let mut got = expected.clone();
                    let dims = (positions, lanes);
                    // SAFETY: `sums` holds `positions` rows of `stride ≥ lanes` values and
                    // the outputs `lanes` planes of `out_plane ≥ positions`; `tile_for` chose
                    // kernels this CPU runs.
                    unsafe {
                        to_planes(&sums, stride, dims, &mut expected, out_plane);
                        (tile.to_planes)(&sums, stride, dims, &mut got, out_plane);
                    }
                    assert_eq!(got, expected, "{} {dims:?}", kernel.name);
                }
            }
        }
    }

    #[test]
    fn one_thread_and_two_give_the_same_bits() {
        // Strided (input gradient by phases) and pointwise (products per image).
        for (kernel, stride) in [(4, 2), (1, 1)] {
            let g = geometry(
                (8, 24, 14, 14),
                [kernel; 2],
                [stride; 2],
                [kernel / 4; 2],
                [1, 1],
            );
            assert_same_bits_on_one_and_two_threads(&g.unwrap(), 40, kernels());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_geometries_equal_the_reference(
            batch in 1usize..4, channels in 12usize..41, out_channels in 12usize..41,
            height in 1usize..11, width in 1usize..11, kh in 1usize..6, kw in 1usize..6,
            stride in (1usize..4, 1usize..4), padding in (0usize..4, 0usize..4),
            dilation in (1usize..3, 1usize..3), threads in 1usize..=2,
        ) {
            let image = (batch, channels, height, width);
            let stride = [stride.0, stride.1];
            let padding = [padding.0, padding.1];
            let dilation = [dilation.0, dilation.1];
            if let Some(g) = geometry(image, [kh, kw], stride, padding, dilation) {
                on_threads(threads, || check(&g, out_channels));
            }
        }
    }
}
