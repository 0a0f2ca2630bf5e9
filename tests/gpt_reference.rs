//! ringtrain's GPT against PyTorch, as llm.c checks itself: scripts/gpt_reference.py
//! wrote a small GPT's weights (GPT-2's names and layouts), a batch, and PyTorch's logits,
//! loss, every gradient (computed in float64) and the losses of 5 AdamW steps (float32)
//! into tests/fixtures/gpt_reference.safetensors. Here the same weights are loaded by name
//! into `zoo::Gpt` and everything is compared, on the CPU and on the GPU.
//!
//! Tolerances, for f32 against PyTorch's f64 (the AdamW run is f32 on both sides):
//! logits and loss within 1e-5 absolute; each gradient within 2e-4 of the largest of its
//! tensor plus 0.1% of its value; the five AdamW losses within 1e-4. When this was
//! written, all of it also held 10x tighter, on the CPU and on lavapipe.

use ringtrain::nn::{Module, ModuleState};
use ringtrain::optim::{AdamW, AdamWConfig, Optimizer};
use ringtrain::zoo::{Gpt, GptConfig};
use ringtrain::{rng_from_seed, Device, Tensor};
use safetensors::SafeTensors;

const FIXTURE: &[u8] = include_bytes!("fixtures/gpt_reference.safetensors");

struct Reference<'a>(SafeTensors<'a>);

impl Reference<'_> {
    fn floats(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let t = self
            .0
            .tensor(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        let values = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (t.shape().to_vec(), values)
    }

    fn ids(&self, name: &str, device: &Device) -> Tensor {
        let t = self.0.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::I32, "{name}");
        let values = t
            .data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect();
        Tensor::from_u32(values, t.shape().to_vec(), device).unwrap()
    }

    fn meta(&self, key: &str) -> f32 {
        let (_, meta) = SafeTensors::read_metadata(FIXTURE).unwrap();
        meta.metadata().as_ref().unwrap()[key].parse().unwrap()
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}[{i}]: ringtrain {g}, PyTorch {w}"
        );
    }
}

fn check(device: &Device) {
    let r = Reference(SafeTensors::deserialize(FIXTURE).unwrap());
    let config = GptConfig {
        vocab_size: r.meta("vocab") as usize,
        block_size: r.meta("block") as usize,
        n_layer: r.meta("layers") as usize,
        n_head: r.meta("heads") as usize,
        d_model: r.meta("d_model") as usize,
        dropout: 0.0,
        seed: 0,
    };
    let model = Gpt::new(config, device, &mut rng_from_seed(0)).unwrap();
    // GPT-2's state dict maps one to one (lm_head.weight is wte's, tied).
    for (name, var) in model.named_parameters() {
        let key = if name == "lm_head.weight" {
            "transformer.wte.weight"
        } else {
            &name
        };
        let (shape, values) = r.floats(key);
        assert_eq!(var.dims(), shape, "{name}: layout");
        var.set(&Tensor::from_vec(values, shape, device).unwrap())
            .unwrap();
    }
    let ids = r.ids("ids", device);
    let targets = r.ids("targets", device);

    let logits = model.forward(&ids).unwrap();
    assert_close(
        "logits",
        &logits.to_vec().unwrap(),
        &r.floats("logits").1,
        1e-5,
        0.0,
    );
    let loss = logits.cross_entropy(&targets).unwrap();
    assert_close(
        "loss",
        &[loss.to_scalar().unwrap()],
        &r.floats("loss").1,
        1e-5,
        0.0,
    );

    let grads = loss.backward().unwrap();
    for (name, var) in model.named_parameters() {
        if name == "lm_head.weight" {
            continue;
        }
        let want = r.floats(&format!("grad.{name}")).1;
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let got = grads
            .get(&var)
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .to_vec()
            .unwrap();
        assert_close(&format!("grad {name}"), &got, &want, 2e-4 * scale, 1e-3);
    }

    let mut opt = AdamW::new(
        model.parameters(),
        AdamWConfig {
            lr: r.meta("lr"),
            beta1: r.meta("beta1"),
            beta2: r.meta("beta2"),
            eps: r.meta("eps"),
            weight_decay: r.meta("weight_decay"),
        },
    )
    .unwrap();
    let mut losses = Vec::new();
    for _ in 0..5 {
        let loss = model
            .forward(&ids)
            .unwrap()
            .cross_entropy(&targets)
            .unwrap();
        losses.push(loss.to_scalar().unwrap());
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    assert_close(
        "AdamW losses",
        &losses,
        &r.floats("adamw_losses").1,
        1e-4,
        0.0,
    );
}

#[test]
fn gpt_matches_pytorch_on_the_cpu() {
    check(&Device::cpu());
}

#[test]
fn gpt_matches_pytorch_on_the_gpu() {
    if let Some(gpu) = Device::test_gpu() {
        check(&gpu);
    }
}
