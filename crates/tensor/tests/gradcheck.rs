//! Gradient-check properties: for every differentiable op of kiln-tensor, autograd agrees with
//! central finite differences (kiln_tensor::gradcheck, in f64) over random shapes, random
//! values and random views of the input (plain, transposed, narrowed, broadcast), so the
//! strided kernels and the view ops' backward rules are checked under every op.
//! Values whose op has a kink (abs, relu, clamp, max) are kept away from it.
//!
//! With a GPU, every case also runs on CUDA in f32 and must give the CPU's f32 values and
//! gradients (`cuda_agrees`): the same properties check the CUDA kernels and autograd there.
//! Without one the CUDA half is skipped (said once), unless `KILN_REQUIRE_CUDA=1`.

use kiln_tensor::gradcheck::GradCheck;
use kiln_tensor::{
    Conv2dOptions, ConvTranspose2dOptions, DType, Device, Generator, Pool2dOptions, Result, Tensor,
    Var,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::subsequence;

const CASES: u32 = 64;

/// How the op's input is presented: the test builds a source tensor and `apply` turns it into
/// a tensor of the case's shape.
#[derive(Debug, Clone, Copy)]
enum View {
    /// The source itself (contiguous).
    Plain,
    /// The source has the dims reversed; `apply` permutes them back (every stride changes).
    Transposed,
    /// The source has 2 more rows in dim 0; `apply` narrows to the middle ones (an offset).
    Narrowed,
    /// The source has size 1 in dim 0; `apply` broadcasts it (stride 0).
    Broadcast,
}

impl View {
    fn source_shape(self, shape: &[usize]) -> Vec<usize> {
        let mut source = shape.to_vec();
        match self {
            View::Plain => {}
            View::Transposed => source.reverse(),
            View::Narrowed if !source.is_empty() => source[0] += 2,
            View::Broadcast if !source.is_empty() => source[0] = 1,
            View::Narrowed | View::Broadcast => {}
        }
        source
    }

    fn apply(self, source: &Tensor, shape: &[usize]) -> Result<Tensor> {
        match self {
            View::Transposed => source.permute(&(0..shape.len()).rev().collect::<Vec<_>>()),
            View::Narrowed if !shape.is_empty() => source.narrow(0, 1, shape[0]),
            View::Broadcast if !shape.is_empty() => source.broadcast_as(shape),
            _ => Ok(source.clone()),
        }
    }
}

/// A random input: a shape, how it is viewed, and the source's values.
#[derive(Debug, Clone)]
struct Input {
    shape: Vec<usize>,
    view: View,
    values: Vec<f64>,
}

impl Input {
    fn source(&self) -> Tensor {
        let shape = self.view.source_shape(&self.shape);
        Tensor::from_vec(self.values.clone(), shape, Device::Cpu).unwrap()
    }

    fn view(&self, source: &Tensor) -> Result<Tensor> {
        self.view.apply(source, &self.shape)
    }
}

fn view_kind() -> impl Strategy<Value = View> {
    prop_oneof![
        Just(View::Plain),
        Just(View::Transposed),
        Just(View::Narrowed),
        Just(View::Broadcast)
    ]
}

fn shape(min_rank: usize, max_rank: usize) -> impl Strategy<Value = Vec<usize>> {
    vec(1usize..=4, min_rank..=max_rank)
}

/// An input of `shape` whose values come from `values`.
fn input_of(
    shape: Vec<usize>,
    values: impl Strategy<Value = f64> + Clone,
) -> impl Strategy<Value = Input> {
    view_kind().prop_flat_map(move |view| {
        let n: usize = view.source_shape(&shape).iter().product();
        let shape = shape.clone();
        vec(values.clone(), n).prop_map(move |values| Input {
            shape: shape.clone(),
            view,
            values,
        })
    })
}

fn input(
    min_rank: usize,
    values: impl Strategy<Value = f64> + Clone + 'static,
) -> impl Strategy<Value = Input> {
    shape(min_rank, 4).prop_flat_map(move |s| input_of(s, values.clone()))
}

/// Values in [-2, 2].
fn any_value() -> impl Strategy<Value = f64> + Clone {
    -2.0..2.0f64
}

/// Values in [0.2, 3] (for log, sqrt, powf).
fn positive() -> impl Strategy<Value = f64> + Clone {
    0.2..3.0f64
}

/// Values in [-2, 2] at least `margin` away from each of `kinks`.
fn away_from(kinks: &'static [f64], margin: f64) -> impl Strategy<Value = f64> + Clone {
    (-2.0..2.0f64).prop_map(move |mut v| {
        for &kink in kinks {
            if (v - kink).abs() < margin {
                v = kink + if v < kink { -margin } else { margin };
            }
        }
        v
    })
}

/// Checks autograd against finite differences for `f` of the viewed inputs, and, with a GPU,
/// CUDA against the CPU.
fn check(
    inputs: &[&Input],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> std::result::Result<(), TestCaseError> {
    let sources: Vec<Tensor> = inputs.iter().map(|i| i.source()).collect();
    GradCheck::default()
        .check(
            |xs| {
                let viewed = inputs
                    .iter()
                    .zip(xs)
                    .map(|(i, x)| i.view(x))
                    .collect::<Result<Vec<_>>>()?;
                f(&viewed)
            },
            &sources,
        )
        .map_err(TestCaseError::fail)?;
    cuda_agrees(inputs, &f)
}

/// `cuda:0` when it can be used. Without it, says once that the CUDA half of these properties
/// is skipped; with `KILN_REQUIRE_CUDA=1`, fails instead.
fn gpu() -> Option<Device> {
    static SAID: std::sync::Once = std::sync::Once::new();
    match kiln_tensor::cuda::availability() {
        Ok(()) => Some(Device::Cuda(0)),
        Err(reason) => {
            assert!(
                std::env::var("KILN_REQUIRE_CUDA").as_deref() != Ok("1"),
                "KILN_REQUIRE_CUDA=1 but CUDA is unavailable: {reason}"
            );
            SAID.call_once(|| eprintln!("gradcheck: CUDA half skipped: {reason}"));
            None
        }
    }
}

/// The values of `f` at the viewed inputs in f32 on `device`, and the gradient of
/// `sum(f * w)` (fixed weights `w`) with respect to each input, `None` where there is none.
type ValuesAndGradients = (Vec<f32>, Vec<Option<Vec<f32>>>);

fn f32_run(
    inputs: &[&Input],
    f: &impl Fn(&[Tensor]) -> Result<Tensor>,
    device: Device,
) -> Result<ValuesAndGradients> {
    let vars = inputs
        .iter()
        .map(|i| Var::new(&i.source().to_dtype(DType::F32)?.to_device(device)?))
        .collect::<Result<Vec<_>>>()?;
    let viewed = inputs
        .iter()
        .zip(&vars)
        .map(|(i, v)| i.view(v))
        .collect::<Result<Vec<_>>>()?;
    let out = f(&viewed)?;
    let weights = Tensor::rand(out.shape(), DType::F32, Device::Cpu, &mut Generator::new(7))?
        .to_device(device)?;
    let grads = out.mul(&weights)?.sum_all()?.backward()?;
    let gradients = vars
        .iter()
        .map(|v| grads.get(v).map(|g| g.to_vec::<f32>()).transpose())
        .collect::<Result<Vec<_>>>()?;
    Ok((out.to_vec::<f32>()?, gradients))
}

/// CUDA gives the CPU's f32 values and gradients, to f32 rounding (the kernels may sum in
/// another order).
fn cuda_agrees(
    inputs: &[&Input],
    f: &impl Fn(&[Tensor]) -> Result<Tensor>,
) -> std::result::Result<(), TestCaseError> {
    let Some(gpu) = gpu() else { return Ok(()) };
    let fail = |device: Device| move |e| TestCaseError::fail(format!("on {device}: {e}"));
    let (cpu_values, cpu_grads) = f32_run(inputs, f, Device::Cpu).map_err(fail(Device::Cpu))?;
    let (gpu_values, gpu_grads) = f32_run(inputs, f, gpu).map_err(fail(gpu))?;
    let close = |what: String, a: &[f32], b: &[f32]| {
        prop_assert_eq!(a.len(), b.len(), "{}", what);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let ok = (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-4 + 1e-4 * x.abs();
            prop_assert!(ok, "{}: element {}: cpu {} vs cuda {}", what, i, x, y);
        }
        Ok(())
    };
    close("values".into(), &cpu_values, &gpu_values)?;
    for (k, (a, b)) in cpu_grads.iter().zip(&gpu_grads).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => close(format!("gradient of input {k}"), a, b)?,
            (None, None) => {}
            _ => prop_assert!(false, "input {}: a gradient on one device only", k),
        }
    }
    Ok(())
}

/// A shape that broadcasts to `shape`: some dims set to 1, some leading dims dropped.
fn broadcastable_to(shape: Vec<usize>) -> impl Strategy<Value = Vec<usize>> {
    let rank = shape.len();
    (vec(any::<bool>(), rank), 0..=rank).prop_map(move |(ones, dropped)| {
        shape
            .iter()
            .zip(ones)
            .map(|(&d, one)| if one { 1 } else { d })
            .skip(dropped)
            .collect()
    })
}

/// Two inputs whose shapes broadcast together (each derived from one common shape).
fn broadcast_pair(
    rhs_values: impl Strategy<Value = f64> + Clone + 'static,
) -> impl Strategy<Value = (Input, Input)> {
    shape(0, 4).prop_flat_map(move |s| {
        let rhs_values = rhs_values.clone();
        (broadcastable_to(s.clone()), broadcastable_to(s)).prop_flat_map(move |(a, b)| {
            (input_of(a, any_value()), input_of(b, rhs_values.clone()))
        })
    })
}

/// An input of rank >= 1 and a dim of it.
fn input_and_dim(
    values: impl Strategy<Value = f64> + Clone + 'static,
) -> impl Strategy<Value = (Input, usize)> {
    input(1, values).prop_flat_map(|i| {
        let rank = i.shape.len();
        (Just(i), 0..rank)
    })
}

/// An input and a subset of its dims (possibly empty or all).
fn input_and_dims(
    values: impl Strategy<Value = f64> + Clone + 'static,
) -> impl Strategy<Value = (Input, Vec<usize>)> {
    input(0, values).prop_flat_map(|i| {
        let rank = i.shape.len();
        let dims = subsequence((0..rank).collect::<Vec<_>>(), 0..=rank);
        (Just(i), dims)
    })
}

fn u32_index(values: Vec<u32>, shape: Vec<usize>) -> Tensor {
    Tensor::from_vec(values, shape, Device::Cpu).unwrap()
}

// ---- elementwise unary ops ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn neg(x in input(0, any_value())) {
        check(&[&x], |t| t[0].neg())?;
    }

    #[test]
    fn exp(x in input(0, any_value())) {
        check(&[&x], |t| t[0].exp())?;
    }

    #[test]
    fn log(x in input(0, positive())) {
        check(&[&x], |t| t[0].log())?;
    }

    #[test]
    fn sqrt(x in input(0, positive())) {
        check(&[&x], |t| t[0].sqrt())?;
    }

    #[test]
    fn powf(x in input(0, positive()), exponent in prop_oneof![Just(2.0), Just(3.0), Just(0.5), Just(-1.5), -2.5..2.5f64]) {
        check(&[&x], |t| t[0].powf(exponent))?;
    }

    #[test]
    fn abs(x in input(0, away_from(&[0.0], 0.05))) {
        check(&[&x], |t| t[0].abs())?;
    }

    #[test]
    fn relu(x in input(0, away_from(&[0.0], 0.05))) {
        check(&[&x], |t| t[0].relu())?;
    }

    #[test]
    fn leaky_relu(x in input(0, away_from(&[0.0], 0.05)), slope in 0.0..0.5f64) {
        check(&[&x], |t| t[0].leaky_relu(slope))?;
    }

    #[test]
    fn leaky_relu_derivative(x in input(0, away_from(&[0.0], 0.05)), slope in 0.0..0.5f64) {
        check(&[&x], |t| t[0].leaky_relu_derivative(slope))?;
    }

    #[test]
    fn sigmoid(x in input(0, any_value())) {
        check(&[&x], |t| t[0].sigmoid())?;
    }

    #[test]
    fn tanh(x in input(0, any_value())) {
        check(&[&x], |t| t[0].tanh())?;
    }

    #[test]
    fn softplus(x in input(0, any_value())) {
        check(&[&x], |t| t[0].softplus())?;
    }

    #[test]
    fn silu(x in input(0, any_value())) {
        check(&[&x], |t| t[0].silu())?;
    }

    #[test]
    fn silu_derivative(x in input(0, any_value())) {
        check(&[&x], |t| t[0].silu_derivative())?;
    }

    #[test]
    fn clamp(x in input(0, away_from(&[-0.5, 0.7], 0.05))) {
        check(&[&x], |t| t[0].clamp(-0.5, 0.7))?;
    }

    #[test]
    fn affine(x in input(0, any_value()), mul in -3.0..3.0f64, add in -3.0..3.0f64) {
        check(&[&x], |t| t[0].affine(mul, add))?;
    }
}

// ---- broadcasting binary ops ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn add((a, b) in broadcast_pair(any_value())) {
        check(&[&a, &b], |t| t[0].add(&t[1]))?;
    }

    #[test]
    fn sub((a, b) in broadcast_pair(any_value())) {
        check(&[&a, &b], |t| t[0].sub(&t[1]))?;
    }

    #[test]
    fn mul((a, b) in broadcast_pair(any_value())) {
        check(&[&a, &b], |t| t[0].mul(&t[1]))?;
    }

    #[test]
    fn div((a, b) in broadcast_pair(away_from(&[0.0], 0.3))) {
        check(&[&a, &b], |t| t[0].div(&t[1]))?;
    }

    #[test]
    fn where_cond(
        (a, b) in broadcast_pair(any_value()),
        mask_bits in vec(any::<bool>(), 64),
    ) {
        // The condition broadcasts too: one flag per element of the last dim of the result.
        let a_shape = a.shape.clone();
        let b_shape = b.shape.clone();
        check(&[&a, &b], move |t| {
            let shape = kiln_tensor::Shape::from(a_shape.clone())
                .broadcast_with("test", &b_shape.clone().into())?;
            let last = shape.dims().last().copied().unwrap_or(1);
            let mask: Vec<u8> = mask_bits[..last].iter().map(|&m| m as u8).collect();
            let condition = Tensor::from_vec(mask, [last], t[0].device())?;
            Tensor::where_cond(&condition, &t[0], &t[1])
        })?;
    }
}

// ---- reductions and softmax ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn sum((x, dims) in input_and_dims(any_value()), keepdim in any::<bool>()) {
        check(&[&x], |t| t[0].sum(&dims, keepdim))?;
    }

    #[test]
    fn mean((x, dims) in input_and_dims(any_value()), keepdim in any::<bool>()) {
        check(&[&x], |t| t[0].mean(&dims, keepdim))?;
    }

    #[test]
    fn max((x, dims) in input_and_dims(any_value()), keepdim in any::<bool>()) {
        // Broadcast views repeat values, so maxima tie; ties split the gradient, which finite
        // differences cannot see. Only views without repeats here (ties: semantics.rs).
        prop_assume!(!matches!(x.view, View::Broadcast) || x.shape.first().is_none_or(|&d| d == 1));
        check(&[&x], |t| t[0].max(&dims, keepdim))?;
    }

    #[test]
    fn softmax((x, dim) in input_and_dim(any_value())) {
        check(&[&x], |t| t[0].softmax(dim))?;
    }

    #[test]
    fn log_softmax((x, dim) in input_and_dim(any_value())) {
        check(&[&x], |t| t[0].log_softmax(dim))?;
    }
}

// ---- matrix products ----

/// `[.., m, k] x [.., k, n]` operands, either of which may be a transposed view.
fn matmul_operands(max_batch_rank: usize) -> impl Strategy<Value = (Input, Input, bool, bool)> {
    (
        vec(1usize..=3, 0..=max_batch_rank),
        1usize..=5,
        1usize..=5,
        1usize..=5,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_flat_map(|(batch, m, k, n, transpose_a, transpose_b)| {
            // Stored as [.., k, m] when transposed; the test takes .t() to get [.., m, k].
            let dims = |rows: usize, cols: usize, transposed: bool| {
                let mut d = batch.clone();
                d.extend(if transposed {
                    [cols, rows]
                } else {
                    [rows, cols]
                });
                d
            };
            let plain = |shape: Vec<usize>| {
                let n: usize = shape.iter().product();
                vec(any_value(), n).prop_map(move |values| Input {
                    shape: shape.clone(),
                    view: View::Plain,
                    values,
                })
            };
            (
                plain(dims(m, k, transpose_a)),
                plain(dims(k, n, transpose_b)),
                Just(transpose_a),
                Just(transpose_b),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn matmul_2d((a, b, ta, tb) in matmul_operands(0)) {
        check(&[&a, &b], |t| {
            let a = if ta { t[0].t()? } else { t[0].clone() };
            let b = if tb { t[1].t()? } else { t[1].clone() };
            a.matmul(&b)
        })?;
    }

    #[test]
    fn matmul_batched((a, b, ta, tb) in matmul_operands(2)) {
        check(&[&a, &b], |t| {
            let a = if ta { t[0].t()? } else { t[0].clone() };
            let b = if tb { t[1].t()? } else { t[1].clone() };
            a.matmul(&b)
        })?;
    }

    #[test]
    fn matmul_bias_act(
        (a, b, ta, tb) in matmul_operands(1),
        bias_values in vec(any_value(), 5),
        with_bias in any::<bool>(),
        activation in 0usize..5,
        slope in 0.0..0.5f64,
    ) {
        let activation = activation_of(activation, slope);
        let n = if tb { b.shape[b.shape.len() - 2] } else { b.shape[b.shape.len() - 1] };
        let bias = Input { shape: vec![n], view: View::Plain, values: bias_values[..n].to_vec() };
        let inputs: Vec<&Input> = if with_bias { vec![&a, &b, &bias] } else { vec![&a, &b] };
        check(&inputs, |t| {
            let a = if ta { t[0].t()? } else { t[0].clone() };
            let b = if tb { t[1].t()? } else { t[1].clone() };
            a.matmul_bias_act(&b, t.get(2), activation)
        })?;
    }

    #[test]
    fn matmul_broadcast_batch(batch in 1usize..=3, m in 1usize..=4, k in 1usize..=4, n in 1usize..=4,
                              a in vec(any_value(), 48), b in vec(any_value(), 16)) {
        // [batch, m, k] x [k, n]: the right operand is shared by every batch entry.
        let a = Input { shape: vec![batch, m, k], view: View::Plain, values: a[..batch * m * k].to_vec() };
        let b = Input { shape: vec![k, n], view: View::Plain, values: b[..k * n].to_vec() };
        check(&[&a, &b], |t| t[0].matmul(&t[1]))?;
    }
}

// ---- views ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn reshape(x in input(0, any_value())) {
        // Flatten, then split into [first dim, rest]: a copy for non-contiguous views.
        let n: usize = x.shape.iter().product();
        let first = x.shape.first().copied().unwrap_or(1);
        check(&[&x], |t| t[0].reshape([n])?.reshape([first, n / first])?.exp())?;
    }

    #[test]
    fn permute(x in input(0, any_value()), seed in any::<u64>()) {
        let rank = x.shape.len();
        let mut perm: Vec<usize> = (0..rank).collect();
        perm.sort_by_key(|&d| (seed.rotate_left(d as u32 * 7) ^ d as u64) % 97);
        check(&[&x], |t| t[0].permute(&perm)?.tanh())?;
    }

    #[test]
    fn transpose((x, dim) in input_and_dim(any_value())) {
        check(&[&x], |t| t[0].transpose(0, dim)?.sigmoid())?;
    }

    #[test]
    fn broadcast_as(x in input(0, any_value()), lead in 1usize..=3) {
        // Add a leading dim, and repeat any size-1 dims 2 times.
        let mut target = vec![lead];
        target.extend(x.shape.iter().map(|&d| if d == 1 { 2 } else { d }));
        check(&[&x], |t| t[0].broadcast_as(target.as_slice())?.exp())?;
    }

    #[test]
    fn narrow((x, dim) in input_and_dim(any_value()), start in 0usize..4, len in 1usize..4) {
        let size = x.shape[dim];
        let start = start % size;
        let len = len.min(size - start);
        check(&[&x], |t| t[0].narrow(dim, start, len)?.exp())?;
    }

    #[test]
    fn squeeze_unsqueeze((x, dim) in input_and_dim(any_value())) {
        check(&[&x], |t| t[0].unsqueeze(dim)?.exp()?.squeeze(dim))?;
    }

    #[test]
    fn contiguous(x in input(0, any_value())) {
        check(&[&x], |t| t[0].contiguous()?.mul(&t[0].copy()?))?;
    }
}

// ---- joining and indexing ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn cat((x, dim) in input_and_dim(any_value()), extra in 1usize..=3, y_values in vec(any_value(), 256)) {
        // A second part with `extra` entries along `dim`, contiguous.
        let mut y_shape = x.shape.clone();
        y_shape[dim] = extra;
        let n: usize = y_shape.iter().product();
        let y = Input { shape: y_shape, view: View::Plain, values: y_values[..n].to_vec() };
        check(&[&x, &y], |t| Tensor::cat(&[&t[0], &t[1], &t[0]], dim))?;
    }

    #[test]
    fn stack((x, dim) in input_and_dim(any_value()), y_values in vec(any_value(), 256)) {
        let n: usize = x.shape.iter().product();
        let y = Input { shape: x.shape.clone(), view: View::Plain, values: y_values[..n].to_vec() };
        check(&[&x, &y], |t| Tensor::stack(&[&t[0], &t[1]], dim))?;
    }

    #[test]
    fn index_select((x, dim) in input_and_dim(any_value()), picks in vec(0u32..1000, 1..6)) {
        // Repeated indices included: their gradients must add up.
        let size = x.shape[dim] as u32;
        let picks: Vec<u32> = picks.iter().map(|p| p % size).collect();
        let index = u32_index(picks.clone(), vec![picks.len()]);
        check(&[&x], |t| t[0].index_select(dim, &index.to_device(t[0].device())?))?;
    }

    #[test]
    fn index_add((x, dim) in input_and_dim(any_value()), picks in vec(0u32..1000, 1..5), source_values in vec(any_value(), 400)) {
        let size = x.shape[dim] as u32;
        let picks: Vec<u32> = picks.iter().map(|p| p % size).collect();
        let mut source_shape = x.shape.clone();
        source_shape[dim] = picks.len();
        let n: usize = source_shape.iter().product();
        let source = Input { shape: source_shape, view: View::Plain, values: source_values[..n].to_vec() };
        let index = u32_index(picks.clone(), vec![picks.len()]);
        check(&[&x, &source], |t| t[0].index_add(dim, &index.to_device(t[0].device())?, &t[1]))?;
    }

    #[test]
    fn gather((x, dim) in input_and_dim(any_value()), picks in vec(0u32..1000, 256), grow in 1usize..=3) {
        // The index may be longer than x along `dim` (repeats) and no larger elsewhere.
        let mut index_shape = x.shape.clone();
        index_shape[dim] = grow;
        let n: usize = index_shape.iter().product();
        let size = x.shape[dim] as u32;
        let index = u32_index(picks[..n].iter().map(|p| p % size).collect(), index_shape);
        check(&[&x], |t| t[0].gather(dim, &index.to_device(t[0].device())?))?;
    }

    #[test]
    fn scatter_add((x, dim) in input_and_dim(any_value()), picks in vec(0u32..1000, 256), grow in 1usize..=3, source_values in vec(any_value(), 256)) {
        let mut index_shape = x.shape.clone();
        index_shape[dim] = grow;
        let n: usize = index_shape.iter().product();
        let size = x.shape[dim] as u32;
        let index = u32_index(picks[..n].iter().map(|p| p % size).collect(), index_shape.clone());
        let source = Input { shape: index_shape, view: View::Plain, values: source_values[..n].to_vec() };
        check(&[&x, &source], |t| t[0].scatter_add(dim, &index.to_device(t[0].device())?, &t[1]))?;
    }
}

// ---- compositions: gradients meeting at shared inputs ----

// ---- convolution, pooling, upsampling ----

/// A sliding-window configuration: input `[n, c, h, w]`, kernel, stride, padding, dilation.
#[derive(Debug, Clone)]
struct Window {
    input: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
}

impl Window {
    /// The window as pooling's options, its padding cut to half the kernel (pooling's limit;
    /// cutting, where rejecting had thrown away most windows, keeps every one: the input plus
    /// the cut padding still covers the kernel).
    fn pool_options(&self) -> Pool2dOptions {
        Pool2dOptions {
            kernel: self.kernel,
            stride: self.stride,
            padding: [0, 1].map(|a| self.padding[a].min(self.kernel[a] / 2)),
        }
    }
}

fn pair(range: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = [usize; 2]> {
    (range.clone(), range).prop_map(|(a, b)| [a, b])
}

/// Windows of up to 3x3 taps over inputs of up to 2x3x6x6, with strides up to 3, padding up
/// to 2 and dilation up to 2, kept to those that fit (at least one output position).
fn window() -> impl Strategy<Value = Window> {
    (
        1usize..=2,
        1usize..=3,
        pair(1..=6),
        pair(1..=3),
        pair(1..=3),
        pair(0..=2),
        pair(1..=2),
    )
        .prop_map(|(n, c, [h, w], kernel, stride, padding, dilation)| Window {
            input: [n, c, h, w],
            kernel,
            stride,
            padding,
            dilation,
        })
        .prop_filter("the window must fit the padded input", |g| {
            (0..2).all(|a| g.input[2 + a] + 2 * g.padding[a] > g.dilation[a] * (g.kernel[a] - 1))
        })
}

/// The fused ops' activation numbered `index` (0 to 4), a leaky ReLU's with `slope`.
fn activation_of(index: usize, slope: f64) -> kiln_tensor::Activation {
    [
        kiln_tensor::Activation::Identity,
        kiln_tensor::Activation::Relu,
        kiln_tensor::Activation::LeakyRelu(slope),
        kiln_tensor::Activation::Tanh,
        kiln_tensor::Activation::Sigmoid,
    ][index]
}

/// A window and an input for it, viewed in any of the ways (`View`).
fn window_input(
    values: impl Strategy<Value = f64> + Clone + 'static,
) -> impl Strategy<Value = (Window, Input)> {
    window().prop_flat_map(move |g| (Just(g.clone()), input_of(g.input.to_vec(), values.clone())))
}

/// Distinct values, at least 0.05 apart (so no two in a pooling window are within a finite
/// difference step of each other and the maximum never changes hands), in random order.
fn distinct_values(n: usize) -> impl Strategy<Value = Vec<f64>> {
    vec(any::<u32>(), n).prop_map(|keys| {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by_key(|&i| keys[i]);
        let mut values = vec![0.0; keys.len()];
        for (rank, &i) in order.iter().enumerate() {
            values[i] = rank as f64 * 0.05 - 1.0;
        }
        values
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn conv2d((g, x) in window_input(any_value()), out_channels in 1usize..=3, weight_values in vec(any_value(), 81)) {
        let [kh, kw] = g.kernel;
        let weight_shape = vec![out_channels, g.input[1], kh, kw];
        let count = weight_shape.iter().product::<usize>();
        let w = Input { shape: weight_shape, view: View::Plain, values: weight_values[..count].to_vec() };
        let options = Conv2dOptions { stride: g.stride, padding: g.padding, dilation: g.dilation };
        check(&[&x, &w], |t| t[0].conv2d(&t[1], options))?;
    }

    #[test]
    fn conv_transpose2d(
        (g, x) in window_input(any_value()),
        out_channels in 1usize..=3,
        extra in pair(0..=2),
        weight_values in vec(any_value(), 81),
    ) {
        let [kh, kw] = g.kernel;
        let weight_shape = vec![g.input[1], out_channels, kh, kw];
        let count = weight_shape.iter().product::<usize>();
        let w = Input { shape: weight_shape, view: View::Transposed, values: weight_values[..count].to_vec() };
        // output_padding below max(stride, dilation), as PyTorch requires.
        let output_padding = [0, 1].map(|a| extra[a] % g.stride[a].max(g.dilation[a]));
        let options = ConvTranspose2dOptions { stride: g.stride, padding: g.padding, output_padding, dilation: g.dilation };
        // Inputs whose output would be empty are an error, not a case.
        let probe = Tensor::zeros(g.input.to_vec(), DType::F64, Device::Cpu).unwrap()
            .conv_transpose2d(&Tensor::zeros(w.shape.clone(), DType::F64, Device::Cpu).unwrap(), options);
        prop_assume!(probe.is_ok());
        check(&[&x, &w], |t| t[0].conv_transpose2d(&t[1], options))?;
    }

    #[test]
    fn conv_bias_act(
        (g, x) in window_input(any_value()),
        out_channels in 1usize..=3,
        weight_values in vec(any_value(), 81),
        bias_values in vec(any_value(), 3),
        with_bias in any::<bool>(),
        transposed in any::<bool>(),
        activation in 0usize..5,
        slope in 0.0..0.5f64,
    ) {
        let activation = activation_of(activation, slope);
        let [kh, kw] = g.kernel;
        let channels = g.input[1];
        // conv2d's weight is [out, in, ..]; conv_transpose2d's [in, out, ..].
        let weight_shape = if transposed {
            vec![channels, out_channels, kh, kw]
        } else {
            vec![out_channels, channels, kh, kw]
        };
        let count = weight_shape.iter().product::<usize>();
        let w = Input { shape: weight_shape, view: View::Plain, values: weight_values[..count].to_vec() };
        let bias = Input { shape: vec![out_channels], view: View::Plain, values: bias_values[..out_channels].to_vec() };
        let inputs: Vec<&Input> = if with_bias { vec![&x, &w, &bias] } else { vec![&x, &w] };
        let (stride, padding, dilation) = (g.stride, g.padding, g.dilation);
        if transposed {
            let options = ConvTranspose2dOptions { stride, padding, output_padding: [0, 0], dilation };
            let probe = Tensor::zeros(g.input.to_vec(), DType::F64, Device::Cpu).unwrap()
                .conv_transpose2d(&Tensor::zeros(w.shape.clone(), DType::F64, Device::Cpu).unwrap(), options);
            prop_assume!(probe.is_ok());
            check(&inputs, |t| t[0].conv_transpose2d_bias_act(&t[1], t.get(2), options, activation))?;
        } else {
            let options = Conv2dOptions { stride, padding, dilation };
            check(&inputs, |t| t[0].conv2d_bias_act(&t[1], t.get(2), options, activation))?;
        }
    }

    #[test]
    fn max_pool2d(g in window(), seed_values in distinct_values(256)) {
        let count = g.input.iter().product::<usize>();
        let x = Input { shape: g.input.to_vec(), view: View::Plain, values: seed_values[..count].to_vec() };
        check(&[&x], |t| t[0].max_pool2d(g.pool_options()))?;
    }

    #[test]
    fn avg_pool2d((g, x) in window_input(any_value())) {
        check(&[&x], |t| t[0].avg_pool2d(g.pool_options()))?;
    }

    #[test]
    fn upsample_nearest2d((g, x) in window_input(any_value()), out in pair(1..=9)) {
        let _ = g;
        check(&[&x], |t| t[0].upsample_nearest2d(out[0], out[1]))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn mlp_with_bce_loss(x in vec(any_value(), 12), w in vec(-1.0..1.0f64, 16), b in vec(any_value(), 4), labels in vec(any::<bool>(), 3)) {
        // A Linear layer, leaky ReLU, and binary cross-entropy with logits written as
        // softplus(z) - y * z: the GAN discriminator's loss, end to end.
        let x = Input { shape: vec![3, 4], view: View::Plain, values: x };
        let w = Input { shape: vec![4, 4], view: View::Transposed, values: w };
        let b = Input { shape: vec![4], view: View::Plain, values: b };
        let y: Vec<f64> = labels.iter().map(|&l| l as u8 as f64).collect();
        let y = Tensor::from_vec(y, [3, 1], Device::Cpu).unwrap();
        check(&[&x, &w, &b], |t| {
            let hidden = t[0].matmul(&t[1])?.add(&t[2])?.leaky_relu(0.2)?; // [3, 4]
            let logits = hidden.sum(&[1], true)?; // [3, 1]
            let y = y.to_device(t[0].device())?.to_dtype(t[0].dtype())?;
            logits.softplus()?.sub(&logits.mul(&y)?)?.mean_all()
        })?;
    }
}

#[test]
fn gradcheck_catches_a_wrong_gradient() {
    // The checker itself must be able to fail: detach hides x from autograd, so the analytic
    // gradient (zero) disagrees with the finite differences (cos-like, nonzero).
    let x = Tensor::from_vec(vec![0.3f64, -0.7, 1.1], [3], Device::Cpu).unwrap();
    let verdict =
        GradCheck::default().check(|t| t[0].detach().tanh()?.add(&t[0].mul_scalar(0.0)?), &[x]);
    assert!(verdict.is_err(), "a detached path must fail the check");
    let _ = DType::F64;
}

/// A batch-norm input `[N, C, *]` with N, C ≥ 2 (so every channel has two or more values).
fn batch_norm_input() -> impl Strategy<Value = Input> {
    vec(2usize..=4, 2..=4).prop_flat_map(|s| input_of(s, any_value()))
}

/// Gradient-checks `norm(x, weight, bias)` for a batch or group norm of `x [N, C, *]`, with a
/// `[C]` weight (`affine & 1`) and bias (`affine & 2`) from `params` (8 values). The norms
/// under test run with eps 0.1, which keeps channels whose values nearly agree well
/// conditioned for the finite differences; their formulas do not depend on it.
fn check_normalisation(
    x: &Input,
    params: &[f64],
    affine: usize,
    norm: impl Fn(&Tensor, Option<&Tensor>, Option<&Tensor>) -> Result<Tensor>,
) -> std::result::Result<(), TestCaseError> {
    let c = x.shape[1];
    let weight = Input {
        shape: vec![c],
        view: View::Plain,
        values: params[..c].to_vec(),
    };
    let bias = Input {
        shape: vec![c],
        view: View::Plain,
        values: params[4..4 + c].to_vec(),
    };
    let (with_weight, with_bias) = (affine & 1 == 1, affine & 2 == 2);
    let mut inputs = vec![x];
    if with_weight {
        inputs.push(&weight);
    }
    if with_bias {
        inputs.push(&bias);
    }
    check(&inputs, |t| {
        let weight = with_weight.then(|| &t[1]);
        let bias = with_bias.then(|| &t[inputs.len() - 1]);
        norm(&t[0], weight, bias)
    })
}

/// Logits and targets in [0, 1] of one shape (each with its own view).
fn logits_and_targets() -> impl Strategy<Value = (Input, Input)> {
    shape(0, 4).prop_flat_map(|s| (input_of(s.clone(), any_value()), input_of(s, 0.0..1.0f64)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn batch_norm_train(x in batch_norm_input(), params in vec(any_value(), 8), affine in 0usize..4) {
        check_normalisation(&x, &params, affine, |x, weight, bias| {
            Ok(x.batch_norm_train(weight, bias, 0.1)?.0)
        })?;
    }

    #[test]
    fn batch_norm_train_act(
        x in batch_norm_input(),
        params in vec(any_value(), 8),
        affine in 0usize..4,
        activation in 0usize..5,
        slope in 0.0..0.5f64,
    ) {
        let activation = activation_of(activation, slope);
        check_normalisation(&x, &params, affine, |x, weight, bias| {
            Ok(x.batch_norm_train_act(weight, bias, 0.1, activation)?.0)
        })?;
    }

    #[test]
    fn group_norm(
        x in batch_norm_input(),
        params in vec(any_value(), 8),
        affine in 0usize..4,
        pick in 0usize..4,
    ) {
        // Any group count that divides C (C is 2 to 4): one group, a group per channel, and
        // between.
        let c = x.shape[1];
        let divisors: Vec<usize> = (1..=c).filter(|g| c % g == 0).collect();
        let groups = divisors[pick % divisors.len()];
        check_normalisation(&x, &params, affine, |x, weight, bias| {
            x.group_norm(groups, weight, bias, 0.1)
        })?;
    }

    #[test]
    fn bce_with_logits((logits, targets) in logits_and_targets()) {
        check(&[&logits, &targets], |t| t[0].bce_with_logits(&t[1]))?;
    }
}
