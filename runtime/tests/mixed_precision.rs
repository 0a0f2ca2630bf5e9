//! Mixed precision as a model sees it (`with_precision`): products, convolutions and
//! attention take inputs rounded to bf16 or f16 and sum in f32, their backward passes use
//! the precision they recorded, and everything else stays f32. On the CPU and, where
//! there is one (lavapipe in CI), the GPU.

use ringtrain_runtime::{
    compute_precision, rng_from_seed, with_precision, DType, Device, Precision, Quantization,
    Result, Tensor, Var,
};

fn devices() -> Vec<Device> {
    let mut d = vec![Device::cpu()];
    d.extend(Device::test_gpu());
    d
}

fn randn(seed: u64, dims: &[usize], dev: &Device) -> Tensor {
    let mut rng = rng_from_seed(seed);
    Tensor::randn(0.0, 1.0, dims, &mut rng, dev).unwrap()
}

/// The largest `|a - b|` over the largest `|b|`.
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (a.to_vec().unwrap(), b.to_vec().unwrap());
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Each op that mixed precision changes, on inputs `x` (`[8, 3, 9, 9]`, as images or a
/// `[8, 243]` matrix) and weights `w`: all of them, summed into one output per op.
fn ops(x: &Tensor, w: &Tensor, conv_w: &Tensor) -> Result<Vec<Tensor>> {
    let flat = x.reshape((8, 243))?;
    let b = Tensor::zeros(16, x.device())?;
    let heads = x.reshape((2, 4, 27, 9))?;
    Ok(vec![
        flat.matmul_t(w, false, true)?,
        flat.linear(w, Some(&b))?,
        flat.linear_relu(w, Some(&b))?,
        x.conv2d(conv_w, None, (1, 1), (1, 1))?,
        Tensor::scaled_dot_product_attention(&heads, &heads, &heads, true, None)?,
    ])
}

#[test]
fn each_product_takes_rounded_inputs_and_sums_in_f32() {
    for dev in devices() {
        let x = randn(1, &[8, 3, 9, 9], &dev);
        let w = randn(2, &[16, 243], &dev);
        let conv_w = randn(3, &[4, 3, 3, 3], &dev);
        let exact = ops(&x, &w, &conv_w).unwrap();
        for p in [Precision::Bf16, Precision::F16] {
            let mixed = with_precision(p, || ops(&x, &w, &conv_w)).unwrap();
            assert_eq!(
                compute_precision(),
                Precision::F32,
                "the scope restores f32"
            );
            let (xr, wr, cr) = (
                x.round_to(p).unwrap(),
                w.round_to(p).unwrap(),
                conv_w.round_to(p).unwrap(),
            );
            let by_hand = ops(&xr, &wr, &cr).unwrap();
            for (i, ((m, h), e)) in mixed.iter().zip(&by_hand).zip(&exact).enumerate() {
                let ctx = format!("{} {p} op {i}", dev.name());
                // The same rounded values in f32: only the order of the f32 sums may differ.
                assert!(rel_diff(m, h) < 1e-5, "{ctx}: {}", rel_diff(m, h));
                // Rounding happened: bf16 moves a product of 243 terms by about 2^-9.
                let moved = rel_diff(m, e);
                let u = p.unit_roundoff();
                assert!(moved > u / 16.0 && moved < 16.0 * u, "{ctx}: moved {moved}");
            }
        }
    }
}

#[test]
fn backward_uses_the_precision_the_forward_pass_recorded() {
    for dev in devices() {
        let x = randn(4, &[8, 3, 9, 9], &dev);
        let w = Var::from_tensor(&randn(5, &[16, 243], &dev)).unwrap();
        let conv_w = Var::from_tensor(&randn(6, &[4, 3, 3, 3], &dev)).unwrap();
        let loss = || -> Result<Tensor> {
            let outs = ops(&x, w.as_tensor(), conv_w.as_tensor())?;
            let mut total = Tensor::zeros((), &dev)?;
            for o in outs {
                total = total.add(&o.sqr()?.sum_all()?)?;
            }
            Ok(total)
        };
        let grads_f32 = loss().unwrap().backward().unwrap();
        let inside = with_precision(Precision::Bf16, || loss()?.backward()).unwrap();
        // Forward in the scope, backward after it: the ops recorded bf16.
        let outside = with_precision(Precision::Bf16, loss)
            .unwrap()
            .backward()
            .unwrap();
        for var in [&w, &conv_w] {
            let (a, b) = (inside.get(var).unwrap(), outside.get(var).unwrap());
            assert_eq!(a.to_vec().unwrap(), b.to_vec().unwrap(), "{}", dev.name());
            // bf16 gradients follow the f32 ones to about bf16's precision.
            let off = rel_diff(a, grads_f32.get(var).unwrap());
            assert!(off > 1e-5 && off < 0.05, "{}: {off}", dev.name());
        }
    }
}

#[test]
fn rounding_passes_its_gradient_through_and_rejects_integers() {
    for dev in devices() {
        let x = Var::from_vec(vec![1.001, -3.3, 70000.0], 3, &dev).unwrap();
        let w = Tensor::from_vec(vec![2.0, -1.0, 0.5], 3, &dev).unwrap();
        let r = x.as_tensor().round_to(Precision::F16).unwrap();
        assert_eq!(
            r.to_vec().unwrap(),
            vec![1.0009766, -3.3007812, f32::INFINITY]
        );
        let g = r.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(&x).unwrap().to_vec().unwrap(), vec![2.0, -1.0, 0.5]);
        let labels = x.as_tensor().to_dtype(DType::U32).unwrap();
        let err = labels.round_to(Precision::Bf16).unwrap_err().to_string();
        assert!(err.contains("round_to") && err.contains("u32"), "{err}");
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// f16 and bf16 tensors: a cast rounds as the precision does and widens back exactly, on
/// every device and across devices; reshapes keep the dtype.
#[test]
fn half_tensors_round_trip_on_every_device() {
    for dev in devices() {
        let x = randn(5, &[7, 9], &dev).affine(300.0, 0.0).unwrap();
        for dtype in [DType::Bf16, DType::F16] {
            let p = dtype.half().unwrap();
            let h = x.to_dtype(dtype).unwrap();
            assert_eq!((h.dtype(), h.dims()), (dtype, &[7usize, 9][..]));
            let want: Vec<u32> = x
                .to_vec()
                .unwrap()
                .iter()
                .map(|&v| p.round(v).to_bits())
                .collect();
            assert_eq!(bits(&h), want, "{dev:?} {dtype}: to_vec widens");
            assert_eq!(
                bits(&h.to_dtype(DType::F32).unwrap()),
                want,
                "{dev:?} {dtype}"
            );
            assert_eq!(
                bits(&h.reshape(63).unwrap()),
                want,
                "{dev:?} {dtype}: reshape"
            );
            let moved = h.to_device(&Device::cpu()).unwrap();
            assert_eq!((moved.dtype(), bits(&moved)), (dtype, want.clone()));
            // Between the two formats, and to u32, through f32.
            let other = if dtype == DType::F16 {
                DType::Bf16
            } else {
                DType::F16
            };
            let q = other.half().unwrap();
            let via: Vec<u32> = want
                .iter()
                .map(|&w| q.round(f32::from_bits(w)).to_bits())
                .collect();
            assert_eq!(
                bits(&h.to_dtype(other).unwrap()),
                via,
                "{dev:?} {dtype} -> {other}"
            );
            let ids = Tensor::from_vec(vec![3.0, 70000.0], 2, &dev).unwrap();
            assert_eq!(
                ids.to_dtype(dtype)
                    .unwrap()
                    .to_dtype(DType::U32)
                    .unwrap()
                    .to_vec_u32()
                    .unwrap(),
                if dtype == DType::F16 {
                    vec![3, u32::MAX]
                } else {
                    vec![3, 70144]
                }
            );
        }
    }
}

/// A product of 16-bit tensors is the product in that precision of their values, bit for
/// bit; with an f32 operand it is the f32 product of the widened values, and gradients
/// reach the f32 operand (a frozen 16-bit weight under a trained input).
#[test]
fn products_take_half_tensors() {
    for dev in devices() {
        let x = Var::from_tensor(&randn(1, &[6, 40], &dev)).unwrap();
        let w = randn(2, &[24, 40], &dev);
        let bias = randn(3, &[24], &dev);
        for dtype in [DType::Bf16, DType::F16] {
            let p = dtype.half().unwrap();
            let (xh, wh) = (x.to_dtype(dtype).unwrap(), w.to_dtype(dtype).unwrap());
            let (xr, wr) = (
                xh.to_dtype(DType::F32).unwrap(),
                wh.to_dtype(DType::F32).unwrap(),
            );
            let both = xh.matmul_t(&wh, false, true).unwrap();
            assert_eq!(both.dtype(), DType::F32);
            let want = with_precision(p, || xr.matmul_t(&wr, false, true)).unwrap();
            assert_eq!(bits(&both), bits(&want), "{dev:?} {dtype}: both 16-bit");
            let lin = xh
                .linear(&wh, Some(&bias.to_dtype(dtype).unwrap()))
                .unwrap();
            let br = bias.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
            let want = with_precision(p, || xr.linear(&wr, Some(&br))).unwrap();
            assert_eq!(bits(&lin), bits(&want), "{dev:?} {dtype}: linear");

            let y = x.linear(&wh, Some(&bias)).unwrap();
            let want = x.linear(&wr, Some(&bias)).unwrap();
            assert_eq!(bits(&y), bits(&want), "{dev:?} {dtype}: an f32 input");
            let grads = y.sum_all().unwrap().backward().unwrap();
            let g = grads.get(&x).expect("the f32 input gets its gradient");
            let g_want = want.sum_all().unwrap().backward().unwrap();
            assert_eq!(bits(g), bits(g_want.get(&x).unwrap()), "{dev:?} {dtype}");
        }
    }
}

/// Every other op refuses a 16-bit tensor with an error saying to widen it.
#[test]
fn other_ops_refuse_half_tensors_clearly() {
    for dev in devices() {
        let h = randn(4, &[3, 4], &dev).to_dtype(DType::Bf16).unwrap();
        let f = randn(5, &[3, 4], &dev);
        for (what, result) in [
            ("relu", h.relu()),
            ("add", f.add(&h)),
            ("sum", h.sum_all()),
            ("transpose", h.t()),
        ] {
            let err = result
                .err()
                .unwrap_or_else(|| panic!("{what} took a bf16 tensor"));
            assert!(
                err.to_string().contains("to_dtype"),
                "{dev:?} {what}: {err}"
            );
        }
    }
}

/// `Tensor::to_vecs` (one wait on a GPU for several readbacks) gives each tensor the bits
/// `to_vec` gives it: f32, both 16-bit formats, int8 weights, a reshape sharing another
/// tensor's memory, an empty tensor, and tensors of two devices in one call; an integer
/// tensor is an error, as with `to_vec`.
#[test]
fn to_vecs_reads_back_what_to_vec_reads() {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut everywhere = Vec::new();
    for dev in devices() {
        let a = randn(11, &[3, 5], &dev);
        let shared = a.reshape((5, 3)).unwrap();
        let bf16 = randn(12, &[7], &dev).to_dtype(DType::Bf16).unwrap();
        let f16 = randn(13, &[4], &dev).to_dtype(DType::F16).unwrap();
        let q = Var::from_tensor(&randn(14, &[4, 6], &dev)).unwrap();
        q.quantize(Quantization::Int8).unwrap();
        let empty = Tensor::zeros(0, &dev).unwrap();
        let list = [&a, &shared, &bf16, &f16, q.as_tensor(), &empty];
        let got = Tensor::to_vecs(&list).unwrap();
        assert_eq!(got.len(), list.len());
        for (i, (t, g)) in list.iter().zip(&got).enumerate() {
            assert_eq!(bits(g), bits(&t.to_vec().unwrap()), "{dev:?}: tensor {i}");
        }
        everywhere.push(a);
    }
    let refs: Vec<&Tensor> = everywhere.iter().collect();
    let got = Tensor::to_vecs(&refs).unwrap();
    for (t, g) in refs.iter().zip(&got) {
        assert_eq!(bits(g), bits(&t.to_vec().unwrap()), "{:?}", t.device());
    }
    assert!(Tensor::to_vecs(&[]).unwrap().is_empty());
    let labels = Tensor::from_u32(vec![1, 2], 2, &Device::cpu()).unwrap();
    assert!(Tensor::to_vecs(&[&everywhere[0], &labels]).is_err());
}
