//! The fused Adam/AdamW step on the CPU: one pass over a parameter, its gradient and its two
//! moments, where the unfused update is eleven elementwise ops (eleven passes and allocations).
//! It is the CPU reference for the CUDA kernel to come, and it is bit for bit the composition
//! of kiln's own ops that kiln-nn used before (`crates/nn/tests/optim.rs` keeps that
//! composition and compares): each intermediate is rounded to the element type where an op
//! would have stored it, and scalars enter as those ops took them.

use std::mem::MaybeUninit;

use num_traits::Float;
use rayon::prelude::*;

use crate::{AdamStep, FloatDType};

/// Elements per rayon task: above this, a parameter's update is split over threads.
const CHUNK: usize = 1 << 16;

/// The step's scalars, each as the unfused op took it: `c(x)` for an op's f64 argument
/// (`mul_scalar`, `add_scalar`), rounded to T for a `scalar_like` tensor.
struct Constants<M> {
    decay: bool,
    decoupled: bool,
    /// AdamW: p·(1 - lr·λ).
    decay_param: M,
    /// Adam: g + λ·p.
    decay_grad: M,
    /// lerp(m, g, w) with w = 1 - β1 from whichever end is nearer.
    lerp_from_start: bool,
    lerp_weight: M,
    lerp_complement: M,
    beta2: M,
    one_minus_beta2: M,
    negative_step_size: M,
    bias_correction2_sqrt: M,
    eps: M,
}

impl<M: Float> Constants<M> {
    fn new<T: FloatDType<Math = M>>(step: &AdamStep) -> Constants<M> {
        let c = T::math_from_f64;
        let (beta1, beta2) = step.betas;
        let weight = 1.0 - beta1;
        let bias_correction1 = 1.0 - beta1.powf(step.step);
        let bias_correction2 = 1.0 - beta2.powf(step.step);
        Constants {
            decay: step.weight_decay != 0.0,
            decoupled: step.decoupled,
            decay_param: c(1.0 - step.lr * step.weight_decay),
            decay_grad: c(step.weight_decay),
            lerp_from_start: weight.abs() < 0.5,
            lerp_weight: c(weight),
            lerp_complement: c(1.0 - weight),
            beta2: c(beta2),
            one_minus_beta2: c(1.0 - beta2),
            negative_step_size: c(-(step.lr / bias_correction1)),
            bias_correction2_sqrt: T::from_f64(bias_correction2.sqrt()).to_math(),
            eps: c(step.eps),
        }
    }
}

/// The new parameter, exp_avg and exp_avg_sq of a run of elements, written (every element)
/// into uninitialized memory: zeroing them first cost as much as the update.
type Outputs<'a, T> = (
    &'a mut [MaybeUninit<T>],
    &'a mut [MaybeUninit<T>],
    &'a mut [MaybeUninit<T>],
);

/// One element's new `(parameter, exp_avg, exp_avg_sq)` from its parameter, gradient and two
/// moments. Straight-line, so the loops around it vectorize.
#[inline(always)]
fn updated<T: FloatDType>(
    param: T,
    grad: T,
    exp_avg: T,
    exp_avg_sq: T,
    k: &Constants<T::Math>,
) -> (T, T, T) {
    // Stores into T, as each unfused op's output did; `+ zero` is mul_scalar's affine form.
    let r = |x: T::Math| T::from_math(x).to_math();
    let (zero, one) = (T::math_from_f64(0.0), T::math_from_f64(1.0));
    let mut p = param.to_math();
    let mut g = grad.to_math();
    let (m, v) = (exp_avg.to_math(), exp_avg_sq.to_math());
    if k.decay {
        if k.decoupled {
            p = r(p * k.decay_param + zero);
        } else {
            g = r(g + r(p * k.decay_grad + zero));
        }
    }
    let difference = r(g - m);
    let m = if k.lerp_from_start {
        r(m + r(difference * k.lerp_weight + zero))
    } else {
        r(g - r(difference * k.lerp_complement + zero))
    };
    let v = r(r(v * k.beta2 + zero) + r(r(g * k.one_minus_beta2 + zero) * g));
    let denom = r(r(r(v.sqrt()) / k.bias_correction2_sqrt) * one + k.eps);
    let p = r(p + r(r(m * k.negative_step_size + zero) / denom));
    (T::from_math(p), T::from_math(m), T::from_math(v))
}

/// The update of one run of elements: outputs `(p, m, v)`, inputs `[param, grad, exp_avg,
/// exp_avg_sq]`, all one length.
#[inline(always)]
fn update<T: FloatDType>(
    (p_out, m_out, v_out): Outputs<'_, T>,
    [param, grad, exp_avg, exp_avg_sq]: [&[T]; 4],
    k: &Constants<T::Math>,
) {
    let n = p_out.len();
    let (m_out, v_out) = (&mut m_out[..n], &mut v_out[..n]);
    let (param, grad, exp_avg, exp_avg_sq) =
        (&param[..n], &grad[..n], &exp_avg[..n], &exp_avg_sq[..n]);
    for i in 0..n {
        let (p, m, v) = updated(param[i], grad[i], exp_avg[i], exp_avg_sq[i], k);
        p_out[i].write(p);
        m_out[i].write(m);
        v_out[i].write(v);
    }
}

/// [`update`] where the parameter and moments lie: `param`, `exp_avg` and `exp_avg_sq` take
/// their new values, all one length with `grad`.
#[inline(always)]
fn update_in_place<T: FloatDType>(
    (param, exp_avg, exp_avg_sq): (&mut [T], &mut [T], &mut [T]),
    grad: &[T],
    k: &Constants<T::Math>,
) {
    let n = param.len();
    let (grad, exp_avg, exp_avg_sq) = (&grad[..n], &mut exp_avg[..n], &mut exp_avg_sq[..n]);
    for i in 0..n {
        (param[i], exp_avg[i], exp_avg_sq[i]) =
            updated(param[i], grad[i], exp_avg[i], exp_avg_sq[i], k);
    }
}

super::loops::simd_versions! {
    /// [`update`], compiled for the CPU's widest vectors (AVX-512: 16 lanes of f32 per
    /// instruction, AVX2: 8). Rust never contracts a·b + c into an FMA, so the results are
    /// those of the plain build.
    fn update_simd<T: FloatDType>(
        outputs: Outputs<'_, T>,
        inputs: [&[T]; 4],
        k: &Constants<T::Math>,
    ) {
        update(outputs, inputs, k)
    }
}

super::loops::simd_versions! {
    /// [`update_in_place`], compiled as [`update_simd`] is.
    fn update_in_place_simd<T: FloatDType>(
        values: (&mut [T], &mut [T], &mut [T]),
        grad: &[T],
        k: &Constants<T::Math>,
    ) {
        update_in_place(values, grad, k)
    }
}

/// `(parameter, exp_avg, exp_avg_sq)` after one step, from contiguous `param`, `grad`,
/// `exp_avg` and `exp_avg_sq` of one length.
pub(crate) fn adam_step<T: FloatDType>(
    param: &[T],
    grad: &[T],
    exp_avg: &[T],
    exp_avg_sq: &[T],
    step: &AdamStep,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let n = param.len();
    debug_assert!(grad.len() == n && exp_avg.len() == n && exp_avg_sq.len() == n);
    let k = Constants::new::<T>(step);
    let mut outputs = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (p_out, m_out, v_out) = (
        &mut outputs.0.spare_capacity_mut()[..n],
        &mut outputs.1.spare_capacity_mut()[..n],
        &mut outputs.2.spare_capacity_mut()[..n],
    );
    let inputs = |start: usize, len: usize| {
        [param, grad, exp_avg, exp_avg_sq].map(|x| &x[start..start + len])
    };
    if n <= CHUNK {
        update_simd((p_out, m_out, v_out), inputs(0, n), &k);
    } else {
        p_out
            .par_chunks_mut(CHUNK)
            .zip(m_out.par_chunks_mut(CHUNK))
            .zip(v_out.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(chunk, ((p, m), v))| {
                let len = p.len();
                update_simd((p, m, v), inputs(chunk * CHUNK, len), &k);
            });
    }
    // SAFETY: `update` wrote every one of the n elements of each output (the chunks cover
    // 0..n, and it writes each index of its equal-length runs).
    unsafe {
        outputs.0.set_len(n);
        outputs.1.set_len(n);
        outputs.2.set_len(n);
    }
    outputs
}

/// [`adam_step`] in place: `param`, `exp_avg` and `exp_avg_sq` (contiguous, one length with
/// `grad`) take the step's values, bit for bit those `adam_step` returns. Each element is read
/// and written back where it lies, so a parameter larger than the caches streams through
/// memory once, where `adam_step`'s three fresh outputs are each read for ownership and
/// written as well (a third of the update's memory traffic; the update is memory bound).
pub(crate) fn adam_step_in_place<T: FloatDType>(
    (param, exp_avg, exp_avg_sq): (&mut [T], &mut [T], &mut [T]),
    grad: &[T],
    step: &AdamStep,
) {
    let n = param.len();
    debug_assert!(grad.len() == n && exp_avg.len() == n && exp_avg_sq.len() == n);
    let k = Constants::new::<T>(step);
    if n <= CHUNK {
        update_in_place_simd((param, exp_avg, exp_avg_sq), grad, &k);
        return;
    }
    param
        .par_chunks_mut(CHUNK)
        .zip(exp_avg.par_chunks_mut(CHUNK))
        .zip(exp_avg_sq.par_chunks_mut(CHUNK))
        .zip(grad.par_chunks(CHUNK))
        .for_each(|(((p, m), v), g)| update_in_place_simd((p, m, v), g, &k));
}
