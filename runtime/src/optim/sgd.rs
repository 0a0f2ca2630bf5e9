use super::{check_finite, gradients, Optimizer};
use crate::device::{buf, buf_mut, on_device, Storage};
use crate::{Error, GradStore, Result, Var};
use ringtrain_kernels::{Backend, SgdParams};

/// SGD hyper-parameters (PyTorch semantics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            lr: 0.01,
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

/// Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight
/// decay, fused into one kernel per parameter.
pub struct Sgd {
    vars: Vec<Var>,
    momentum: Vec<Option<Storage>>,
    config: SgdConfig,
}

impl Sgd {
    pub fn new(vars: Vec<Var>, config: SgdConfig) -> Result<Sgd> {
        check_finite("learning rate", config.lr)?;
        check_finite("momentum", config.momentum)?;
        check_finite("weight decay", config.weight_decay)?;
        if config.nesterov && config.momentum == 0.0 {
            return Err(Error::InvalidArgument(
                "Nesterov momentum needs momentum > 0".into(),
            ));
        }
        let momentum = vars.iter().map(|_| None).collect();
        Ok(Sgd {
            vars,
            momentum,
            config,
        })
    }

    pub fn config(&self) -> &SgdConfig {
        &self.config
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let hp = SgdParams {
            lr: self.config.lr,
            momentum: self.config.momentum,
            weight_decay: self.config.weight_decay,
            nesterov: self.config.nesterov,
        };
        for (i, grad) in gradients(&self.vars, grads)? {
            let (var, state) = (&self.vars[i], &mut self.momentum[i]);
            let g = grad.read();
            let mut p = var.write();
            on_device!(var.device(), b => {
                if hp.momentum != 0.0 && state.is_none() {
                    *state = Some(crate::device::wrap(b, b.zeros(var.elem_count())?));
                }
                let mom = match state.as_mut() {
                    Some(s) => Some(buf_mut(b, s)?),
                    None => None,
                };
                b.sgd_step(&hp, buf_mut(b, &mut p)?, buf(b, &g)?, mom)?;
            });
        }
        Ok(())
    }

    fn learning_rate(&self) -> f32 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f32) -> Result<()> {
        check_finite("learning rate", lr)?;
        self.config.lr = lr;
        Ok(())
    }
}
