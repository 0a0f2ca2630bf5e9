use super::{
    check_finite, check_state_shape, count_from_f32s, count_to_f32s, gradients, is_group_state,
    state_slot, Groups, Optimizer, ParamGroup, StateTensor,
};
use crate::device::{buf, buf_mut, on_device, wrap, Storage};
use crate::{Error, GradStore, Result, Var};
use ringtrain_kernels::{AdamWParams, Backend};

/// AdamW hyper-parameters (PyTorch defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Adam with decoupled weight decay, fused into one kernel per parameter; parameter
/// groups may scale the learning rate and set their own weight decay.
pub struct AdamW {
    vars: Vec<Var>,
    groups: Groups,
    /// First and second moment estimates and the number of updates they have seen,
    /// created on a variable's first update. The count is per variable (as in PyTorch), so
    /// one whose first gradient comes late still gets the bias correction of a first step.
    moments: Vec<Option<(Storage, Storage, u64)>>,
    step: u64,
    config: AdamWConfig,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, config: AdamWConfig) -> Result<AdamW> {
        Self::with_groups(vec![ParamGroup::new(vars)], config)
    }

    /// AdamW over parameter groups: each group's learning rate is `config.lr` times its
    /// scale, and its weight decay its own (or `config.weight_decay`).
    pub fn with_groups(groups: Vec<ParamGroup>, config: AdamWConfig) -> Result<AdamW> {
        check_finite("learning rate", config.lr)?;
        check_finite("weight decay", config.weight_decay)?;
        if !(config.eps.is_finite() && config.eps > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "eps must be a finite number > 0 (it keeps m / sqrt(v) finite), got {}",
                config.eps
            )));
        }
        for (name, beta) in [("beta1", config.beta1), ("beta2", config.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::InvalidArgument(format!(
                    "{name} must be in [0, 1), got {beta}"
                )));
            }
        }
        let (vars, groups) = Groups::new(groups, config.weight_decay)?;
        let moments = vars.iter().map(|_| None).collect();
        Ok(AdamW {
            vars,
            groups,
            moments,
            step: 0,
            config,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Calls to `step` so far.
    pub fn steps(&self) -> u64 {
        self.step
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let _span = ringtrain_kernels::trace::span("step", "adamw step");
        let updates = gradients(&self.vars, grads)?;
        self.step += 1;
        let c = self.config;
        for (i, grad) in updates {
            let (var, state) = (&self.vars[i], &mut self.moments[i]);
            let g = grad.read();
            let mut p = var.write();
            on_device!(var.device(), b => {
                if state.is_none() {
                    let n = var.elem_count();
                    *state = Some((wrap(b, b.zeros(n)?), wrap(b, b.zeros(n)?), 0));
                }
                if let Some((m, v, t)) = state.as_mut() {
                    *t += 1;
                    let (scale, weight_decay) = self.groups.of(i);
                    let hp = AdamWParams {
                        lr: c.lr * scale,
                        beta1: c.beta1,
                        beta2: c.beta2,
                        eps: c.eps,
                        weight_decay,
                        step: *t,
                    };
                    b.adamw_step(&hp, buf_mut(b, &mut p)?, buf(b, &g)?, buf_mut(b, m)?, buf_mut(b, v)?)?;
                }
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

    /// `step.0` (calls to `step`, as an exact pair of f32s), `lr.0` and `groups.0` (the
    /// learning rate and each group's settings), and for each variable that has had an
    /// update `m.{i}`, `v.{i}` (its moment estimates) and `t.{i}` (its updates).
    fn state(&self) -> Result<Vec<StateTensor>> {
        let mut out = vec![("step.0".to_string(), vec![2], count_to_f32s(self.step))];
        out.extend(self.groups.state(self.config.lr));
        for (i, (var, moments)) in self.vars.iter().zip(&self.moments).enumerate() {
            if let Some((m, v, t)) = moments {
                let (m, v) = on_device!(var.device(), b => (
                    b.download(buf(b, m)?)?,
                    b.download(buf(b, v)?)?,
                ));
                out.push((format!("m.{i}"), var.dims().to_vec(), m));
                out.push((format!("v.{i}"), var.dims().to_vec(), v));
                out.push((format!("t.{i}"), vec![2], count_to_f32s(*t)));
            }
        }
        Ok(out)
    }

    fn state_var(&self, name: &str) -> Option<usize> {
        super::state_var_of(name, &["m", "v", "t"])
    }

    fn load_state(&mut self, state: &[StateTensor]) -> Result<()> {
        let n = self.vars.len();
        let mut parts: Vec<[Option<&[f32]>; 3]> = vec![[None; 3]; n];
        let groups = self.groups.load(state)?;
        let mut step = None;
        for (name, shape, values) in state {
            if is_group_state(name) {
                continue;
            }
            if name == "step.0" {
                step = Some(count_from_f32s(name, values)?);
                continue;
            }
            let (kind, i) = state_slot(name, n)?;
            let slot = match kind {
                "m" | "v" => {
                    check_state_shape(name, shape, values, &self.vars[i])?;
                    usize::from(kind == "v")
                }
                "t" => {
                    count_from_f32s(name, values)?;
                    2
                }
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "optimizer state `{name}` is not AdamW's (it keeps step.0, m.N, v.N, t.N)"
                    )))
                }
            };
            parts[i][slot] = Some(values);
        }
        let step = step.ok_or_else(|| {
            Error::InvalidArgument("AdamW state without its step count `step.0`".into())
        })?;
        let mut moments = Vec::with_capacity(n);
        for (i, (var, p)) in self.vars.iter().zip(&parts).enumerate() {
            moments.push(match p {
                [None, None, None] => None,
                [Some(m), Some(v), Some(t)] => {
                    let t = count_from_f32s(&format!("t.{i}"), t)?;
                    Some(on_device!(var.device(), b => (
                        wrap(b, b.upload(m)?),
                        wrap(b, b.upload(v)?),
                        t,
                    )))
                }
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "AdamW state of variable {i} is incomplete: it needs m.{i}, v.{i} and t.{i}"
                    )))
                }
            });
        }
        self.moments = moments;
        self.step = step;
        if let Some((groups, lr)) = groups {
            self.groups = groups;
            self.config.lr = lr;
        }
        Ok(())
    }
}
