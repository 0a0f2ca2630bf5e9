//! Sliding-window ops on NCHW tensors: 2-D convolution, as im2col followed by one GEMM per
//! image on the backend's FMA GEMM, and max and average pooling; with their gradients.

use crate::backprop::Op;
use crate::device::{buf, buf_mut, on_device, wrap};
use crate::ops::{record, same_device};
use crate::{Error, Result, Shape, Tensor};
use ringtrain_kernels::{Backend, GemmSpec, Window2d};

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

/// A tensor the autograd keeps for a backward pass (im2col columns, argmax positions).
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
        const OP: &str = "conv2d";
        same_device(OP, self, weight)?;
        let &[out_channels, in_channels, kh, kw] = weight.dims() else {
            return Err(Error::InvalidShape {
                op: OP,
                reason: format!(
                    "weight of shape {} is not [out_channels, in_channels, kernel_h, kernel_w]",
                    weight.shape()
                ),
            });
        };
        let g = geometry(OP, self, (kh, kw), stride, padding)?;
        if in_channels != g.channels {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: weight.shape().clone(),
                hint: " (input channels and the weight's second dimension)",
            });
        }
        let area = g.out_h() * g.out_w();
        let k = g.patch_len();
        // One GEMM per image: [out, k] x [k, area], the weight shared (stride 0).
        let spec = GemmSpec {
            batch: g.batch,
            stride_a: 0,
            stride_b: k * area,
            ..GemmSpec::new(out_channels, area, k, false, false)
        };
        let (cols, y) = self.with_pair(weight, |x, w| {
            Ok(on_device!(self.device(), be => {
                let mut cols = be.alloc(g.cols_len())?;
                be.im2col(buf(be, x)?, &mut cols, &g)?;
                let mut y = be.alloc(g.batch * out_channels * area)?;
                be.gemm(&spec, buf(be, w)?, &cols, &mut y)?;
                (wrap(be, cols), wrap(be, y))
            }))
        })?;
        let cols = saved(self, cols, g.cols_len());
        let rec = record(&[self, weight], || Op::Conv2d {
            x: self.clone(),
            weight: weight.clone(),
            cols,
            geom: g,
        });
        let y = self.derived(y, output_shape(&g, out_channels), rec);
        match bias {
            None => Ok(y),
            Some(b) if b.dims() == [out_channels] => y.add(&b.reshape((out_channels, 1, 1))?),
            Some(b) => Err(Error::ShapeMismatch {
                op: OP,
                lhs: weight.shape().clone(),
                rhs: b.shape().clone(),
                hint: " (a bias holds one value per output channel)",
            }),
        }
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

/// d(conv2d)/dx for output gradient `dy`: `weight^T dy` per image, folded back by col2im.
pub(crate) fn conv2d_input_grad(dy: &Tensor, weight: &Tensor, g: &Window2d) -> Result<Tensor> {
    let out_channels = weight.dims()[0];
    let (k, area) = (g.patch_len(), g.out_h() * g.out_w());
    let spec = GemmSpec {
        batch: g.batch,
        stride_a: 0,
        stride_b: out_channels * area,
        ..GemmSpec::new(k, area, out_channels, true, false)
    };
    let storage = dy.with_pair(weight, |d, w| {
        Ok(on_device!(dy.device(), be => {
            // Scratch goes through Storage so that it is recycled when dropped.
            let mut dcols = wrap(be, be.alloc(g.cols_len())?);
            be.gemm(&spec, buf(be, w)?, buf(be, d)?, buf_mut(be, &mut dcols)?)?;
            let mut dx = be.alloc(g.input_len())?;
            be.col2im(buf(be, &dcols)?, &mut dx, g)?;
            wrap(be, dx)
        }))
    })?;
    Ok(dy.derived(
        storage,
        Shape::from(vec![g.batch, g.channels, g.height, g.width]),
        None,
    ))
}

/// d(conv2d)/dweight: `dy cols^T` per image, summed over the batch.
pub(crate) fn conv2d_weight_grad(
    dy: &Tensor,
    cols: &Tensor,
    weight: &Tensor,
    g: &Window2d,
) -> Result<Tensor> {
    let out_channels = weight.dims()[0];
    let (batch, area, k) = (g.batch, g.out_h() * g.out_w(), g.patch_len());
    let spec = GemmSpec {
        batch,
        stride_a: out_channels * area,
        stride_b: k * area,
        ..GemmSpec::new(out_channels, k, area, false, true)
    };
    let storage = dy.with_pair(cols, |d, c| {
        Ok(on_device!(dy.device(), be => {
            let mut per_image = wrap(be, be.alloc(batch * out_channels * k)?);
            be.gemm(&spec, buf(be, d)?, buf(be, c)?, buf_mut(be, &mut per_image)?)?;
            let mut dw = be.alloc(out_channels * k)?;
            be.sum_axis(buf(be, &per_image)?, &mut dw, 1, batch, out_channels * k)?;
            wrap(be, dw)
        }))
    })?;
    Ok(dy.derived(storage, weight.shape().clone(), None))
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
