//! (a) Training is bitwise reproducible: from a seed, run to run, and on 1 or 2 threads.
//! (b) Misuse is reported as an error that names the problem, never as a panic.
//! (c) The optimizers follow PyTorch's update rules, checked against an f64 reference.

use rand::Rng as _;
use ringtrain_runtime::optim::{AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
use ringtrain_runtime::{rng_from_seed, Device, GradStore, Result, Rng, Tensor, Var};

fn dev() -> Device {
    Device::cpu()
}

/// Runs `f` on a dedicated rayon pool of `threads` threads.
fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---- (a) determinism ----------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct MlpSpec {
    batch: usize,
    input: usize,
    hidden: usize,
    classes: usize,
    steps: usize,
}

/// Small enough to train in milliseconds.
const SMALL: MlpSpec = MlpSpec {
    batch: 32,
    input: 20,
    hidden: 16,
    classes: 5,
    steps: 20,
};

/// Big enough that the CPU backend splits work across threads: the [256, 256] hidden
/// layer (65536 elements) crosses the elementwise/reduction threshold, the products the
/// GEMM's, and W1 (784 * 256) the optimizers'.
const BIG: MlpSpec = MlpSpec {
    batch: 256,
    input: 784,
    hidden: 256,
    classes: 10,
    steps: 20,
};

#[derive(Clone, Copy)]
enum Opt {
    Sgd(SgdConfig),
    AdamW(AdamWConfig),
}

const SGD_MOMENTUM: Opt = Opt::Sgd(SgdConfig {
    lr: 0.05,
    momentum: 0.9,
    weight_decay: 1e-4,
    nesterov: false,
});

const ADAMW: Opt = Opt::AdamW(AdamWConfig {
    lr: 1e-3,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 0.01,
});

/// What a training run leaves behind: every parameter's values and the loss per step.
struct Run {
    params: Vec<Vec<f32>>,
    losses: Vec<f32>,
}

/// Trains `relu(x W1 + b1) W2 + b2` with cross-entropy on fresh random batches, everything
/// drawn from one seeded generator.
fn train(spec: MlpSpec, opt: Opt, seed: u64) -> Result<Run> {
    let dev = dev();
    let mut rng = rng_from_seed(seed);
    let init = |rng: &mut Rng, fan_in: usize, dims: (usize, usize)| -> Result<Var> {
        let std = (2.0 / fan_in as f32).sqrt();
        Var::from_tensor(&Tensor::randn(0.0, std, dims, rng, &dev)?)
    };
    let w1 = init(&mut rng, spec.input, (spec.input, spec.hidden))?;
    let b1 = Var::zeros(spec.hidden, &dev)?;
    let w2 = init(&mut rng, spec.hidden, (spec.hidden, spec.classes))?;
    let b2 = Var::zeros(spec.classes, &dev)?;
    let vars = vec![w1.clone(), b1.clone(), w2.clone(), b2.clone()];
    let mut opt: Box<dyn Optimizer> = match opt {
        Opt::Sgd(c) => Box::new(Sgd::new(vars.clone(), c)?),
        Opt::AdamW(c) => Box::new(AdamW::new(vars.clone(), c)?),
    };
    let mut losses = Vec::new();
    for _ in 0..spec.steps {
        let x = Tensor::randn(0.0, 1.0, (spec.batch, spec.input), &mut rng, &dev)?;
        let labels: Vec<u32> = (0..spec.batch)
            .map(|_| rng.random_range(0..spec.classes as u32))
            .collect();
        let logits = x.matmul(&w1)?.add(&b1)?.relu()?.matmul(&w2)?.add(&b2)?;
        let loss = logits.cross_entropy(&labels)?;
        losses.push(loss.to_scalar()?);
        let grads = loss.backward()?;
        assert_eq!(grads.len(), 4, "every parameter gets a gradient");
        opt.step(&grads)?;
    }
    let params = vars.iter().map(|v| v.to_vec()).collect::<Result<_>>()?;
    Ok(Run { params, losses })
}

fn assert_bitwise_same(what: &str, a: &Run, b: &Run) {
    assert_eq!(bits(&a.losses), bits(&b.losses), "{what}: losses differ");
    for (i, (pa, pb)) in a.params.iter().zip(&b.params).enumerate() {
        assert!(bits(pa) == bits(pb), "{what}: parameter {i} differs");
    }
}

#[test]
fn training_is_bitwise_reproducible_from_a_seed() {
    for (name, opt) in [("sgd+momentum", SGD_MOMENTUM), ("adamw", ADAMW)] {
        let a = train(SMALL, opt, 42).unwrap();
        let b = train(SMALL, opt, 42).unwrap();
        assert_bitwise_same(name, &a, &b);
        // The comparison is not vacuous: training moved the parameters, and another
        // seed gives other numbers.
        assert!(
            a.losses.iter().all(|l| l.is_finite()),
            "{name}: {:?}",
            a.losses
        );
        let c = train(SMALL, opt, 43).unwrap();
        assert_ne!(
            bits(&a.params[0]),
            bits(&c.params[0]),
            "{name}: seed ignored"
        );
    }
}

#[test]
fn training_is_bitwise_identical_on_one_and_two_threads() {
    for (name, opt) in [("sgd+momentum", SGD_MOMENTUM), ("adamw", ADAMW)] {
        let one = with_threads(1, || train(BIG, opt, 7)).unwrap();
        let two = with_threads(2, || train(BIG, opt, 7)).unwrap();
        assert_bitwise_same(&format!("{name}, 1 vs 2 threads"), &one, &two);
        // It learned something (random labels: it can only memorise, but the loss moves).
        assert_ne!(one.losses[0], one.losses[BIG.steps - 1], "{name}");
    }
}

/// Cross-entropy and the bias gradient of a wide batch: [8192, 10] logits cross the
/// parallel threshold with rows far shorter than a SIMD-friendly width.
#[test]
fn wide_batch_loss_and_bias_gradient_are_identical_on_one_and_two_threads() {
    let run = || -> Result<Vec<Vec<u32>>> {
        let mut rng = rng_from_seed(3);
        let (rows, classes) = (8192, 10);
        let logits =
            Var::from_tensor(&Tensor::randn(0.0, 2.0, (rows, classes), &mut rng, &dev())?)?;
        let bias = Var::from_tensor(&Tensor::randn(0.0, 1.0, classes, &mut rng, &dev())?)?;
        let labels: Vec<u32> = (0..rows).map(|i| (i * 7 % classes) as u32).collect();
        let z = logits.add(&bias)?;
        let loss = z
            .cross_entropy(&labels)?
            .add(&z.log_softmax(-1)?.mean_all()?)?;
        let grads = loss.backward()?;
        Ok(vec![
            bits(&loss.to_vec()?),
            bits(&grads.get(&logits).unwrap().to_vec()?),
            bits(&grads.get(&bias).unwrap().to_vec()?),
        ])
    };
    let one = with_threads(1, run).unwrap();
    let two = with_threads(2, run).unwrap();
    for (i, (a, b)) in one.iter().zip(&two).enumerate() {
        assert!(a == b, "output {i} differs between 1 and 2 threads");
    }
}

// ---- (b) errors -------------------------------------------------------------------------------

/// The error message of `result`, which must be an error.
fn err_msg<T>(what: &str, result: Result<T>) -> String {
    match result {
        Ok(_) => panic!("{what}: expected an error, got Ok"),
        Err(e) => e.to_string(),
    }
}

/// Asserts that `result` is an error whose message contains every one of `needles`.
fn assert_err<T>(what: &str, result: Result<T>, needles: &[&str]) {
    let msg = err_msg(what, result);
    for n in needles {
        assert!(
            msg.contains(n),
            "{what}: error `{msg}` does not mention `{n}`"
        );
    }
}

fn t(data: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_slice(data, dims, &dev()).unwrap()
}

fn zeros(dims: &[usize]) -> Tensor {
    Tensor::zeros(dims, &dev()).unwrap()
}

#[test]
fn matmul_inner_dimension_mismatch() {
    assert_err(
        "matmul [2, 3] x [4, 5]",
        zeros(&[2, 3]).matmul(&zeros(&[4, 5])),
        &["matmul", "[2, 3]", "[4, 5]", "inner dimensions"],
    );
    assert_err(
        "batched matmul",
        zeros(&[2, 3, 4]).matmul(&zeros(&[3, 4, 5])),
        &["matmul", "batch"],
    );
    assert_err(
        "matmul [3] x [3, 2]",
        zeros(&[3]).matmul(&zeros(&[3, 2])),
        &["matmul", "[3]"],
    );
    assert_err(
        "matmul_t",
        zeros(&[2, 3]).matmul_t(&zeros(&[2, 3]), false, false),
        &["inner dimensions"],
    );
}

#[test]
fn binary_ops_with_shapes_that_do_not_broadcast() {
    assert_err(
        "add",
        zeros(&[3, 4]).add(&zeros(&[3])),
        &["add", "[3, 4]", "[3]", "broadcast"],
    );
    assert_err(
        "mul",
        zeros(&[2, 3]).mul(&zeros(&[3, 2])),
        &["mul", "broadcast"],
    );
    assert_err("sub", zeros(&[2, 3, 4]).sub(&zeros(&[2, 4])), &["sub"]);
    assert_err("div", zeros(&[5]).div(&zeros(&[4])), &["div"]);
    assert_err(
        "broadcast_as",
        zeros(&[3, 2]).broadcast_as([3, 4]),
        &["broadcast_as", "[3, 2]"],
    );
}

#[test]
fn construction_and_reshape_with_the_wrong_element_count() {
    assert_err(
        "from_vec",
        Tensor::from_vec(vec![1.0; 5], (2, 3), &dev()),
        &["from_vec", "5 values", "[2, 3]"],
    );
    assert_err(
        "Var::from_vec",
        Var::from_vec(vec![1.0; 7], 6, &dev()),
        &["7 values", "[6]"],
    );
    assert_err(
        "reshape",
        zeros(&[2, 3]).reshape((4, 2)),
        &["reshape", "[2, 3]", "6 elements", "[4, 2]"],
    );
    assert_err(
        "flatten_from",
        zeros(&[2, 3]).flatten_from(2),
        &["flatten_from", "dimension 2", "rank 2"],
    );
    let v = Var::zeros(3, &dev()).unwrap();
    assert_err("Var::set", v.set(&zeros(&[4])), &["[3]", "[4]"]);
}

#[test]
fn cross_entropy_with_bad_labels() {
    let logits = zeros(&[3, 5]);
    assert_err(
        "label == classes",
        logits.cross_entropy(&[0, 5, 1]),
        &["cross_entropy", "label 5", "row 1", "5 classes"],
    );
    assert_err(
        "label far out of range",
        logits.cross_entropy(&[0, 1, 1000]),
        &["label 1000", "row 2"],
    );
    assert_err(
        "too few labels",
        logits.cross_entropy(&[0, 1]),
        &["cross_entropy", "2 labels", "3 rows"],
    );
    assert_err(
        "too many labels",
        logits.cross_entropy(&[0; 4]),
        &["4 labels", "3 rows"],
    );
    assert_err(
        "scalar logits",
        zeros(&[]).cross_entropy(&[0]),
        &["cross_entropy"],
    );
}

#[test]
fn mse_with_mismatched_shapes() {
    assert_err(
        "mse",
        zeros(&[3, 4]).mse(&zeros(&[4, 3])),
        &["mse", "[3, 4]", "[4, 3]", "same shape"],
    );
    // Broadcastable is not enough: a target must match exactly.
    assert_err("mse broadcast", zeros(&[3, 4]).mse(&zeros(&[4])), &["mse"]);
}

#[test]
fn dimensions_out_of_range() {
    let x = zeros(&[2, 3]);
    assert_err(
        "transpose",
        x.transpose(0, 2),
        &["transpose", "dimension 2", "rank 2"],
    );
    assert_err("transpose first", x.transpose(5, 0), &["dimension 5"]);
    assert_err("sum", x.sum(2), &["sum", "dimension 2", "rank 2"]);
    assert_err("sum_keepdims", x.sum_keepdims(&[0, 3]), &["dimension 3"]);
    assert_err("mean", x.mean(7), &["mean", "dimension 7"]);
    assert_err("mean -3", x.mean(-3), &["mean", "dimension -3", "rank 2"]);
    assert_err("transpose -3", x.transpose(-3, 0), &["dimension -3"]);
    assert_err(
        "t of 3-d",
        zeros(&[2, 3, 4]).t(),
        &["t", "2-d", "[2, 3, 4]"],
    );
}

#[test]
fn backward_of_a_non_scalar() {
    let v = Var::zeros((2, 3), &dev()).unwrap();
    assert_err(
        "backward",
        v.exp().unwrap().backward(),
        &["backward", "scalar", "[2, 3]"],
    );
}

#[test]
fn negative_dimensions_count_from_the_end() {
    let x = Tensor::from_vec((0..24).map(|i| i as f32).collect(), (2, 3, 4), &dev()).unwrap();
    let same = |a: Tensor, b: Tensor| {
        assert_eq!(a.dims(), b.dims());
        assert_eq!(bits(&a.to_vec().unwrap()), bits(&b.to_vec().unwrap()));
    };
    same(x.sum(-1).unwrap(), x.sum(2).unwrap());
    same(x.mean(-2).unwrap(), x.mean(1usize).unwrap());
    same(
        x.sum_keepdims(&[-1, 0]).unwrap(),
        x.sum_keepdims(&[0, 2]).unwrap(),
    );
    same(x.transpose(-1, -2).unwrap(), x.transpose(2, 1).unwrap());
    same(x.flatten_from(-2).unwrap(), x.flatten_from(1).unwrap());
}

#[test]
fn backward_of_a_loss_no_variable_reaches() {
    let d = dev();
    let x = Tensor::from_vec(vec![1.0, 2.0], 2, &d).unwrap();
    let w = Var::from_vec(vec![0.5, 0.5], 2, &d).unwrap();
    let expect = ["no trainable variable", "no_grad", "detached"];
    assert_err(
        "constant",
        x.sqr().unwrap().sum_all().unwrap().backward(),
        &expect,
    );
    let detached = x.mul(&w).unwrap().sum_all().unwrap().detach();
    assert_err("detached", detached.backward(), &expect);
    let under_no_grad = ringtrain_runtime::no_grad(|| x.mul(&w).unwrap().sum_all().unwrap());
    assert!(matches!(
        under_no_grad.backward(),
        Err(ringtrain_runtime::Error::NoGradient)
    ));
    // A loss some variable reaches still has its gradient.
    assert!(x.mul(&w).unwrap().sum_all().unwrap().backward().is_ok());
}

#[test]
fn unknown_or_unavailable_devices() {
    // Where a Vulkan/Metal/DX12 driver exists this opens it; elsewhere the error must say
    // that no adapter was found (the no-adapter path is driven end to end, with a bogus
    // WGPU_ADAPTER_NAME, by the mnist example's tests).
    if let Err(e) = Device::from_name("gpu") {
        assert!(
            e.to_string().contains("adapter"),
            "gpu: unclear error `{e}`"
        );
    }
    assert_err("tpu", Device::from_name("tpu"), &["unknown backend", "tpu"]);
    assert!(Device::from_name(" CPU ").is_ok());
    assert!(Device::from_name("auto").is_ok());
}

#[test]
fn optimizers_reject_bad_hyper_parameters() {
    let v = || vec![Var::zeros(3, &dev()).unwrap()];
    for lr in [-0.1f32, f32::NAN, f32::INFINITY] {
        let sgd = Sgd::new(
            v(),
            SgdConfig {
                lr,
                ..SgdConfig::default()
            },
        );
        assert_err(
            &format!("sgd lr {lr}"),
            sgd,
            &["learning rate", &lr.to_string()],
        );
        let adamw = AdamW::new(
            v(),
            AdamWConfig {
                lr,
                ..AdamWConfig::default()
            },
        );
        assert_err(
            &format!("adamw lr {lr}"),
            adamw,
            &["learning rate", &lr.to_string()],
        );
    }
    let nesterov = SgdConfig {
        nesterov: true,
        ..SgdConfig::default()
    };
    assert_err(
        "nesterov without momentum",
        Sgd::new(v(), nesterov),
        &["Nesterov", "momentum"],
    );
    let momentum = SgdConfig {
        momentum: -0.5,
        ..SgdConfig::default()
    };
    assert_err(
        "negative momentum",
        Sgd::new(v(), momentum),
        &["momentum", "-0.5"],
    );
    let beta = AdamWConfig {
        beta2: 1.0,
        ..AdamWConfig::default()
    };
    assert_err("beta2 = 1", AdamW::new(v(), beta), &["beta2", "[0, 1)"]);
    let wd = AdamWConfig {
        weight_decay: f32::NAN,
        ..AdamWConfig::default()
    };
    assert_err("NaN weight decay", AdamW::new(v(), wd), &["weight decay"]);
    for eps in [0.0, -1e-8, f32::NAN] {
        let cfg = AdamWConfig {
            eps,
            ..AdamWConfig::default()
        };
        assert_err("bad eps", AdamW::new(v(), cfg), &["eps"]);
    }
}

#[test]
fn optimizer_step_with_a_wrongly_shaped_gradient() {
    let v = Var::zeros(3, &dev()).unwrap();
    let mut grads = GradStore::default();
    grads.insert(&v, zeros(&[2]));
    let mut sgd = Sgd::new(vec![v.clone()], SgdConfig::default()).unwrap();
    assert_err("sgd", sgd.step(&grads), &["optimizer step", "[3]", "[2]"]);
    let mut adamw = AdamW::new(vec![v.clone()], AdamWConfig::default()).unwrap();
    assert_err(
        "adamw",
        adamw.step(&grads),
        &["optimizer step", "[3]", "[2]"],
    );
    assert_eq!(
        v.to_vec().unwrap(),
        vec![0.0; 3],
        "a failed step changed the parameter"
    );
}

#[test]
fn to_scalar_of_a_non_scalar() {
    assert_err(
        "to_scalar",
        zeros(&[2]).to_scalar(),
        &["to_scalar", "one element", "[2]"],
    );
    assert_err("to_scalar empty", zeros(&[0]).to_scalar(), &["[0]"]);
    assert_eq!(t(&[4.5], &[1, 1]).to_scalar().unwrap(), 4.5);
}

#[test]
fn invalid_random_initialisers() {
    let mut rng = rng_from_seed(0);
    assert_err(
        "randn",
        Tensor::randn(0.0, f32::NAN, 3, &mut rng, &dev()),
        &["randn", "std NaN"],
    );
    assert_err(
        "randn negative std",
        Tensor::randn(0.0, -1.0, 3, &mut rng, &dev()),
        &["randn", "std -1"],
    );
    for (lo, hi) in [
        (f32::NEG_INFINITY, 0.0),
        (f32::MIN, f32::MAX),
        (0.0, f32::NAN),
    ] {
        assert_err(
            "rand_uniform non-finite",
            Tensor::rand_uniform(lo, hi, 3, &mut rng, &dev()),
            &["rand_uniform", "finite"],
        );
    }
    assert_err(
        "rand_uniform",
        Tensor::rand_uniform(1.0, 1.0, 3, &mut rng, &dev()),
        &["lo < hi"],
    );
    assert_err(
        "empty mean",
        zeros(&[0, 3]).mean_all(),
        &["mean_all", "empty"],
    );
}

#[test]
fn shapes_too_large_to_exist_are_errors_not_wraparounds() {
    // 3 * (2^64 / 3 + 1) wraps to 1 in usize arithmetic.
    let wraps_to_one = [3, usize::MAX / 3 + 1];
    assert_err(
        "from_vec",
        Tensor::from_vec(vec![1.0], wraps_to_one, &dev()),
        &["from_vec"],
    );
    assert_err(
        "zeros",
        Tensor::zeros([1usize << 62, 8], &dev()),
        &["allocate"],
    );
    assert_err(
        "reshape",
        t(&[1.0], &[1]).reshape(wraps_to_one),
        &["reshape"],
    );
}

#[test]
fn empty_reductions_and_losses_are_errors() {
    assert_err(
        "mean over empty dim",
        zeros(&[0, 3]).mean(0),
        &["mean", "empty"],
    );
    assert_err(
        "cross_entropy of no rows",
        zeros(&[0, 3]).cross_entropy(&[]),
        &["cross_entropy", "[0, 3]"],
    );
    assert_err(
        "log_softmax of no rows",
        zeros(&[0, 3]).log_softmax(-1),
        &["log_softmax"],
    );
}

#[test]
fn an_operand_used_twice_is_read_once() {
    // x * x and x^T x lock x's storage once; the results are the usual ones.
    let x = Var::from_vec(vec![1.0, 2.0, 3.0, 4.0], (2, 2), &dev()).unwrap();
    assert_eq!(
        x.mul(&x).unwrap().to_vec().unwrap(),
        vec![1.0, 4.0, 9.0, 16.0]
    );
    assert_eq!(
        x.matmul_t(&x, true, false).unwrap().to_vec().unwrap(),
        vec![10.0, 14.0, 14.0, 20.0]
    );
    let g = x.mul(&x).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(
        g.get(&x).unwrap().to_vec().unwrap(),
        vec![2.0, 4.0, 6.0, 8.0]
    );
}

#[test]
fn a_bad_gradient_leaves_every_parameter_untouched() {
    let a = Var::from_vec(vec![1.0, 2.0], 2, &dev()).unwrap();
    let b = Var::from_vec(vec![3.0, 4.0], 2, &dev()).unwrap();
    let mut grads = GradStore::default();
    grads.insert(&a, t(&[1.0, 1.0], &[2]));
    grads.insert(&b, t(&[1.0, 1.0, 1.0], &[3]));
    let cfg = SgdConfig {
        lr: 0.5,
        momentum: 0.9,
        ..SgdConfig::default()
    };
    let mut sgd = Sgd::new(vec![a.clone(), b.clone()], cfg).unwrap();
    assert_err("sgd", sgd.step(&grads).map(|_| ()), &["gradient"]);
    let mut adamw = AdamW::new(vec![a.clone(), b.clone()], AdamWConfig::default()).unwrap();
    assert_err("adamw", adamw.step(&grads).map(|_| ()), &["gradient"]);
    assert_eq!(adamw.steps(), 0, "a rejected step must not count");
    assert_eq!(a.to_vec().unwrap(), vec![1.0, 2.0]);
    assert_eq!(b.to_vec().unwrap(), vec![3.0, 4.0]);
}

#[test]
fn adamw_bias_correction_counts_each_parameters_own_updates() {
    // `late` gets its first gradient on the third step: its update must be that of a
    // first step (bias corrections 1 - beta^1), exactly as a fresh optimizer would make it.
    let cfg = AdamWConfig {
        weight_decay: 0.0,
        ..AdamWConfig::default()
    };
    let early = Var::from_vec(vec![1.0, 1.0], 2, &dev()).unwrap();
    let late = Var::from_vec(vec![1.0, 1.0], 2, &dev()).unwrap();
    let mut opt = AdamW::new(vec![early.clone(), late.clone()], cfg).unwrap();
    let mut only_early = GradStore::default();
    only_early.insert(&early, t(&[0.5, -0.5], &[2]));
    opt.step(&only_early).unwrap();
    opt.step(&only_early).unwrap();
    let mut both = GradStore::default();
    both.insert(&early, t(&[0.5, -0.5], &[2]));
    both.insert(&late, t(&[0.5, -0.5], &[2]));
    opt.step(&both).unwrap();

    let fresh = Var::from_vec(vec![1.0, 1.0], 2, &dev()).unwrap();
    let mut fresh_opt = AdamW::new(vec![fresh.clone()], cfg).unwrap();
    let mut g = GradStore::default();
    g.insert(&fresh, t(&[0.5, -0.5], &[2]));
    fresh_opt.step(&g).unwrap();
    assert_eq!(late.to_vec().unwrap(), fresh.to_vec().unwrap());
    // A first Adam step moves each weight by lr in the direction of -sign(g).
    let moved: Vec<f32> = late.to_vec().unwrap().iter().map(|v| v - 1.0).collect();
    assert!(
        (moved[0] + 1e-3).abs() < 1e-6 && (moved[1] - 1e-3).abs() < 1e-6,
        "{moved:?}"
    );
}

// ---- (c) optimizer semantics ------------------------------------------------------------------

const P0: [f32; 5] = [1.0, -2.0, 0.5, 3.0, -0.25];
/// One gradient per step; signs change so momentum and the moments matter.
const GRADS: [[f32; 5]; 3] = [
    [0.5, -1.0, 0.25, 2.0, -0.125],
    [-0.3, 0.8, 0.1, 1.5, 0.6],
    [0.2, 0.4, -0.7, -1.0, 0.05],
];

/// Runs three optimizer steps on a Var starting at `P0`, one per row of `GRADS`; returns
/// the parameter after each step.
fn run_steps(make: impl FnOnce(Vec<Var>) -> Result<Box<dyn Optimizer>>) -> Vec<Vec<f32>> {
    let p = Var::from_vec(P0.to_vec(), P0.len(), &dev()).unwrap();
    let mut opt = make(vec![p.clone()]).unwrap();
    GRADS
        .iter()
        .map(|g| {
            let mut store = GradStore::default();
            store.insert(&p, t(g, &[g.len()]));
            opt.step(&store).unwrap();
            p.to_vec().unwrap()
        })
        .collect()
}

/// PyTorch's SGD in f64: `g += wd p; buf = m buf + g` (buf starts at g, i.e. at 0);
/// `p -= lr buf`, or with Nesterov `p -= lr (g + m buf)`.
fn sgd_reference(c: SgdConfig) -> Vec<Vec<f64>> {
    let (lr, m, wd) = (c.lr as f64, c.momentum as f64, c.weight_decay as f64);
    let mut p: Vec<f64> = P0.iter().map(|&v| v as f64).collect();
    let mut buf = vec![0f64; p.len()];
    GRADS
        .iter()
        .map(|g| {
            for i in 0..p.len() {
                let g = g[i] as f64 + wd * p[i];
                if m == 0.0 {
                    p[i] -= lr * g;
                } else {
                    buf[i] = m * buf[i] + g;
                    p[i] -= lr * if c.nesterov { g + m * buf[i] } else { buf[i] };
                }
            }
            p.clone()
        })
        .collect()
}

/// AdamW in f64: `p *= 1 - lr wd`; `m, v` EMAs of g and g^2;
/// `p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`.
fn adamw_reference(c: AdamWConfig) -> Vec<Vec<f64>> {
    adam_reference(c, true)
}

/// Adam in f64 with weight decay either decoupled (AdamW) or folded into the gradient as
/// L2 regularisation (`g += wd p`, PyTorch's `Adam(weight_decay=..)`).
fn adam_reference(c: AdamWConfig, decoupled: bool) -> Vec<Vec<f64>> {
    let (lr, b1, b2, eps, wd) = (
        c.lr as f64,
        c.beta1 as f64,
        c.beta2 as f64,
        c.eps as f64,
        c.weight_decay as f64,
    );
    let mut p: Vec<f64> = P0.iter().map(|&v| v as f64).collect();
    let (mut m, mut v) = (vec![0f64; p.len()], vec![0f64; p.len()]);
    GRADS
        .iter()
        .enumerate()
        .map(|(step, g)| {
            let t = step as i32 + 1;
            for i in 0..p.len() {
                let mut g = g[i] as f64;
                if decoupled {
                    p[i] *= 1.0 - lr * wd;
                } else {
                    g += wd * p[i];
                }
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let m_hat = m[i] / (1.0 - b1.powi(t));
                let v_hat = v[i] / (1.0 - b2.powi(t));
                p[i] -= lr * m_hat / (v_hat.sqrt() + eps);
            }
            p.clone()
        })
        .collect()
}

fn assert_matches_reference(what: &str, got: &[Vec<f32>], want: &[Vec<f64>]) {
    for (step, (g, w)) in got.iter().zip(want).enumerate() {
        for (i, (&g, &w)) in g.iter().zip(w).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-6 + 1e-6 * w.abs(),
                "{what}: step {} p[{i}] = {g}, want {w}",
                step + 1
            );
        }
    }
}

/// Two references whose updates differ by much more than the comparison tolerance, so a
/// test comparing against one would fail on an implementation of the other.
fn assert_distinguishable(what: &str, a: &[Vec<f64>], b: &[Vec<f64>]) {
    let diff = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        diff > 1e-3,
        "{what}: the variants are too close to tell apart ({diff})"
    );
}

#[test]
fn sgd_matches_pytorch_semantics() {
    let configs = [
        (
            "plain",
            SgdConfig {
                lr: 0.1,
                ..SgdConfig::default()
            },
        ),
        (
            "weight decay",
            SgdConfig {
                lr: 0.1,
                weight_decay: 0.05,
                ..SgdConfig::default()
            },
        ),
        (
            "momentum",
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                ..SgdConfig::default()
            },
        ),
        (
            "momentum + weight decay",
            SgdConfig {
                lr: 0.1,
                momentum: 0.8,
                weight_decay: 0.05,
                nesterov: false,
            },
        ),
        (
            "nesterov",
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                nesterov: true,
                ..SgdConfig::default()
            },
        ),
        (
            "nesterov + weight decay",
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.05,
                nesterov: true,
            },
        ),
    ];
    let refs: Vec<_> = configs.iter().map(|&(_, c)| sgd_reference(c)).collect();
    for (i, &(name, config)) in configs.iter().enumerate() {
        let got = run_steps(|vars| Ok(Box::new(Sgd::new(vars, config)?)));
        assert_matches_reference(&format!("sgd {name}"), &got, &refs[i]);
        for (j, &(other, _)) in configs.iter().enumerate().skip(i + 1) {
            assert_distinguishable(&format!("sgd {name} vs {other}"), &refs[i], &refs[j]);
        }
    }
}

#[test]
fn adamw_matches_decoupled_weight_decay_semantics() {
    let configs = [
        ("defaults", AdamWConfig::default()),
        (
            "large lr + weight decay",
            AdamWConfig {
                lr: 0.05,
                weight_decay: 0.1,
                ..AdamWConfig::default()
            },
        ),
        (
            "low betas, big eps",
            AdamWConfig {
                lr: 0.05,
                beta1: 0.5,
                beta2: 0.9,
                eps: 0.1,
                weight_decay: 0.0,
            },
        ),
    ];
    for (name, config) in configs {
        let got = run_steps(|vars| Ok(Box::new(AdamW::new(vars, config)?)));
        assert_matches_reference(&format!("adamw {name}"), &got, &adamw_reference(config));
    }
    // Decoupled decay is not L2 regularisation: folding wd * p into the gradient (Adam with
    // weight decay) gives a measurably different trajectory.
    let c = AdamWConfig {
        lr: 0.05,
        weight_decay: 0.5,
        ..AdamWConfig::default()
    };
    let got = run_steps(|vars| Ok(Box::new(AdamW::new(vars, c)?)));
    assert_distinguishable(
        "adamw vs adam + L2",
        &adamw_reference(c),
        &adam_reference(c, false),
    );
    assert_matches_reference("adamw strong decay", &got, &adamw_reference(c));
}

#[test]
fn optimizers_skip_vars_without_gradients_and_follow_lr_changes() {
    let a = Var::from_vec(vec![1.0, 2.0], 2, &dev()).unwrap();
    let b = Var::from_vec(vec![3.0, 4.0], 2, &dev()).unwrap();
    let mut sgd = Sgd::new(
        vec![a.clone(), b.clone()],
        SgdConfig {
            lr: 0.5,
            ..SgdConfig::default()
        },
    )
    .unwrap();
    let mut grads = GradStore::default();
    grads.insert(&a, t(&[1.0, -1.0], &[2]));
    sgd.step(&grads).unwrap();
    assert_eq!(a.to_vec().unwrap(), vec![0.5, 2.5]);
    assert_eq!(b.to_vec().unwrap(), vec![3.0, 4.0], "b had no gradient");

    sgd.set_learning_rate(0.25).unwrap();
    assert_eq!(sgd.learning_rate(), 0.25);
    for bad in [-1.0, f32::NAN, f32::INFINITY] {
        let err = sgd.set_learning_rate(bad).unwrap_err().to_string();
        assert!(err.contains("learning rate"), "{err}");
    }
    assert_eq!(
        sgd.learning_rate(),
        0.25,
        "a rejected learning rate must not stick"
    );
    sgd.step(&grads).unwrap();
    assert_eq!(a.to_vec().unwrap(), vec![0.25, 2.75]);

    // A gradient that aliases the variable's memory is applied, not deadlocked on.
    let mut aliased = GradStore::default();
    aliased.insert(&b, b.detach());
    let mut plain = Sgd::new(
        vec![b.clone()],
        SgdConfig {
            lr: 0.5,
            ..SgdConfig::default()
        },
    )
    .unwrap();
    plain.step(&aliased).unwrap();
    assert_eq!(b.to_vec().unwrap(), vec![1.5, 2.0]);
    b.set(&t(&[3.0, 4.0], &[2])).unwrap();

    let mut adamw = AdamW::new(vec![a.clone(), b.clone()], AdamWConfig::default()).unwrap();
    adamw.step(&grads).unwrap();
    adamw.step(&grads).unwrap();
    assert_eq!(adamw.steps(), 2);
    assert_eq!(
        b.to_vec().unwrap(),
        vec![3.0, 4.0],
        "AdamW touched b (no gradient, no decay)"
    );
}

// ---- misuse that must neither panic nor hang ---------------------------------------------------

/// Runs `f` on its own thread and fails (instead of hanging the suite) if it does not
/// finish within a few seconds.
fn within_seconds<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what}: did not finish (deadlock?)"))
}

#[test]
fn var_set_from_a_tensor_sharing_its_storage() {
    // `v.set(&v)` and `v.set(&v.detach())` read and write the same storage: this used to
    // take its read lock and then its write lock, and deadlocked.
    let values = within_seconds("Var::set", || -> Result<Vec<Vec<f32>>> {
        let v = Var::from_vec(vec![1.0, -2.0, 3.5], 3, &dev())?;
        v.set(v.as_tensor())?;
        let after_self = v.to_vec()?;
        v.set(&v.detach())?;
        let after_detach = v.to_vec()?;
        v.set(&v.reshape((3, 1))?.reshape(3)?.scale(2.0)?)?;
        Ok(vec![after_self, after_detach, v.to_vec()?])
    })
    .unwrap();
    assert_eq!(values[0], vec![1.0, -2.0, 3.5]);
    assert_eq!(values[1], vec![1.0, -2.0, 3.5]);
    assert_eq!(values[2], vec![2.0, -4.0, 7.0]);
}
