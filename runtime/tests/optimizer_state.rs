//! An optimizer's state, taken out and put back, as a checkpoint does: an optimizer that
//! loads another's state (and variables set to the other's values) continues with exactly
//! the other's updates, on the CPU and the GPU (lavapipe in CI); state that does not fit
//! is an error and leaves the optimizer as it was.

use ringtrain_runtime::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup, Sgd, SgdConfig};
use ringtrain_runtime::{rng_from_seed, Device, Result, Tensor, Var};

fn devices() -> Vec<Device> {
    let mut d = vec![Device::cpu()];
    d.extend(Device::test_gpu());
    d
}

/// Two variables and a fixed least-squares loss; `bias` gets no gradient in the first
/// two steps (its state starts late, as a layer unused at first would).
struct Problem {
    weight: Var,
    bias: Var,
    x: Tensor,
    y: Tensor,
}

impl Problem {
    fn new(device: &Device) -> Result<Self> {
        let mut rng = rng_from_seed(5);
        Ok(Self {
            weight: Var::from_tensor(&Tensor::randn(0.0, 1.0, (4, 3), &mut rng, device)?)?,
            bias: Var::from_tensor(&Tensor::randn(0.0, 1.0, (1, 3), &mut rng, device)?)?,
            x: Tensor::randn(0.0, 1.0, (8, 4), &mut rng, device)?,
            y: Tensor::randn(0.0, 1.0, (8, 3), &mut rng, device)?,
        })
    }

    fn vars(&self) -> Vec<Var> {
        vec![self.weight.clone(), self.bias.clone()]
    }

    fn step(&self, opt: &mut dyn Optimizer, n: usize) -> Result<()> {
        let out = self.x.matmul(self.weight.as_tensor())?;
        let out = if n >= 2 {
            out.add(self.bias.as_tensor())?
        } else {
            out
        };
        opt.step(&out.mse(&self.y)?.backward()?)
    }

    fn bits(&self) -> Vec<u32> {
        self.vars()
            .iter()
            .flat_map(|v| v.to_vec().unwrap())
            .map(f32::to_bits)
            .collect()
    }

    /// Sets this problem's variables to `other`'s values.
    fn copy_from(&self, other: &Problem) -> Result<()> {
        for (a, b) in self.vars().iter().zip(other.vars()) {
            a.set(b.as_tensor())?;
        }
        Ok(())
    }
}

type Make = fn(Vec<Var>) -> Box<dyn Optimizer>;

fn optimizers() -> Vec<(&'static str, Make)> {
    vec![
        ("sgd", |v| {
            Box::new(
                Sgd::new(
                    v,
                    SgdConfig {
                        lr: 0.05,
                        momentum: 0.9,
                        weight_decay: 0.01,
                        nesterov: true,
                    },
                )
                .unwrap(),
            )
        }),
        ("adamw", |v| {
            Box::new(
                AdamW::new(
                    v,
                    AdamWConfig {
                        lr: 0.01,
                        weight_decay: 0.1,
                        ..AdamWConfig::default()
                    },
                )
                .unwrap(),
            )
        }),
    ]
}

#[test]
fn an_optimizer_resumed_from_state_makes_the_same_updates() {
    for device in devices() {
        for (name, make) in optimizers() {
            let run = Problem::new(&device).unwrap();
            let mut opt = make(run.vars());
            for n in 0..4 {
                run.step(opt.as_mut(), n).unwrap();
            }
            let state = opt.state().unwrap();
            let resumed = Problem::new(&device).unwrap();
            resumed.copy_from(&run).unwrap();
            let mut fresh = make(resumed.vars());
            fresh.load_state(&state).unwrap();
            assert_eq!(fresh.state().unwrap(), state, "{name}: state round trip");
            for n in 4..8 {
                run.step(opt.as_mut(), n).unwrap();
                resumed.step(fresh.as_mut(), n).unwrap();
            }
            assert_eq!(run.bits(), resumed.bits(), "{name} on {}", device.name());
        }
    }
}

#[test]
fn state_that_does_not_fit_is_refused_and_changes_nothing() {
    let device = Device::cpu();
    for (name, make) in optimizers() {
        let p = Problem::new(&device).unwrap();
        let mut opt = make(p.vars());
        for n in 0..3 {
            p.step(opt.as_mut(), n).unwrap();
        }
        let good = opt.state().unwrap();
        let mut bad_shape = good.clone();
        let last = bad_shape
            .iter()
            .rposition(|(n, _, _)| !n.starts_with('t') && n != "step.0")
            .unwrap();
        bad_shape[last].1 = vec![99];
        let mut bad_index = good.clone();
        bad_index[last].0 = bad_index[last].0.replace(".1", ".7").replace(".0", ".7");
        let mut bad_kind = good.clone();
        bad_kind.push(("velocity.0".into(), vec![4, 3], vec![0.0; 12]));
        for (what, state) in [
            ("shape", bad_shape),
            ("index", bad_index),
            ("kind", bad_kind),
        ] {
            let err = opt.load_state(&state).unwrap_err().to_string();
            assert!(err.contains("optimizer state"), "{name} {what}: {err}");
            assert_eq!(
                opt.state().unwrap(),
                good,
                "{name}: a refused load changed the state"
            );
        }
    }
}

type MakeGroups = fn(Vec<ParamGroup>, f32, f32) -> Box<dyn Optimizer>;

/// Each optimizer over groups, with base learning rate and weight decay.
fn grouped() -> Vec<(&'static str, MakeGroups)> {
    vec![
        ("sgd", |groups, lr, weight_decay| {
            let config = SgdConfig {
                lr,
                momentum: 0.9,
                weight_decay,
                nesterov: false,
            };
            Box::new(Sgd::with_groups(groups, config).unwrap())
        }),
        ("adamw", |groups, lr, weight_decay| {
            let config = AdamWConfig {
                lr,
                weight_decay,
                ..AdamWConfig::default()
            };
            Box::new(AdamW::with_groups(groups, config).unwrap())
        }),
    ]
}

/// Groups make the updates that separate optimizers with the groups' settings would: the
/// learning rate scaled (also after a schedule changes it), the weight decay the group's.
#[test]
fn parameter_groups_update_as_separate_optimizers_would() {
    for device in devices() {
        for (name, make) in grouped() {
            let together = Problem::new(&device).unwrap();
            let apart = Problem::new(&device).unwrap();
            let mut one = make(
                vec![
                    ParamGroup::new(vec![together.weight.clone()]),
                    ParamGroup::new(vec![together.bias.clone()])
                        .with_lr_scale(0.5)
                        .with_weight_decay(0.0),
                ],
                0.02,
                0.1,
            );
            let mut w = make(vec![ParamGroup::new(vec![apart.weight.clone()])], 0.02, 0.1);
            let mut b = make(vec![ParamGroup::new(vec![apart.bias.clone()])], 0.01, 0.0);
            for n in 0..6 {
                if n == 3 {
                    // A schedule halves the learning rate: every group follows.
                    one.set_learning_rate(0.01).unwrap();
                    w.set_learning_rate(0.01).unwrap();
                    b.set_learning_rate(0.005).unwrap();
                }
                together.step(one.as_mut(), n).unwrap();
                let out = apart.x.matmul(apart.weight.as_tensor()).unwrap();
                let out = if n >= 2 {
                    out.add(apart.bias.as_tensor()).unwrap()
                } else {
                    out
                };
                let grads = out.mse(&apart.y).unwrap().backward().unwrap();
                w.step(&grads).unwrap();
                b.step(&grads).unwrap();
            }
            assert_eq!(together.bits(), apart.bits(), "{name} on {}", device.name());
        }
    }
}

#[test]
fn grouped_state_resumes_exactly_and_other_groupings_are_refused() {
    let device = Device::cpu();
    for (name, make) in grouped() {
        let groups = |p: &Problem| {
            vec![
                ParamGroup::new(vec![p.weight.clone()]).with_lr_scale(2.0),
                ParamGroup::new(vec![p.bias.clone()]).with_weight_decay(0.0),
            ]
        };
        let run = Problem::new(&device).unwrap();
        let mut opt = make(groups(&run), 0.02, 0.1);
        for n in 0..3 {
            run.step(opt.as_mut(), n).unwrap();
        }
        opt.set_learning_rate(0.007).unwrap();
        let state = opt.state().unwrap();
        // A fresh optimizer built with the original learning rate takes the saved one.
        let resumed = Problem::new(&device).unwrap();
        resumed.copy_from(&run).unwrap();
        let mut fresh = make(groups(&resumed), 0.02, 0.1);
        fresh.load_state(&state).unwrap();
        assert_eq!(fresh.learning_rate(), 0.007, "{name}");
        for n in 3..6 {
            run.step(opt.as_mut(), n).unwrap();
            resumed.step(fresh.as_mut(), n).unwrap();
        }
        assert_eq!(run.bits(), resumed.bits(), "{name}: resumed with groups");
        // One group of both variables is another optimizer: refused, nothing changed.
        let other = Problem::new(&device).unwrap();
        let mut single = make(vec![ParamGroup::new(other.vars())], 0.02, 0.1);
        let before = single.state().unwrap();
        let err = single.load_state(&state).unwrap_err().to_string();
        assert!(err.contains("groups of [1.0, 1.0]"), "{name}: {err}");
        assert_eq!(single.state().unwrap(), before, "{name}");
    }
}

#[test]
fn a_variable_in_two_groups_is_refused() {
    let p = Problem::new(&Device::cpu()).unwrap();
    let twice = vec![
        ParamGroup::new(vec![p.weight.clone()]),
        ParamGroup::new(vec![p.weight.clone(), p.bias.clone()]),
    ];
    let err = Sgd::with_groups(twice.clone(), SgdConfig::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("appears twice"), "{err}");
    assert!(AdamW::with_groups(twice, AdamWConfig::default()).is_err());
    let bad = vec![ParamGroup::new(p.vars()).with_lr_scale(f32::NAN)];
    assert!(Sgd::with_groups(bad, SgdConfig::default()).is_err());
}
