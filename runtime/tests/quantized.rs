//! Weights quantized for inference in place (`Var::quantize`, `Var::set_int8`): a
//! linear layer runs its int8 product on them, every other op widens them, values read
//! back dequantized, a write is refused with a clear error, and `Var::set` makes them f32
//! again. On the CPU and, where there is one (lavapipe in CI), the GPU.

use ringtrain_runtime::optim::{Optimizer, Sgd, SgdConfig};
use ringtrain_runtime::{
    no_grad, rng_from_seed, DType, Device, Int8Rows, Quantization, Tensor, Var,
};

fn devices() -> Vec<Device> {
    let mut d = vec![Device::cpu()];
    d.extend(Device::test_gpu());
    d
}

fn randn(seed: u64, dims: &[usize], dev: &Device) -> Tensor {
    Tensor::randn(0.0, 1.0, dims, &mut rng_from_seed(seed), dev).unwrap()
}

fn var(seed: u64, dims: &[usize], dev: &Device) -> Var {
    Var::from_tensor(&randn(seed, dims, dev)).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn int8_weights_read_back_as_their_dequantized_values() {
    for dev in devices() {
        let w = var(1, &[10, 33], &dev);
        let expected = Int8Rows::quantize(&w.to_vec().unwrap(), 10, 33).unwrap();
        w.quantize(Quantization::Int8).unwrap();
        assert_eq!(w.quantization(), Some(Quantization::Int8));
        assert_eq!(w.dtype(), DType::F32);
        assert_eq!(w.to_vec().unwrap(), expected.dequantize(), "{dev:?}");
        assert_eq!(w.int8().unwrap().as_ref(), Some(&expected));
        // From a checkpoint's values, on a fresh parameter.
        let other = var(2, &[10, 33], &dev);
        other.set_int8(&expected).unwrap();
        assert_eq!(other.to_vec().unwrap(), expected.dequantize());
    }
}

#[test]
fn a_linear_layer_runs_on_int8_weights_and_matches_the_backend_product() {
    let cpu = Device::cpu();
    for dev in devices() {
        let (x, b) = (randn(3, &[5, 40], &dev), randn(4, &[12], &dev));
        let w = var(5, &[12, 40], &dev);
        let dense = no_grad(|| x.linear(&w, Some(&b)).unwrap());
        w.quantize(Quantization::Int8).unwrap();
        let dequantized = w.dequantized().unwrap();
        assert_eq!(dequantized.quantization(), None);
        for relu in [false, true] {
            let (q, reference) = no_grad(|| {
                let q = if relu {
                    x.linear_relu(&w, Some(&b))
                } else {
                    x.linear(&w, Some(&b))
                };
                let r = if relu {
                    x.linear_relu(&dequantized, Some(&b))
                } else {
                    x.linear(&dequantized, Some(&b))
                };
                (q.unwrap(), r.unwrap())
            });
            // Close to the product with the dequantized weights, and to f32's.
            let (qv, rv, dv) = (
                q.to_vec().unwrap(),
                reference.to_vec().unwrap(),
                dense.to_vec().unwrap(),
            );
            for ((a, r), d) in qv.iter().zip(&rv).zip(&dv) {
                assert!((a - r).abs() < 0.15, "{dev:?}: {a} vs {r}");
                if !relu {
                    assert!((a - d).abs() < 0.3, "{dev:?}: {a} vs f32 {d}");
                }
            }
        }
        // No bias: the same product, less the bias.
        let nb = no_grad(|| x.linear(&w, None).unwrap());
        assert_eq!(nb.dims(), &[5, 12]);
        // The GPU's product (f32 activations) against the CPU's (int8 activations): the
        // same weights, within the activations' quantization.
        if !dev.same_kind(&cpu) {
            let wc = Var::from_tensor(&Tensor::zeros((12, 40), &cpu).unwrap()).unwrap();
            wc.set_int8(&w.int8().unwrap().unwrap()).unwrap();
            let xc = x.to_device(&cpu).unwrap();
            let bc = b.to_device(&cpu).unwrap();
            let (g, c) = no_grad(|| {
                (
                    x.linear(&w, Some(&b)).unwrap(),
                    xc.linear(&wc, Some(&bc)).unwrap(),
                )
            });
            for (g, c) in g.to_vec().unwrap().iter().zip(c.to_vec().unwrap()) {
                assert!((g - c).abs() < 0.15, "gpu {g} vs cpu {c}");
            }
        }
    }
}

#[test]
fn other_ops_and_recorded_products_widen_the_weight() {
    for dev in devices() {
        let x = Var::from_tensor(&randn(6, &[4, 24], &dev)).unwrap();
        let w = var(7, &[8, 24], &dev);
        w.quantize(Quantization::Int8).unwrap();
        let wide = w.dequantized().unwrap();
        // A product with gradients recorded: the widened weight's, bit for bit.
        let y = x.linear(&w, None).unwrap().sum_all().unwrap();
        let y_ref = x.linear(&wide, None).unwrap().sum_all().unwrap();
        assert_eq!(bits(&y), bits(&y_ref));
        let (g, g_ref) = (y.backward().unwrap(), y_ref.backward().unwrap());
        assert_eq!(bits(g.get(&x).unwrap()), bits(g_ref.get(&x).unwrap()));
        // matmul and a convolution.
        assert_eq!(
            bits(&x.matmul_t(&w, false, true).unwrap()),
            bits(&x.matmul_t(&wide, false, true).unwrap())
        );
        let conv_w = var(8, &[4, 2, 3, 3], &dev);
        let images = randn(9, &[2, 2, 6, 6], &dev);
        let dense = images.conv2d(&conv_w, None, (1, 1), (1, 1)).unwrap();
        conv_w.quantize(Quantization::Int8).unwrap();
        let q = images.conv2d(&conv_w, None, (1, 1), (1, 1)).unwrap();
        let wide_conv = images
            .conv2d(&conv_w.dequantized().unwrap(), None, (1, 1), (1, 1))
            .unwrap();
        assert_eq!(bits(&q), bits(&wide_conv));
        let err = dense
            .to_vec()
            .unwrap()
            .iter()
            .zip(q.to_vec().unwrap())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 0.1, "{dev:?}: conv on int8 weights off by {err}");
    }
}

#[test]
fn half_weights_give_the_rounded_weights_product_bit_for_bit() {
    for dev in devices() {
        for format in [Quantization::F16, Quantization::Bf16] {
            let precision = format.half().unwrap();
            let (x, b) = (randn(10, &[3, 20], &dev), randn(11, &[6], &dev));
            let w = var(12, &[6, 20], &dev);
            let rounded = w.round_to(precision).unwrap();
            w.quantize(format).unwrap();
            assert_eq!(w.quantization(), Some(format));
            assert_eq!(bits(&w), bits(&rounded), "{dev:?} {format}");
            let got = no_grad(|| x.linear(&w, Some(&b)).unwrap());
            let want = no_grad(|| x.linear(&rounded, Some(&b)).unwrap());
            assert_eq!(bits(&got), bits(&want), "{dev:?} {format}");
            assert_eq!(w.int8().unwrap(), None);
        }
    }
}

#[test]
fn writes_are_refused_and_set_makes_a_weight_f32_again() {
    for dev in devices() {
        let w = var(13, &[4, 4], &dev);
        let before = w.to_vec().unwrap();
        let grads = w.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        w.quantize(Quantization::Int8).unwrap();
        let config = SgdConfig {
            lr: 0.1,
            ..SgdConfig::default()
        };
        let mut sgd = Sgd::new(vec![w.clone()], config).unwrap();
        let err = sgd.step(&grads).unwrap_err().to_string();
        assert!(err.contains("quantized"), "{err}");
        let err = w.add(&w).unwrap_err().to_string();
        assert!(err.contains("quantized"), "{err}");
        w.set(&Tensor::from_vec(before.clone(), (4, 4), &dev).unwrap())
            .unwrap();
        assert_eq!(w.quantization(), None);
        assert_eq!(w.to_vec().unwrap(), before);
    }
}

#[test]
fn bad_quantizations_are_errors() {
    let dev = Device::cpu();
    let vector = var(14, &[8], &dev);
    assert!(vector.quantize(Quantization::Int8).is_err());
    let nan = Var::from_vec(vec![1.0, f32::NAN, 0.0, 2.0], (2, 2), &dev).unwrap();
    assert!(nan
        .quantize(Quantization::Int8)
        .unwrap_err()
        .to_string()
        .contains("NaN"));
    let w = var(15, &[3, 4], &dev);
    let wrong = Int8Rows::quantize(&[0.5; 8], 2, 4).unwrap();
    assert!(w.set_int8(&wrong).is_err());
    assert!("int4".parse::<Quantization>().is_err());
    assert_eq!("BF16".parse::<Quantization>().unwrap(), Quantization::Bf16);
}
