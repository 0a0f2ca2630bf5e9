//! `#[derive(Module)]` on the shapes user models take: nested modules, module lists,
//! optional parts, skipped and renamed fields, tuple and generic structs, buffers and
//! random streams; names as PyTorch's `state_dict` would give them, and a checkpoint
//! round trip through those names.

use ringtrain_models::checkpoint::Checkpoint;
use ringtrain_models::nn::{
    BatchNorm2d, Buffer, Dropout, LayerNorm, Linear, Module, ModuleState, RngStream,
};
use ringtrain_runtime::{rng_from_seed, Device, Result, Rng, Tensor, Var};

#[derive(Module)]
struct Attention {
    #[module(rename = "c_attn")]
    qkv: Linear,
    #[module(rename = "c_proj")]
    proj: Linear,
    #[module(skip)]
    heads: usize,
}

#[derive(Module)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    drop: Dropout,
    /// Absent in some blocks: left out of the names when `None`.
    gate: Option<Var>,
}

#[derive(Module)]
struct Net {
    blocks: Vec<Block>,
    head: Linear,
    norm: BatchNorm2d,
    scale: Var,
    counts: Buffer,
    noise: RngStream,
    #[module(skip)]
    #[allow(dead_code)]
    note: String,
}

fn block(dim: usize, gated: bool, device: &Device, rng: &mut Rng) -> Result<Block> {
    Ok(Block {
        ln_1: LayerNorm::new(dim, device)?,
        attn: Attention {
            qkv: Linear::new(dim, 3 * dim, device, rng)?,
            proj: Linear::new(dim, dim, device, rng)?,
            heads: 2,
        },
        drop: Dropout::new(0.5, 7)?,
        gate: if gated {
            Some(Var::zeros(dim, device)?)
        } else {
            None
        },
    })
}

fn net(seed: u64) -> Net {
    let (device, rng) = (Device::cpu(), &mut rng_from_seed(seed));
    Net {
        blocks: vec![
            block(4, true, &device, rng).unwrap(),
            block(4, false, &device, rng).unwrap(),
        ],
        head: Linear::new(4, 2, &device, rng).unwrap(),
        norm: BatchNorm2d::new(3, &device).unwrap(),
        scale: Var::from_vec(vec![seed as f32], (), &device).unwrap(),
        counts: Buffer::new(Tensor::zeros(2, &device).unwrap()),
        noise: RngStream::default(),
        note: "not state".into(),
    }
}

fn names<T>(named: Vec<(String, T)>) -> Vec<String> {
    named.into_iter().map(|(n, _)| n).collect()
}

#[test]
fn nested_and_listed_modules_get_dotted_names() {
    let n = net(1);
    let block = |i: usize, gated: bool| {
        let mut v: Vec<String> = [
            "ln_1.weight",
            "ln_1.bias",
            "attn.c_attn.weight",
            "attn.c_attn.bias",
            "attn.c_proj.weight",
            "attn.c_proj.bias",
        ]
        .iter()
        .map(|s| format!("blocks.{i}.{s}"))
        .collect();
        if gated {
            v.push(format!("blocks.{i}.gate"));
        }
        v
    };
    let mut expected = block(0, true);
    expected.extend(block(1, false));
    expected.extend(
        [
            "head.weight",
            "head.bias",
            "norm.weight",
            "norm.bias",
            "scale",
        ]
        .map(String::from),
    );
    assert_eq!(names(n.named_parameters()), expected);
    assert_eq!(
        names(n.named_buffers()),
        [
            "norm.running_mean",
            "norm.running_var",
            "norm.num_batches_tracked",
            "counts"
        ]
    );
    assert_eq!(
        names(n.named_rng_streams()),
        ["blocks.0.drop.masks", "blocks.1.drop.masks", "noise"]
    );
    let expected_count = 2 * (2 * 4 + (4 * 12 + 12) + (4 * 4 + 4)) + 4 + (4 * 2 + 2) + 6 + 1;
    assert_eq!(n.num_parameters(), expected_count);
    assert_eq!(n.blocks[0].attn.heads, 2);
}

#[test]
fn set_training_reaches_every_nested_layer() {
    let n = net(1);
    let x = Tensor::ones((2, 4), &Device::cpu()).unwrap();
    let dropped = |n: &Net| n.blocks[1].drop.forward(&x).unwrap().to_vec().unwrap();
    // Training: dropout zeroes about half.
    assert!(dropped(&n).contains(&0.0));
    n.set_training(false);
    assert_eq!(dropped(&n), vec![1.0; 8], "evaluation is the identity");
    let img = Tensor::ones((2, 3, 2, 2), &Device::cpu()).unwrap();
    // In evaluation batch norm uses its running estimates (mean 0, var 1): y = x / sqrt(1 + eps).
    let y = n.norm.forward(&img).unwrap().to_vec().unwrap();
    assert!(y.iter().all(|v| (v - 1.0).abs() < 1e-4), "{y:?}");
    n.set_training(true);
    assert!(dropped(&n).contains(&0.0));
}

#[test]
fn a_checkpoint_round_trips_through_the_derived_names() {
    let (a, b) = (net(1), net(2));
    a.noise.set_position(5);
    a.counts
        .set(&Tensor::from_vec(vec![3.0, 4.0], 2, &Device::cpu()).unwrap())
        .unwrap();
    let saved = Checkpoint::of_module(&a).unwrap();
    saved.restore(&b, "").unwrap();
    let values =
        |n: &Net| -> Vec<Vec<f32>> { n.parameters().iter().map(|p| p.to_vec().unwrap()).collect() };
    assert_eq!(values(&a), values(&b));
    assert_eq!(b.counts.get().to_vec().unwrap(), vec![3.0, 4.0]);
    assert_eq!(b.noise.position(), 5);
}

/// A tuple struct, a generic wrapper and a flattened field.
#[derive(Module)]
struct Pair(Linear, Linear);

#[derive(Module)]
struct Scaled<M> {
    #[module(flatten)]
    inner: M,
    factor: Var,
}

impl<M: Module> Module for Scaled<M> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)?.mul(&self.factor)
    }
}

impl Module for Pair {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.1.forward(&self.0.forward(x)?)
    }
}

#[test]
fn tuple_generic_and_flattened_fields() {
    let (device, rng) = (Device::cpu(), &mut rng_from_seed(3));
    let pair = Pair(
        Linear::new(3, 5, &device, rng).unwrap(),
        Linear::new(5, 1, &device, rng).unwrap(),
    );
    assert_eq!(
        names(pair.named_parameters()),
        ["0.weight", "0.bias", "1.weight", "1.bias"]
    );
    let scaled = Scaled {
        inner: pair,
        factor: Var::from_vec(vec![2.0], 1, &device).unwrap(),
    };
    assert_eq!(
        names(scaled.named_parameters()),
        ["0.weight", "0.bias", "1.weight", "1.bias", "factor"]
    );
    // The derived module trains: gradients reach every parameter it names.
    let x = Tensor::ones((4, 3), &device).unwrap();
    let grads = scaled
        .forward(&x)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, p) in scaled.named_parameters() {
        assert!(grads.get(&p).is_some(), "{name} has no gradient");
    }
    // Boxed, as a model picked at run time.
    let boxed: Box<dyn Module + Send + Sync> = Box::new(scaled);
    assert_eq!(boxed.named_parameters().len(), 5);
}
