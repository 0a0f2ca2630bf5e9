//! `nn::init`: each distribution draws what its formula says (statistics over many
//! draws, PyTorch's fan rules), parameters are picked by name, a bad pick changes nothing;
//! layers built from given tensors, and a parameter shared by two layers trained once.

use ringtrain_models::nn::init::{self, fans, FanMode, Init, Nonlinearity};
use ringtrain_models::nn::{
    Conv2d, Conv2dConfig, Embedding, LayerNorm, Linear, Module, ModuleState,
};
use ringtrain_models::zoo::{mlp, Activation};
use ringtrain_runtime::optim::{Optimizer, Sgd, SgdConfig};
use ringtrain_runtime::{rng_from_seed, Device, Shape, Tensor, Var};

fn stats(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn fans_follow_pytorch() {
    assert_eq!(fans(&Shape::from((10, 784))).unwrap(), (784, 10));
    assert_eq!(fans(&Shape::from((16, 3, 5, 5))).unwrap(), (75, 400));
    assert!(fans(&Shape::from(10)).is_err());
    assert_eq!(Nonlinearity::Relu.gain(), 2f32.sqrt());
    assert_eq!(Nonlinearity::LeakyRelu(0.0).gain(), 2f32.sqrt());
}

#[test]
fn each_distribution_has_its_formulas_spread() {
    let rng = &mut rng_from_seed(1);
    let shape = Shape::from((256, 512));
    let close = |what: &str, got: f64, want: f64| {
        assert!(
            (got - want).abs() <= 0.03 * want,
            "{what}: std {got}, want {want}"
        );
    };
    let draw = |init: Init, rng: &mut _| init.values(&shape, rng).unwrap();

    let v = draw(Init::kaiming_normal(Nonlinearity::Relu), rng);
    close("kaiming normal", stats(&v).1, (2.0f64 / 512.0).sqrt());
    let v = draw(
        Init::KaimingNormal {
            gain: 1.0,
            mode: FanMode::FanOut,
        },
        rng,
    );
    close(
        "kaiming normal fan out",
        stats(&v).1,
        (1.0f64 / 256.0).sqrt(),
    );
    let v = draw(Init::kaiming_uniform(Nonlinearity::Linear), rng);
    let bound = (3.0f32 / 512.0).sqrt();
    assert!(v.iter().all(|x| x.abs() <= bound));
    close("kaiming uniform", stats(&v).1, (1.0f64 / 512.0).sqrt());
    let v = draw(Init::xavier_uniform(), rng);
    let bound = (6.0f32 / 768.0).sqrt();
    assert!(v.iter().all(|x| x.abs() <= bound));
    close("xavier uniform", stats(&v).1, (2.0f64 / 768.0).sqrt());
    let v = draw(Init::XavierNormal { gain: 2.0 }, rng);
    close("xavier normal", stats(&v).1, 2.0 * (2.0f64 / 768.0).sqrt());
    let v = draw(
        Init::Normal {
            mean: 3.0,
            std: 0.5,
        },
        rng,
    );
    let (mean, std) = stats(&v);
    assert!((mean - 3.0).abs() < 0.01 && (std - 0.5).abs() < 0.01);
    let v = draw(Init::Uniform { lo: -2.0, hi: 1.0 }, rng);
    assert!(v.iter().all(|&x| (-2.0..1.0).contains(&x)));
    assert!((stats(&v).0 + 0.5).abs() < 0.02);
    assert!(draw(Init::Constant(0.25), rng).iter().all(|&x| x == 0.25));
    assert!(draw(Init::Zeros, rng).iter().all(|&x| x == 0.0));
    // A seed gives the same draws.
    let a = Init::xavier_normal()
        .values(&shape, &mut rng_from_seed(9))
        .unwrap();
    let b = Init::xavier_normal()
        .values(&shape, &mut rng_from_seed(9))
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn parameters_are_picked_by_name_and_a_bad_pick_changes_nothing() {
    let device = Device::cpu();
    let rng = &mut rng_from_seed(2);
    let model = mlp(8, &[16], 4, Activation::Relu, &device, rng).unwrap();
    let n = init::apply(&model, |n| n.ends_with("bias"), Init::Constant(0.5), rng).unwrap();
    assert_eq!(n, 2);
    for (name, p) in model.named_parameters() {
        let all_half = p.to_vec().unwrap().iter().all(|&x| x == 0.5);
        assert_eq!(all_half, name.ends_with("bias"), "{name}");
    }
    let before: Vec<Vec<f32>> = model
        .parameters()
        .iter()
        .map(|p| p.to_vec().unwrap())
        .collect();
    // Xavier on every parameter reaches the biases, which have no fans: refused whole.
    let err = init::apply(&model, |_| true, Init::xavier_uniform(), rng).unwrap_err();
    assert!(err.to_string().contains("`0.bias`"), "{err}");
    let none = init::apply(&model, |n| n == "fc.weight", Init::Zeros, rng).unwrap_err();
    assert!(none.to_string().contains("\"0.weight\""), "{none}");
    let after: Vec<Vec<f32>> = model
        .parameters()
        .iter()
        .map(|p| p.to_vec().unwrap())
        .collect();
    assert_eq!(before, after);
    assert!(Init::Normal {
        mean: 0.0,
        std: -1.0
    }
    .values(&Shape::from(3), rng)
    .is_err());
}

#[test]
fn layers_from_given_tensors_and_a_shared_weight() {
    let device = Device::cpu();
    let rng = &mut rng_from_seed(3);
    let table = Var::from_tensor(
        &Init::Normal {
            mean: 0.0,
            std: 0.02,
        }
        .tensor((11, 4), rng, &device)
        .unwrap(),
    )
    .unwrap();
    let wte = Embedding::from_weight(table.clone()).unwrap();
    // The output layer reads the same table: [vocab, dim] is Linear's [out, in].
    let head = Linear::from_parts(table.clone(), None).unwrap();

    #[derive(Module)]
    struct Tied {
        wte: Embedding,
        head: Linear,
    }
    impl Module for Tied {
        fn forward(&self, x: &Tensor) -> ringtrain_runtime::Result<Tensor> {
            self.head.forward(&self.wte.forward(x)?)
        }
    }
    let model = Tied { wte, head };
    let names: Vec<String> = model
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["wte.weight", "head.weight"]);
    assert_eq!(model.parameters().len(), 1, "one variable, trained once");
    assert_eq!(model.num_parameters(), 44);
    let mut opt = Sgd::new(model.parameters(), SgdConfig::default()).unwrap();
    let tokens = Tensor::from_vec(vec![1.0, 5.0, 10.0], 3, &device).unwrap();
    let grads = model
        .forward(&tokens)
        .unwrap()
        .cross_entropy(&[1, 5, 10])
        .unwrap()
        .backward()
        .unwrap();
    opt.step(&grads).unwrap();

    assert!(Embedding::from_weight(Var::zeros(5, &device).unwrap()).is_err());
    let conv = Conv2d::from_parts(
        Var::zeros((8, 3, 3, 3), &device).unwrap(),
        Some(Var::zeros(8, &device).unwrap()),
        Conv2dConfig {
            stride: 2,
            padding: 1,
            ..Conv2dConfig::default()
        },
    )
    .unwrap();
    let y = conv
        .forward(&Tensor::zeros((1, 3, 8, 8), &device).unwrap())
        .unwrap();
    assert_eq!(y.dims(), &[1, 8, 4, 4]);
    assert!(Conv2d::from_parts(
        Var::zeros((8, 3, 3, 3), &device).unwrap(),
        Some(Var::zeros(4, &device).unwrap()),
        Conv2dConfig::default()
    )
    .is_err());
    let ln = LayerNorm::from_parts(
        Var::from_vec(vec![2.0; 4], 4, &device).unwrap(),
        Var::zeros(4, &device).unwrap(),
        1e-5,
    )
    .unwrap();
    let y = ln
        .forward(&Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], (1, 4), &device).unwrap())
        .unwrap()
        .to_vec()
        .unwrap();
    let (mean, std) = stats(&y);
    assert!(mean.abs() < 1e-6 && (std - 2.0).abs() < 1e-3, "{y:?}");
    assert!(LayerNorm::from_parts(
        Var::zeros(4, &device).unwrap(),
        Var::zeros(3, &device).unwrap(),
        1e-5
    )
    .is_err());
}
