//! Elementwise CPU kernels: one line per op on top of `map1`/`map2` (see `cpu/mod.rs`).
//! Half types compute in f32 (`FloatDType::Math`) and round on store.

use num_traits::Float;

use super::loops::simd_versions;
use super::vmath::VectorMath;
use super::{map1_work, map2, map2_work, Elementwise, Elementwise2, Work};
use crate::{Activation, BinaryOp, CmpOp, FloatDType, Layout, UnaryOp, WithDType};

/// Applies `f` to each element in `T`'s math type.
fn map_math<T: FloatDType>(
    data: &[T],
    layout: &Layout,
    work: Work,
    f: impl Fn(T::Math) -> T::Math + Sync,
) -> Vec<T> {
    map1_work(work, data, layout, |x: T| T::from_math(f(x.to_math())))
}

pub(crate) fn unary<T: FloatDType>(data: &[T], layout: &Layout, op: UnaryOp) -> Vec<T> {
    let c = T::math_from_f64;
    let work = match op {
        UnaryOp::Exp
        | UnaryOp::Log
        | UnaryOp::Sigmoid
        | UnaryOp::Tanh
        | UnaryOp::Softplus
        | UnaryOp::Silu
        | UnaryOp::SiluDerivative
        | UnaryOp::Powf(_) => Work::Heavy,
        _ => Work::Light,
    };
    let zero = c(0.0);
    match op {
        UnaryOp::Neg => map_math(data, layout, work, move |x| -x),
        UnaryOp::Exp => map1_work(work, data, layout, Transcendental::<EXP>),
        UnaryOp::Log => map1_work(work, data, layout, Transcendental::<LOG>),
        UnaryOp::Sqrt => map_math(data, layout, work, move |x| x.sqrt()),
        UnaryOp::Abs => map_math(data, layout, work, move |x| x.abs()),
        UnaryOp::Sign => map_math(data, layout, work, move |x| {
            if x == zero {
                zero
            } else {
                x.signum()
            }
        }),
        UnaryOp::Relu => map_math(data, layout, work, relu),
        UnaryOp::LeakyRelu(slope) => {
            let slope = c(slope);
            map_math(data, layout, work, move |x| leaky_relu(x, slope))
        }
        UnaryOp::LeakyReluDerivative(slope) => {
            let (above, below) = leaky_relu_derivatives::<T>(slope);
            map_math(
                data,
                layout,
                work,
                move |x| if x > zero { above } else { below },
            )
        }
        UnaryOp::Sigmoid => map1_work(work, data, layout, Transcendental::<SIGMOID>),
        UnaryOp::Tanh => map1_work(work, data, layout, Transcendental::<TANH>),
        UnaryOp::Softplus => map1_work(work, data, layout, Transcendental::<SOFTPLUS>),
        UnaryOp::Silu => map1_work(work, data, layout, Transcendental::<SILU>),
        UnaryOp::SiluDerivative => map1_work(work, data, layout, Transcendental::<SILU_DERIVATIVE>),
        UnaryOp::Powf(exponent) => map_math(data, layout, work, move |x| x.powf(c(exponent))),
        UnaryOp::Clamp(min, max) => {
            let (min, max) = (c(min), c(max));
            map_math(data, layout, work, move |x| {
                if x.is_nan() {
                    x
                } else {
                    x.max(min).min(max)
                }
            })
        }
        UnaryOp::Affine(mul, add) => map_math(data, layout, work, move |x| x * c(mul) + c(add)),
    }
}

/// max(x, 0), NaN passing through as in PyTorch (`Float::max` would drop it); `unary`'s and
/// the fused convolution's (`channel_bias_act`), so the two give the same bits.
#[inline(always)]
fn relu<M: Float>(x: M) -> M {
    if x < M::zero() {
        M::zero()
    } else {
        x
    }
}

/// x above zero, else `slope`·x; `unary`'s and the fused convolution's.
#[inline(always)]
fn leaky_relu<M: Float>(x: M, slope: M) -> M {
    if x > M::zero() {
        x
    } else {
        x * slope
    }
}

/// Leaky ReLU's derivative above zero and at or below it, as the mask-and-affine
/// composition `[x > 0]·(1 - slope) + slope` computes them.
fn leaky_relu_derivatives<T: FloatDType>(slope: f64) -> (T::Math, T::Math) {
    let c = T::math_from_f64;
    let (rise, slope) = (c(1.0 - slope), c(slope));
    (c(1.0) * rise + slope, c(0.0) * rise + slope)
}

/// `grad · leaky_relu'(x)` (ReLU's at slope 0) in one pass where the derivative and the
/// product had taken two and a buffer; each value rounds as `unary`'s derivative and
/// `binary`'s product round, so the result has the composition's bits.
pub(crate) fn leaky_relu_gradient<T: FloatDType>(
    grad: (&[T], &Layout),
    x: (&[T], &Layout),
    slope: f64,
) -> Vec<T> {
    let factors = LeakyReluFactors::<T>::new(slope);
    map2_work(Work::Light, grad, x, move |g: T, x: T| {
        factors.gradient(g, x)
    })
}

/// Leaky ReLU's derivative above zero and at or below it (ReLU's at slope 0), each rounded
/// to `T` as `unary`'s derivative rounds it: the factors of [`leaky_relu_gradient`], which
/// batch norm's fused backward (`cpu::norm`) applies too.
#[derive(Clone, Copy)]
pub(crate) struct LeakyReluFactors<T: FloatDType> {
    above: T::Math,
    below: T::Math,
}

impl<T: FloatDType> LeakyReluFactors<T> {
    pub(crate) fn new(slope: f64) -> Self {
        let round = |v: T::Math| T::from_math(v).to_math();
        let (above, below) = leaky_relu_derivatives::<T>(slope);
        LeakyReluFactors {
            above: round(above),
            below: round(below),
        }
    }

    /// `grad · leaky_relu'(x)`, rounded to `T` once.
    #[inline(always)]
    pub(crate) fn gradient(self, grad: T, x: T) -> T {
        let factor = if x.to_math() > T::math_from_f64(0.0) {
            self.above
        } else {
            self.below
        };
        T::from_math(grad.to_math() * factor)
    }
}

/// `values[i] = activation(values[i])`, each as `unary` computes it.
pub(crate) fn activate<T: FloatDType>(values: &mut [T], activation: Activation) {
    activate_in_place(values, activation, |x| x);
}

/// `grad · silu'(x)` in one pass, rounding as [`leaky_relu_gradient`] does.
pub(crate) fn silu_gradient<T: FloatDType>(grad: (&[T], &Layout), x: (&[T], &Layout)) -> Vec<T> {
    map2_work(Work::Heavy, grad, x, SiluGradient)
}

/// `grad · silu'(x)` with the derivative rounded to `T`, as [`Transcendental`] is a type:
/// inlined into the loops' SIMD copies.
struct SiluGradient;

impl<T: FloatDType> Elementwise2<T, T, T> for SiluGradient {
    #[inline(always)]
    fn apply(&self, grad: T, x: T) -> T {
        let derivative: T = Transcendental::<SILU_DERIVATIVE>.apply(x);
        T::from_math(grad.to_math() * derivative.to_math())
    }
}

/// A transcendental op as a type, so that its code (vmath.rs) is inlined into the loops'
/// SIMD copies whatever its size (see `Elementwise`).
struct Transcendental<const OP: u8>;

const EXP: u8 = 0;
const LOG: u8 = 1;
const SIGMOID: u8 = 2;
const TANH: u8 = 3;
const SOFTPLUS: u8 = 4;
const SILU: u8 = 5;
const SILU_DERIVATIVE: u8 = 6;

impl<T: FloatDType, const OP: u8> Elementwise<T, T> for Transcendental<OP> {
    #[inline(always)]
    fn apply(&self, x: T) -> T {
        let x = x.to_math();
        T::from_math(match OP {
            EXP => x.vexp(),
            LOG => x.vln(),
            SIGMOID => x.vsigmoid(),
            TANH => x.vtanh(),
            SOFTPLUS => x.vsoftplus(),
            // Each operation rounded to the math type, as kernels/elementwise.cu does.
            SILU => x * x.vsigmoid(),
            _ => {
                let s = x.vsigmoid();
                let one = T::math_from_f64(1.0);
                s * (one + x * (one - s))
            }
        })
    }
}

/// Each `[channels, plane]` image of `out` through `activation(x + bias[c])` in place (no bias:
/// the activation alone; the identity without a bias: nothing), images split over the threads
/// when there are enough values. For f32 and f64, whose math type is their own, each value
/// rounds as `binary`'s add and then `unary`'s activation round it, so the result has the
/// composition's bits (a half type would round once where the composition rounds twice).
pub(crate) fn channel_bias_act<T: FloatDType>(
    out: &mut [T],
    (channels, plane): (usize, usize),
    bias: Option<&[T]>,
    activation: Activation,
) {
    let image_len = channels * plane;
    if image_len == 0 || (bias.is_none() && matches!(activation, Activation::Identity)) {
        return;
    }
    debug_assert!(bias.is_none_or(|bias| bias.len() == channels));
    let image = |image: &mut [T]| {
        for (c, values) in image.chunks_exact_mut(plane).enumerate() {
            match bias {
                Some(bias) => {
                    let b = bias[c].to_math();
                    activate_in_place(values, activation, move |x| x + b);
                }
                None => activate_in_place(values, activation, |x| x),
            }
        }
    };
    let work = match activation {
        Activation::Tanh | Activation::Sigmoid => Work::Heavy,
        _ => Work::Light,
    };
    if out.len() >= work.parallel_min() && out.len() > image_len {
        use rayon::prelude::*;
        out.par_chunks_mut(image_len).for_each(image);
    } else {
        out.chunks_mut(image_len).for_each(image);
    }
}

/// `values[i] = activation(pre(values[i]))`, each activation as `unary` computes it.
fn activate_in_place<T: FloatDType>(
    values: &mut [T],
    activation: Activation,
    pre: impl Fn(T::Math) -> T::Math + Copy + Sync,
) {
    match activation {
        Activation::Identity => in_math(values, pre),
        Activation::Relu => in_math(values, move |x: T::Math| relu(pre(x))),
        Activation::LeakyRelu(slope) => {
            let slope = T::math_from_f64(slope);
            in_math(values, move |x: T::Math| leaky_relu(pre(x), slope))
        }
        Activation::Tanh => in_math(values, move |x: T::Math| pre(x).vtanh()),
        Activation::Sigmoid => in_math(values, move |x: T::Math| pre(x).vsigmoid()),
    }
}

/// `values[i] = f(values[i])` in `T`'s math type.
fn in_math<T: FloatDType>(values: &mut [T], f: impl Fn(T::Math) -> T::Math + Sync) {
    in_place(values, &move |x: T| T::from_math(f(x.to_math())));
}

simd_versions! {
    /// `values[i] = f(values[i])` (see `loops::apply1`).
    fn in_place<T: Copy, F: Elementwise<T, T>>(values: &mut [T], f: &F) {
        for value in values.iter_mut() {
            *value = f.apply(*value);
        }
    }
}

pub(crate) fn binary<T: FloatDType>(
    lhs: &[T],
    lhs_layout: &Layout,
    rhs: &[T],
    rhs_layout: &Layout,
    op: BinaryOp,
) -> Vec<T> {
    // Each arm passes its own closure type, so each op gets its own inlined, vectorized loop.
    let (l, r) = ((lhs, lhs_layout), (rhs, rhs_layout));
    match op {
        BinaryOp::Add => map_math2(l, r, |a, b| a + b),
        BinaryOp::Sub => map_math2(l, r, |a, b| a - b),
        BinaryOp::Mul => map_math2(l, r, |a, b| a * b),
        BinaryOp::Div => map_math2(l, r, |a, b| a / b),
    }
}

/// Applies `f` to pairs of elements in `T`'s math type.
fn map_math2<T: FloatDType>(
    (lhs, lhs_layout): (&[T], &Layout),
    (rhs, rhs_layout): (&[T], &Layout),
    f: impl Fn(T::Math, T::Math) -> T::Math + Sync,
) -> Vec<T> {
    map2(lhs, lhs_layout, rhs, rhs_layout, |a: T, b: T| {
        T::from_math(f(a.to_math(), b.to_math()))
    })
}

pub(crate) fn compare<T: WithDType>(
    lhs: &[T],
    lhs_layout: &Layout,
    rhs: &[T],
    rhs_layout: &Layout,
    op: CmpOp,
) -> Vec<u8> {
    let (l, r) = ((lhs, lhs_layout), (rhs, rhs_layout));
    match op {
        CmpOp::Eq => mask(l, r, |a, b| a == b),
        CmpOp::Ne => mask(l, r, |a, b| a != b),
        CmpOp::Lt => mask(l, r, |a, b| a < b),
        CmpOp::Le => mask(l, r, |a, b| a <= b),
        CmpOp::Gt => mask(l, r, |a, b| a > b),
        CmpOp::Ge => mask(l, r, |a, b| a >= b),
    }
}

/// A `u8` mask, 1 where `f` holds for a pair of elements.
fn mask<T: WithDType>(
    (lhs, lhs_layout): (&[T], &Layout),
    (rhs, rhs_layout): (&[T], &Layout),
    f: impl Fn(T, T) -> bool + Sync,
) -> Vec<u8> {
    map2(lhs, lhs_layout, rhs, rhs_layout, |a, b| f(a, b) as u8)
}
