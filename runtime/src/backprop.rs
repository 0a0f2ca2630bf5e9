//! Reverse-mode automatic differentiation. Each tensor that depends on a [`crate::Var`]
//! records the op that made it; `backward` walks that graph from the loss in reverse
//! topological order and applies each op's gradient rule.

use crate::device::{buf, on_device, wrap};
use crate::window_ops;
use crate::{no_grad, with_precision, Error, Precision, Result, Tensor, TensorId, Var};
use ringtrain_kernels::{trace, AttentionSpec, Backend, BinaryOp, GatherSpec, UnaryOp, Window2d};
use std::collections::{HashMap, HashSet};

/// How a tensor was computed from its inputs.
pub(crate) enum Op {
    Unary(UnaryOp, Tensor),
    Affine {
        x: Tensor,
        mul: f32,
    },
    Binary(BinaryOp, Tensor, Tensor),
    Matmul {
        a: Tensor,
        b: Tensor,
        trans_a: bool,
        trans_b: bool,
        /// The inputs' precision, which the gradient's products use too.
        precision: Precision,
    },
    /// `x W^T + bias` (`x W + bias` when `in_out`), bias fused into the GEMM.
    Linear {
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        in_out: bool,
        /// A ReLU applied in the op (its gradient masked by the output).
        relu: bool,
        precision: Precision,
    },
    /// A value rounded to a 16-bit format and back (mixed precision's cast), whose
    /// gradient passes through unchanged.
    RoundTo(Tensor),
    /// A sum over some dimensions, kept as size 1.
    Sum(Tensor),
    BroadcastAs(Tensor),
    Reshape(Tensor),
    Transpose(Tensor, usize, usize),
    LogSoftmax(Tensor),
    CrossEntropy {
        logits: Tensor,
        /// u32, one per row, on the logits' device.
        labels: Tensor,
        probs: Tensor,
    },
    Permute(Tensor, Vec<usize>),
    Narrow {
        x: Tensor,
        dim: usize,
        start: usize,
    },
    Cat {
        parts: Vec<Tensor>,
        dim: usize,
    },
    /// `index_select` and `gather`; `idx` is u32 and takes no gradient.
    Gather {
        x: Tensor,
        idx: Tensor,
        spec: GatherSpec,
    },
    /// `where_cond`; `cond` is a u32 mask.
    Select {
        cond: Tensor,
        on_true: Tensor,
        on_false: Tensor,
    },
    Triangle {
        x: Tensor,
        diagonal: i64,
        upper: bool,
    },
    /// Fused layer norm; `stats` holds each row's mean and 1/std.
    LayerNorm {
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        stats: Tensor,
    },
    /// Fused attention; `lse` is the row log-sum-exp its backward pass needs.
    Attention {
        q: Tensor,
        k: Tensor,
        v: Tensor,
        lse: Tensor,
        spec: AttentionSpec,
        /// Its inputs were rounded to this; the backward pass rounds the incoming
        /// gradient to it too.
        precision: Precision,
    },
    /// Convolution with its bias, if any; the input's columns are not kept (backward
    /// unfolds the input again).
    Conv2d {
        x: Tensor,
        weight: Tensor,
        bias: Option<Tensor>,
        /// A ReLU applied in the op (its gradient masked by the output).
        relu: bool,
        /// Its `precision` is the products' inputs', forward and backward.
        geom: Window2d,
    },
    MaxPool2d {
        x: Tensor,
        argmax: Tensor,
        geom: Window2d,
    },
    AvgPool2d {
        x: Tensor,
        geom: Window2d,
    },
}

impl Op {
    fn inputs(&self) -> Vec<&Tensor> {
        match self {
            Op::Unary(_, x)
            | Op::Affine { x, .. }
            | Op::Sum(x)
            | Op::RoundTo(x)
            | Op::BroadcastAs(x)
            | Op::Reshape(x)
            | Op::Transpose(x, ..)
            | Op::LogSoftmax(x)
            | Op::CrossEntropy { logits: x, .. }
            | Op::MaxPool2d { x, .. }
            | Op::AvgPool2d { x, .. }
            | Op::Permute(x, _)
            | Op::Narrow { x, .. }
            | Op::Gather { x, .. }
            | Op::Triangle { x, .. } => vec![x],
            Op::Cat { parts, .. } => parts.iter().collect(),
            Op::Select {
                on_true, on_false, ..
            } => vec![on_true, on_false],
            Op::Attention { q, k, v, .. } => vec![q, k, v],
            Op::LayerNorm {
                x, weight, bias, ..
            } => vec![x, weight, bias],
            Op::Conv2d {
                x, weight, bias, ..
            } => [x, weight].into_iter().chain(bias).collect(),
            Op::Binary(_, a, b) | Op::Matmul { a, b, .. } => vec![a, b],
            Op::Linear {
                x, weight, bias, ..
            } => vec![x, weight, bias],
        }
    }
}

/// Gradients of a loss with respect to the trainable variables it depends on.
#[derive(Default)]
pub struct GradStore {
    grads: HashMap<TensorId, Tensor>,
}

impl std::fmt::Debug for GradStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.grads.iter()).finish()
    }
}

impl GradStore {
    pub fn get(&self, var: &Var) -> Option<&Tensor> {
        self.grads.get(&var.as_tensor().id())
    }

    pub fn get_id(&self, id: TensorId) -> Option<&Tensor> {
        self.grads.get(&id)
    }

    pub fn insert(&mut self, var: &Var, grad: Tensor) {
        self.grads.insert(var.as_tensor().id(), grad);
    }

    /// Takes the gradient of `var` out of the store.
    pub fn remove(&mut self, var: &Var) -> Option<Tensor> {
        self.grads.remove(&var.as_tensor().id())
    }

    pub fn remove_id(&mut self, id: TensorId) -> Option<Tensor> {
        self.grads.remove(&id)
    }

    /// Adds `other`'s gradients to these, variable by variable (gradients accumulated over
    /// micro-batches): a variable in only one of the two keeps that one's.
    pub fn add(&mut self, other: GradStore) -> Result<()> {
        for (id, grad) in other.grads {
            self.accumulate(id, grad)?;
        }
        Ok(())
    }

    /// Multiplies every gradient by `factor` (a loss scale undone, say). By a power of
    /// two this is exact: the same bits as gradients computed without the scale, unless
    /// a value over- or underflowed.
    pub fn scale(&mut self, factor: f32) -> Result<()> {
        for g in self.grads.values_mut() {
            *g = g.scale(factor)?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.grads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// The number of infinite or NaN gradient elements, as a scalar on the gradients'
    /// device (see [`Tensor::count_nonfinite`]); `None` without gradients. A step whose
    /// count is above 0 must not be applied: an optimizer would spread the NaN into every
    /// parameter it touches.
    pub fn count_nonfinite(&self) -> Result<Option<Tensor>> {
        Tensor::count_nonfinite_all(self.grads.values())
    }

    /// Whether every gradient is finite; reads one number back (a wait for the device).
    pub fn all_finite(&self) -> Result<bool> {
        Ok(match self.count_nonfinite()? {
            Some(n) => n.to_scalar()? == 0.0,
            None => true,
        })
    }

    fn accumulate(&mut self, id: TensorId, grad: Tensor) -> Result<()> {
        let sum = match self.grads.remove(&id) {
            Some(prev) => prev.add(&grad)?,
            None => grad,
        };
        self.grads.insert(id, sum);
        Ok(())
    }
}

/// The tensors that lead to `root` through recorded ops, inputs before outputs.
fn topological_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Iterative DFS: deep networks would overflow the stack recursively.
    let mut stack = vec![(root.clone(), false)];
    while let Some((node, expanded)) = stack.pop() {
        if expanded {
            order.push(node);
            continue;
        }
        if !seen.insert(node.id()) {
            continue;
        }
        stack.push((node.clone(), true));
        if let Some(op) = &node.0.op {
            for input in op.inputs() {
                if input.tracks_grad() && !seen.contains(&input.id()) {
                    stack.push((input.clone(), false));
                }
            }
        }
    }
    order
}

impl Tensor {
    /// Gradients of this scalar with respect to every [`Var`] it depends on. A loss that
    /// depends on none is an error ([`Error::NoGradient`]): nothing would train.
    pub fn backward(&self) -> Result<GradStore> {
        self.backward_with(|_, _| Ok(()))
    }

    /// [`Tensor::backward`], calling `on_ready(var, grad)` for each variable as soon as its
    /// gradient is complete, while the rest of the graph is still to be walked: a
    /// data-parallel trainer starts reducing the gradients of the last layers while those
    /// of the first are still being computed. An error from `on_ready` stops the walk.
    pub fn backward_with(
        &self,
        mut on_ready: impl FnMut(&Tensor, &Tensor) -> Result<()>,
    ) -> Result<GradStore> {
        if self.elem_count() != 1 {
            return Err(Error::NotScalar(self.shape().clone()));
        }
        let _span = trace::span("step", "backward");
        no_grad(|| {
            if !self.tracks_grad() {
                return Err(Error::NoGradient);
            }
            let mut store = GradStore::default();
            store.accumulate(
                self.id(),
                Tensor::ones(self.shape().clone(), self.device())?,
            )?;
            let order = topological_order(self);
            // A tensor's gradient is complete once every op that consumed it has passed
            // its share back.
            let mut consumers: HashMap<TensorId, usize> = HashMap::new();
            for node in &order {
                if let Some(op) = &node.0.op {
                    for input in op.inputs() {
                        if input.tracks_grad() {
                            *consumers.entry(input.id()).or_default() += 1;
                        }
                    }
                }
            }
            if self.0.is_var {
                on_ready(self, &store.grads[&self.id()])?;
            }
            // The gradients of narrows, by the tensor narrowed, kept as pieces until that
            // tensor's gradient is complete: a split or chunk's pieces then become one
            // `cat`, where zero-padding each to the whole and summing them wrote the
            // whole once per piece.
            let mut pieces: HashMap<TensorId, Vec<Piece>> = HashMap::new();
            for node in order.iter().rev() {
                let Some(op) = &node.0.op else { continue };
                // Intermediate gradients are dropped once used; only variables keep theirs.
                let input_grads = match (store.grads.remove(&node.id()), op) {
                    (Some(grad), Op::Narrow { x, dim, start }) => {
                        if x.tracks_grad() {
                            pieces.entry(x.id()).or_default().push(Piece {
                                dim: *dim,
                                start: *start,
                                grad,
                            });
                        }
                        vec![None]
                    }
                    (Some(grad), _) => {
                        let _span = trace::span("grad", op.grad_name())
                            .arg("shape", || node.shape().to_string());
                        input_grads(op, node, &grad)?
                    }
                    (None, _) => Vec::new(),
                };
                let mut input_grads = input_grads.into_iter();
                for input in op.inputs() {
                    let g = input_grads.next().flatten();
                    if !input.tracks_grad() {
                        continue;
                    }
                    if let Some(g) = g {
                        store.accumulate(input.id(), g)?;
                    }
                    let left = consumers.get_mut(&input.id()).expect("counted above");
                    *left -= 1;
                    if *left == 0 {
                        if let Some(parts) = pieces.remove(&input.id()) {
                            let dense = store.grads.remove(&input.id());
                            store
                                .grads
                                .insert(input.id(), assemble(input, parts, dense)?);
                        }
                    }
                    if *left == 0 && input.0.is_var {
                        if let Some(g) = store.grads.get(&input.id()) {
                            on_ready(input, g)?;
                        }
                    }
                }
            }
            Ok(store)
        })
    }
}

/// The gradient of a `narrow` of some tensor: `grad` belongs at `start` of `dim`.
struct Piece {
    dim: usize,
    start: usize,
    grad: Tensor,
}

/// `x`'s whole gradient from its narrows' pieces and the rest of its gradient (`dense`):
/// pieces that tile one dim exactly, with nothing else, are joined by one `cat`; anything
/// else is zero-padded and summed, in order of the pieces' positions.
fn assemble(x: &Tensor, mut parts: Vec<Piece>, dense: Option<Tensor>) -> Result<Tensor> {
    parts.sort_by_key(|p| (p.dim, p.start));
    let dim = parts[0].dim;
    let mut next = 0;
    let tiles = parts.iter().all(|p| {
        let fits = p.dim == dim && p.start == next;
        next += p.grad.dims()[dim];
        fits
    });
    if dense.is_none() && tiles && next == x.dims()[dim] {
        let grads: Vec<&Tensor> = parts.iter().map(|p| &p.grad).collect();
        return Tensor::cat(&grads, dim);
    }
    let mut sum = dense;
    for p in parts {
        let padded = p.grad.pad_into(x.shape(), p.dim, p.start)?;
        sum = Some(match sum {
            Some(s) => s.add(&padded)?,
            None => padded,
        });
    }
    Ok(sum.expect("at least one piece"))
}

impl Op {
    /// The span name of this op's gradient in a trace.
    fn grad_name(&self) -> &'static str {
        match self {
            Op::Unary(..) => "grad unary",
            Op::Affine { .. } => "grad affine",
            Op::Binary(..) => "grad binary",
            Op::Matmul { .. } => "grad matmul",
            Op::Linear { .. } => "grad linear",
            Op::Sum(..) => "grad sum",
            Op::RoundTo(..) => "grad round_to",
            Op::BroadcastAs(..) => "grad broadcast_as",
            Op::Reshape(..) => "grad reshape",
            Op::Transpose(..) => "grad transpose",
            Op::LogSoftmax(..) => "grad log_softmax",
            Op::CrossEntropy { .. } => "grad cross_entropy",
            Op::Permute(..) => "grad permute",
            Op::Narrow { .. } => "grad narrow",
            Op::Cat { .. } => "grad cat",
            Op::Gather { .. } => "grad gather",
            Op::Select { .. } => "grad select",
            Op::Triangle { .. } => "grad triangle",
            Op::LayerNorm { .. } => "grad layer_norm",
            Op::Attention { .. } => "grad attention",
            Op::Conv2d { .. } => "grad conv2d",
            Op::MaxPool2d { .. } => "grad max_pool2d",
            Op::AvgPool2d { .. } => "grad avg_pool2d",
        }
    }
}

/// The gradient of each input of `op`, given the gradient `g` of its output `out`
/// (`None` where an input needs none).
fn input_grads(op: &Op, out: &Tensor, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
    let wants = |t: &Tensor| t.tracks_grad();
    Ok(match op {
        Op::Unary(kind, x) => vec![Some(unary_backward(*kind, x, out, g)?)],
        Op::Affine { mul, .. } => vec![Some(g.scale(*mul)?)],
        Op::Binary(kind, a, b) => {
            // Each side is computed only if that operand wants a gradient: dividing by a
            // constant must not cost the three ops of d(a/b)/db.
            let ga = || -> Result<Tensor> {
                let g = match kind {
                    BinaryOp::Add | BinaryOp::Sub => g.clone(),
                    BinaryOp::Mul => g.mul(b)?,
                    BinaryOp::Div => g.div(b)?,
                };
                g.sum_to(a.shape())
            };
            let gb = || -> Result<Tensor> {
                let g = match kind {
                    BinaryOp::Add => g.clone(),
                    BinaryOp::Sub => g.neg()?,
                    BinaryOp::Mul => g.mul(a)?,
                    // d(a/b)/db = -a/b^2 = -out/b
                    BinaryOp::Div => g.mul(out)?.div(b)?.neg()?,
                };
                g.sum_to(b.shape())
            };
            vec![
                wants(a).then(ga).transpose()?,
                wants(b).then(gb).transpose()?,
            ]
        }
        Op::Matmul {
            a,
            b,
            trans_a,
            trans_b,
            precision,
        } => with_precision(*precision, || -> Result<_> {
            // With C = op(A) op(B): dop(A) = G op(B)^T and dop(B) = op(A)^T G, then undo
            // each op by choosing which operand the product reads transposed.
            let ga = || match (trans_a, trans_b) {
                (false, false) => g.matmul_t(b, false, true),
                (false, true) => g.matmul_t(b, false, false),
                (true, false) => b.matmul_t(g, false, true),
                (true, true) => b.matmul_t(g, true, true),
            };
            let gb = || match (trans_a, trans_b) {
                (false, false) => a.matmul_t(g, true, false),
                (false, true) => g.matmul_t(a, true, false),
                (true, false) => a.matmul_t(g, false, false),
                (true, true) => g.matmul_t(a, true, true),
            };
            Ok(vec![
                wants(a).then(ga).transpose()?,
                wants(b).then(gb).transpose()?,
            ])
        })?,
        Op::Linear {
            x,
            weight,
            bias,
            in_out,
            relu,
            precision,
        } => with_precision(*precision, || -> Result<_> {
            // The output is positive exactly where the ReLU's input was, so it masks.
            let masked;
            let g = if *relu {
                masked = unary_backward(UnaryOp::Relu, out, out, g)?;
                &masked
            } else {
                g
            };
            Ok(vec![
                wants(x)
                    .then(|| g.matmul_t(weight, false, *in_out))
                    .transpose()?,
                wants(weight)
                    .then(|| {
                        if *in_out {
                            x.matmul_t(g, true, false)
                        } else {
                            g.matmul_t(x, true, false)
                        }
                    })
                    .transpose()?,
                wants(bias).then(|| g.sum_to(bias.shape())).transpose()?,
            ])
        })?,
        Op::Conv2d {
            x,
            weight,
            bias,
            relu,
            geom,
        } => {
            // `geom` carries the forward pass's precision to the gradient's products.
            let relu_out = relu.then_some(out);
            window_ops::conv2d_grads(g, x, weight, bias.as_ref(), relu_out, geom)?
        }
        Op::MaxPool2d { x, argmax, geom } => {
            vec![Some(window_ops::max_pool2d_grad(g, argmax, x, geom)?)]
        }
        Op::AvgPool2d { x, geom } => vec![Some(window_ops::avg_pool2d_grad(g, x, geom)?)],
        Op::Sum(x) => vec![Some(g.broadcast_as(x.shape().clone())?)],
        Op::RoundTo(_) => vec![Some(g.clone())],
        Op::BroadcastAs(x) => vec![Some(g.sum_to(x.shape())?)],
        Op::Reshape(x) => vec![Some(g.reshape(x.shape().clone())?)],
        Op::Transpose(_, d0, d1) => vec![Some(g.transpose(*d0, *d1)?)],
        Op::LogSoftmax(_) => vec![Some(log_softmax_backward(out, g)?)],
        Op::CrossEntropy { labels, probs, .. } => {
            vec![Some(cross_entropy_backward(probs, labels, g)?)]
        }
        Op::Permute(_, order) => {
            let mut inverse = vec![0usize; order.len()];
            for (i, &d) in order.iter().enumerate() {
                inverse[d] = i;
            }
            vec![Some(g.permute(&inverse)?)]
        }
        // The definition; `backward_with` keeps a narrow's gradient as a piece instead and
        // builds the whole with `assemble`, which does this only when it must.
        Op::Narrow { x, dim, start } => vec![Some(g.pad_into(x.shape(), *dim, *start)?)],
        Op::Cat { parts, dim } => {
            let mut start = 0;
            parts
                .iter()
                .map(|p| {
                    let len = p.dims()[*dim];
                    let piece = wants(p).then(|| g.narrow(*dim, start, len)).transpose();
                    start += len;
                    piece
                })
                .collect::<Result<_>>()?
        }
        Op::Gather { x, idx, spec } => vec![Some(scatter_add(g, idx, spec, x)?)],
        Op::Select {
            cond,
            on_true,
            on_false,
        } => {
            let zero = || Tensor::zeros((), g.device());
            vec![
                wants(on_true)
                    .then(|| Tensor::where_cond(cond, g, &zero()?)?.sum_to(on_true.shape()))
                    .transpose()?,
                wants(on_false)
                    .then(|| Tensor::where_cond(cond, &zero()?, g)?.sum_to(on_false.shape()))
                    .transpose()?,
            ]
        }
        Op::Triangle {
            diagonal, upper, ..
        } => vec![Some(if *upper {
            g.triu(*diagonal)?
        } else {
            g.tril(*diagonal)?
        })],
        Op::LayerNorm {
            x, weight, stats, ..
        } => {
            let [dx, dw, db] = Tensor::layer_norm_grads(x, weight, stats, g)?;
            vec![Some(dx), Some(dw), Some(db)]
        }
        Op::Attention {
            q,
            k,
            v,
            lse,
            spec,
            precision,
        } => {
            let g = &g.round_to(*precision)?;
            let [dq, dk, dv] = Tensor::attention_grads(spec, [q, k, v, out, lse, g])?;
            vec![Some(dq), Some(dk), Some(dv)]
        }
    })
}

fn unary_backward(op: UnaryOp, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Tensor> {
    let storage = {
        let (xs, ys, gs) = (x.read(), y.read(), g.read());
        on_device!(x.device(), b => {
            let mut dx = b.alloc(x.elem_count())?;
            b.unary_backward(op, buf(b, &xs)?, buf(b, &ys)?, buf(b, &gs)?, &mut dx)?;
            wrap(b, dx)
        })
    };
    Ok(Tensor::from_storage(
        storage,
        x.shape().clone(),
        x.device().clone(),
        None,
    ))
}

fn log_softmax_backward(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    let cols = *y.dims().last().unwrap_or(&1);
    let rows = y.elem_count() / cols.max(1);
    let storage = {
        let (ys, gs) = (y.read(), g.read());
        on_device!(y.device(), b => {
            let mut dx = b.alloc(y.elem_count())?;
            b.log_softmax_backward(buf(b, &ys)?, buf(b, &gs)?, &mut dx, rows, cols)?;
            wrap(b, dx)
        })
    };
    Ok(Tensor::from_storage(
        storage,
        y.shape().clone(),
        y.device().clone(),
        None,
    ))
}

fn scatter_add(g: &Tensor, idx: &Tensor, spec: &GatherSpec, x: &Tensor) -> Result<Tensor> {
    let storage = g.with_pair(idx, |gs, is| {
        Ok(on_device!(g.device(), b => {
            let mut dx = b.alloc(spec.src_len())?;
            b.scatter_add(spec, buf(b, gs)?, buf(b, is)?, &mut dx)?;
            wrap(b, dx)
        }))
    })?;
    Ok(Tensor::from_storage(
        storage,
        x.shape().clone(),
        x.device().clone(),
        None,
    ))
}

fn cross_entropy_backward(probs: &Tensor, labels: &Tensor, g: &Tensor) -> Result<Tensor> {
    let cols = *probs.dims().last().unwrap_or(&1);
    let rows = probs.elem_count() / cols.max(1);
    let storage = {
        let (ps, ls, gs) = (probs.read(), labels.read(), g.read());
        on_device!(probs.device(), b => {
            let mut dx = b.alloc(probs.elem_count())?;
            b.softmax_cross_entropy_backward(buf(b, &ps)?, buf(b, &ls)?, buf(b, &gs)?, &mut dx, rows, cols)?;
            wrap(b, dx)
        })
    };
    Ok(Tensor::from_storage(
        storage,
        probs.shape().clone(),
        probs.device().clone(),
        None,
    ))
}
