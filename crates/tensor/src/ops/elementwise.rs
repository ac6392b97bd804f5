//! Elementwise ops: unary functions, broadcasting arithmetic, comparisons, `where_cond` and
//! dtype conversion, with their backward rules.

use crate::backend::Operand;
use crate::op::{BinaryOp, CmpOp, Op, UnaryOp};
use crate::{is_grad_enabled, DType, Result, Tensor};

impl Tensor {
    pub(crate) fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        self.float_only(unary_name(op))?;
        let storage = self.storage().unary(self.layout(), op)?;
        let record = Tensor::record(&[self], || Op::Unary(self.clone(), op));
        Ok(Tensor::from_storage(storage, self.shape().clone(), record))
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Abs)
    }
    /// -1, 0 or 1 per element; its gradient is zero.
    pub fn sign(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sign)
    }
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }
    /// x for x > 0, `negative_slope * x` otherwise.
    pub fn leaky_relu(&self, negative_slope: f64) -> Result<Tensor> {
        self.unary(UnaryOp::LeakyRelu(negative_slope))
    }
    /// 1 where x > 0, else `negative_slope` (NaN included), per element: the factor the
    /// backward of [`Tensor::leaky_relu`] (and of [`Tensor::relu`], slope 0) multiplies the
    /// gradient by, in one pass.
    pub fn leaky_relu_derivative(&self, negative_slope: f64) -> Result<Tensor> {
        self.unary(UnaryOp::LeakyReluDerivative(negative_slope))
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }
    /// log(1 + e^x), stable for large |x|.
    pub fn softplus(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Softplus)
    }
    /// x·sigmoid(x) (SiLU, PyTorch's `F.silu`) in one pass, its backward in two.
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu)
    }
    /// SiLU's derivative `s·(1 + x·(1 - s))`, `s` = sigmoid(x), per element: the factor
    /// [`Tensor::silu`]'s backward multiplies the gradient by.
    pub fn silu_derivative(&self) -> Result<Tensor> {
        self.unary(UnaryOp::SiluDerivative)
    }
    pub fn powf(&self, exponent: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Powf(exponent))
    }
    pub fn clamp(&self, min: f64, max: f64) -> Result<Tensor> {
        // Written so that NaN bounds, for which every comparison is false, are refused too.
        let ordered = min <= max;
        if !ordered {
            return Err(crate::Error::invalid(
                "clamp",
                format!("needs min <= max, got min {min} and max {max}"),
            ));
        }
        self.unary(UnaryOp::Clamp(min, max))
    }
    /// `x * mul + add`.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Affine(mul, add))
    }
    pub fn add_scalar(&self, value: f64) -> Result<Tensor> {
        self.affine(1.0, value)
    }
    pub fn mul_scalar(&self, value: f64) -> Result<Tensor> {
        self.affine(value, 0.0)
    }
    pub fn square(&self) -> Result<Tensor> {
        self.mul(self)
    }

    /// Both operands broadcast to their common shape (views, no copies).
    pub(crate) fn broadcast_pair(
        &self,
        op: &'static str,
        rhs: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let shape = self.shape().broadcast_with(op, rhs.shape())?;
        Ok((self.broadcast_as(&shape)?, rhs.broadcast_as(&shape)?))
    }

    fn binary(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        let name = binary_name(op);
        self.same_dtype(name, rhs)?;
        self.float_only(name)?;
        let (lhs, rhs) = self.broadcast_pair(name, rhs)?;
        let storage =
            lhs.storage()
                .binary(lhs.layout(), Operand::new(&rhs.storage(), rhs.layout()), op)?;
        let record = Tensor::record(&[&lhs, &rhs], || Op::Binary(lhs.clone(), rhs.clone(), op));
        Ok(Tensor::from_storage(storage, lhs.shape().clone(), record))
    }

    /// Elementwise sum, broadcasting both operands (NumPy rules).
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add)
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul)
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Div)
    }

    pub(crate) fn compare(&self, rhs: &Tensor, op: CmpOp) -> Result<Tensor> {
        self.same_dtype("compare", rhs)?;
        let (lhs, rhs) = self.broadcast_pair("compare", rhs)?;
        let storage =
            lhs.storage()
                .compare(lhs.layout(), Operand::new(&rhs.storage(), rhs.layout()), op)?;
        Ok(Tensor::from_storage(storage, lhs.shape().clone(), None))
    }

    /// A `u8` mask, 1 where equal (broadcasting; no gradient). Likewise `ne`, `lt`, ...
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, CmpOp::Eq)
    }
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, CmpOp::Ne)
    }
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, CmpOp::Lt)
    }
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, CmpOp::Le)
    }
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, CmpOp::Gt)
    }
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(rhs, CmpOp::Ge)
    }

    /// `on_true` where `condition` is nonzero, else `on_false`; all three broadcast together
    /// (like `torch.where`). Gradients flow to `on_true` and `on_false`.
    pub fn where_cond(condition: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        on_true.same_dtype("where_cond", on_false)?;
        condition.same_device("where_cond", on_true)?;
        let shape = condition
            .shape()
            .broadcast_with("where_cond", on_true.shape())?
            .broadcast_with("where_cond", on_false.shape())?;
        let condition = condition.broadcast_as(&shape)?.detach();
        let (on_true, on_false) = (
            on_true.broadcast_as(&shape)?,
            on_false.broadcast_as(&shape)?,
        );
        let storage = condition.storage().where_cond(
            condition.layout(),
            Operand::new(&on_true.storage(), on_true.layout()),
            Operand::new(&on_false.storage(), on_false.layout()),
        )?;
        let record = Tensor::record(&[&on_true, &on_false], || {
            Op::WhereCond(condition.clone(), on_true.clone(), on_false.clone())
        });
        Ok(Tensor::from_storage(storage, shape, record))
    }

    /// The same values as `dtype` (floats round to nearest; to integers, truncate and
    /// saturate). Gradients convert back.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let storage = self.storage().to_dtype(self.layout(), dtype)?;
        let record = if dtype.is_float() {
            Tensor::record(&[self], || Op::ToDType(self.clone()))
        } else {
            None
        };
        Ok(Tensor::from_storage(storage, self.shape().clone(), record))
    }

    /// A float mask (1.0 / 0.0 in this tensor's dtype) of where `self op value`, with no history.
    pub(crate) fn mask(&self, op: CmpOp, value: f64) -> Result<Tensor> {
        self.detach()
            .compare(&self.scalar_like(value)?, op)?
            .to_dtype(self.dtype())
    }
}

fn unary_name(op: UnaryOp) -> &'static str {
    match op {
        UnaryOp::Neg => "neg",
        UnaryOp::Exp => "exp",
        UnaryOp::Log => "log",
        UnaryOp::Sqrt => "sqrt",
        UnaryOp::Abs => "abs",
        UnaryOp::Sign => "sign",
        UnaryOp::Relu => "relu",
        UnaryOp::LeakyRelu(_) => "leaky_relu",
        UnaryOp::LeakyReluDerivative(_) => "leaky_relu_derivative",
        UnaryOp::Sigmoid => "sigmoid",
        UnaryOp::Tanh => "tanh",
        UnaryOp::Softplus => "softplus",
        UnaryOp::Silu => "silu",
        UnaryOp::SiluDerivative => "silu_derivative",
        UnaryOp::Powf(_) => "powf",
        UnaryOp::Clamp(_, _) => "clamp",
        UnaryOp::Affine(_, _) => "affine",
    }
}

fn binary_name(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
        BinaryOp::Div => "div",
    }
}

/// d(op(x))/dx times `grad`, where `y` is op(x) (the node itself).
pub(crate) fn unary_backward(x: &Tensor, op: UnaryOp, y: &Tensor, grad: &Tensor) -> Result<Tensor> {
    if op.derivative().is_some() && !is_grad_enabled() {
        // A plain backward: the activation's factor and the product in one kernel.
        let storage = grad.storage().unary_gradient(
            grad.layout(),
            Operand::new(&x.storage(), x.layout()),
            op,
        )?;
        return Ok(Tensor::from_storage(storage, grad.shape().clone(), None));
    }
    match op {
        UnaryOp::Neg => grad.neg(),
        UnaryOp::Exp => grad.mul(y),
        UnaryOp::Log => grad.div(x),
        UnaryOp::Sqrt => grad.div(&y.mul_scalar(2.0)?),
        UnaryOp::Abs => grad.mul(&x.detach().sign()?),
        UnaryOp::Sign => grad.zeros_like(),
        // [x > 0]·(1 - slope) + slope, in one pass on the detached input (a constant factor,
        // as the mask it replaces).
        UnaryOp::Relu => grad.mul(&x.detach().leaky_relu_derivative(0.0)?),
        UnaryOp::LeakyRelu(slope) => grad.mul(&x.detach().leaky_relu_derivative(slope)?),
        // Piecewise constant.
        UnaryOp::LeakyReluDerivative(_) => grad.zeros_like(),
        UnaryOp::Sigmoid => grad.mul(&y.mul(&y.affine(-1.0, 1.0)?)?),
        UnaryOp::Tanh => grad.mul(&y.square()?.affine(-1.0, 1.0)?),
        UnaryOp::Softplus => grad.mul(&x.sigmoid()?),
        UnaryOp::Silu => grad.mul(&x.silu_derivative()?),
        // d/dx s·(1 + x·(1 - s)) = s·(1 - s)·(2 + x·(1 - 2s)), composed so that it records
        // (a third derivative goes through sigmoid's rule).
        UnaryOp::SiluDerivative => {
            let s = x.sigmoid()?;
            let slope = s.mul(&s.affine(-1.0, 1.0)?)?;
            let bend = x.mul(&s.affine(-2.0, 1.0)?)?.add_scalar(2.0)?;
            grad.mul(&slope.mul(&bend)?)
        }
        UnaryOp::Powf(exponent) => grad.mul(&x.powf(exponent - 1.0)?.mul_scalar(exponent)?),
        // Gradient passes where min <= x <= max, as in PyTorch.
        UnaryOp::Clamp(min, max) => {
            grad.mul(&x.mask(CmpOp::Ge, min)?.mul(&x.mask(CmpOp::Le, max)?)?)
        }
        UnaryOp::Affine(mul, _) => grad.mul_scalar(mul),
    }
}

/// Gradients of `lhs op rhs` (same shapes) with respect to each side that `wants` its own.
pub(crate) fn binary_backward(
    lhs: &Tensor,
    rhs: &Tensor,
    op: BinaryOp,
    grad: &Tensor,
    wants: &dyn Fn(&Tensor) -> bool,
) -> Result<Vec<(Tensor, Tensor)>> {
    let mut grads = Vec::with_capacity(2);
    if wants(lhs) {
        let lhs_grad = match op {
            BinaryOp::Add | BinaryOp::Sub => grad.clone(),
            BinaryOp::Mul => grad.mul(rhs)?,
            BinaryOp::Div => grad.div(rhs)?,
        };
        grads.push((lhs.clone(), lhs_grad));
    }
    if wants(rhs) {
        let rhs_grad = match op {
            BinaryOp::Add => grad.clone(),
            BinaryOp::Sub => grad.neg()?,
            BinaryOp::Mul => grad.mul(lhs)?,
            // d(a/b)/db = -a / b^2
            BinaryOp::Div => grad.mul(lhs)?.div(&rhs.square()?)?.neg()?,
        };
        grads.push((rhs.clone(), rhs_grad));
    }
    Ok(grads)
}

/// Gradients of `where_cond(condition, on_true, on_false)` for the two value operands.
pub(crate) fn where_backward(condition: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
    let zeros = grad.zeros_like()?;
    Ok((
        Tensor::where_cond(condition, grad, &zeros)?,
        Tensor::where_cond(condition, &zeros, grad)?,
    ))
}
