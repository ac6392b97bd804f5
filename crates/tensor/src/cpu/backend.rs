//! The backend trait over `CpuStorage`: each primitive dispatched by dtype to the kernels of
//! the sibling modules (elementwise.rs, reduce.rs, gemm.rs, conv.rs, ...).

use crate::backend::{
    activation_derivative, conv2d_by_im2col, conv2d_input_grad_by_col2im,
    conv2d_weight_grad_by_im2col, unary_gradient_composed, BackendStorage, Operand,
};
use crate::ops::conv::check_resize;
use crate::{
    Activation, AdamStep, BinaryOp, CmpOp, Conv2dGeometry, DType, Device, Error, FloatDType,
    Layout, ReduceOp, Result, UnaryOp, WithDType,
};

use super::storage::{map_any, map_float, zip_same};
use super::*;

// f32 convolutions: the register-tiled direct kernels on x86-64 (which fall back to
// `cpu/conv.rs`'s GEMM-based ones where they do not apply), the GEMM-based ones elsewhere.
#[cfg(not(target_arch = "x86_64"))]
use super::conv as f32_conv;
#[cfg(target_arch = "x86_64")]
use super::conv_direct as f32_conv;

/// The shape of `[.., m, k] x [.., k, n]`: `[.., m, n]`.
fn output_shape(layout: &Layout, rhs_layout: &Layout) -> crate::Shape {
    let mut dims = layout.dims().to_vec();
    let last = dims.len() - 1;
    dims[last] = rhs_layout.dims()[last];
    crate::Shape::from(dims)
}

/// A direct convolution kernel of `cpu/conv.rs`: `(kernel, first operand, second operand,
/// out channels, geometry)`.
type ConvKernel<T> = fn(gemm::Kernel<T>, &[T], &[T], usize, &Conv2dGeometry) -> Vec<T>;

/// Runs the f32 or f64 kernel of `kernels` on `a` and `b` (row-major copies where they are
/// strided); `None` for the half types, which take the lowering.
fn direct_conv(
    op: &'static str,
    (a, a_layout): (&CpuStorage, &Layout),
    b: Operand<'_, CpuStorage>,
    out_channels: usize,
    g: &Conv2dGeometry,
    kernels: (ConvKernel<f32>, ConvKernel<f64>),
) -> Result<Option<CpuStorage>> {
    Ok(Some(match a {
        CpuStorage::F32(x) => CpuStorage::F32(kernels.0(
            gemm::f32_kernel(),
            &index::row_major(x, a_layout),
            &index::row_major(a.same_typed(op, b.storage)?, b.layout),
            out_channels,
            g,
        )),
        CpuStorage::F64(x) => CpuStorage::F64(kernels.1(
            gemm::f64_kernel(),
            &index::row_major(x, a_layout),
            &index::row_major(a.same_typed(op, b.storage)?, b.layout),
            out_channels,
            g,
        )),
        _ => return Ok(None),
    }))
}

/// Whether a convolution's forward pass or weight gradient to `out_channels` takes the direct
/// kernels ([`direct_conv`]) rather than the lowering: with one output channel the product is
/// a matrix-vector one, which the lowering's matmul runs as dot products, unless the f32
/// kernels run it along the output rows.
fn runs_direct(storage: &CpuStorage, g: &Conv2dGeometry, out_channels: usize) -> bool {
    out_channels > 1 || f32_along_rows(storage, g, out_channels)
}

/// Whether an f32 convolution's forward pass or weight gradient to `out_channels` runs along
/// the output rows (`f32_conv::along_rows`: AVX-512 or AVX2, stride 1, 1 to 15 output
/// channels), so that one output channel takes the direct kernels rather than the lowering.
fn f32_along_rows(storage: &CpuStorage, g: &Conv2dGeometry, out_channels: usize) -> bool {
    matches!(storage, CpuStorage::F32(_))
        && f32_conv::along_rows(&gemm::f32_kernel(), g, out_channels)
}

impl BackendStorage for CpuStorage {
    fn dtype(&self) -> DType {
        match self {
            CpuStorage::U8(_) => DType::U8,
            CpuStorage::U32(_) => DType::U32,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
        }
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn copy_strided(&self, layout: &Layout) -> Result<Self> {
        Ok(map_any!(self, data => map1(data, layout, |x| x)))
    }

    fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Self> {
        fn convert<T: WithDType>(storage: &CpuStorage, layout: &Layout) -> Vec<T> {
            match storage {
                CpuStorage::U8(v) => map1(v, layout, |x| T::from_f64(x.to_f64())),
                CpuStorage::U32(v) => map1(v, layout, |x| T::from_f64(x.to_f64())),
                CpuStorage::F16(v) => map1(v, layout, |x| T::from_f64(x.to_f64())),
                CpuStorage::BF16(v) => map1(v, layout, |x| T::from_f64(x.to_f64())),
                CpuStorage::F32(v) => map1(v, layout, |x| T::from_f64(x.to_f64())),
                CpuStorage::F64(v) => map1(v, layout, |x| T::from_f64(x)),
            }
        }
        Ok(match dtype {
            DType::U8 => CpuStorage::U8(convert(self, layout)),
            DType::U32 => CpuStorage::U32(convert(self, layout)),
            DType::F16 => CpuStorage::F16(convert(self, layout)),
            DType::BF16 => CpuStorage::BF16(convert(self, layout)),
            DType::F32 => CpuStorage::F32(convert(self, layout)),
            DType::F64 => CpuStorage::F64(convert(self, layout)),
        })
    }

    fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Self> {
        Ok(map_float!("unary op", self, data => elementwise::unary(data, layout, op)))
    }

    fn binary(
        &self,
        layout: &Layout,
        Operand {
            storage: rhs,
            layout: rhs_layout,
        }: Operand<'_, Self>,
        op: BinaryOp,
    ) -> Result<Self> {
        Ok(map_float!("binary op", self, data => {
            let rhs = self.same_typed("binary op", rhs)?;
            elementwise::binary(data, layout, rhs, rhs_layout, op)
        }))
    }

    fn unary_gradient(&self, layout: &Layout, x: Operand<'_, Self>, op: UnaryOp) -> Result<Self> {
        const OP: &str = "unary gradient";
        Ok(match activation_derivative(op)? {
            UnaryOp::LeakyReluDerivative(slope) => map_float!(OP, self, data => {
                let x_data = self.same_typed(OP, x.storage)?;
                elementwise::leaky_relu_gradient((data, layout), (x_data, x.layout), slope)
            }),
            UnaryOp::SiluDerivative => map_float!(OP, self, data => {
                let x_data = self.same_typed(OP, x.storage)?;
                elementwise::silu_gradient((data, layout), (x_data, x.layout))
            }),
            _ => unary_gradient_composed(self, layout, x, op)?,
        })
    }

    fn compare(
        &self,
        layout: &Layout,
        Operand {
            storage: rhs,
            layout: rhs_layout,
        }: Operand<'_, Self>,
        op: CmpOp,
    ) -> Result<Self> {
        Ok(CpuStorage::U8(zip_same!("compare", self, rhs, (a, b) => {
            elementwise::compare(a, layout, b, rhs_layout, op)
        })))
    }

    fn where_cond(
        &self,
        layout: &Layout,
        Operand {
            storage: on_true,
            layout: true_layout,
        }: Operand<'_, Self>,
        Operand {
            storage: on_false,
            layout: false_layout,
        }: Operand<'_, Self>,
    ) -> Result<Self> {
        fn select<C: WithDType>(
            condition: (&[C], &Layout),
            on_true: &CpuStorage,
            true_layout: &Layout,
            on_false: &CpuStorage,
            false_layout: &Layout,
        ) -> Result<CpuStorage> {
            Ok(zip_same!("where_cond", on_true, on_false, (a, b) => {
                CpuStorage::from_vec(map3(condition, (a, true_layout), (b, false_layout),
                    |c, x, y| if c.is_nonzero() { x } else { y }))
            }))
        }
        match self {
            CpuStorage::U8(c) => select((c, layout), on_true, true_layout, on_false, false_layout),
            CpuStorage::U32(c) => select((c, layout), on_true, true_layout, on_false, false_layout),
            CpuStorage::F16(c) => select((c, layout), on_true, true_layout, on_false, false_layout),
            CpuStorage::BF16(c) => {
                select((c, layout), on_true, true_layout, on_false, false_layout)
            }
            CpuStorage::F32(c) => select((c, layout), on_true, true_layout, on_false, false_layout),
            CpuStorage::F64(c) => select((c, layout), on_true, true_layout, on_false, false_layout),
        }
    }

    fn reduce(&self, layout: &Layout, op: ReduceOp, dims: &[usize]) -> Result<Self> {
        Ok(map_float!("reduce", self, data => reduce::reduce(data, layout, op, dims)))
    }

    fn softmax(&self, layout: &Layout, dim: usize, log: bool) -> Result<Self> {
        Ok(map_float!("softmax", self, data => reduce::softmax(data, layout, dim, log)))
    }

    fn matmul(
        &self,
        layout: &Layout,
        Operand {
            storage: rhs,
            layout: rhs_layout,
        }: Operand<'_, Self>,
    ) -> Result<Self> {
        // Half types widen to f32 (exactly), multiply with f32 accumulation, and round once.
        fn widened<T: FloatDType<Math = f32>>(
            lhs: (&[T], &Layout),
            rhs: (&[T], &Layout),
        ) -> Vec<T> {
            let a = map1(lhs.0, lhs.1, |x| x.to_math());
            let b = map1(rhs.0, rhs.1, |x| x.to_math());
            let product = matmul::matmul(
                gemm::f32_kernel(),
                &a,
                &Layout::contiguous(lhs.1.shape().clone()),
                &b,
                &Layout::contiguous(rhs.1.shape().clone()),
            );
            product.into_iter().map(T::from_math).collect()
        }
        Ok(match self {
            CpuStorage::F32(a) => CpuStorage::F32(matmul::matmul(
                gemm::f32_kernel(),
                a,
                layout,
                self.same_typed("matmul", rhs)?,
                rhs_layout,
            )),
            CpuStorage::F64(a) => CpuStorage::F64(matmul::matmul(
                gemm::f64_kernel(),
                a,
                layout,
                self.same_typed("matmul", rhs)?,
                rhs_layout,
            )),
            CpuStorage::F16(a) => CpuStorage::F16(widened(
                (a, layout),
                (self.same_typed("matmul", rhs)?, rhs_layout),
            )),
            CpuStorage::BF16(a) => CpuStorage::BF16(widened(
                (a, layout),
                (self.same_typed("matmul", rhs)?, rhs_layout),
            )),
            other => {
                return Err(Error::UnsupportedDType {
                    op: "matmul",
                    dtype: other.dtype(),
                })
            }
        })
    }

    fn matmul_bias_act(
        &self,
        layout: &Layout,
        Operand {
            storage: rhs,
            layout: rhs_layout,
        }: Operand<'_, Self>,
        bias: Option<Operand<'_, Self>>,
        activation: Activation,
    ) -> Result<Self> {
        // The composition, as the tensor ops would run it: the product, then the bias
        // broadcast along rows, then the activation.
        let mut out = self.matmul(layout, Operand::new(rhs, rhs_layout))?;
        let out_layout = Layout::contiguous(output_shape(layout, rhs_layout));
        if let Some(bias) = bias {
            let rows = bias.layout.broadcast_as(out_layout.shape())?;
            out = out.binary(
                &out_layout,
                Operand::new(bias.storage, &rows),
                BinaryOp::Add,
            )?;
        }
        if let Some(unary) = activation.unary() {
            out = out.unary(&out_layout, unary)?;
        }
        Ok(out)
    }

    // f32 runs `cpu/conv_direct.rs`, f64 the GEMM-based kernels of `cpu/conv.rs`
    // ([`direct_conv`]); the half types, and convolutions to one channel, the lowering.
    fn conv2d(
        &self,
        layout: &Layout,
        weight: Operand<'_, Self>,
        g: &Conv2dGeometry,
    ) -> Result<Self> {
        let out_channels = weight.layout.dims()[0];
        let kernels = (
            f32_conv::conv2d as ConvKernel<f32>,
            conv::conv2d as ConvKernel<f64>,
        );
        if runs_direct(self, g, out_channels) {
            if let Some(out) =
                direct_conv("conv2d", (self, layout), weight, out_channels, g, kernels)?
            {
                return Ok(out);
            }
        }
        conv2d_by_im2col(self, layout, weight, g)
    }

    fn conv2d_input_grad(
        &self,
        layout: &Layout,
        weight: Operand<'_, Self>,
        g: &Conv2dGeometry,
    ) -> Result<Self> {
        let out_channels = weight.layout.dims()[0];
        let kernels = (
            f32_conv::conv2d_input_grad as ConvKernel<f32>,
            conv::conv2d_input_grad as ConvKernel<f64>,
        );
        match direct_conv(
            "conv2d_input_grad",
            (self, layout),
            weight,
            out_channels,
            g,
            kernels,
        )? {
            Some(out) => Ok(out),
            None => conv2d_input_grad_by_col2im(self, layout, weight, g),
        }
    }

    fn conv2d_weight_grad(
        &self,
        layout: &Layout,
        grad: Operand<'_, Self>,
        g: &Conv2dGeometry,
    ) -> Result<Self> {
        let out_channels = grad.layout.dims()[1];
        let kernels = (
            f32_conv::conv2d_weight_grad as ConvKernel<f32>,
            conv::conv2d_weight_grad as ConvKernel<f64>,
        );
        if runs_direct(self, g, out_channels) {
            let direct = direct_conv(
                "conv2d_weight_grad",
                (self, layout),
                grad,
                out_channels,
                g,
                kernels,
            )?;
            if let Some(out) = direct {
                return Ok(out);
            }
        }
        conv2d_weight_grad_by_im2col(self, layout, grad, g)
    }

    fn im2col(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self> {
        Ok(map_any!(self, data => conv::im2col(&index::row_major(data, layout), g)))
    }

    fn col2im(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self> {
        Ok(map_float!("col2im", self, data => conv::col2im(&index::row_major(data, layout), g)))
    }

    fn cat(parts: &[Operand<'_, Self>], dim: usize) -> Result<Self> {
        let first = parts
            .first()
            .ok_or_else(|| Error::invalid("cat", "needs at least one tensor"))?
            .storage;
        Ok(map_any!(first, data => {
            let _ = data;
            let typed = parts
                .iter()
                .map(|&Operand { storage, layout }| {
                    storage
                        .as_slice()
                        .map(|slice| (slice, layout))
                        .ok_or(Error::DTypeMismatch { op: "cat", lhs: first.dtype(), rhs: storage.dtype() })
                })
                .collect::<Result<Vec<_>>>()?;
            index::cat(&typed, dim)
        }))
    }

    fn index_select(
        &self,
        layout: &Layout,
        Operand {
            storage: index,
            layout: index_layout,
        }: Operand<'_, Self>,
        dim: usize,
    ) -> Result<Self> {
        let indices = index.indices(index_layout, "index_select", dim, layout.dims()[dim])?;
        Ok(map_any!(self, data => index::index_select(data, layout, &indices, dim)))
    }

    fn index_add(
        &self,
        layout: &Layout,
        Operand {
            storage: index,
            layout: index_layout,
        }: Operand<'_, Self>,
        Operand {
            storage: source,
            layout: source_layout,
        }: Operand<'_, Self>,
        dim: usize,
    ) -> Result<Self> {
        let indices = index.indices(index_layout, "index_add", dim, layout.dims()[dim])?;
        Ok(map_float!("index_add", self, data => {
            let source = self.same_typed("index_add", source)?;
            index::index_add(data, layout, &indices, source, source_layout, dim)
        }))
    }

    fn gather(
        &self,
        layout: &Layout,
        Operand {
            storage: index,
            layout: index_layout,
        }: Operand<'_, Self>,
        dim: usize,
    ) -> Result<Self> {
        let indices = index.indices(index_layout, "gather", dim, layout.dims()[dim])?;
        Ok(map_any!(self, data => index::gather(data, layout, &indices, index_layout.shape(), dim)))
    }

    fn scatter_add(
        &self,
        layout: &Layout,
        Operand {
            storage: index,
            layout: index_layout,
        }: Operand<'_, Self>,
        Operand {
            storage: source,
            layout: source_layout,
        }: Operand<'_, Self>,
        dim: usize,
    ) -> Result<Self> {
        let indices = index.indices(index_layout, "scatter_add", dim, layout.dims()[dim])?;
        Ok(map_float!("scatter_add", self, data => {
            let source = self.same_typed("scatter_add", source)?;
            index::scatter_add(data, layout, &indices, source, source_layout, dim)
        }))
    }

    fn adam_step(
        &self,
        layout: &Layout,
        Operand {
            storage: grad,
            layout: grad_layout,
        }: Operand<'_, Self>,
        Operand {
            storage: exp_avg,
            layout: exp_avg_layout,
        }: Operand<'_, Self>,
        Operand {
            storage: exp_avg_sq,
            layout: exp_avg_sq_layout,
        }: Operand<'_, Self>,
        step: &AdamStep,
    ) -> Result<(Self, Self, Self)> {
        fn typed<T: FloatDType>(
            (param, layout): (&[T], &Layout),
            rest: [(&CpuStorage, &Layout); 3],
            step: &AdamStep,
        ) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
            let [grad, exp_avg, exp_avg_sq] = rest.map(|(storage, layout)| {
                let data = storage.as_slice::<T>().ok_or(Error::DTypeMismatch {
                    op: "adam_step",
                    lhs: T::DTYPE,
                    rhs: storage.dtype(),
                })?;
                Ok(index::row_major(data, layout))
            });
            let (p, m, v) = optim::adam_step(
                &index::row_major(param, layout),
                &grad?,
                &exp_avg?,
                &exp_avg_sq?,
                step,
            );
            Ok((
                CpuStorage::from_vec(p),
                CpuStorage::from_vec(m),
                CpuStorage::from_vec(v),
            ))
        }
        let rest = [
            (grad, grad_layout),
            (exp_avg, exp_avg_layout),
            (exp_avg_sq, exp_avg_sq_layout),
        ];
        match self {
            CpuStorage::F16(p) => typed((p, layout), rest, step),
            CpuStorage::BF16(p) => typed((p, layout), rest, step),
            CpuStorage::F32(p) => typed((p, layout), rest, step),
            CpuStorage::F64(p) => typed((p, layout), rest, step),
            other => Err(Error::UnsupportedDType {
                op: "adam_step",
                dtype: other.dtype(),
            }),
        }
    }

    fn max_pool2d(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<(Self, Self)> {
        fn typed<T: FloatDType>(
            data: &[T],
            layout: &Layout,
            g: &Conv2dGeometry,
        ) -> (CpuStorage, CpuStorage) {
            let (values, indices) = pool::max_pool2d(&index::row_major(data, layout), g);
            (CpuStorage::from_vec(values), CpuStorage::U32(indices))
        }
        Ok(match self {
            CpuStorage::F16(data) => typed(data, layout, g),
            CpuStorage::BF16(data) => typed(data, layout, g),
            CpuStorage::F32(data) => typed(data, layout, g),
            CpuStorage::F64(data) => typed(data, layout, g),
            other => {
                return Err(Error::UnsupportedDType {
                    op: "max_pool2d",
                    dtype: other.dtype(),
                })
            }
        })
    }

    fn max_pool2d_backward(
        &self,
        layout: &Layout,
        Operand {
            storage: indices,
            layout: indices_layout,
        }: Operand<'_, Self>,
        g: &Conv2dGeometry,
    ) -> Result<Self> {
        let CpuStorage::U32(indices) = indices else {
            return Err(Error::invalid(
                "max_pool2d_backward",
                format!("indices must be u32, got {}", indices.dtype()),
            ));
        };
        let indices = index::row_major(indices, indices_layout);
        Ok(map_float!("max_pool2d_backward", self, data => {
            pool::max_pool2d_backward(&index::row_major(data, layout), &indices, g)
        }))
    }

    fn avg_pool2d(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self> {
        Ok(map_float!("avg_pool2d", self, data => {
            pool::avg_pool2d(&index::row_major(data, layout), g)
        }))
    }

    fn avg_pool2d_backward(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self> {
        Ok(map_float!("avg_pool2d_backward", self, data => {
            pool::avg_pool2d_backward(&index::row_major(data, layout), g)
        }))
    }

    fn upsample_nearest2d(
        &self,
        layout: &Layout,
        out_height: usize,
        out_width: usize,
    ) -> Result<Self> {
        let dims = layout.image_dims("upsample_nearest2d")?;
        check_resize("upsample_nearest2d", dims, [out_height, out_width])?;
        Ok(map_any!(self, data => {
            pool::upsample_nearest2d(&index::row_major(data, layout), dims, [out_height, out_width])
        }))
    }

    fn upsample_nearest2d_backward(
        &self,
        layout: &Layout,
        height: usize,
        width: usize,
    ) -> Result<Self> {
        let [batch, channels, out_height, out_width] =
            layout.image_dims("upsample_nearest2d_backward")?;
        check_resize(
            "upsample_nearest2d_backward",
            [batch, channels, height, width],
            [out_height, out_width],
        )?;
        Ok(map_float!("upsample_nearest2d_backward", self, data => {
            pool::upsample_nearest2d_backward(
                &index::row_major(data, layout),
                [batch, channels, height, width],
                [out_height, out_width],
            )
        }))
    }

    fn batch_norm_stats(&self, layout: &Layout) -> Result<(Self, Self)> {
        fn typed<T: FloatDType>(data: &[T], layout: &Layout) -> (CpuStorage, CpuStorage) {
            let (mean, var) = norm::batch_norm_stats(data, layout);
            (CpuStorage::from_vec(mean), CpuStorage::from_vec(var))
        }
        Ok(match self {
            CpuStorage::F16(x) => typed(x, layout),
            CpuStorage::BF16(x) => typed(x, layout),
            CpuStorage::F32(x) => typed(x, layout),
            CpuStorage::F64(x) => typed(x, layout),
            other => {
                return Err(Error::UnsupportedDType {
                    op: "batch_norm",
                    dtype: other.dtype(),
                })
            }
        })
    }

    fn batch_norm_forward(
        &self,
        layout: &Layout,
        mean: &Self,
        invstd: &Self,
        weight: Option<&Self>,
        bias: Option<&Self>,
    ) -> Result<Self> {
        let (stats, affine) = ((mean, invstd), (weight, bias));
        self.batch_norm_forward_then(layout, stats, affine, Activation::Identity)
    }

    fn batch_norm_backward(
        &self,
        layout: &Layout,
        x: Operand<'_, Self>,
        mean: &Self,
        invstd: &Self,
        weight: Option<&Self>,
    ) -> Result<(Self, Self, Self)> {
        self.batch_norm_backward_through(layout, x, (mean, invstd), weight, None)
    }

    fn group_norm_forward(
        &self,
        layout: &Layout,
        groups: usize,
        (mean, invstd): (&Self, &Self),
        weight: Option<&Self>,
        bias: Option<&Self>,
    ) -> Result<Self> {
        const OP: &str = "group_norm";
        Ok(map_float!(OP, self, x => {
            let weight = weight.map(|w| self.same_typed(OP, w)).transpose()?;
            let bias = bias.map(|b| self.same_typed(OP, b)).transpose()?;
            let stats = (self.same_typed(OP, mean)?, self.same_typed(OP, invstd)?);
            norm::group_norm_forward(x, layout, groups, stats, (weight, bias))
        }))
    }

    fn group_norm_backward(
        &self,
        layout: &Layout,
        x: Operand<'_, Self>,
        groups: usize,
        (mean, invstd): (&Self, &Self),
        weight: Option<&Self>,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "group_norm_backward";
        fn typed<T: FloatDType>(
            grad: (&[T], &Layout),
            (dy, x): (&CpuStorage, Operand<'_, CpuStorage>),
            groups: usize,
            (mean, invstd): (&CpuStorage, &CpuStorage),
            weight: Option<&CpuStorage>,
        ) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
            let weight = weight.map(|w| dy.same_typed(OP, w)).transpose()?;
            let stats = (dy.same_typed(OP, mean)?, dy.same_typed(OP, invstd)?);
            let x = (dy.same_typed(OP, x.storage)?, x.layout);
            let (dx, dw, db) = norm::group_norm_backward(grad, x, groups, stats, weight);
            Ok((
                CpuStorage::from_vec(dx),
                CpuStorage::from_vec(dw),
                CpuStorage::from_vec(db),
            ))
        }
        let stats = (mean, invstd);
        match self {
            CpuStorage::F16(g) => typed((g, layout), (self, x), groups, stats, weight),
            CpuStorage::BF16(g) => typed((g, layout), (self, x), groups, stats, weight),
            CpuStorage::F32(g) => typed((g, layout), (self, x), groups, stats, weight),
            CpuStorage::F64(g) => typed((g, layout), (self, x), groups, stats, weight),
            other => Err(Error::UnsupportedDType {
                op: OP,
                dtype: other.dtype(),
            }),
        }
    }

    fn bce_with_logits(
        &self,
        layout: &Layout,
        Operand {
            storage: targets,
            layout: targets_layout,
        }: Operand<'_, Self>,
    ) -> Result<Self> {
        const OP: &str = "bce_with_logits";
        Ok(map_float!(OP, self, x => {
            loss::bce_with_logits((x, layout), (self.same_typed(OP, targets)?, targets_layout))
        }))
    }

    fn bce_with_logits_backward(
        &self,
        layout: &Layout,
        Operand {
            storage: targets,
            layout: targets_layout,
        }: Operand<'_, Self>,
        Operand {
            storage: grad,
            layout: grad_layout,
        }: Operand<'_, Self>,
    ) -> Result<Self> {
        const OP: &str = "bce_with_logits_backward";
        Ok(map_float!(OP, self, x => {
            loss::bce_with_logits_backward(
                (x, layout),
                (self.same_typed(OP, targets)?, targets_layout),
                (self.same_typed(OP, grad)?, grad_layout),
            )
        }))
    }
}

impl CpuStorage {
    /// `activation(conv + bias)` for f32 and f64 (`None` for the half types, which compose
    /// the ops): the convolution (`transposed`: its input gradient, which `conv_transpose2d`
    /// is), each image's planes through the bias and the activation in place
    /// ([`elementwise::channel_bias_act`]) where the composition made two more passes over
    /// the output and two more buffers. The direct f32 kernels on x86-64 finish each image as
    /// soon as they have written it, while it is in the core's cache. The values are the
    /// composition's, bit for bit.
    pub(crate) fn conv_bias_act(
        &self,
        layout: &Layout,
        weight: Operand<'_, Self>,
        bias: Option<Operand<'_, Self>>,
        (g, transposed): (&Conv2dGeometry, bool),
        activation: Activation,
    ) -> Result<Option<Self>> {
        const OP: &str = "conv_bias_act";
        fn typed_bias<'a, T: FloatDType>(
            storage: &CpuStorage,
            bias: Option<Operand<'a, CpuStorage>>,
        ) -> Result<Option<std::borrow::Cow<'a, [T]>>> {
            bias.map(|b| {
                Ok(index::row_major(
                    storage.same_typed::<T>(OP, b.storage)?,
                    b.layout,
                ))
            })
            .transpose()
        }
        let out_channels = weight.layout.dims()[0];
        let dims = if transposed {
            (g.channels, g.height * g.width)
        } else {
            (out_channels, g.out_height * g.out_width)
        };
        #[cfg(target_arch = "x86_64")]
        if let CpuStorage::F32(x) = self {
            // The cases `conv2d` and `conv2d_input_grad` run on the direct kernels.
            if transposed || runs_direct(self, g, out_channels) {
                let w = self.same_typed::<f32>(OP, weight.storage)?;
                let (x, w) = (
                    index::row_major(x, layout),
                    index::row_major(w, weight.layout),
                );
                let bias = typed_bias::<f32>(self, bias)?;
                let finish = |image: &mut [f32]| {
                    elementwise::channel_bias_act(image, dims, bias.as_deref(), activation)
                };
                let kernel = gemm::f32_kernel();
                let out = if transposed {
                    f32_conv::conv2d_input_grad_then(kernel, &x, &w, out_channels, g, &finish)
                } else {
                    f32_conv::conv2d_then(kernel, &x, &w, out_channels, g, &finish)
                };
                return Ok(Some(CpuStorage::F32(out)));
            }
        }
        let out = if transposed {
            self.conv2d_input_grad(layout, weight, g)?
        } else {
            self.conv2d(layout, weight, g)?
        };
        Ok(match out {
            CpuStorage::F32(mut out) => {
                let bias = typed_bias::<f32>(self, bias)?;
                elementwise::channel_bias_act(&mut out, dims, bias.as_deref(), activation);
                Some(CpuStorage::F32(out))
            }
            CpuStorage::F64(mut out) => {
                let bias = typed_bias::<f64>(self, bias)?;
                elementwise::channel_bias_act(&mut out, dims, bias.as_deref(), activation);
                Some(CpuStorage::F64(out))
            }
            _ => None,
        })
    }

    /// [`BackendStorage::batch_norm_forward`], each value then mapped by `activation` in the
    /// same pass (`norm::batch_norm_forward`).
    fn batch_norm_forward_then(
        &self,
        layout: &Layout,
        (mean, invstd): (&Self, &Self),
        (weight, bias): (Option<&Self>, Option<&Self>),
        activation: Activation,
    ) -> Result<Self> {
        const OP: &str = "batch_norm";
        Ok(map_float!(OP, self, x => {
            let weight = weight.map(|w| self.same_typed(OP, w)).transpose()?;
            let bias = bias.map(|b| self.same_typed(OP, b)).transpose()?;
            norm::batch_norm_forward(
                x,
                layout,
                (self.same_typed(OP, mean)?, self.same_typed(OP, invstd)?),
                (weight, bias),
                activation,
            )
        }))
    }

    /// `activation(batch_norm_forward(..))` in one pass for f32 and f64, whose math type is
    /// themselves, so the values are the composition's; `None` for the other dtypes, where
    /// the caller composes the ops.
    pub(crate) fn batch_norm_act_forward(
        &self,
        layout: &Layout,
        stats: (&Self, &Self),
        affine: (Option<&Self>, Option<&Self>),
        activation: Activation,
    ) -> Result<Option<Self>> {
        if !matches!(self, CpuStorage::F32(_) | CpuStorage::F64(_)) {
            return Ok(None);
        }
        (self.batch_norm_forward_then(layout, stats, affine, activation)).map(Some)
    }

    /// [`BackendStorage::batch_norm_backward`], through a leaky ReLU after the normalisation
    /// (ReLU's at slope 0) when `relu` gives its output `y` and slope
    /// (`norm::batch_norm_backward`).
    fn batch_norm_backward_through(
        &self,
        layout: &Layout,
        Operand {
            storage: x,
            layout: x_layout,
        }: Operand<'_, Self>,
        (mean, invstd): (&Self, &Self),
        weight: Option<&Self>,
        relu: Option<(Operand<'_, Self>, f64)>,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "batch_norm_backward";
        fn typed<T: FloatDType>(
            grad: (&[T], &Layout),
            (storages, x_layout): ([&CpuStorage; 3], &Layout),
            weight: Option<&CpuStorage>,
            relu: Option<(Operand<'_, CpuStorage>, f64)>,
        ) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
            fn typed<T: FloatDType>(s: &CpuStorage) -> Result<&[T]> {
                s.as_slice::<T>().ok_or(Error::DTypeMismatch {
                    op: OP,
                    lhs: T::DTYPE,
                    rhs: s.dtype(),
                })
            }
            let [x, mean, invstd] = storages;
            let weight = weight.map(typed::<T>).transpose()?;
            let relu = relu
                .map(|(y, slope)| Ok::<_, Error>(((typed(y.storage)?, y.layout), slope)))
                .transpose()?;
            let (dx, dw, db) = norm::batch_norm_backward(
                grad,
                (typed(x)?, x_layout),
                (typed(mean)?, typed(invstd)?),
                weight,
                relu,
            );
            Ok((
                CpuStorage::from_vec(dx),
                CpuStorage::from_vec(dw),
                CpuStorage::from_vec(db),
            ))
        }
        let storages = ([x, mean, invstd], x_layout);
        match self {
            CpuStorage::F16(g) => typed((g, layout), storages, weight, relu),
            CpuStorage::BF16(g) => typed((g, layout), storages, weight, relu),
            CpuStorage::F32(g) => typed((g, layout), storages, weight, relu),
            CpuStorage::F64(g) => typed((g, layout), storages, weight, relu),
            other => Err(Error::UnsupportedDType {
                op: OP,
                dtype: other.dtype(),
            }),
        }
    }

    /// [`BackendStorage::batch_norm_backward`] of a batch norm followed by a leaky ReLU
    /// (ReLU's at slope 0) with output `y`, `self` the gradient of `y`: the gradient through
    /// the activation taken inside batch norm's two passes, with the composition's values.
    /// For f32 and f64, the dtypes whose forward fuses the activation; `None` for the others.
    pub(crate) fn batch_norm_relu_backward(
        &self,
        layout: &Layout,
        (x, y): (Operand<'_, Self>, Operand<'_, Self>),
        stats: (&Self, &Self),
        weight: Option<&Self>,
        slope: f64,
    ) -> Result<Option<(Self, Self, Self)>> {
        if !matches!(self, CpuStorage::F32(_) | CpuStorage::F64(_)) {
            return Ok(None);
        }
        (self.batch_norm_backward_through(layout, x, stats, weight, Some((y, slope)))).map(Some)
    }

    /// [`BackendStorage::adam_step`] in place: `self` (the parameter), `exp_avg` and
    /// `exp_avg_sq`, each a whole contiguous storage of one float dtype and length, take the
    /// step's values ([`optim::adam_step_in_place`]); `grad` is read through its layout.
    pub(crate) fn adam_step_in_place(
        &mut self,
        Operand {
            storage: grad,
            layout: grad_layout,
        }: Operand<'_, Self>,
        exp_avg: &mut CpuStorage,
        exp_avg_sq: &mut CpuStorage,
        step: &AdamStep,
    ) -> Result<()> {
        const OP: &str = "adam_step";
        fn typed<T: FloatDType>(storage: &mut CpuStorage, len: usize) -> Result<&mut [T]> {
            let dtype = storage.dtype();
            let data = storage.as_mut_slice::<T>().ok_or(Error::DTypeMismatch {
                op: OP,
                lhs: T::DTYPE,
                rhs: dtype,
            })?;
            if data.len() != len {
                return Err(Error::Invalid {
                    op: OP,
                    message: format!("a moment of {} values for {len}", data.len()),
                });
            }
            Ok(data)
        }
        fn run<T: FloatDType>(
            param: &mut [T],
            (grad, grad_layout): (&CpuStorage, &Layout),
            exp_avg: &mut CpuStorage,
            exp_avg_sq: &mut CpuStorage,
            step: &AdamStep,
        ) -> Result<()> {
            let len = param.len();
            let grad = grad.as_slice::<T>().ok_or(Error::DTypeMismatch {
                op: OP,
                lhs: T::DTYPE,
                rhs: grad.dtype(),
            })?;
            let grad = index::row_major(grad, grad_layout);
            if grad.len() != len {
                return Err(Error::Invalid {
                    op: OP,
                    message: format!("a gradient of {} values for {len}", grad.len()),
                });
            }
            let exp_avg = typed::<T>(exp_avg, len)?;
            let exp_avg_sq = typed::<T>(exp_avg_sq, len)?;
            optim::adam_step_in_place((param, exp_avg, exp_avg_sq), &grad, step);
            Ok(())
        }
        let grad = (grad, grad_layout);
        match self {
            CpuStorage::F16(p) => run(p, grad, exp_avg, exp_avg_sq, step),
            CpuStorage::BF16(p) => run(p, grad, exp_avg, exp_avg_sq, step),
            CpuStorage::F32(p) => run(p, grad, exp_avg, exp_avg_sq, step),
            CpuStorage::F64(p) => run(p, grad, exp_avg, exp_avg_sq, step),
            other => Err(Error::UnsupportedDType {
                op: OP,
                dtype: other.dtype(),
            }),
        }
    }
}
