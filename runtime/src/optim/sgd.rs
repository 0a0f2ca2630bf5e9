use super::{
    check_finite, check_state_shape, gradients, is_group_state, state_slot, Groups, Optimizer,
    ParamGroup, StateTensor,
};
use crate::device::{buf, buf_mut, on_device, wrap, Storage};
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
/// decay, fused into one kernel per parameter; parameter groups may scale the learning
/// rate and set their own weight decay.
pub struct Sgd {
    vars: Vec<Var>,
    groups: Groups,
    momentum: Vec<Option<Storage>>,
    config: SgdConfig,
}

impl Sgd {
    pub fn new(vars: Vec<Var>, config: SgdConfig) -> Result<Sgd> {
        Self::with_groups(vec![ParamGroup::new(vars)], config)
    }

    /// SGD over parameter groups: each group's learning rate is `config.lr` times its
    /// scale, and its weight decay its own (or `config.weight_decay`).
    pub fn with_groups(groups: Vec<ParamGroup>, config: SgdConfig) -> Result<Sgd> {
        check_finite("learning rate", config.lr)?;
        check_finite("momentum", config.momentum)?;
        check_finite("weight decay", config.weight_decay)?;
        if config.nesterov && config.momentum == 0.0 {
            return Err(Error::InvalidArgument(
                "Nesterov momentum needs momentum > 0".into(),
            ));
        }
        let (vars, groups) = Groups::new(groups, config.weight_decay)?;
        let momentum = vars.iter().map(|_| None).collect();
        Ok(Sgd {
            vars,
            groups,
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
        let _span = ringtrain_kernels::trace::span("step", "sgd step");
        for (i, grad) in gradients(&self.vars, grads)? {
            let (scale, weight_decay) = self.groups.of(i);
            let hp = SgdParams {
                lr: self.config.lr * scale,
                momentum: self.config.momentum,
                weight_decay,
                nesterov: self.config.nesterov,
            };
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

    /// `lr.0` and `groups.0` (the learning rate and each group's settings), and
    /// `momentum.{i}`: the momentum buffer of variable `i`, once it has had an update.
    fn state(&self) -> Result<Vec<StateTensor>> {
        let mut out = self.groups.state(self.config.lr);
        for (i, (var, m)) in self.vars.iter().zip(&self.momentum).enumerate() {
            if let Some(m) = m {
                let values = on_device!(var.device(), b => b.download(buf(b, m)?)?);
                out.push((format!("momentum.{i}"), var.dims().to_vec(), values));
            }
        }
        Ok(out)
    }

    fn state_var(&self, name: &str) -> Option<usize> {
        super::state_var_of(name, &["momentum"])
    }

    fn load_state(&mut self, state: &[StateTensor]) -> Result<()> {
        let groups = self.groups.load(state)?;
        let mut momentum: Vec<Option<Storage>> = self.vars.iter().map(|_| None).collect();
        for (name, shape, values) in state {
            if is_group_state(name) {
                continue;
            }
            let (kind, i) = state_slot(name, self.vars.len())?;
            if kind != "momentum" {
                return Err(Error::InvalidArgument(format!(
                    "optimizer state `{name}` is not SGD's (it keeps momentum.N)"
                )));
            }
            let var = &self.vars[i];
            check_state_shape(name, shape, values, var)?;
            momentum[i] = Some(on_device!(var.device(), b => wrap(b, b.upload(values)?)));
        }
        self.momentum = momentum;
        if let Some((groups, lr)) = groups {
            self.groups = groups;
            self.config.lr = lr;
        }
        Ok(())
    }
}
