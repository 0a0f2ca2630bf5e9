use super::{Module, ModuleState};
use ringtrain_runtime::{Error, Result, Tensor};

/// Square pooling windows: `kernel`, `stride` (PyTorch's default: the kernel) and
/// `padding` (at most half the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Window {
    fn new(layer: &str, kernel: usize, stride: Option<usize>, padding: usize) -> Result<Self> {
        let stride = stride.unwrap_or(kernel);
        if kernel == 0 || stride == 0 || 2 * padding > kernel {
            return Err(Error::InvalidArgument(format!(
                "{layer} needs a positive kernel and stride and padding at most half the \
                 kernel, got kernel {kernel}, stride {stride}, padding {padding}"
            )));
        }
        Ok(Self {
            kernel,
            stride,
            padding,
        })
    }

    /// (kernel, stride, padding), each as (rows, columns).
    #[allow(clippy::type_complexity)]
    fn args(&self) -> ((usize, usize), (usize, usize), (usize, usize)) {
        let square = |v| (v, v);
        (
            square(self.kernel),
            square(self.stride),
            square(self.padding),
        )
    }
}

/// Max over square windows of `[batch, channels, height, width]` inputs.
pub struct MaxPool2d(Window);

impl MaxPool2d {
    pub fn new(kernel: usize, stride: Option<usize>, padding: usize) -> Result<Self> {
        Window::new("MaxPool2d", kernel, stride, padding).map(Self)
    }
}

impl ModuleState for MaxPool2d {}

impl Module for MaxPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (kernel, stride, padding) = self.0.args();
        x.max_pool2d(kernel, stride, padding)
    }
}

/// Mean over square windows (padding counted as zeros, as PyTorch's default).
pub struct AvgPool2d(Window);

impl AvgPool2d {
    pub fn new(kernel: usize, stride: Option<usize>, padding: usize) -> Result<Self> {
        Window::new("AvgPool2d", kernel, stride, padding).map(Self)
    }
}

impl ModuleState for AvgPool2d {}

impl Module for AvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (kernel, stride, padding) = self.0.args();
        x.avg_pool2d(kernel, stride, padding)
    }
}
