use super::{Module, ModuleState};
use ringtrain_runtime::{Result, Tensor};

macro_rules! activation {
    ($(#[$doc:meta])* $name:ident, $method:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;

        impl ModuleState for $name {}

        impl Module for $name {
            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                x.$method()
            }
        }
    };
}

activation!(
    /// `max(x, 0)`.
    Relu, relu
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
