use super::{Module, ModuleState};
use ringtrain_runtime::{Result, Tensor};

macro_rules! activation {
    ($(#[$doc:meta])* $name:ident, $method:ident $(, $is_relu:literal)?) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;

        impl ModuleState for $name {}

        impl Module for $name {
            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                x.$method()
            }
            $(
            fn is_relu(&self) -> bool {
                $is_relu
            }
            )?
        }
    };
}

activation!(
    /// `max(x, 0)`.
    Relu, relu, true
);
activation!(
    /// GELU, tanh approximation.
    Gelu, gelu
);
activation!(Tanh, tanh);
activation!(
    /// The logistic function.
    Sigmoid, sigmoid
);
