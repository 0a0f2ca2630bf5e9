//! Layers as user code meets them: parameter names, shapes, and errors.

use ringtrain_models::nn::{Linear, Module, ModuleState, Relu, Sequential};
use ringtrain_models::zoo::{mlp, Activation};
use ringtrain_runtime::{rng_from_seed, Device, Tensor, Var};

#[test]
fn sequential_names_parameters_like_pytorch() {
    let device = Device::cpu();
    let model = mlp(4, &[3], 2, Activation::Relu, &device, &mut rng_from_seed(0)).unwrap();
    let names: Vec<String> = model
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["0.weight", "0.bias", "2.weight", "2.bias"]);
    assert_eq!(model.num_parameters(), 4 * 3 + 3 + 3 * 2 + 2);
    let w = &model.named_parameters()[0].1;
    assert_eq!(w.dims(), &[3, 4], "weights are stored [out, in]");
}

#[test]
fn linear_computes_x_w_transpose_plus_b_on_any_leading_dims() {
    let device = Device::cpu();
    let w = Var::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (2, 3), &device).unwrap();
    let b = Var::from_vec(vec![0.5, -0.5], 2, &device).unwrap();
    let layer = Linear::from_parts(w, Some(b)).unwrap();
    let x = Tensor::from_vec(vec![1.0, 0.0, -1.0, 2.0, 1.0, 0.0], (2, 1, 3), &device).unwrap();
    let y = Sequential::new()
        .with(layer)
        .with(Relu)
        .forward(&x)
        .unwrap();
    assert_eq!(y.dims(), &[2, 1, 2]);
    // rows: [1,0,-1] -> [1-3+0.5, 4-6-0.5] = [-1.5, -2.5] -> relu 0; [2,1,0] -> [4.5, 12.5]
    assert_eq!(y.to_vec().unwrap(), vec![0.0, 0.0, 4.5, 12.5]);
}

#[test]
fn linear_rejects_bad_shapes() {
    let device = Device::cpu();
    let layer = Linear::new(3, 2, &device, &mut rng_from_seed(1)).unwrap();
    let err = layer
        .forward(&Tensor::zeros((4, 5), &device).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("[.., 3]") && err.contains("[4, 5]"), "{err}");
    let empty = Var::zeros((2, 0), &device).unwrap();
    let err = Linear::from_parts(empty, None).err().unwrap().to_string();
    assert!(err.contains("at least one input"), "{err}");
    let w = Var::zeros((2, 3), &device).unwrap();
    let bad_bias = Var::zeros(3, &device).unwrap();
    assert!(Linear::from_parts(w, Some(bad_bias)).is_err());
    assert!(Linear::new(0, 2, &device, &mut rng_from_seed(1)).is_err());
    assert!("swish".parse::<Activation>().is_err());
}
