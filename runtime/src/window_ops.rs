//! Sliding-window ops on NCHW tensors: 2-D convolution (im2col and the backend's FMA GEMM,
//! image by image on the CPU), and max and average pooling; with their gradients.

use crate::backprop::Op;
use crate::device::{buf, on_device, wrap};
use crate::ops::{record, same_device};
use crate::{compute_precision, Error, Result, Shape, Tensor};
use ringtrain_kernels::{Backend, Window2d};

/// The window geometry of `op` over `x`, which must be `[batch, channels, height, width]`.
fn geometry(
    op: &'static str,
    x: &Tensor,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<Window2d> {
    let &[batch, channels, height, width] = x.dims() else {
        return Err(Error::InvalidShape {
            op,
            reason: format!(
                "input of shape {} is not [batch, channels, height, width]",
                x.shape()
            ),
        });
    };
    let g = Window2d::new(batch, channels, (height, width), kernel, stride, padding);
    g.validate(op)?;
    Ok(g)
}

fn output_shape(g: &Window2d, channels: usize) -> Shape {
    Shape::from(vec![g.batch, channels, g.out_h(), g.out_w()])
}

/// A tensor the autograd keeps for a backward pass (argmax positions).
fn saved(like: &Tensor, storage: crate::device::Storage, len: usize) -> Tensor {
    Tensor::from_storage(storage, Shape::from(len), like.device().clone(), None)
}

impl Tensor {
    /// 2-D convolution (cross-correlation, as PyTorch's `conv2d`) of `self`, shaped
    /// `[batch, in_channels, height, width]`, with `weight` shaped `[out_channels,
    /// in_channels, kernel_h, kernel_w]` and an optional `bias` of `[out_channels]`;
    /// `stride` and zero `padding` are (rows, columns). Returns `[batch, out_channels,
    /// out_h, out_w]`.
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Tensor> {
        self.conv2d_with(weight, bias, stride, padding, false)
    }

    /// [`Tensor::conv2d`] followed by a ReLU, as one op: the CPU clamps each image's output
    /// while it is in cache, and backward masks the gradient there too, so neither pass
    /// goes over memory on its own. The same values and gradients as `conv2d(..)?.relu()`.
    pub fn conv2d_relu(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Tensor> {
        self.conv2d_with(weight, bias, stride, padding, true)
    }

    fn conv2d_with(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: (usize, usize),
        padding: (usize, usize),
        relu: bool,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d";
        same_device(OP, self, weight)?;
        if weight.quantization().is_some() {
            return self.conv2d_with(&weight.dequantized()?, bias, stride, padding, relu);
        }
        let &[out_channels, in_channels, kh, kw] = weight.dims() else {
            return Err(Error::InvalidShape {
                op: OP,
                reason: format!(
                    "weight of shape {} is not [out_channels, in_channels, kernel_h, kernel_w]",
                    weight.shape()
                ),
            });
        };
        // The backend rounds the products' inputs, forward and backward (the geometry is
        // recorded), to the precision `with_precision` set.
        let precision = compute_precision();
        let g = geometry(OP, self, (kh, kw), stride, padding)?.with_precision(precision);
        if in_channels != g.channels {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: weight.shape().clone(),
                hint: " (input channels and the weight's second dimension)",
            });
        }
        let bias = match bias {
            None => None,
            Some(b) if b.dims() == [out_channels] => Some(b),
            Some(b) => {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    lhs: weight.shape().clone(),
                    rhs: b.shape().clone(),
                    hint: " (a bias holds one value per output channel)",
                })
            }
        };
        if let Some(b) = bias {
            same_device(OP, self, b)?;
            if b.shares_storage(self) || b.shares_storage(weight) {
                // Locking one storage twice could wait behind a writer; such a model is
                // rare enough to take the unfused path.
                let y = self.conv2d(weight, None, stride, padding)?;
                let y = y.add(&b.reshape((out_channels, 1, 1))?)?;
                return if relu { y.relu() } else { Ok(y) };
            }
        }
        let y = self.with_pair(weight, |x, w| {
            let b = bias.map(|b| b.read());
            Ok(on_device!(self.device(), be => {
                let mut y = be.alloc(g.batch * out_channels * g.out_h() * g.out_w())?;
                let b = b.as_deref().map(|b| buf(be, b)).transpose()?;
                be.conv2d(buf(be, x)?, buf(be, w)?, b, relu, &mut y, &g, out_channels)?;
                wrap(be, y)
            }))
        })?;
        let inputs: Vec<&Tensor> = [self, weight].into_iter().chain(bias).collect();
        let rec = record(&inputs, || Op::Conv2d {
            x: self.clone(),
            weight: weight.clone(),
            bias: bias.cloned(),
            relu,
            geom: g,
        });
        Ok(self.derived(y, output_shape(&g, out_channels), rec))
    }

    /// Max pooling over `kernel` windows of `self` (`[batch, channels, height, width]`),
    /// with `stride` and `padding` (at most half the kernel; padding never wins).
    pub fn max_pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Tensor> {
        let g = geometry("max_pool2d", self, kernel, stride, padding)?;
        g.validate_pool("max_pool2d")?;
        let (y, argmax) = {
            let x = self.read();
            on_device!(self.device(), be => {
                let mut y = be.alloc(g.output_len())?;
                let mut argmax = be.alloc(g.output_len())?;
                be.max_pool2d(buf(be, &x)?, &mut y, &mut argmax, &g)?;
                (wrap(be, y), wrap(be, argmax))
            })
        };
        let argmax = saved(self, argmax, g.output_len());
        let rec = record(&[self], || Op::MaxPool2d {
            x: self.clone(),
            argmax,
            geom: g,
        });
        Ok(self.derived(y, output_shape(&g, g.channels), rec))
    }

    /// Average pooling over `kernel` windows of `self`, padding counted as zeros
    /// (PyTorch's default).
    pub fn avg_pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Tensor> {
        let g = geometry("avg_pool2d", self, kernel, stride, padding)?;
        g.validate_pool("avg_pool2d")?;
        let y = {
            let x = self.read();
            on_device!(self.device(), be => {
                let mut y = be.alloc(g.output_len())?;
                be.avg_pool2d(buf(be, &x)?, &mut y, &g)?;
                wrap(be, y)
            })
        };
        let rec = record(&[self], || Op::AvgPool2d {
            x: self.clone(),
            geom: g,
        });
        Ok(self.derived(y, output_shape(&g, g.channels), rec))
    }
}

/// The gradients of a convolution for its output gradient `dy`, for the inputs that want
/// one: `[dx, dweight, dbias]` (the last only with a bias).
/// `relu_out` is the op's output when it ran with its ReLU.
pub(crate) fn conv2d_grads(
    dy: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    relu_out: Option<&Tensor>,
    g: &Window2d,
) -> Result<Vec<Option<Tensor>>> {
    let out_channels = weight.dims()[0];
    let want_dx = x.tracks_grad();
    let want_db = bias.is_some_and(Tensor::tracks_grad);
    let (dx, dw, db) = x.with_pair(weight, |xs, ws| {
        let d = dy.read();
        let y = relu_out.map(|y| y.read());
        Ok(on_device!(dy.device(), be => {
            let y = y.as_deref().map(|y| buf(be, y)).transpose()?;
            let mut dx = want_dx.then(|| be.alloc(g.input_len())).transpose()?;
            let mut dw = be.alloc(out_channels * g.patch_len())?;
            let mut db = want_db.then(|| be.alloc(out_channels)).transpose()?;
            be.conv2d_backward(
                buf(be, xs)?,
                buf(be, ws)?,
                buf(be, &d)?,
                y,
                g,
                out_channels,
                dx.as_mut(),
                &mut dw,
                db.as_mut(),
            )?;
            (dx.map(|b| wrap(be, b)), wrap(be, dw), db.map(|b| wrap(be, b)))
        }))
    })?;
    let mut grads = vec![
        dx.map(|s| dy.derived(s, x.shape().clone(), None)),
        weight
            .tracks_grad()
            .then(|| dy.derived(dw, weight.shape().clone(), None)),
    ];
    if bias.is_some() {
        grads.push(db.map(|s| dy.derived(s, Shape::from(out_channels), None)));
    }
    Ok(grads)
}

pub(crate) fn max_pool2d_grad(
    dy: &Tensor,
    argmax: &Tensor,
    x: &Tensor,
    g: &Window2d,
) -> Result<Tensor> {
    let storage = dy.with_pair(argmax, |d, a| {
        Ok(on_device!(dy.device(), be => {
            let mut dx = be.alloc(g.input_len())?;
            be.max_pool2d_backward(buf(be, d)?, buf(be, a)?, &mut dx, g)?;
            wrap(be, dx)
        }))
    })?;
    Ok(dy.derived(storage, x.shape().clone(), None))
}

pub(crate) fn avg_pool2d_grad(dy: &Tensor, x: &Tensor, g: &Window2d) -> Result<Tensor> {
    let storage = {
        let d = dy.read();
        on_device!(dy.device(), be => {
            let mut dx = be.alloc(g.input_len())?;
            be.avg_pool2d_backward(buf(be, &d)?, &mut dx, g)?;
            wrap(be, dx)
        })
    };
    Ok(dy.derived(storage, x.shape().clone(), None))
}
