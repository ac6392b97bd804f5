//! Reverse-mode autograd. `backward` sorts the graph under a scalar topologically and applies
//! each op's backward rule (in `ops/`), returning a map from leaf to gradient. There is no
//! global tape: the graph is the `Op` records the tensors hold.

use std::collections::{HashMap, HashSet};

use crate::op::Op;
use crate::ops::{conv, elementwise, index, loss, matmul, norm, reduce, view};
use crate::tensor::NoGradGuard;
use crate::{Error, Result, Tensor, TensorId};

/// Gradients of a scalar with respect to the leaves (tensors that require grad) under it.
#[derive(Debug, Default)]
pub struct Gradients(HashMap<TensorId, Tensor>);

impl Gradients {
    /// The gradient for `tensor`, if it was a leaf under the scalar.
    pub fn get(&self, tensor: &Tensor) -> Option<&Tensor> {
        self.0.get(&tensor.id())
    }

    /// Sets (or replaces) the gradient for `tensor`: what gradient clipping writes back.
    pub fn insert(&mut self, tensor: &Tensor, grad: Tensor) {
        self.0.insert(tensor.id(), grad);
    }

    pub fn remove(&mut self, tensor: &Tensor) -> Option<Tensor> {
        self.0.remove(&tensor.id())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Tensor {
    /// Gradients of this scalar with respect to every leaf under it that requires grad.
    /// The gradients carry no history.
    pub fn backward(&self) -> Result<Gradients> {
        let _no_grad = NoGradGuard::new();
        self.backpropagate(None, &mut |_, _| Ok(()))
    }

    /// [`Tensor::backward`] for `leaves` only (PyTorch's `backward(inputs=...)`): the
    /// gradients of the graph's other leaves, and of every input from which no path leads to
    /// one of `leaves`, are never computed. A GAN's generator step, say, then skips the
    /// discriminator's weight gradients. Leaves of `leaves` not under this scalar get none.
    pub fn backward_for(&self, leaves: &[&Tensor]) -> Result<Gradients> {
        let _no_grad = NoGradGuard::new();
        self.backpropagate(Some(leaves), &mut |_, _| Ok(()))
    }

    /// [`Tensor::backward_for`] that calls `ready(leaf, gradient)` as soon as each leaf's
    /// gradient is final, while the rest of the graph is still to run: what a data-parallel
    /// run needs to start sending gradients before the backward pass ends. Leaves come in the
    /// order the walk finishes them, the same every time for the same graph.
    pub fn backward_observed(
        &self,
        leaves: &[&Tensor],
        ready: &mut dyn FnMut(&Tensor, &Tensor) -> Result<()>,
    ) -> Result<Gradients> {
        let _no_grad = NoGradGuard::new();
        self.backpropagate(Some(leaves), ready)
    }

    /// Like `backward`, but the gradients are themselves tracked functions of the inputs
    /// (`create_graph=True` in PyTorch), so they can be differentiated again: what WGAN-GP's
    /// gradient penalty needs.
    pub fn backward_with_graph(&self) -> Result<Gradients> {
        self.backpropagate(None, &mut |_, _| Ok(()))
    }

    /// [`Tensor::backward_with_graph`] for `leaves` only, as [`Tensor::backward_for`]
    /// (PyTorch's `autograd.grad(out, leaves, create_graph=True)`): a gradient penalty's input
    /// gradient without the critic's weight gradients.
    pub fn backward_with_graph_for(&self, leaves: &[&Tensor]) -> Result<Gradients> {
        self.backpropagate(Some(leaves), &mut |_, _| Ok(()))
    }

    /// The walk behind every `backward`: gradients for `leaves` (every leaf that requires
    /// grad when `None`), through the nodes that lead to one.
    fn backpropagate(
        &self,
        leaves: Option<&[&Tensor]>,
        ready: &mut dyn FnMut(&Tensor, &Tensor) -> Result<()>,
    ) -> Result<Gradients> {
        if self.elem_count() != 1 {
            return Err(Error::invalid(
                "backward",
                format!("needs a one-element tensor, got shape {}", self.shape()),
            ));
        }
        self.float_only("backward")?;
        let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
        let mut found = Gradients::default();
        if !self.is_tracked() {
            return Ok(found);
        }
        let order = self.sorted_graph();
        let wanted = leaves.map(|leaves| leaves.iter().map(|l| l.id()).collect::<HashSet<_>>());
        let needed = leading_to(&order, |leaf| {
            wanted.as_ref().is_none_or(|w| w.contains(&leaf.id()))
        });
        // Only needed nodes get a gradient: a leaf that is not wanted gets none.
        let wants = |input: &Tensor| needed.contains(&input.id());
        if !wants(self) {
            return Ok(found);
        }
        grads.insert(self.id(), self.ones_like()?);
        for node in order.iter().rev() {
            // A node's gradient is complete once every node after it is done: take it.
            let Some(grad) = grads.remove(&node.id()) else {
                continue;
            };
            if node.requires_grad() {
                ready(node, &grad)?;
                found.0.insert(node.id(), grad.clone());
            }
            let Some(op) = node.op() else { continue };
            for (input, input_grad) in input_gradients(op, node, &grad, &wants)? {
                if !wants(&input) {
                    continue;
                }
                let sum = match grads.remove(&input.id()) {
                    Some(previous) => previous.add(&input_grad)?,
                    None => input_grad,
                };
                grads.insert(input.id(), sum);
            }
        }
        Ok(found)
    }

    /// The tracked nodes under this one, each after all of its inputs.
    fn sorted_graph(&self) -> Vec<Tensor> {
        let mut order = Vec::new();
        let mut visited = HashSet::new();
        // Iterative depth-first post-order: deep graphs must not overflow the stack.
        let mut stack = vec![(self.clone(), false)];
        while let Some((node, inputs_done)) = stack.pop() {
            if inputs_done {
                order.push(node);
                continue;
            }
            if !visited.insert(node.id()) {
                continue;
            }
            stack.push((node.clone(), true));
            if let Some(op) = node.op() {
                for input in op.inputs() {
                    if input.is_tracked() && !visited.contains(&input.id()) {
                        stack.push((input.clone(), false));
                    }
                }
            }
        }
        order
    }
}

/// The nodes of `order` (each after its inputs) whose gradient is needed: the leaves that
/// require grad and are `wanted`, and every node with such a node among its inputs.
fn leading_to(order: &[Tensor], wanted: impl Fn(&Tensor) -> bool) -> HashSet<TensorId> {
    let mut needed = HashSet::new();
    for node in order {
        let leaf = node.requires_grad() && wanted(node);
        let through = node
            .op()
            .is_some_and(|op| op.inputs().iter().any(|i| needed.contains(&i.id())));
        if leaf || through {
            needed.insert(node.id());
        }
    }
    needed
}

/// Each input of `node` that `wants` its gradient, paired with that gradient, given the
/// node's gradient. Rules whose inputs' gradients cost a kernel each (products,
/// convolutions, elementwise pairs) compute only the wanted ones; the caller drops the rest.
fn input_gradients(
    op: &Op,
    node: &Tensor,
    grad: &Tensor,
    wants: &dyn Fn(&Tensor) -> bool,
) -> Result<Vec<(Tensor, Tensor)>> {
    Ok(match op {
        Op::Unary(x, unary) => vec![(
            x.clone(),
            elementwise::unary_backward(x, *unary, node, grad)?,
        )],
        Op::Binary(lhs, rhs, binary) => {
            elementwise::binary_backward(lhs, rhs, *binary, grad, wants)?
        }
        Op::Reduce(x, reduce_op, dims) => {
            vec![(
                x.clone(),
                reduce::reduce_backward(x, *reduce_op, dims, node, grad)?,
            )]
        }
        Op::Matmul(lhs, rhs) => matmul::matmul_backward(lhs, rhs, grad, wants)?,
        Op::MatmulBiasAct {
            lhs,
            rhs,
            bias,
            activation,
        } => matmul::matmul_bias_act_backward(
            (lhs, rhs, bias.as_ref()),
            *activation,
            node,
            grad,
            wants,
        )?,
        Op::ConvBiasAct {
            input,
            weight,
            bias,
            g,
            pass,
            activation,
        } => conv::conv_bias_act_backward(
            (input, weight, bias.as_ref()),
            (g, *pass),
            *activation,
            (node, grad),
            wants,
        )?,
        Op::Reshape(x) => vec![(x.clone(), grad.reshape(x.shape())?)],
        Op::Permute(x, perm) => {
            vec![(x.clone(), grad.permute(&view::inverse_permutation(perm))?)]
        }
        Op::Broadcast(x) => vec![(x.clone(), grad.sum_to(x.shape())?)],
        Op::Narrow(x, dim, start) => {
            vec![(x.clone(), view::narrow_backward(x, *dim, *start, grad)?)]
        }
        Op::Copy(x) => vec![(x.clone(), grad.clone())],
        Op::ToDType(x) => vec![(x.clone(), grad.to_dtype(x.dtype())?)],
        Op::ToDevice(x) => vec![(x.clone(), grad.to_device(x.device())?)],
        Op::Custom(x, rule) => vec![(x.clone(), rule.backward(grad)?)],
        Op::Cat(parts, dim) => parts
            .iter()
            .cloned()
            .zip(index::cat_backward(parts, *dim, grad)?)
            .collect(),
        Op::IndexSelect(x, indices, dim) => {
            vec![(x.clone(), x.zeros_like()?.index_add(*dim, indices, grad)?)]
        }
        Op::IndexAdd(base, indices, source, dim) => vec![
            (base.clone(), grad.clone()),
            (source.clone(), grad.index_select(*dim, indices)?),
        ],
        Op::Gather(x, indices, dim) => {
            vec![(x.clone(), x.zeros_like()?.scatter_add(*dim, indices, grad)?)]
        }
        Op::ScatterAdd(base, indices, source, dim) => vec![
            (base.clone(), grad.clone()),
            (source.clone(), grad.gather(*dim, indices)?),
        ],
        Op::WhereCond(condition, on_true, on_false) => {
            let (dt, df) = elementwise::where_backward(condition, grad)?;
            vec![(on_true.clone(), dt), (on_false.clone(), df)]
        }
        Op::Softmax(x, dim) => {
            vec![(
                x.clone(),
                reduce::softmax_backward(node, *dim, false, grad)?,
            )]
        }
        // The three convolution ops are linear in each input, and each one's adjoints are
        // the other two: ⟨G, conv(x, W)⟩ = ⟨input_grad(G, W), x⟩ = ⟨weight_grad(x, G), W⟩.
        Op::Conv2d { input, weight, g } => only_wanted(
            wants,
            [
                (input, &|| grad.conv2d_input_grad_over(weight, g)),
                (weight, &|| input.conv2d_weight_grad_over(grad, g)),
            ],
        )?,
        Op::Conv2dInputGrad {
            grad: g_out,
            weight,
            g,
        } => only_wanted(
            wants,
            [
                (g_out, &|| grad.conv2d_over(weight, g)),
                (weight, &|| grad.conv2d_weight_grad_over(g_out, g)),
            ],
        )?,
        Op::Conv2dWeightGrad {
            input,
            grad: g_out,
            g,
        } => only_wanted(
            wants,
            [
                (input, &|| g_out.conv2d_input_grad_over(grad, g)),
                (g_out, &|| input.conv2d_over(grad, g)),
            ],
        )?,
        Op::Im2Col(x, g) => vec![(x.clone(), grad.col2im(g)?)],
        Op::Col2Im(columns, g) => vec![(columns.clone(), grad.im2col(g)?)],
        Op::MaxPool2d { input, indices, g } => {
            vec![(input.clone(), grad.max_pool2d_backward(indices, g)?)]
        }
        // Linear in the grad: the adjoint gathers the upstream grad at the maxima.
        Op::MaxPool2dBackward {
            grad: g_out,
            indices,
            g,
        } => {
            let planes = [g.batch * g.channels, g.height * g.width];
            let positions = [g.batch * g.channels, g.out_height * g.out_width];
            let gathered = grad
                .reshape(planes)? // [N·C, H·W]
                .gather(1, &indices.reshape(positions)?)? // [N·C, OH·OW]
                .reshape(g_out.shape())?; // [N, C, OH, OW]
            vec![(g_out.clone(), gathered)]
        }
        Op::AvgPool2d(x, g) => vec![(x.clone(), grad.avg_pool2d_backward(g)?)],
        Op::AvgPool2dBackward(g_out, g) => vec![(g_out.clone(), grad.avg_pool2d_over(g)?)],
        Op::UpsampleNearest2d(x) => {
            let [_, _, height, width] = x.image_dims("upsample_nearest2d", "input")?;
            vec![(x.clone(), grad.upsample_nearest2d_backward(height, width)?)]
        }
        Op::UpsampleNearest2dBackward(g_out) => {
            let [_, _, out_height, out_width] =
                g_out.image_dims("upsample_nearest2d_backward", "grad")?;
            vec![(
                g_out.clone(),
                grad.upsample_nearest2d(out_height, out_width)?,
            )]
        }
        Op::LogSoftmax(x, dim) => {
            vec![(x.clone(), reduce::softmax_backward(node, *dim, true, grad)?)]
        }
        Op::BatchNorm {
            x,
            weight,
            bias,
            mean,
            invstd,
            eps,
            activation,
        } => norm::batch_norm_backward(
            x,
            (weight.as_ref(), bias.as_ref()),
            (mean, invstd, *eps),
            *activation,
            (node, grad),
        )?,
        Op::GroupNorm {
            x,
            weight,
            bias,
            mean,
            invstd,
            groups,
            eps,
        } => norm::group_norm_backward(
            x,
            weight.as_ref(),
            bias.as_ref(),
            (*groups, mean, invstd, *eps),
            grad,
        )?,
        Op::BceWithLogits(logits, targets) => {
            loss::bce_with_logits_backward(logits, targets, grad)?
        }
    })
}

/// `(input, gradient())` for each of `inputs` that `wants` its gradient, computing only those.
fn only_wanted<const N: usize>(
    wants: &dyn Fn(&Tensor) -> bool,
    inputs: [(&Tensor, &dyn Fn() -> Result<Tensor>); N],
) -> Result<Vec<(Tensor, Tensor)>> {
    inputs
        .into_iter()
        .filter(|(input, _)| wants(input))
        .map(|(input, gradient)| Ok((input.clone(), gradient()?)))
        .collect()
}
