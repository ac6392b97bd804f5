//! Matrix products: 2-D and batched (batch dims broadcast), with backward rules.

use crate::backend::Operand;
use crate::op::Op;
use crate::{is_grad_enabled, Activation, Error, Result, Shape, Tensor, UnaryOp};

impl Tensor {
    /// `[.., m, k] x [.., k, n] -> [.., m, n]`. Batch dims broadcast (NumPy rules); transposed
    /// operands (`t()`) are read in place, not copied.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let (lhs, rhs, out_shape) = matmul_operands("matmul", self, rhs)?;
        let storage = lhs
            .storage()
            .matmul(lhs.layout(), Operand::new(&rhs.storage(), rhs.layout()))?;
        let record = Tensor::record(&[&lhs, &rhs], || Op::Matmul(lhs.clone(), rhs.clone()));
        Ok(Tensor::from_storage(storage, out_shape, record))
    }
}

/// How f32 matrix products may run on CUDA, as PyTorch's `torch.set_float32_matmul_precision`:
/// `Fp32` (the default) in full f32 on kiln's SIMT GEMM; `Tf32` on tensor cores with inputs
/// rounded to TF32 (10-bit mantissas); `Bf16` on tensor cores with inputs rounded to bf16. The
/// accumulation is f32 in every case. The CPU always computes in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    #[default]
    Fp32,
    Tf32,
    Bf16,
}

impl std::str::FromStr for MatmulPrecision {
    type Err = Error;

    /// `fp32`, `tf32` or `bf16`.
    fn from_str(text: &str) -> Result<Self> {
        match text {
            "fp32" => Ok(MatmulPrecision::Fp32),
            "tf32" => Ok(MatmulPrecision::Tf32),
            "bf16" => Ok(MatmulPrecision::Bf16),
            other => Err(Error::invalid(
                "matmul precision",
                format!("unknown precision {other:?}: expected fp32, tf32 or bf16"),
            )),
        }
    }
}

static PRECISION: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Sets the precision of every later f32 matrix product on CUDA, process-wide.
pub fn set_matmul_precision(precision: MatmulPrecision) {
    PRECISION.store(precision as u8, std::sync::atomic::Ordering::Relaxed);
}

/// The precision f32 matrix products on CUDA run at (see [`MatmulPrecision`]).
pub fn matmul_precision() -> MatmulPrecision {
    match PRECISION.load(std::sync::atomic::Ordering::Relaxed) {
        1 => MatmulPrecision::Tf32,
        2 => MatmulPrecision::Bf16,
        _ => MatmulPrecision::Fp32,
    }
}

impl Activation {
    /// The unary op this activation applies (`None` for the identity).
    pub(crate) fn unary(self) -> Option<UnaryOp> {
        match self {
            Activation::Identity => None,
            Activation::Relu => Some(UnaryOp::Relu),
            Activation::LeakyRelu(slope) => Some(UnaryOp::LeakyRelu(slope)),
            Activation::Tanh => Some(UnaryOp::Tanh),
            Activation::Sigmoid => Some(UnaryOp::Sigmoid),
        }
    }

    /// An error unless a fused op can apply this activation: a leaky ReLU's slope must be at
    /// least 0, for its backward takes the mask from the output.
    pub(crate) fn check(self, op: &'static str) -> Result<()> {
        match self {
            Activation::LeakyRelu(slope) if slope.is_nan() || slope < 0.0 => Err(Error::invalid(
                op,
                format!("the leaky ReLU slope must be >= 0, got {slope}"),
            )),
            _ => Ok(()),
        }
    }
}

impl Tensor {
    /// `activation(self)` as the activation's own op (`relu`, `leaky_relu`, `tanh`,
    /// `sigmoid`; the identity returns `self`): what the fused ops are the composition of.
    pub fn activate(&self, activation: Activation) -> Result<Tensor> {
        match activation.unary() {
            Some(unary) => self.unary(unary),
            None => Ok(self.clone()),
        }
    }

    /// `activation(self @ rhs + bias)`, with `bias` a `[n]` added to every row: a Linear layer's
    /// forward (and its activation) in one kernel launch on CUDA, where the bias and the
    /// activation are applied as the product is stored. Same values and gradients as the
    /// composition `self.matmul(rhs)?.add(bias)?` then the activation's unary op (on the CPU it
    /// is that composition, in one pass over the output after the product).
    pub fn matmul_bias_act(
        &self,
        rhs: &Tensor,
        bias: Option<&Tensor>,
        activation: Activation,
    ) -> Result<Tensor> {
        const OP: &str = "matmul_bias_act";
        self.same_device(OP, rhs)?;
        if let Some(bias) = bias {
            self.same_dtype(OP, bias)?;
            self.same_device(OP, bias)?;
            let n = rhs.dims().last().copied().unwrap_or(0);
            if bias.dims() != [n] {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    expected: Shape::from([n]),
                    got: bias.shape().clone(),
                });
            }
        }
        activation.check(OP)?;
        let (lhs, rhs, out_shape) = matmul_operands(OP, self, rhs)?;
        let storage = {
            let bias_storage = bias.map(|b| b.storage());
            lhs.storage().matmul_bias_act(
                lhs.layout(),
                Operand::new(&rhs.storage(), rhs.layout()),
                bias_storage
                    .as_ref()
                    .zip(bias)
                    .map(|(s, b)| Operand::new(&**s, b.layout())),
                activation,
            )?
        };
        let inputs: Vec<&Tensor> = [&lhs, &rhs].into_iter().chain(bias).collect();
        let record = Tensor::record(&inputs, || Op::MatmulBiasAct {
            lhs: lhs.clone(),
            rhs: rhs.clone(),
            bias: bias.cloned(),
            activation,
        });
        Ok(Tensor::from_storage(storage, out_shape, record))
    }
}

/// The operands of `lhs @ rhs` checked (float, one dtype, `[.., m, k] x [.., k, n]`) and
/// broadcast to a common batch shape, with the product's shape.
fn matmul_operands(
    op: &'static str,
    lhs: &Tensor,
    rhs: &Tensor,
) -> Result<(Tensor, Tensor, Shape)> {
    lhs.same_dtype(op, rhs)?;
    lhs.float_only(op)?;
    let (lhs_rank, rhs_rank) = (lhs.rank(), rhs.rank());
    if lhs_rank < 2 || rhs_rank < 2 || lhs.dims()[lhs_rank - 1] != rhs.dims()[rhs_rank - 2] {
        return Err(Error::invalid(
            op,
            format!(
                "cannot multiply {} by {}: expected [.., m, k] x [.., k, n]",
                lhs.shape(),
                rhs.shape()
            ),
        ));
    }
    // Name the full operand shapes, not just their batch dims.
    let batch = Shape::from(&lhs.dims()[..lhs_rank - 2])
        .broadcast_with(op, &Shape::from(&rhs.dims()[..rhs_rank - 2]))
        .map_err(|_| Error::Broadcast {
            op,
            lhs: lhs.shape().clone(),
            rhs: rhs.shape().clone(),
        })?;
    let with_matrix = |rows: usize, cols: usize| {
        let mut dims = batch.dims().to_vec();
        dims.extend([rows, cols]);
        Shape::from(dims)
    };
    let (m, k, n) = (
        lhs.dims()[lhs_rank - 2],
        lhs.dims()[lhs_rank - 1],
        rhs.dims()[rhs_rank - 1],
    );
    Ok((
        lhs.broadcast_as(with_matrix(m, k))?,
        rhs.broadcast_as(with_matrix(k, n))?,
        with_matrix(m, n),
    ))
}

/// Gradients of `activation(lhs @ rhs + bias)` (`node` is that output) for the inputs that
/// `wants` them: the activation's derivative ([`activation_pre_grad`]), then the product's
/// and the bias's.
pub(crate) fn matmul_bias_act_backward(
    (lhs, rhs, bias): (&Tensor, &Tensor, Option<&Tensor>),
    activation: Activation,
    node: &Tensor,
    grad: &Tensor,
    wants: &dyn Fn(&Tensor) -> bool,
) -> Result<Vec<(Tensor, Tensor)>> {
    let pre_grad = activation_pre_grad(activation, node, grad, &|| {
        let product = lhs.matmul(rhs)?;
        match bias {
            Some(bias) => product.add(bias),
            None => Ok(product),
        }
    })?;
    let mut grads = matmul_backward(lhs, rhs, &pre_grad, wants)?;
    if let Some(bias) = bias.filter(|bias| wants(bias)) {
        grads.push((bias.clone(), pre_grad.sum_to(bias.shape())?));
    }
    Ok(grads)
}

/// The gradient of the input of `activation`, given its output `node` and that output's
/// `grad`. ReLU and leaky ReLU (slope >= 0) take their mask from the output (`out > 0`
/// exactly when the pre-activation is, and the mask's own derivative is zero), so nothing is
/// recomputed. Tanh and sigmoid use `1 - out²` and `out (1 - out)` from a detached output in
/// a plain backward; when the backward itself is being differentiated, the pre-activation is
/// recomputed with tracked ops (`pre`) so that second derivatives see the activation's
/// curvature.
pub(crate) fn activation_pre_grad(
    activation: Activation,
    node: &Tensor,
    grad: &Tensor,
    pre: &dyn Fn() -> Result<Tensor>,
) -> Result<Tensor> {
    let out = node.detach();
    match activation {
        Activation::Identity => Ok(grad.clone()),
        Activation::Relu | Activation::LeakyRelu(_) => {
            let unary = activation.unary().expect("not the identity");
            crate::ops::elementwise::unary_backward(&out, unary, &out, grad)
        }
        Activation::Tanh | Activation::Sigmoid => {
            let unary = activation.unary().expect("not the identity");
            if is_grad_enabled() {
                let pre = pre()?;
                let y = pre.unary(unary)?;
                crate::ops::elementwise::unary_backward(&pre, unary, &y, grad)
            } else {
                crate::ops::elementwise::unary_backward(&out, unary, &out, grad)
            }
        }
    }
}

/// Gradients of `lhs @ rhs` for the operands that `wants` them: `grad @ rhsᵀ` and `lhsᵀ @
/// grad`. Each is computed in its operand's memory order: for an operand that is the
/// transpose of a row-major matrix (a Linear layer's `Wᵀ`), the gradient is the transpose of
/// a row-major product, so the transpose's own rule hands `W` a row-major gradient. Otherwise
/// `W` would get a strided one, and every optimizer op on it would walk memory across rows
/// (MLP GAN training step at batch 64: 23.9 -> 15.9 ms).
pub(crate) fn matmul_backward(
    lhs: &Tensor,
    rhs: &Tensor,
    grad: &Tensor,
    wants: &dyn Fn(&Tensor) -> bool,
) -> Result<Vec<(Tensor, Tensor)>> {
    let mut grads = Vec::with_capacity(2);
    if wants(lhs) {
        let lhs_grad = if is_transposed_matrix(lhs)? {
            rhs.matmul(&grad.t()?)?.t()?
        } else {
            grad.matmul(&rhs.t()?)?
        };
        grads.push((lhs.clone(), lhs_grad));
    }
    if wants(rhs) {
        let rhs_grad = if is_transposed_matrix(rhs)? {
            grad.t()?.matmul(lhs)?.t()?
        } else {
            lhs.t()?.matmul(grad)?
        };
        grads.push((rhs.clone(), rhs_grad));
    }
    Ok(grads)
}

/// Whether `x` is a 2-D transposed view of a row-major matrix.
fn is_transposed_matrix(x: &Tensor) -> Result<bool> {
    Ok(x.rank() == 2 && !x.is_contiguous() && x.t()?.is_contiguous())
}
