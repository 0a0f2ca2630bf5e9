//! `backward_with` reports each variable once, as soon as its gradient is complete, with
//! the same gradient `backward` returns: the hook data parallelism uses to start reducing
//! the last layers' gradients while backward is still walking the first.

use ringtrain_runtime::{rng_from_seed, Device, Tensor, TensorId, Var};

/// Runs `backward_with` on `loss` and returns what it reported, checking each report
/// against the gradient `backward_with` returned.
fn reports(loss: &Tensor, vars: &[&Var]) -> Vec<TensorId> {
    let mut reported: Vec<(TensorId, Vec<f32>)> = Vec::new();
    let grads = loss
        .backward_with(|var, grad| {
            reported.push((var.id(), grad.to_vec()?));
            Ok(())
        })
        .unwrap();
    for var in vars {
        let times = reported.iter().filter(|(id, _)| *id == var.id()).count();
        assert_eq!(times, 1, "each variable is reported exactly once");
        let (_, g) = reported.iter().find(|(id, _)| *id == var.id()).unwrap();
        assert_eq!(&grads.get(var).unwrap().to_vec().unwrap(), g);
    }
    reported.into_iter().map(|(id, _)| id).collect()
}

#[test]
fn each_variable_is_reported_once_with_its_final_gradient() {
    let dev = Device::cpu();
    let mut rng = rng_from_seed(3);
    let x = Tensor::randn(0.0, 1.0, (4, 3), &mut rng, &dev).unwrap();
    let w1 = Var::from_tensor(&Tensor::randn(0.0, 1.0, (3, 5), &mut rng, &dev).unwrap()).unwrap();
    let w2 = Var::from_tensor(&Tensor::randn(0.0, 1.0, (5, 2), &mut rng, &dev).unwrap()).unwrap();
    let y = x.matmul(&w1).unwrap().tanh().unwrap().matmul(&w2).unwrap();

    // A chain: the layer nearer the loss is complete first.
    let loss = y.sqr().unwrap().sum_all().unwrap();
    assert_eq!(reports(&loss, &[&w1, &w2]), vec![w2.id(), w1.id()]);

    // w2 used twice: reported once, with both parts of its gradient in.
    let loss = loss.add(&w2.sum_all().unwrap()).unwrap();
    assert_eq!(reports(&loss, &[&w1, &w2]).len(), 2);
}

#[test]
fn an_error_from_the_hook_stops_backward() {
    let dev = Device::cpu();
    let w = Var::from_vec(vec![1.0, 2.0], 2, &dev).unwrap();
    let loss = w.sqr().unwrap().sum_all().unwrap();
    let err = loss
        .backward_with(|_, _| {
            Err(ringtrain_runtime::Error::InvalidArgument(
                "peer gone".into(),
            ))
        })
        .expect_err("the hook's error");
    assert!(err.to_string().contains("peer gone"));
}
