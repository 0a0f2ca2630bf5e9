//! Optimizers. Each keeps its per-parameter state on the parameter's device and updates
//! parameters in place with one fused kernel per tensor.

mod adamw;
mod loss_scale;
mod sgd;

pub use adamw::{AdamW, AdamWConfig};
pub use loss_scale::LossScaler;
pub use sgd::{Sgd, SgdConfig};

use crate::{Error, GradStore, Result, Tensor, TensorId, Var};
use std::collections::HashSet;

/// Updates a set of variables from their gradients.
pub trait Optimizer {
    /// One update from `grads`; variables without a gradient are left as they are.
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    fn learning_rate(&self) -> f32;
    /// Changes the learning rate (a schedule); it must be finite and non-negative.
    fn set_learning_rate(&mut self, lr: f32) -> Result<()>;
    /// Everything the next updates depend on besides the variables and the configuration
    /// (momentum buffers, moment estimates, step counts), as named host tensors, so that
    /// a checkpoint can hold it. Names say which variable (by its index in the list the
    /// optimizer was built with) a tensor belongs to.
    fn state(&self) -> Result<Vec<StateTensor>>;
    /// Replaces the state with `state`, as [`Optimizer::state`] gave it for the same
    /// variables. Unknown names, wrong shapes or indices are errors, and leave the state
    /// as it was.
    fn load_state(&mut self, state: &[StateTensor]) -> Result<()>;
    /// The variable (its index in the list the optimizer was built with) whose update
    /// the state tensor `name` of [`Optimizer::state`] serves, or `None` for the
    /// optimizer's own (step counts, the learning rate, groups). Sharded optimizer state
    /// (ZeRO) keeps a variable's tensors on the replica that updates it. The default
    /// claims none for a variable: then every replica keeps all of it, which is correct,
    /// and saves nothing.
    fn state_var(&self, name: &str) -> Option<usize> {
        let _ = name;
        None
    }
}

/// The index `i` of a state tensor named `{kind}.{i}` for one of `kinds`.
pub(crate) fn state_var_of(name: &str, kinds: &[&str]) -> Option<usize> {
    let (kind, index) = name.rsplit_once('.')?;
    kinds.contains(&kind).then(|| index.parse().ok()).flatten()
}

/// Scales the gradients of `vars` so that their global L2 norm (all of them as one
/// vector) is at most `max_norm`, as PyTorch's `clip_grad_norm_`: a factor of
/// `max_norm / (norm + 1e-6)` where that is below 1, none otherwise. Returns the norm
/// before clipping, as a scalar on the gradients' device (`None` where no variable has a
/// gradient), computed there without waiting for it, in the order of `vars`, so that a
/// run is reproducible. A non-finite norm makes the gradients non-finite too (the step
/// must then be skipped or stopped, as for any non-finite gradient).
pub fn clip_grad_norm(
    vars: &[Var],
    grads: &mut GradStore,
    max_norm: f32,
) -> Result<Option<Tensor>> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "the gradient norm to clip to must be finite and > 0, got {max_norm}"
        )));
    }
    let mut squares: Option<Tensor> = None;
    for var in vars {
        if let Some(g) = grads.get(var) {
            let s = g.sqr()?.sum_all()?;
            squares = Some(match squares {
                Some(total) => total.add(&s)?,
                None => s,
            });
        }
    }
    let Some(squares) = squares else {
        return Ok(None);
    };
    let norm = squares.sqrt()?;
    // min(1, max / (norm + eps)) without a readback: 1 - relu(1 - coef).
    let coef = Tensor::full(max_norm, (), norm.device())?.div(&norm.add_scalar(1e-6)?)?;
    let factor = coef.affine(-1.0, 1.0)?.relu()?.affine(-1.0, 1.0)?;
    for var in vars {
        if let Some(g) = grads.remove(var) {
            grads.insert(var, g.mul(&factor)?);
        }
    }
    Ok(Some(norm))
}

/// One named tensor of an optimizer's state: name, shape, row-major values.
pub type StateTensor = (String, Vec<usize>, Vec<f32>);

/// Variables that share hyper-parameters inside one optimizer, as PyTorch's parameter
/// groups: a learning rate scaled from the optimizer's (so a schedule moves every group
/// alike) and a weight decay of the group's own, e.g. none for biases, norms and
/// embeddings.
///
/// ```
/// use ringtrain_runtime::optim::{AdamW, AdamWConfig, ParamGroup};
/// use ringtrain_runtime::{Device, Var};
///
/// # fn main() -> ringtrain_runtime::Result<()> {
/// let device = Device::cpu();
/// let named = vec![
///     ("fc.weight".to_string(), Var::zeros((4, 3), &device)?),
///     ("fc.bias".to_string(), Var::zeros(4, &device)?),
/// ];
/// // Weight decay for matrices only: biases and norms (rank 1) get none.
/// let groups = ParamGroup::split(named, |_, v| v.rank() >= 2, |g| g.with_weight_decay(0.0));
/// let opt = AdamW::with_groups(groups, AdamWConfig { weight_decay: 0.1, ..Default::default() })?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ParamGroup {
    pub vars: Vec<Var>,
    /// The group's learning rate is the optimizer's times this.
    pub lr_scale: f32,
    /// The group's weight decay; `None` takes the optimizer's.
    pub weight_decay: Option<f32>,
}

impl ParamGroup {
    /// A group with the optimizer's hyper-parameters.
    pub fn new(vars: Vec<Var>) -> Self {
        Self {
            vars,
            lr_scale: 1.0,
            weight_decay: None,
        }
    }

    pub fn with_lr_scale(mut self, scale: f32) -> Self {
        self.lr_scale = scale;
        self
    }

    pub fn with_weight_decay(mut self, weight_decay: f32) -> Self {
        self.weight_decay = Some(weight_decay);
        self
    }

    /// Two groups from named parameters (a model's `named_parameters`): those `keep`
    /// accepts with the optimizer's settings, then the others as `other` makes them. An
    /// empty group is left out.
    pub fn split(
        named: impl IntoIterator<Item = (String, Var)>,
        keep: impl Fn(&str, &Var) -> bool,
        other: impl FnOnce(ParamGroup) -> ParamGroup,
    ) -> Vec<ParamGroup> {
        let (kept, rest): (Vec<_>, Vec<_>) = named.into_iter().partition(|(n, v)| keep(n, v));
        let vars = |g: Vec<(String, Var)>| g.into_iter().map(|(_, v)| v).collect::<Vec<_>>();
        [
            ParamGroup::new(vars(kept)),
            other(ParamGroup::new(vars(rest))),
        ]
        .into_iter()
        .filter(|g| !g.vars.is_empty())
        .collect()
    }
}

/// The groups of an optimizer, resolved: its variables in order, and each one's group.
#[derive(Debug, Clone)]
struct Groups {
    /// Per group: variable count, learning-rate scale, weight decay.
    hyper: Vec<(usize, f32, f32)>,
    group_of: Vec<usize>,
}

impl Groups {
    /// Checks the groups (finite, non-negative settings; no variable twice, which would be
    /// updated twice) and flattens them, weight decay `None` taking `default_decay`.
    fn new(groups: Vec<ParamGroup>, default_decay: f32) -> Result<(Vec<Var>, Groups)> {
        let mut vars = Vec::new();
        let mut hyper = Vec::new();
        let mut group_of = Vec::new();
        let mut seen: HashSet<TensorId> = HashSet::new();
        for (g, group) in groups.into_iter().enumerate() {
            check_finite(&format!("group {g}'s learning-rate scale"), group.lr_scale)?;
            let decay = group.weight_decay.unwrap_or(default_decay);
            check_finite(&format!("group {g}'s weight decay"), decay)?;
            for var in &group.vars {
                if !seen.insert(var.id()) {
                    return Err(Error::InvalidArgument(format!(
                        "a variable of shape {} appears twice in the optimizer's groups (it \
                         would be updated twice per step): give each variable once, e.g. \
                         from `parameters()`, which lists a shared one once",
                        var.shape()
                    )));
                }
                group_of.push(g);
            }
            hyper.push((group.vars.len(), group.lr_scale, decay));
            vars.extend(group.vars);
        }
        Ok((vars, Groups { hyper, group_of }))
    }

    /// Learning-rate scale and weight decay of variable `i`.
    fn of(&self, i: usize) -> (f32, f32) {
        let (_, scale, decay) = self.hyper[self.group_of[i]];
        (scale, decay)
    }

    /// `groups.0`: one row per group (variable count, learning-rate scale, weight decay),
    /// and `lr.0`: the learning rate, so a resumed optimizer has the settings the saved
    /// one had at that point (a decayed learning rate, say).
    fn state(&self, lr: f32) -> Vec<StateTensor> {
        let rows = self
            .hyper
            .iter()
            .flat_map(|&(n, scale, decay)| [n as f32, scale, decay])
            .collect();
        vec![
            ("lr.0".into(), vec![1], vec![lr]),
            ("groups.0".into(), vec![self.hyper.len(), 3], rows),
        ]
    }

    /// The groups and learning rate `groups.0` and `lr.0` describe, which must have this
    /// optimizer's group sizes; `None` where the state holds neither (an older file).
    fn load(&self, state: &[StateTensor]) -> Result<Option<(Groups, f32)>> {
        let find = |name: &str| state.iter().find(|(n, _, _)| n == name);
        let (Some(groups), Some(lr)) = (find("groups.0"), find("lr.0")) else {
            return Ok(None);
        };
        let rows: Vec<&[f32]> = groups.2.chunks(3).collect();
        let sizes: Vec<usize> = self.hyper.iter().map(|h| h.0).collect();
        let theirs: Vec<f32> = rows.iter().map(|r| r[0]).collect();
        if groups.1 != [self.hyper.len(), 3]
            || groups.2.len() != 3 * self.hyper.len()
            || theirs.iter().zip(&sizes).any(|(&t, &s)| t != s as f32)
        {
            return Err(Error::InvalidArgument(format!(
                "optimizer state `groups.0` describes groups of {theirs:?} variables, this \
                 optimizer has groups of {sizes:?}"
            )));
        }
        let lr = match lr.2[..] {
            [lr] => lr,
            _ => {
                return Err(Error::InvalidArgument(
                    "optimizer state `lr.0` is not one learning rate".into(),
                ))
            }
        };
        check_finite("optimizer state `lr.0`", lr)?;
        let mut hyper = Vec::with_capacity(rows.len());
        for (r, &n) in rows.iter().zip(&sizes) {
            check_finite("optimizer state `groups.0` (learning-rate scale)", r[1])?;
            check_finite("optimizer state `groups.0` (weight decay)", r[2])?;
            hyper.push((n, r[1], r[2]));
        }
        Ok(Some((
            Groups {
                hyper,
                group_of: self.group_of.clone(),
            },
            lr,
        )))
    }
}

/// Whether `name` is one of the entries [`Groups::state`] writes.
fn is_group_state(name: &str) -> bool {
    name == "lr.0" || name == "groups.0"
}

/// A count as an exact pair of f32s (high and low 24 bits): f32 holds integers exactly
/// only up to 2^24, and a resumed run must see the very count it saved.
fn count_to_f32s(count: u64) -> Vec<f32> {
    vec![(count >> 24) as f32, (count & 0xff_ffff) as f32]
}

fn count_from_f32s(name: &str, values: &[f32]) -> Result<u64> {
    let exact = |v: f32| v >= 0.0 && v.fract() == 0.0 && v < 16_777_216.0;
    match values {
        [hi, lo] if exact(*hi) && exact(*lo) => Ok(((*hi as u64) << 24) | *lo as u64),
        _ => Err(Error::InvalidArgument(format!(
            "optimizer state `{name}` is not a step count: {values:?}"
        ))),
    }
}

/// Splits `"{kind}.{index}"` into its kind and a variable index below `vars`.
fn state_slot(name: &str, vars: usize) -> Result<(&str, usize)> {
    let bad = || {
        Error::InvalidArgument(format!(
            "optimizer state `{name}` names no variable of this optimizer ({vars} variables)"
        ))
    };
    let (kind, index) = name.rsplit_once('.').ok_or_else(bad)?;
    let index: usize = index.parse().map_err(|_| bad())?;
    if index >= vars {
        return Err(bad());
    }
    Ok((kind, index))
}

/// Checks that a state tensor has the variable's shape.
fn check_state_shape(name: &str, shape: &[usize], values: &[f32], var: &Var) -> Result<()> {
    if shape != var.dims() || values.len() != var.elem_count() {
        return Err(Error::InvalidArgument(format!(
            "optimizer state `{name}` has shape {shape:?} ({} values), its variable {:?}",
            values.len(),
            var.dims()
        )));
    }
    Ok(())
}

/// A boxed optimizer is an optimizer, so that code can pick one at run time
/// (`Box<dyn Optimizer + Send>`) and still hand it to generic code such as data
/// parallelism.
impl<T: Optimizer + ?Sized> Optimizer for Box<T> {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        (**self).step(grads)
    }

    fn learning_rate(&self) -> f32 {
        (**self).learning_rate()
    }

    fn set_learning_rate(&mut self, lr: f32) -> Result<()> {
        (**self).set_learning_rate(lr)
    }

    fn state(&self) -> Result<Vec<StateTensor>> {
        (**self).state()
    }

    fn load_state(&mut self, state: &[StateTensor]) -> Result<()> {
        (**self).load_state(state)
    }

    fn state_var(&self, name: &str) -> Option<usize> {
        (**self).state_var(name)
    }
}

/// The gradient to apply to `var`, checked against its shape. A gradient that shares the
/// variable's memory (one a user inserted by hand) is copied first: the update reads it
/// while writing the variable.
fn grad_for(var: &Var, grad: &Tensor) -> Result<Tensor> {
    if grad.shape() != var.shape() {
        return Err(Error::ShapeMismatch {
            op: "optimizer step",
            lhs: var.shape().clone(),
            rhs: grad.shape().clone(),
            hint: " (gradient and parameter)",
        });
    }
    if grad.shares_storage(var) {
        Tensor::from_vec(grad.to_vec()?, grad.shape().clone(), grad.device())
    } else {
        Ok(grad.clone())
    }
}

/// Every variable that has a gradient, with that gradient, all checked before any update:
/// a bad gradient must not leave the model half-updated.
fn gradients(vars: &[Var], grads: &GradStore) -> Result<Vec<(usize, Tensor)>> {
    vars.iter()
        .enumerate()
        .filter_map(|(i, var)| grads.get(var).map(|g| grad_for(var, g).map(|g| (i, g))))
        .collect()
}

fn check_finite(name: &str, value: f32) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{name} must be a finite, non-negative number, got {value}"
        )))
    }
}
