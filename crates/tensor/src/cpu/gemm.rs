//! The CPU matrix product: a packed, cache-blocked GEMM after Goto & van de Geijn (BLIS's
//! loop nest) with register-tiled micro-kernels chosen at run time: AVX-512F (8x32 tile), AVX2
//! with FMA (6x16) and a portable one the compiler vectorizes for any target. Operands are read
//! through their strides while they are packed, so transposed views cost no copy.
//!
//! Loop nest, per task (a block of C rows x columns):
//!   for each KC-deep slice of k:           pack B[slice, task cols] into NR-wide panels
//!     (the A block of the task's rows)      pack A[task rows, slice] into MR-tall panels
//!     for each NR panel of B, MR panel of A: the micro-kernel updates one MR x NR tile of C
//! A packed A block (MC x KC) stays in L2, a B panel (KC x NR) in L1, the C tile in registers.
//! A deep `a · Wᵀ` with a row-major W larger than `a` (a Linear layer's forward product) reads
//! W's rows in place instead of packing it ([`weights_in_place`]).
//! Tasks are spread over rayon's threads; products below `PARALLEL_MIN_FLOPS` run on one.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

/// A read-only matrix operand: element (i, j) is at `data[offset + i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a, T> {
    pub data: &'a [T],
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<T: Copy> Operand<'_, T> {
    #[inline(always)]
    fn at(&self, row: usize, col: usize) -> T {
        self.data[self.offset + row * self.row_stride + col * self.col_stride]
    }
}

/// Depth of a k slice, per kernel: an A panel (MR x KC) and a B panel (KC x NR) of f32 fit in
/// L1 together with room to spare. The AVX2 and portable kernels' 256 (6*256*4 + 16*256*4 =
/// 22 KiB); AVX-512's 8 x 32 panels take [`KC_AVX512`], as at 256 they would fill 40 KiB of a
/// 48 KiB L1.
const KC: usize = 256;
/// The AVX-512 kernel's k slice (8*192*4 + 32*192*4 = 30 KiB): at 256 its 1-thread products
/// were 1-15% slower on an AVX-512 Xeon.
const KC_AVX512: usize = 192;
/// Rows of A packed at once: MC x KC f32 is at most 192 KiB, well inside a 1 MiB L2. A
/// multiple of every kernel's MR (6 and 8).
const MC: usize = 192;
/// Widest column block of one task: a KC x NC B block (1 MiB) lives in L2/L3.
const NC: usize = 1024;

/// The largest micro-kernel tile (8 x 32), the size of the scratch tile for edges.
const MAX_TILE: usize = 256;
/// The most rows of any micro-kernel's tile.
const MAX_ROWS: usize = 8;

/// How deep a product `a · Wᵀ` must be, in rows of `a`, for W to be read in place
/// ([`weights_in_place`]): that saves packing W (`n · k` values) but writes `cᵀ` out transposed
/// (`n · m`). Fastest of 40 products, 1 thread, against the packed product (AVX-512, 2-core
/// EPYC): m = 64 and n·k = 784·1024 1.12x, 1024·512 1.06x, 512·256 0.97x, 256·100 0.82x.
const IN_PLACE_MIN_DEPTH: usize = 8;

/// Products with no more multiply-adds than this run on the calling thread. Measured on the
/// 2-core AVX-512 machine with the threshold at 0, best of 3 (GFLOP/s, 1 thread vs 2):
/// 32x64x64 (2^17) 102 vs 77, 64x64x64 (2^18) 117 vs 120, 64x64x128 (2^19) 148 vs 184.
pub(crate) const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// A micro-kernel: `c[MR x NR] (+)= a_panel[KC x MR]ᵀ · b_panel[KC x NR]`.
/// `a` holds MR values per k step, `b` NR values per k step, `c` has row stride `ldc`.
type MicroKernel<T> =
    unsafe fn(depth: usize, a: *const T, b: *const T, c: *mut T, ldc: usize, accumulate: bool);

/// The micro-kernel reading A where it lies: `c[MR x NR] (+)= a · b_panel[KC x NR]`, A's row
/// `i` being the `depth` contiguous values at `rows[i]` (a row-major matrix's rows, unpacked).
type RowsKernel<T> = unsafe fn(
    depth: usize,
    rows: *const *const T,
    b: *const T,
    c: *mut T,
    ldc: usize,
    accumulate: bool,
);

#[derive(Clone, Copy)]
pub(crate) struct Kernel<T: 'static> {
    pub name: &'static str,
    mr: usize,
    nr: usize,
    /// Depth of a k slice ([`KC`]).
    kc: usize,
    run: MicroKernel<T>,
    /// The same tile with A's rows read in place ([`weights_in_place`]), where there is one.
    rows: Option<RowsKernel<T>>,
}

/// Which f32 micro-kernels this CPU can run, best first.
pub(crate) fn f32_kernels() -> Vec<Kernel<f32>> {
    let mut kernels = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            kernels.push(Kernel {
                name: "avx512f",
                mr: 8,
                nr: 32,
                kc: KC_AVX512,
                run: x86::kernel_8x32_avx512,
                rows: Some(x86::kernel_8x32_avx512_rows),
            });
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            kernels.push(Kernel {
                name: "avx2+fma",
                mr: 6,
                nr: 16,
                kc: KC,
                run: x86::kernel_6x16_avx2,
                rows: Some(x86::kernel_6x16_avx2_rows),
            });
        }
    }
    kernels.push(Kernel {
        name: "portable",
        mr: 4,
        nr: 16,
        kc: KC,
        run: portable_kernel::<f32, 4, 16>,
        rows: None,
    });
    kernels
}

/// The f32 kernel kiln uses: the best this CPU has, unless `KILN_CPU_KERNEL` names another
/// (`avx512f`, `avx2+fma` or `portable`; for benches and for testing every path).
pub(crate) fn f32_kernel() -> Kernel<f32> {
    static CHOSEN: OnceLock<Kernel<f32>> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let kernels = f32_kernels();
        let wanted = std::env::var("KILN_CPU_KERNEL").ok();
        wanted
            .and_then(|name| kernels.iter().find(|k| k.name == name).copied())
            .unwrap_or(kernels[0])
    })
}

/// The f64 kernel: portable (f64 products are for gradient checks, not speed).
pub(crate) fn f64_kernel() -> Kernel<f64> {
    Kernel {
        name: "portable",
        mr: 4,
        nr: 8,
        kc: KC,
        run: portable_kernel::<f64, 4, 8>,
        rows: None,
    }
}

/// Element types the GEMM runs on.
pub(crate) trait GemmElem:
    Copy + Default + Send + Sync + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> + 'static
{
}
impl GemmElem for f32 {}
impl GemmElem for f64 {}

/// A B operand of the GEMM, packed a block at a time: a strided matrix ([`Operand`]), or one
/// formed while it is packed (a convolution's columns, read from the image: `cpu/conv.rs`).
pub(crate) trait PanelSource<T>: Sync {
    /// Packs rows `p0..p0 + kc` and columns `j0..j0 + nc` into `nr`-wide panels: panel `q`
    /// holds, for each of the `kc` steps, the `nr` values of columns `j0 + q·nr..` (zeros past
    /// the last column). `scratch` is this thread's buffer for staging, kept between calls.
    fn pack(
        &self,
        rows: (usize, usize),
        cols: (usize, usize),
        nr: usize,
        out: &mut [T],
        scratch: &mut Scratch,
    );
}

impl<T: GemmElem> PanelSource<T> for Operand<'_, T> {
    fn pack(
        &self,
        rows: (usize, usize),
        cols: (usize, usize),
        nr: usize,
        out: &mut [T],
        _: &mut Scratch,
    ) {
        pack_b(*self, rows, cols, nr, out);
    }
}

/// `c[m x n]` (row-major, contiguous) = `a[m x k] · b[k x n]`, writing every element of `c`
/// (which need not be initialized: a fresh product skips zeroing its output first, a tenth of
/// a short-k product's time, profiled).
pub(crate) fn gemm<T: GemmElem>(
    kernel: Kernel<T>,
    (m, n, k): (usize, usize, usize),
    a: Operand<'_, T>,
    b: Operand<'_, T>,
    c: &mut [MaybeUninit<T>],
) {
    debug_assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(MaybeUninit::new(T::default()));
        return;
    }
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && m * n * k > PARALLEL_MIN_FLOPS;
    // A matrix-vector product fills a fraction of a register tile: dot products instead.
    if n == 1 || m == 1 {
        return matrix_vector((n, k), a, b, c, parallel);
    }
    // `a · Wᵀ` with W (row-major, rows contiguous) the larger and deep: W's rows are read in
    // place (`IN_PLACE_MIN_DEPTH`).
    let deep = k >= IN_PLACE_MIN_DEPTH * m;
    if let Some(rows) = kernel.rows.filter(|_| b.row_stride == 1 && m < n && deep) {
        // SAFETY: `c` holds m x n elements, each written once the first k slice is done;
        // `rows` is `kernel`'s tile with A read in place.
        unsafe {
            weights_in_place(
                (kernel, rows),
                (m, n, k),
                a,
                b,
                CPtr(c.as_mut_ptr().cast()),
                parallel,
            )
        };
        return;
    }
    // SAFETY: `c` holds m x n elements, and `blocks` writes each of them once the first k
    // slice is done (no tile is read before its first, non-accumulating, write).
    unsafe {
        blocks(
            kernel,
            (m, n, k),
            a,
            &b,
            CPtr(c.as_mut_ptr().cast()),
            parallel,
        )
    }
}

/// `c[m x n]` (row-major, contiguous) = `a · b` with B from any [`PanelSource`]; over rayon's
/// threads when `parallel`, else on the calling thread.
pub(crate) fn gemm_with<T: GemmElem>(
    kernel: Kernel<T>,
    (m, n, k): (usize, usize, usize),
    a: Operand<'_, T>,
    b: &impl PanelSource<T>,
    c: &mut [T],
    parallel: bool,
) {
    debug_assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    // SAFETY: `c` holds m x n initialized elements.
    unsafe { blocks(kernel, (m, n, k), a, b, CPtr(c.as_mut_ptr()), parallel) }
}

/// The blocked product both entries share: `c = a · b` for `k > 0`, C's tiles cut into tasks
/// over rayon's threads when `parallel`.
///
/// # Safety
/// `c` points to m x n writable elements, row-major and contiguous, borrowed by no one else.
unsafe fn blocks<T: GemmElem>(
    kernel: Kernel<T>,
    (m, n, k): (usize, usize, usize),
    a: Operand<'_, T>,
    b: &impl PanelSource<T>,
    c: CPtr<T>,
    parallel: bool,
) {
    if !parallel {
        return block(kernel, (0..m, 0..n), k, a, b, c, n);
    }
    let threads = rayon::current_num_threads();
    let (rows, cols) = split(kernel, (m, n, k), threads);
    let tasks: Vec<(usize, usize)> = (0..m)
        .step_by(rows)
        .flat_map(|i| (0..n).step_by(cols).map(move |j| (i, j)))
        .collect();
    tasks.into_par_iter().for_each(|(i, j)| {
        block(
            kernel,
            (i..(i + rows).min(m), j..(j + cols).min(n)),
            k,
            a,
            b,
            c,
            n,
        );
    });
}

/// `c = a · b` where `b` is `Wᵀ` for a row-major `W` (`n` rows of `k` contiguous values, a
/// Linear layer's weights in `x · Wᵀ`) with more rows than `a`: computed as `cᵀ = W · aᵀ`, W's
/// rows read where they lie as the micro-kernel's A ([`RowsKernel`]) and only `aᵀ` packed, `cᵀ`
/// summed in a buffer and written out transposed. Packing W, the larger operand, for every
/// product had cost 10% of an MLP GAN step. The sums are the packed product's bit for bit: the
/// same k slices, each summed in order in a register and added to the slices before it.
///
/// # Safety
/// `c` points to m x n writable elements, row-major and contiguous, borrowed by no one else;
/// `rows` is `kernel`'s tile.
unsafe fn weights_in_place<T: GemmElem>(
    (kernel, rows_kernel): (Kernel<T>, RowsKernel<T>),
    (m, n, k): (usize, usize, usize),
    a: Operand<'_, T>,
    w: Operand<'_, T>,
    c: CPtr<T>,
    parallel: bool,
) {
    let (mr, nr, kc) = (kernel.mr, kernel.nr, kernel.kc);
    let lanes = m.next_multiple_of(nr);
    // aᵀ, each k slice's `lanes / nr` panels one after another (slice `p0` at `p0 · lanes`).
    let a_transposed = Operand {
        row_stride: a.col_stride,
        col_stride: a.row_stride,
        ..a
    };
    let tiles = n.div_ceil(mr);
    let tiles_per_task = if parallel {
        tiles.div_ceil(rayon::current_num_threads())
    } else {
        tiles
    };
    // This thread's packing buffers, kept between calls, hold the packed aᵀ and cᵀ (a row of
    // `lanes` sums per row of W, and per row of the last tile past W's): every value is
    // written before it is read (the first k slice's tiles store without adding).
    PACK_BUFFERS.with(|buffers| {
        let mut buffers = buffers.borrow_mut();
        let (packed, sums, _) = &mut *buffers;
        let packed = typed_buffer::<T>(packed, lanes * k);
        for p0 in (0..k).step_by(kc) {
            let depth = (k - p0).min(kc);
            let panels = &mut packed[p0 * lanes..][..depth * lanes];
            pack_b(a_transposed, (p0, depth), (0, m), nr, panels);
        }
        let sums = typed_buffer::<T>(sums, tiles * mr * lanes);
        super::conv::for_each_chunk(
            sums,
            tiles_per_task * mr * lanes,
            parallel,
            |index, sums| {
                let first_tile = index * tiles_per_task;
                weights_in_place_task(
                    rows_kernel,
                    (mr, nr, kc),
                    (m, n, k),
                    (packed, lanes),
                    w,
                    first_tile,
                    sums,
                    c,
                );
            },
        );
    });
}

/// Asks for `values`' cache lines to be brought into the caches (a hint; nothing elsewhere).
#[inline(always)]
fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(values);
        let start = values.as_ptr().cast::<i8>();
        for offset in (0..bytes).step_by(64) {
            // SAFETY: a prefetch never faults, and `offset` stays inside `values`.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    start.add(offset),
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// One task of [`weights_in_place`]: the tiles of W's rows from `first_tile`, whose `sums`
/// (`cᵀ` rows) it holds, over every k slice, then those columns of c written out.
///
/// # Safety
/// As [`weights_in_place`]; no other task writes these columns of c.
#[allow(clippy::too_many_arguments)]
unsafe fn weights_in_place_task<T: GemmElem>(
    rows_kernel: RowsKernel<T>,
    (mr, nr, kc): (usize, usize, usize),
    (m, n, k): (usize, usize, usize),
    (packed, lanes): (&[T], usize),
    w: Operand<'_, T>,
    first_tile: usize,
    sums: &mut [T],
    c: CPtr<T>,
) {
    let mut rows = [std::ptr::null::<T>(); MAX_ROWS];
    for p0 in (0..k).step_by(kc) {
        let depth = (k - p0).min(kc);
        let panels = &packed[p0 * lanes..][..depth * lanes];
        for (t, tile_sums) in sums.chunks_exact_mut(mr * lanes).enumerate() {
            let first_row = (first_tile + t) * mr;
            // Rows past W's last repeat it; their sums are never written out.
            for (i, row) in rows[..mr].iter_mut().enumerate() {
                let at = w.offset + (first_row + i).min(n - 1) * w.col_stride + p0;
                *row = w.data[at..at + depth].as_ptr();
            }
            // The next tile's rows of this slice, fetched while this one runs: W comes from
            // memory (a training step's weights are not in cache), and six or eight streams
            // are more than the hardware prefetcher follows ahead of the kernel.
            for row in (first_row + mr)..(first_row + 2 * mr).min(n) {
                let at = w.offset + row * w.col_stride + p0;
                prefetch(&w.data[at..at + depth]);
            }
            for (q, panel) in panels.chunks_exact(depth * nr).enumerate() {
                // SAFETY: each row pointer has `depth` values (sliced above), the panel
                // `depth` steps of `nr`, and the tile's sums `mr` rows of `lanes` from
                // lane `q · nr`.
                unsafe {
                    rows_kernel(
                        depth,
                        rows.as_ptr(),
                        panel.as_ptr(),
                        tile_sums[q * nr..].as_mut_ptr(),
                        lanes,
                        p0 > 0,
                    );
                }
            }
        }
    }
    // c[j, row] = cᵀ[row, j] for this task's rows of W: columns of c no other task writes.
    let first_row = first_tile * mr;
    let live = (sums.len() / lanes).min(n.saturating_sub(first_row));
    // In blocks of 16 rows of W (in L1), each a run of 16 values of a row of c: going along
    // all of a row of cᵀ instead stores a value every `n` (a power of two, often: one L1 set).
    for (block, rows) in sums[..live * lanes].chunks(16 * lanes).enumerate() {
        let first = first_row + block * 16;
        for j in 0..m {
            for (i, row) in rows.chunks_exact(lanes).enumerate() {
                // SAFETY: `j < m` and `first + i < n`: inside c, in this task's columns.
                unsafe { *c.get().add(j * n + first + i) = row[j] };
            }
        }
    }
}

/// What packing one element costs, in multiply-adds of the micro-kernel: a packed element is a
/// strided load and a store, where the kernel retires 16-32 multiply-adds a cycle.
const PACK_COST: usize = 8;

/// The rows and columns of C each parallel task computes: one task per thread, the output cut
/// along rows or along columns, whichever finishes sooner. A task packs A for its rows and B
/// for its columns, so cutting columns packs A once per task and cutting rows packs B once
/// per task; and tasks hold whole micro-tiles, so a cut can leave threads unevenly loaded
/// (100 columns in 32-wide panels: 64 and 36). Each cut is scored by its largest task's
/// multiply-adds plus its packing.
fn split<T>(kernel: Kernel<T>, (m, n, k): (usize, usize, usize), threads: usize) -> (usize, usize) {
    let cols = n.div_ceil(kernel.nr).div_ceil(threads) * kernel.nr;
    let rows = m.div_ceil(kernel.mr).div_ceil(threads) * kernel.mr;
    let by_cols = cols.min(n) * m * k + PACK_COST * (m * k + k * cols.min(n));
    let by_rows = rows.min(m) * n * k + PACK_COST * (rows.min(m) * k + k * n);
    if by_cols <= by_rows {
        (m, cols)
    } else {
        (rows, n)
    }
}

/// `c = a · b` where `a` is one row (`m == 1`) or `b` one column (`n == 1`). Seen as
/// `out[i] = sum_p matrix[i, p] * vector[p]`, it is done as dot products when the matrix's
/// rows are contiguous and as row updates (`out += vector[p] * matrix[:, p]`) when its columns
/// are; both forms vectorize.
fn matrix_vector<T: GemmElem>(
    (n, k): (usize, usize),
    a: Operand<'_, T>,
    b: Operand<'_, T>,
    c: &mut [MaybeUninit<T>],
    parallel: bool,
) {
    // (offset, stride along outputs, stride along k) of the matrix; the vector, gathered.
    let (matrix, vector): ((usize, usize, usize), Vec<T>) = if n == 1 {
        let vector = (0..k).map(|p| b.at(p, 0)).collect();
        ((a.offset, a.row_stride, a.col_stride), vector)
    } else {
        let vector = (0..k).map(|p| a.at(0, p)).collect();
        ((b.offset, b.col_stride, b.row_stride), vector)
    };
    let (offset, output_stride, depth_stride) = matrix;
    let data = if n == 1 { a.data } else { b.data };
    let chunk = |(index, out): (usize, &mut [MaybeUninit<T>])| {
        let first = index * OUTPUTS_PER_TASK;
        if depth_stride == 1 {
            for (i, out) in out.iter_mut().enumerate() {
                let start = offset + (first + i) * output_stride;
                out.write(dot(&data[start..start + k], &vector));
            }
        } else if output_stride == 1 {
            out.fill(MaybeUninit::new(T::default()));
            // SAFETY: every element was just initialized.
            let out = unsafe { &mut *(out as *mut [MaybeUninit<T>] as *mut [T]) };
            for (p, &scale) in vector.iter().enumerate() {
                let start = offset + first + p * depth_stride;
                let len = out.len();
                for (out, &x) in out.iter_mut().zip(&data[start..start + len]) {
                    *out = *out + scale * x;
                }
            }
        } else {
            for (i, out) in out.iter_mut().enumerate() {
                let row = offset + (first + i) * output_stride;
                out.write((0..k).fold(T::default(), |s, p| {
                    s + data[row + p * depth_stride] * vector[p]
                }));
            }
        }
    };
    if parallel {
        c.par_chunks_mut(OUTPUTS_PER_TASK)
            .enumerate()
            .for_each(chunk);
    } else {
        c.chunks_mut(OUTPUTS_PER_TASK).enumerate().for_each(chunk);
    }
}

/// Outputs of a matrix-vector product per parallel task.
const OUTPUTS_PER_TASK: usize = 256;

/// `sum x[p] * y[p]` with 16 partial sums, so the compiler vectorizes it.
fn dot<T: GemmElem>(x: &[T], y: &[T]) -> T {
    let mut partial = [T::default(); 16];
    for (xs, ys) in x.chunks_exact(16).zip(y.chunks_exact(16)) {
        for lane in 0..16 {
            partial[lane] = partial[lane] + xs[lane] * ys[lane];
        }
    }
    let tail = x.len() - x.len() % 16;
    let sum = partial.iter().fold(T::default(), |s, &v| s + v);
    x[tail..]
        .iter()
        .zip(&y[tail..])
        .fold(sum, |s, (&x, &y)| s + x * y)
}

/// The output pointer shared by tasks that write disjoint blocks of C.
#[derive(Clone, Copy)]
struct CPtr<T>(*mut T);
// SAFETY: tasks write disjoint rectangles of C (see `gemm`), and `gemm` holds the only
// borrow of C for as long as they run.
unsafe impl<T> Send for CPtr<T> {}
unsafe impl<T> Sync for CPtr<T> {}

impl<T> CPtr<T> {
    /// The pointer. A method rather than `.0`, so closures capture the whole (`Send`) wrapper.
    fn get(self) -> *mut T {
        self.0
    }
}

thread_local! {
    /// Per-thread packing buffers (A, B and a B source's scratch), kept between calls so a
    /// training step does not allocate.
    static PACK_BUFFERS: RefCell<(Vec<Aligned>, Vec<Aligned>, Scratch)> =
        const { RefCell::new((Vec::new(), Vec::new(), Scratch(Vec::new()))) };
}

/// A thread's staging buffer for a [`PanelSource`], kept between calls.
pub(crate) struct Scratch(Vec<Aligned>);

impl Scratch {
    /// The buffer grown to hold `len` values of `T` (contents unspecified).
    pub(crate) fn get<T: GemmElem>(&mut self, len: usize) -> &mut [T] {
        typed_buffer(&mut self.0, len)
    }
}

/// 64-byte-aligned storage for packed panels, so vector loads never split a cache line.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Aligned([u64; 8]);

/// A buffer of `f32`s that starts on a 64-byte boundary, for data the SIMD kernels load a
/// vector at a time (the direct convolutions' packed weights and transposed gradients): a
/// `Vec<f32>` starts 16 bytes into its block, so every AVX-512 load of it would split a
/// cache line.
pub(crate) struct AlignedF32 {
    buffer: Vec<Aligned>,
    len: usize,
}

impl AlignedF32 {
    /// `len` zeros; written over rayon's threads when `parallel`.
    pub(crate) fn zeroed(len: usize, parallel: bool) -> AlignedF32 {
        let chunks = (len * std::mem::size_of::<f32>()).div_ceil(std::mem::size_of::<Aligned>());
        let mut buffer = Vec::with_capacity(chunks);
        if parallel {
            buffer.par_extend(rayon::iter::repeat_n(Aligned::default(), chunks));
        } else {
            buffer.resize(chunks, Aligned::default());
        }
        AlignedF32 { buffer, len }
    }
}

impl std::ops::Deref for AlignedF32 {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        // SAFETY: the buffer holds at least `len` f32s (zeros or what was written since), and
        // its alignment of 64 is more than f32 needs.
        unsafe { std::slice::from_raw_parts(self.buffer.as_ptr().cast::<f32>(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedF32 {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as for `deref`, through the unique borrow.
        unsafe { std::slice::from_raw_parts_mut(self.buffer.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

/// `buffer` grown to hold `len` values of `T`, as a `&mut [T]`.
fn typed_buffer<T: GemmElem>(buffer: &mut Vec<Aligned>, len: usize) -> &mut [T] {
    let bytes = len * std::mem::size_of::<T>();
    let chunks = bytes.div_ceil(std::mem::size_of::<Aligned>());
    if buffer.len() < chunks {
        buffer.resize(chunks, Aligned::default());
    }
    // SAFETY: the buffer holds at least `bytes` bytes, aligned to 64 (more than any T needs),
    // and T is f32 or f64, for which every bit pattern is valid.
    unsafe { std::slice::from_raw_parts_mut(buffer.as_mut_ptr().cast::<T>(), len) }
}

/// Computes the block `rows x cols` of C (full depth k).
fn block<T: GemmElem>(
    kernel: Kernel<T>,
    (rows, cols): (std::ops::Range<usize>, std::ops::Range<usize>),
    k: usize,
    a: Operand<'_, T>,
    b: &impl PanelSource<T>,
    c: CPtr<T>,
    ldc: usize,
) {
    PACK_BUFFERS.with(|buffers| {
        let mut buffers = buffers.borrow_mut();
        let (a_buffer, b_buffer, scratch) = &mut *buffers;
        for j0 in cols.clone().step_by(NC) {
            let nc = (cols.end - j0).min(NC);
            for p0 in (0..k).step_by(kernel.kc) {
                let kc = (k - p0).min(kernel.kc);
                let b_packed = typed_buffer::<T>(b_buffer, nc.next_multiple_of(kernel.nr) * kc);
                b.pack((p0, kc), (j0, nc), kernel.nr, b_packed, scratch);
                for i0 in rows.clone().step_by(MC) {
                    let mc = (rows.end - i0).min(MC);
                    let a_packed = typed_buffer::<T>(a_buffer, mc.next_multiple_of(kernel.mr) * kc);
                    pack_a(a, (i0, mc), (p0, kc), kernel.mr, a_packed);
                    macro_kernel(
                        kernel,
                        (mc, nc, kc),
                        a_packed,
                        b_packed,
                        c,
                        (i0, j0),
                        ldc,
                        p0 > 0,
                    );
                }
            }
        }
    });
}

/// Packs `a[rows, depth]` into MR-tall panels: panel `r` holds, for each k step, the MR values
/// of rows `r*MR..` (zeros past the last row).
fn pack_a<T: GemmElem>(
    a: Operand<'_, T>,
    (i0, mc): (usize, usize),
    (p0, kc): (usize, usize),
    mr: usize,
    out: &mut [T],
) {
    let rows = Operand {
        offset: a.offset + i0 * a.row_stride + p0 * a.col_stride,
        ..a
    };
    pack_panels(rows, (mc, kc), mr, (a.row_stride, a.col_stride), out);
}

/// Packs `b[depth, cols]` into NR-wide panels: panel `q` holds, for each k step, the NR values
/// of columns `q*NR..` (zeros past the last column).
pub(crate) fn pack_b<T: GemmElem>(
    b: Operand<'_, T>,
    (p0, kc): (usize, usize),
    (j0, nc): (usize, usize),
    nr: usize,
    out: &mut [T],
) {
    let cols = Operand {
        offset: b.offset + p0 * b.row_stride + j0 * b.col_stride,
        ..b
    };
    pack_panels(cols, (nc, kc), nr, (b.col_stride, b.row_stride), out);
}

/// The packing loop both operands share. `lanes` values (rows of A, columns of B) are laid
/// side by side for each of `depth` steps, `width` lanes per panel, zeros past the last lane.
/// Lane `l` at step `p` is at `offset + l * lane_stride + p * depth_stride`.
///
/// It reads along whichever direction is contiguous in memory: when lanes are far apart and
/// steps adjacent (a transposed B, a row-major A), going across lanes first would touch
/// `width` lines a power-of-two apart at every step, all in one L1 set, and thrash it.
fn pack_panels<T: GemmElem>(
    source: Operand<'_, T>,
    (lanes, depth): (usize, usize),
    width: usize,
    (lane_stride, depth_stride): (usize, usize),
    out: &mut [T],
) {
    let at = |lane: usize, step: usize| {
        source.data[source.offset + lane * lane_stride + step * depth_stride]
    };
    for (panel, chunk) in out.chunks_exact_mut(width * depth).enumerate() {
        let first = panel * width;
        let live = (lanes - first).min(width);
        if live < width {
            chunk.fill(T::default());
        }
        if lane_stride == 1 && live == width {
            let start = source.offset + first;
            let at = (start, depth_stride);
            // Each arm inlines the copy with its width a constant.
            match width {
                8 => copy_steps(source.data, at, 8, chunk),
                16 => copy_steps(source.data, at, 16, chunk),
                32 => copy_steps(source.data, at, 32, chunk),
                _ => copy_steps(source.data, at, width, chunk),
            }
        } else if depth_stride == 1
            && pack_transposed(source, first, live, depth, lane_stride, chunk)
        {
            // Done: 8 x 8 blocks transposed in registers.
        } else if depth_stride < lane_stride {
            for lane in 0..live {
                for step in 0..depth {
                    chunk[step * width + lane] = at(first + lane, step);
                }
            }
        } else {
            for (step, values) in chunk.chunks_exact_mut(width).enumerate() {
                for (lane, value) in values[..live].iter_mut().enumerate() {
                    *value = at(first + lane, step);
                }
            }
        }
    }
}

/// The contiguous case of `pack_panels`: step `p`'s `width` values are `data[start + p *
/// depth_stride..][..width]`. Inlined where `width` is a constant, the copy is a few vector
/// moves; a `copy_from_slice` of a run-time length was a call to memmove per step (3.6% of a
/// short-k product, profiled).
#[inline(always)]
fn copy_steps<T: Copy>(
    data: &[T],
    (start, depth_stride): (usize, usize),
    width: usize,
    panel: &mut [T],
) {
    for (step, values) in panel.chunks_exact_mut(width).enumerate() {
        let start = start + step * depth_stride;
        values.copy_from_slice(&data[start..start + width]);
    }
}

/// The transposing case of `pack_panels` for f32 on AVX2: lanes `first..first + live` whose
/// `depth` steps are contiguous (a row-major A, or the transpose of a row-major B: a Linear
/// layer's `x · Wᵀ`) into `panel` (`width` values per step). Blocks of 8 lanes x 8 steps are
/// loaded as 8 rows, transposed in registers and stored as 8 steps; the edges go one value at a
/// time. Returns false, having written nothing, for other types or CPUs. The scalar loop it
/// replaces stored one value per cycle at a stride of `width` values: a quarter of a WGAN-GP
/// step, profiled.
fn pack_transposed<T: GemmElem>(
    source: Operand<'_, T>,
    first: usize,
    live: usize,
    depth: usize,
    lane_stride: usize,
    panel: &mut [T],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && super::simd::has_avx2() {
        let start = source.offset + first * lane_stride;
        let last = start + (live - 1) * lane_stride + depth;
        assert!(live > 0 && last <= source.data.len() && panel.len() >= live * depth);
        let width = panel.len() / depth;
        // SAFETY: T is f32 (checked above), so the casts only restate the type; the CPU has
        // AVX2; every lane's `depth` values lie inside `source.data` (the assertion), and the
        // panel holds `depth` steps of `width >= live` values.
        unsafe {
            x86::pack_transposed_avx2(
                source.data.as_ptr().cast::<f32>().add(start),
                lane_stride,
                (live, depth, width),
                panel.as_mut_ptr().cast::<f32>(),
            );
        }
        return true;
    }
    let _ = (source, first, live, depth, lane_stride, panel);
    false
}

/// Runs the micro-kernel over every MR x NR tile of one packed A block and B panel set.
#[allow(clippy::too_many_arguments)]
fn macro_kernel<T: GemmElem>(
    kernel: Kernel<T>,
    (mc, nc, kc): (usize, usize, usize),
    a_packed: &[T],
    b_packed: &[T],
    c: CPtr<T>,
    (i0, j0): (usize, usize),
    ldc: usize,
    accumulate: bool,
) {
    let (mr, nr) = (kernel.mr, kernel.nr);
    debug_assert!(mr * nr <= MAX_TILE);
    let mut edge = [T::default(); MAX_TILE];
    for (q, b_panel) in b_packed.chunks_exact(nr * kc).enumerate() {
        let cols = (nc - q * nr).min(nr);
        for (r, a_panel) in a_packed.chunks_exact(mr * kc).enumerate() {
            let rows = (mc - r * mr).min(mr);
            // SAFETY: the tile starts inside this task's block of C; a full tile stays inside
            // C (rows x cols = MR x NR within the block), and an edge tile goes through `edge`.
            unsafe {
                let tile = c.get().add((i0 + r * mr) * ldc + j0 + q * nr);
                if rows == mr && cols == nr {
                    (kernel.run)(
                        kc,
                        a_panel.as_ptr(),
                        b_panel.as_ptr(),
                        tile,
                        ldc,
                        accumulate,
                    );
                } else {
                    for i in 0..rows {
                        for j in 0..cols {
                            edge[i * nr + j] = if accumulate {
                                *tile.add(i * ldc + j)
                            } else {
                                T::default()
                            };
                        }
                    }
                    (kernel.run)(
                        kc,
                        a_panel.as_ptr(),
                        b_panel.as_ptr(),
                        edge.as_mut_ptr(),
                        nr,
                        true,
                    );
                    for i in 0..rows {
                        for j in 0..cols {
                            *tile.add(i * ldc + j) = edge[i * nr + j];
                        }
                    }
                }
            }
        }
    }
}

/// The portable micro-kernel: plain arrays the compiler keeps in vector registers.
///
/// # Safety
/// `a` holds `depth * MR` values, `b` `depth * NR`, and `c` an MR x NR tile with row stride `ldc`.
unsafe fn portable_kernel<T, const MR: usize, const NR: usize>(
    depth: usize,
    a: *const T,
    b: *const T,
    c: *mut T,
    ldc: usize,
    accumulate: bool,
) where
    T: Copy + Default + std::ops::Add<Output = T> + std::ops::Mul<Output = T>,
{
    let mut acc = [[T::default(); NR]; MR];
    for p in 0..depth {
        let a = std::slice::from_raw_parts(a.add(p * MR), MR);
        let b = std::slice::from_raw_parts(b.add(p * NR), NR);
        for (row, &x) in acc.iter_mut().zip(a) {
            for (acc, &y) in row.iter_mut().zip(b) {
                *acc = *acc + x * y;
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, &value) in row.iter().enumerate() {
            let out = c.add(i * ldc + j);
            *out = if accumulate { *out + value } else { value };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Writes `panel[step * width + lane] = source[lane * lane_stride + step]` for `live` lanes
    /// and `depth` steps: 8 x 8 blocks through a register transpose, the edges one by one.
    ///
    /// # Safety
    /// The CPU has AVX2; `source` holds `depth` values at each of the `live` lane starts, and
    /// `panel` `depth * width` values with `width >= live`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pack_transposed_avx2(
        source: *const f32,
        lane_stride: usize,
        (live, depth, width): (usize, usize, usize),
        panel: *mut f32,
    ) {
        let whole_lanes = live / 8 * 8;
        let whole_steps = depth / 8 * 8;
        for lane in (0..whole_lanes).step_by(8) {
            let rows = source.add(lane * lane_stride);
            for step in (0..whole_steps).step_by(8) {
                let row = |i: usize| _mm256_loadu_ps(rows.add(i * lane_stride + step));
                let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
                let (r4, r5, r6, r7) = (row(4), row(5), row(6), row(7));
                // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves:
                // column j of the 8 rows ends up in `columns[j]`.
                let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
                let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
                let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
                let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let columns = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (j, column) in columns.into_iter().enumerate() {
                    _mm256_storeu_ps(panel.add((step + j) * width + lane), column);
                }
            }
            for step in whole_steps..depth {
                for i in 0..8 {
                    *panel.add(step * width + lane + i) = *rows.add(i * lane_stride + step);
                }
            }
        }
        for lane in whole_lanes..live {
            let row = source.add(lane * lane_stride);
            for step in 0..depth {
                *panel.add(step * width + lane) = *row.add(step);
            }
        }
    }

    /// 6x16 f32 tile with AVX2+FMA: 12 ymm accumulators, 2 B vectors and 1 broadcast A value
    /// (15 of 16 registers), 12 FMAs per k step.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `a` holds `depth * 6` values, `b` `depth * 16`, and `c` a
    /// 6x16 tile with row stride `ldc`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_6x16_avx2(
        depth: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        tile_6x16_avx2(depth, |p, i| a.add(p * 6 + i), b, c, ldc, accumulate);
    }

    /// [`kernel_6x16_avx2`] with A's six rows read where they lie: row `i` is the `depth`
    /// values at `rows[i]`.
    ///
    /// # Safety
    /// As `kernel_6x16_avx2`, with `rows` six pointers to `depth` values each.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_6x16_avx2_rows(
        depth: usize,
        rows: *const *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let rows = *rows.cast::<[*const f32; 6]>();
        tile_6x16_avx2(depth, |p, i| rows[i].add(p), b, c, ldc, accumulate);
    }

    /// The 6x16 tile, A's value of row `i` at step `p` read at `a(p, i)`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile_6x16_avx2(
        depth: usize,
        a: impl Fn(usize, usize) -> *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; 6];
        for p in 0..depth {
            let b0 = _mm256_loadu_ps(b.add(p * 16));
            let b1 = _mm256_loadu_ps(b.add(p * 16 + 8));
            for (i, row) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a(p, i));
                row[0] = _mm256_fmadd_ps(x, b0, row[0]);
                row[1] = _mm256_fmadd_ps(x, b1, row[1]);
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (half, &value) in row.iter().enumerate() {
                let out = c.add(i * ldc + half * 8);
                let value = if accumulate {
                    _mm256_add_ps(_mm256_loadu_ps(out), value)
                } else {
                    value
                };
                _mm256_storeu_ps(out, value);
            }
        }
    }

    /// 8x32 f32 tile with AVX-512F: 16 zmm accumulators, 2 B vectors, 1 broadcast; 16 FMAs
    /// per k step. (A 12x32 tile, 24 accumulators, measured no faster on an AVX-512 Xeon and
    /// wastes more of the batch-64 products' edge tiles.) The C tile's lines are prefetched
    /// before the loop, so reading them overlaps the arithmetic.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `a` holds `depth * 8` values, `b` `depth * 32`, and `c` an 8x32
    /// tile with row stride `ldc`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel_8x32_avx512(
        depth: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        tile_8x32_avx512(depth, |p, i| a.add(p * 8 + i), b, c, ldc, accumulate);
    }

    /// [`kernel_8x32_avx512`] with A's eight rows read where they lie: row `i` is the `depth`
    /// values at `rows[i]`.
    ///
    /// # Safety
    /// As `kernel_8x32_avx512`, with `rows` eight pointers to `depth` values each.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel_8x32_avx512_rows(
        depth: usize,
        rows: *const *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let rows = *rows.cast::<[*const f32; 8]>();
        tile_8x32_avx512(depth, |p, i| rows[i].add(p), b, c, ldc, accumulate);
    }

    /// The 8x32 tile, A's value of row `i` at step `p` read at `a(p, i)`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile_8x32_avx512(
        depth: usize,
        a: impl Fn(usize, usize) -> *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        const MR: usize = 8;
        for i in 0..MR {
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc).cast());
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + 16).cast());
        }
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..depth {
            let b0 = _mm512_loadu_ps(b.add(p * 32));
            let b1 = _mm512_loadu_ps(b.add(p * 32 + 16));
            for (i, row) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a(p, i));
                row[0] = _mm512_fmadd_ps(x, b0, row[0]);
                row[1] = _mm512_fmadd_ps(x, b1, row[1]);
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (half, &value) in row.iter().enumerate() {
                let out = c.add(i * ldc + half * 16);
                let value = if accumulate {
                    _mm512_add_ps(_mm512_loadu_ps(out), value)
                } else {
                    value
                };
                _mm512_storeu_ps(out, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A matrix stored with a chosen layout inside a larger buffer: transposed or not, rows
    /// padded past their length, and an offset, so packing reads through real strides.
    struct Stored {
        data: Vec<f32>,
        offset: usize,
        row_stride: usize,
        col_stride: usize,
    }

    impl Stored {
        fn new(rows: usize, cols: usize, transposed: bool, pad: usize, seed: u32) -> Stored {
            let offset = pad * 3 + 1;
            let (outer, inner) = if transposed {
                (cols, rows)
            } else {
                (rows, cols)
            };
            let leading = inner + pad;
            let mut data = vec![f32::NAN; offset + outer * leading];
            // Values from a small integer formula: exact in f32, varied in sign and size.
            for o in 0..outer {
                for i in 0..inner {
                    let v = (o * 31 + i * 17 + seed as usize * 7) % 23;
                    data[offset + o * leading + i] = v as f32 / 4.0 - 2.75;
                }
            }
            let (row_stride, col_stride) = if transposed {
                (1, leading)
            } else {
                (leading, 1)
            };
            Stored {
                data,
                offset,
                row_stride,
                col_stride,
            }
        }

        fn operand(&self) -> Operand<'_, f32> {
            Operand {
                data: &self.data,
                offset: self.offset,
                row_stride: self.row_stride,
                col_stride: self.col_stride,
            }
        }
    }

    /// C = A·B by the definition, accumulated in f64, with the bound on f32 rounding error
    /// (k ulp-sized errors of |a|·|b| terms) for each element.
    fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: &Operand<f32>,
        b: &Operand<f32>,
    ) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut magnitude) = (0f64, 0f64);
                for p in 0..k {
                    let term = a.at(i, p) as f64 * b.at(p, j) as f64;
                    sum += term;
                    magnitude += term.abs();
                }
                out.push((sum, (k as f64 + 2.0) * f32::EPSILON as f64 * magnitude));
            }
        }
        out
    }

    /// `gemm` into an output that starts as NaN, so an element it fails to write shows.
    fn product<T: GemmElem + From<f32>>(
        kernel: Kernel<T>,
        dims: (usize, usize, usize),
        a: Operand<'_, T>,
        b: Operand<'_, T>,
    ) -> Vec<T> {
        let mut c = vec![MaybeUninit::new(T::from(f32::NAN)); dims.0 * dims.1];
        gemm(kernel, dims, a, b, &mut c);
        // SAFETY: every element was initialized (to NaN, then by `gemm`).
        c.into_iter().map(|v| unsafe { v.assume_init() }).collect()
    }

    fn check(
        kernel: Kernel<f32>,
        (m, n, k): (usize, usize, usize),
        ta: bool,
        tb: bool,
        pad: usize,
    ) {
        let a = Stored::new(m, k, ta, pad, 1);
        let b = Stored::new(k, n, tb, pad, 2);
        let c = product(kernel, (m, n, k), a.operand(), b.operand());
        let expected = reference(m, n, k, &a.operand(), &b.operand());
        for (index, (&got, &(want, tolerance))) in c.iter().zip(&expected).enumerate() {
            assert!(
                (got as f64 - want).abs() <= tolerance,
                "{}: {m}x{k} · {k}x{n} (transposed a {ta}, b {tb}, pad {pad}): C[{}, {}] = {got}, expected {want}",
                kernel.name,
                index / n,
                index % n
            );
        }
    }

    fn on_threads(threads: usize, f: impl FnOnce() + Send) {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f);
    }

    #[test]
    fn reading_the_weights_in_place_gives_the_packed_products_bits() {
        let mut checked = 0;
        for kernel in f32_kernels().into_iter().filter(|k| k.rows.is_some()) {
            let packed = Kernel {
                rows: None,
                ..kernel
            };
            // a · Wᵀ with W the larger: over k slices, tiles and panels, and their edges.
            for (m, n, k) in [(64, 784, 1024), (7, 13, 17), (8, 33, 600), (61, 1031, 29)] {
                let a = Stored::new(m, k, false, 1, 1);
                let w = Stored::new(k, n, true, 0, 2);
                for threads in [1, 2] {
                    on_threads(threads, || {
                        let rows = product(kernel, (m, n, k), a.operand(), w.operand());
                        let whole = product(packed, (m, n, k), a.operand(), w.operand());
                        let bits = |c: &[f32]| c.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert!(bits(&rows) == bits(&whole), "{}: {m}x{k}x{n}", kernel.name);
                    });
                    checked += 1;
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            assert!(checked >= 8);
        }
    }

    #[test]
    fn every_kernel_straddles_every_blocking_boundary() {
        // MR (6, 8, 4), NR (16, 32), KC (192, 256), MC (192), NC (1024), primes, and 1.
        let shapes = [
            (64, 100, 600),
            (1, 1, 1),
            (1, 1, 300),
            (7, 13, 17),
            (6, 16, 256),
            (8, 32, 257),
            (193, 33, 255),
            (5, 1025, 3),
            (64, 1, 256),
            (385, 97, 520),
            (61, 1031, 29),
            (3, 4, 0),
            (1, 5, 0),
        ];
        for kernel in f32_kernels() {
            for &shape in &shapes {
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    on_threads(1, || check(kernel, shape, ta, tb, 3));
                    on_threads(2, || check(kernel, shape, ta, tb, 0));
                }
            }
        }
    }

    #[test]
    fn the_f64_kernel_is_exact_on_small_integers() {
        let (m, n, k) = (9, 11, 13);
        let a: Vec<f64> = (0..m * k).map(|i| (i % 7) as f64 - 3.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i % 5) as f64 - 2.0).collect();
        let a_op = Operand {
            data: &a,
            offset: 0,
            row_stride: k,
            col_stride: 1,
        };
        let b_op = Operand {
            data: &b,
            offset: 0,
            row_stride: 1,
            col_stride: k,
        }; // bᵀ view
        let c = product(f64_kernel(), (m, n, k), a_op, b_op);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|p| a_op.at(i, p) * b_op.at(p, j)).sum();
                assert_eq!(c[i * n + j], want);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_shapes_strides_and_transposes(
            m in 1usize..70, n in 1usize..80, k in 1usize..300,
            ta in any::<bool>(), tb in any::<bool>(), pad in 0usize..3, threads in 1usize..=2,
        ) {
            for kernel in f32_kernels() {
                on_threads(threads, || check(kernel, (m, n, k), ta, tb, pad));
            }
        }
    }
}
