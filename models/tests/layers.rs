//! The layers deep networks are built from, as a user meets them: what they compute
//! (against direct references), their gradients (finite differences, for the layers
//! composed from tensor ops), training and evaluation modes, names, and errors. The GPU
//! runs the same layers as the CPU and must agree (lavapipe where there is no GPU).

use ringtrain_models::nn::{
    AvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, Dropout, Embedding, Flatten, LayerNorm, Linear,
    MaxPool2d, Module, ModuleState, Relu, Residual, Sequential, Unflatten,
};
use ringtrain_models::zoo::Cnn;
use ringtrain_runtime::{no_grad, rng_from_seed, Device, Tensor, Var};
use std::sync::OnceLock;

fn cpu() -> Device {
    Device::cpu()
}

fn gpu() -> Option<Device> {
    static GPU: OnceLock<Option<Device>> = OnceLock::new();
    GPU.get_or_init(Device::test_gpu).clone()
}

fn randn(dims: Vec<usize>, seed: u64, device: &Device) -> Tensor {
    Tensor::randn(0.0, 1.0, dims, &mut rng_from_seed(seed), device).unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())),
            "{what}: element {i}: {x} vs {y}"
        );
    }
}

#[test]
fn conv2d_matches_a_direct_convolution_and_names_its_parameters() {
    let dev = cpu();
    let mut rng = rng_from_seed(1);
    let config = Conv2dConfig {
        stride: 2,
        padding: 1,
        bias: true,
        relu: false,
    };
    let conv = Conv2d::new(3, 4, 3, config, &dev, &mut rng).unwrap();
    let names: Vec<(String, Vec<usize>)> = conv
        .named_parameters()
        .into_iter()
        .map(|(n, v)| (n, v.dims().to_vec()))
        .collect();
    assert_eq!(
        names,
        [
            ("weight".into(), vec![4, 3, 3, 3]),
            ("bias".into(), vec![4])
        ]
    );
    let x = randn(vec![2, 3, 7, 6], 2, &dev);
    let y = conv.forward(&x).unwrap();
    assert_eq!(y.dims(), &[2, 4, 4, 3]);
    let (xv, w, b) = (
        x.to_vec().unwrap(),
        conv.weight().to_vec().unwrap(),
        conv.bias().unwrap().to_vec().unwrap(),
    );
    let mut want = Vec::new();
    for n in 0..2 {
        for (o, &bias) in b.iter().enumerate() {
            for r in 0..4i64 {
                for c in 0..3i64 {
                    let mut s = bias as f64;
                    for ch in 0..3 {
                        for ki in 0..3i64 {
                            for kj in 0..3i64 {
                                let (h, wc) = (r * 2 + ki - 1, c * 2 + kj - 1);
                                if (0..7).contains(&h) && (0..6).contains(&wc) {
                                    let xi = ((n * 3 + ch) * 7 + h as usize) * 6 + wc as usize;
                                    let wi = ((o * 3 + ch) * 3 + ki as usize) * 3 + kj as usize;
                                    s += xv[xi] as f64 * w[wi] as f64;
                                }
                            }
                        }
                    }
                    want.push(s as f32);
                }
            }
        }
    }
    close(&y.to_vec().unwrap(), &want, 1e-5, "conv2d");
}

/// `relu: true` runs the ReLU inside the convolution: the same values, bit for bit, and
/// the same gradients as a ReLU op after a plain convolution.
#[test]
fn conv2d_with_its_relu_equals_conv2d_then_relu() {
    let dev = cpu();
    let config = Conv2dConfig {
        padding: 1,
        ..Conv2dConfig::default()
    };
    let plain = Conv2d::new(3, 5, 3, config, &dev, &mut rng_from_seed(4)).unwrap();
    let fused = Conv2d::new(
        3,
        5,
        3,
        Conv2dConfig {
            relu: true,
            ..config
        },
        &dev,
        &mut rng_from_seed(4),
    )
    .unwrap();
    let x = randn(vec![4, 3, 9, 7], 5, &dev);
    let a = plain.forward(&x).unwrap().relu().unwrap();
    let b = fused.forward(&x).unwrap();
    let bits =
        |t: &Tensor| -> Vec<u32> { t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect() };
    assert_eq!(bits(&a), bits(&b));
    assert!(a.to_vec().unwrap().contains(&0.0), "some outputs clamped");
    let (ga, gb) = (
        a.sqr().unwrap().sum_all().unwrap().backward().unwrap(),
        b.sqr().unwrap().sum_all().unwrap().backward().unwrap(),
    );
    for (pa, pb) in plain.parameters().iter().zip(fused.parameters().iter()) {
        let (da, db) = (ga.get(pa).unwrap(), gb.get(pb).unwrap());
        let close = da
            .to_vec()
            .unwrap()
            .iter()
            .zip(db.to_vec().unwrap())
            .all(|(u, v)| (u - v).abs() <= 1e-5 * u.abs().max(1.0));
        assert!(close, "gradients differ");
    }
}

/// A `Sequential` runs a layer followed by a `Relu` as the layer's `forward_relu`: the
/// Linear's GEMM applies the ReLU in its epilogue, with the same values and gradients,
/// bit for bit, as the two ops one after the other, on every backend.
#[test]
fn sequential_fuses_a_relu_into_the_linear_before_it() {
    for dev in [Some(cpu()), gpu()].into_iter().flatten() {
        let mut rng = rng_from_seed(8);
        let model = Sequential::new()
            .with(Linear::new(13, 17, &dev, &mut rng).unwrap())
            .with(Relu)
            .with(Linear::new(17, 5, &dev, &mut rng).unwrap());
        let x = randn(vec![9, 13], 9, &dev);
        let fused = model.forward(&x).unwrap();
        let params = model.parameters();
        let (w0, b0, w1, b1) = (&params[0], &params[1], &params[2], &params[3]);
        let hidden = x
            .linear(w0.as_tensor(), Some(b0.as_tensor()))
            .unwrap()
            .relu()
            .unwrap();
        assert!(
            hidden.to_vec().unwrap().contains(&0.0),
            "some outputs clamped"
        );
        let apart = hidden.linear(w1.as_tensor(), Some(b1.as_tensor())).unwrap();
        let bits =
            |t: &Tensor| -> Vec<u32> { t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect() };
        assert_eq!(bits(&fused), bits(&apart), "outputs on {dev:?}");
        let loss = |y: &Tensor| y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let (gf, ga) = (loss(&fused), loss(&apart));
        for p in &params {
            let (f, a) = (gf.get(p).unwrap(), ga.get(p).unwrap());
            assert_eq!(bits(f), bits(a), "gradients on {dev:?}");
        }
    }
}

/// Which of a layer's two entry points `Sequential` calls: `forward_relu` exactly when a
/// `Relu` follows, `forward` otherwise (a `Tanh` after it, or the last layer).
#[test]
fn sequential_calls_forward_relu_only_before_a_relu() {
    use ringtrain_models::nn::Tanh;
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Probe(Arc<Mutex<Vec<&'static str>>>);
    impl ModuleState for Probe {}
    impl Module for Probe {
        fn forward(&self, x: &Tensor) -> ringtrain_runtime::Result<Tensor> {
            self.0.lock().unwrap().push("forward");
            Ok(x.clone())
        }
        fn forward_relu(&self, x: &Tensor) -> ringtrain_runtime::Result<Tensor> {
            self.0.lock().unwrap().push("forward_relu");
            x.relu()
        }
    }
    let probe = Probe::default();
    let model = Sequential::new()
        .with(probe.clone())
        .with(Relu)
        .with(probe.clone())
        .with(Tanh)
        .with(probe.clone())
        .with(Relu)
        .with(Relu)
        .with(probe.clone());
    let x = Tensor::from_slice(&[-1.0f32, 2.0], (1, 2), &cpu()).unwrap();
    let y = model.forward(&x).unwrap();
    assert_eq!(y.to_vec().unwrap(), [0.0, 2.0f32.tanh()]);
    assert_eq!(
        *probe.0.lock().unwrap(),
        ["forward_relu", "forward", "forward_relu", "forward"]
    );
}

#[test]
fn pooling_flatten_and_unflatten_shapes_and_errors() {
    let dev = cpu();
    let x = randn(vec![2, 3, 7, 7], 3, &dev);
    let model = Sequential::new()
        .with(MaxPool2d::new(2, None, 0).unwrap())
        .with(AvgPool2d::new(3, Some(1), 1).unwrap())
        .with(Flatten);
    assert_eq!(model.forward(&x).unwrap().dims(), &[2, 3 * 3 * 3]);
    let flat = randn(vec![4, 12], 4, &dev);
    let img = Unflatten::new(vec![3, 2, 2]).forward(&flat).unwrap();
    assert_eq!(img.dims(), &[4, 3, 2, 2]);
    assert!(Unflatten::new(vec![5]).forward(&flat).is_err());
    assert!(MaxPool2d::new(0, None, 0).is_err());
    assert!(
        AvgPool2d::new(2, None, 2).is_err(),
        "padding over half the kernel"
    );
    // A 2-d input is not an image batch: a clear error, not a panic.
    let err = MaxPool2d::new(2, None, 0)
        .unwrap()
        .forward(&flat)
        .unwrap_err()
        .to_string();
    assert!(err.contains("batch, channels, height, width"), "{err}");
}

#[test]
fn dropout_is_seeded_scaled_and_off_in_evaluation() {
    let dev = cpu();
    let x = Tensor::ones(vec![4000], &dev).unwrap();
    let a = Dropout::new(0.25, 7).unwrap();
    let b = Dropout::new(0.25, 7).unwrap();
    let ya = a.forward(&x).unwrap().to_vec().unwrap();
    assert_eq!(
        ya,
        b.forward(&x).unwrap().to_vec().unwrap(),
        "same seed, same mask"
    );
    let zeros = ya.iter().filter(|&&v| v == 0.0).count() as f32 / 4000.0;
    assert!((zeros - 0.25).abs() < 0.03, "dropped {zeros}");
    assert!(ya
        .iter()
        .all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    // The next call draws a new mask.
    assert_ne!(ya, a.forward(&x).unwrap().to_vec().unwrap());
    a.set_training(false);
    assert_eq!(a.forward(&x).unwrap().to_vec().unwrap(), vec![1.0; 4000]);
    assert!(Dropout::new(1.0, 0).is_err());
}

/// Checks `d sum(module(x) * w) / d input` and `/ d parameters` against central
/// differences, for modules built from tensor ops.
fn check_module_grads(module: &dyn Module, x: &Tensor) {
    let dev = x.device().clone();
    let xv = Var::from_tensor(x).unwrap();
    let y = module.forward(&xv).unwrap();
    let w = randn(y.dims().to_vec(), 99, &dev);
    let loss = |m: &dyn Module, x: &Tensor| -> f64 {
        no_grad(|| {
            let y = m.forward(x).unwrap().to_vec().unwrap();
            let w = w.to_vec().unwrap();
            y.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum()
        })
    };
    let grads = y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let mut targets: Vec<(String, Var)> = module.named_parameters();
    targets.push(("input".into(), xv.clone()));
    for (name, var) in targets {
        let analytic = grads.get(&var).unwrap().to_vec().unwrap();
        let values = var.to_vec().unwrap();
        for i in 0..values.len() {
            let h = 1e-2f32;
            let probe = |delta: f32| {
                let mut v = values.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape().clone(), &dev).unwrap())
                    .unwrap();
                loss(module, &xv)
            };
            let numeric = (probe(h) - probe(-h)) / (2.0 * h as f64);
            probe(0.0);
            let a = analytic[i] as f64;
            assert!(
                (a - numeric).abs() <= 2e-3 + 1e-2 * numeric.abs(),
                "{name}[{i}]: analytic {a} vs numeric {numeric}"
            );
        }
    }
}

#[test]
fn batch_norm_normalises_tracks_running_statistics_and_has_exact_gradients() {
    let dev = cpu();
    let bn = BatchNorm2d::new(3, &dev).unwrap();
    let x = randn(vec![4, 3, 3, 2], 5, &dev)
        .scale(2.0)
        .unwrap()
        .add_scalar(1.0)
        .unwrap();
    let y = bn.forward(&x).unwrap().to_vec().unwrap();
    for c in 0..3 {
        let vals: Vec<f64> = (0..4)
            .flat_map(|n| (0..6).map(move |i| (n * 3 + c) * 6 + i))
            .map(|i| y[i] as f64)
            .collect();
        let mean = vals.iter().sum::<f64>() / 24.0;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 24.0;
        assert!(
            mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3,
            "channel {c}: {mean} {var}"
        );
    }
    // Running mean moved a tenth of the way from 0 to the batch mean (about 1).
    let (rm, _) = bn.running_stats().unwrap();
    assert!(
        rm.to_vec().unwrap().iter().all(|&m| m > 0.0 && m < 0.25),
        "{rm:?}"
    );
    // Evaluation uses the running statistics: no longer normalised to mean 0.
    bn.set_training(false);
    let e = bn.forward(&x).unwrap().to_vec().unwrap();
    assert!(e.iter().sum::<f32>() / e.len() as f32 > 0.5);
    bn.set_training(true);
    for d in [Some(cpu()), gpu()].into_iter().flatten() {
        let x = randn(vec![3, 2, 2, 2], 6, &d);
        check_module_grads(&BatchNorm2d::new(2, &d).unwrap(), &x);
    }
    assert!(bn.forward(&randn(vec![2, 4, 1, 1], 1, &dev)).is_err());
}

#[test]
fn layer_norm_normalises_rows_and_has_exact_gradients() {
    let dev = cpu();
    let ln = LayerNorm::new(5, &dev).unwrap();
    let y = ln
        .forward(&randn(vec![3, 5], 7, &dev))
        .unwrap()
        .to_vec()
        .unwrap();
    for row in y.chunks(5) {
        let mean = row.iter().sum::<f32>() / 5.0;
        assert!(mean.abs() < 1e-5);
    }
    check_module_grads(&ln, &randn(vec![2, 3, 5], 8, &dev));
    if let Some(g) = gpu() {
        check_module_grads(
            &LayerNorm::new(5, &g).unwrap(),
            &randn(vec![2, 3, 5], 8, &g),
        );
    }
    assert!(ln.forward(&randn(vec![3, 4], 1, &dev)).is_err());
}

#[test]
fn residual_adds_its_input_and_names_the_inner_parameters() {
    let dev = cpu();
    let inner = Conv2d::new(
        2,
        2,
        3,
        Conv2dConfig {
            padding: 1,
            ..Conv2dConfig::default()
        },
        &dev,
        &mut rng_from_seed(9),
    )
    .unwrap();
    let x = randn(vec![1, 2, 4, 4], 10, &dev);
    let direct = x
        .add(&inner.forward(&x).unwrap())
        .unwrap()
        .to_vec()
        .unwrap();
    let block = Residual::new(inner);
    assert_eq!(block.forward(&x).unwrap().to_vec().unwrap(), direct);
    let names: Vec<String> = block
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["inner.weight", "inner.bias"]);
}

#[test]
fn embedding_looks_up_rows_and_accumulates_gradients_of_repeated_indices() {
    let dev = cpu();
    let emb = Embedding::new(5, 3, &dev, &mut rng_from_seed(11)).unwrap();
    let table = emb.weight().to_vec().unwrap();
    let idx = Tensor::from_u32(vec![4, 1, 4, 0], (2, 2), &dev).unwrap();
    let y = emb.forward(&idx).unwrap();
    let as_f32 = Tensor::from_vec(vec![4.0, 1.0, 4.0, 0.0], (2, 2), &dev).unwrap();
    assert_eq!(
        emb.forward(&as_f32).unwrap().to_vec().unwrap(),
        y.to_vec().unwrap()
    );
    assert_eq!(y.dims(), &[2, 2, 3]);
    let rows: Vec<f32> = [4, 1, 4, 0]
        .iter()
        .flat_map(|&r| table[r * 3..r * 3 + 3].to_vec())
        .collect();
    assert_eq!(y.to_vec().unwrap(), rows);
    let g = y.sum_all().unwrap().backward().unwrap();
    let gw = g.get(emb.weight()).unwrap().to_vec().unwrap();
    assert_eq!(&gw[12..15], &[2.0; 3], "index 4 used twice");
    assert_eq!(&gw[6..9], &[0.0; 3], "index 2 unused");
    for bad in [5.0, -1.0, 1.5] {
        let t = Tensor::from_vec(vec![bad], 1, &dev).unwrap();
        assert!(emb.forward(&t).is_err(), "index {bad}");
    }
    let err = emb
        .forward(&Tensor::from_u32(vec![0, 5], 2, &dev).unwrap())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("index 5 at position 1 is out of range"),
        "{err}"
    );
}

#[test]
fn the_cnn_runs_the_same_on_the_gpu_as_on_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let build = |d: &Device| Cnn::new((1, 12, 10), 4, d, &mut rng_from_seed(12)).unwrap();
    let (on_cpu, on_gpu) = (build(&cpu()), build(&gpu));
    let x: Vec<f32> = randn(vec![3, 120], 13, &cpu()).to_vec().unwrap();
    let labels = [0u32, 3, 1];
    let run = |m: &Cnn, d: &Device| {
        let xt = Tensor::from_slice(&x, (3, 120), d).unwrap();
        let logits = m.forward(&xt).unwrap();
        let loss = logits.cross_entropy(&labels).unwrap();
        let g = loss.backward().unwrap();
        let grads: Vec<Vec<f32>> = m
            .parameters()
            .iter()
            .map(|p| g.get(p).unwrap().to_vec().unwrap())
            .collect();
        (logits.to_vec().unwrap(), grads)
    };
    let ((lc, gc), (lg, gg)) = (run(&on_cpu, &cpu()), run(&on_gpu, &gpu));
    close(&lg, &lc, 1e-4, "cnn logits gpu vs cpu");
    for (i, (a, b)) in gg.iter().zip(&gc).enumerate() {
        close(a, b, 1e-3, &format!("cnn gradient {i} gpu vs cpu"));
    }
    assert!(Cnn::new((1, 3, 3), 2, &cpu(), &mut rng_from_seed(0)).is_err());
    let names: Vec<String> = on_cpu
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        [
            "conv1.weight",
            "conv1.bias",
            "conv2.weight",
            "conv2.bias",
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias"
        ]
    );
}
