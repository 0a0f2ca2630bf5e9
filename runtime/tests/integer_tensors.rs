//! u32 tensors and the index and mask ops, on the CPU and the GPU: results agree, indices
//! never need the host, and bad input is a clear error.

use ringtrain_runtime::{DType, Device, Error, Tensor};

fn devices() -> Vec<Device> {
    let mut devs = vec![Device::cpu()];
    devs.extend(Device::test_gpu());
    devs
}

fn err_text(r: ringtrain_runtime::Result<Tensor>) -> String {
    match r {
        Ok(t) => panic!("expected an error, got {t:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn u32_tensors_round_trip_and_keep_their_dtype() {
    for dev in devices() {
        let t = Tensor::from_u32(vec![0, 7, u32::MAX, 3], (2, 2), &dev).unwrap();
        assert_eq!(t.dtype(), DType::U32);
        assert_eq!(t.to_vec_u32().unwrap(), [0, 7, u32::MAX, 3]);
        // Data movement keeps the bits.
        assert_eq!(t.t().unwrap().to_vec_u32().unwrap(), [0, u32::MAX, 7, 3]);
        assert_eq!(t.narrow(1, 1, 1).unwrap().to_vec_u32().unwrap(), [7, 3]);
        assert!(format!("{t:?}").contains("u32"));
        assert_eq!(
            Tensor::arange(3, 8, &dev).unwrap().to_vec_u32().unwrap(),
            [3, 4, 5, 6, 7]
        );
        let f = Tensor::arange(0, 4, &dev)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(f.to_vec().unwrap(), [0.0, 1.0, 2.0, 3.0]);
        // f32 ops refuse u32 operands, and u32 readers refuse f32 tensors.
        let msg = err_text(t.exp());
        assert!(msg.contains("expected a f32 tensor, got u32"), "{msg}");
        assert!(matches!(f.to_vec_u32(), Err(Error::DTypeMismatch { .. })));
        assert!(matches!(t.to_vec(), Err(Error::DTypeMismatch { .. })));
    }
}

#[test]
fn index_ops_agree_across_devices() {
    let table: Vec<f32> = (0..20).map(|i| i as f32 * 0.5 - 3.0).collect();
    let mut results: Vec<Vec<Vec<f32>>> = Vec::new();
    for dev in devices() {
        let w = Tensor::from_vec(table.clone(), (5, 4), &dev).unwrap();
        let ids = Tensor::from_u32(vec![4, 0, 4, 2, 1, 1], (2, 3), &dev).unwrap();
        let emb = w.index_select(0, &ids).unwrap();
        assert_eq!(emb.dims(), [2, 3, 4]);
        let am = w.argmax_dim(0).unwrap();
        assert_eq!(am.to_vec_u32().unwrap(), [4, 4, 4, 4]);
        let mx = w.max_dim(1).unwrap();
        let mask = w.gt(&Tensor::zeros((), &dev).unwrap()).unwrap();
        let filled = w.masked_fill(&mask, -1.0).unwrap();
        let causal = Tensor::causal_mask(3, 4, &dev).unwrap();
        assert_eq!(
            causal.to_vec_u32().unwrap(),
            [1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0]
        );
        let cat = Tensor::cat(&[&w, &w.narrow(0, 1, 2).unwrap()], 0).unwrap();
        let perm = emb.permute(&[2, 0, 1]).unwrap();
        results.push(
            [emb, mx, filled, cat, perm, w.triu(1).unwrap()]
                .iter()
                .map(|t| t.to_vec().unwrap())
                .collect(),
        );
    }
    if let [cpu, gpu] = &results[..] {
        assert_eq!(cpu, gpu, "the GPU's index ops differ from the CPU's");
    }
}

#[test]
fn bad_indices_and_masks_are_clear_errors() {
    for dev in devices() {
        let w = Tensor::zeros((5, 4), &dev).unwrap();
        let ids = Tensor::from_u32(vec![1, 5], 2, &dev).unwrap();
        let msg = err_text(w.index_select(0, &ids));
        assert!(
            msg.contains("index 5 at position 1 is out of range for a dimension of size 5"),
            "{msg}"
        );
        // A bound known to be loose (a slice of an arange) is checked by looking.
        let loose = Tensor::arange(0, 100, &dev)
            .unwrap()
            .narrow(0, 0, 5)
            .unwrap();
        assert_eq!(w.index_select(0, &loose).unwrap().dims(), [5, 4]);
        let floats = Tensor::zeros(2, &dev).unwrap();
        assert!(err_text(w.index_select(0, &floats)).contains("expected a u32 tensor"));
        let msg = err_text(w.cross_entropy(&[0, 1, 4, 2, 1]));
        assert!(
            msg.contains("label 4 at row 2 is out of range for 4 classes"),
            "{msg}"
        );
        let labels = Tensor::from_u32(vec![0, 1, 2], 3, &dev).unwrap();
        assert!(err_text(w.cross_entropy(&labels)).contains("3 labels for 5 rows"));
        let mask = Tensor::full_u32(1, (3, 4), &dev).unwrap();
        let msg = err_text(w.masked_fill(&mask, 0.0));
        assert!(msg.contains("masked_fill"), "{msg}");
        assert!(err_text(w.narrow(0, 3, 3)).contains("outside dimension 0"));
        assert!(err_text(w.permute(&[0, 0])).contains("not a permutation"));
        let x = Tensor::zeros((1, 4, 2), &dev).unwrap();
        let k = Tensor::zeros((1, 3, 2), &dev).unwrap();
        let msg = err_text(Tensor::scaled_dot_product_attention(&x, &k, &k, true, None));
        assert!(msg.contains("causal"), "{msg}");
        let bad_k = Tensor::zeros((1, 3, 5), &dev).unwrap();
        assert!(matches!(
            Tensor::scaled_dot_product_attention(&x, &bad_k, &bad_k, false, None),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(err_text(Tensor::cat(&[&w, &x], 0)).contains("cat"));
    }
}

#[test]
fn embedding_backward_is_deterministic() {
    for dev in devices() {
        let ids: Vec<u32> = (0..4096).map(|i| (i * 7919 % 13) as u32).collect();
        let ids = Tensor::from_u32(ids, 4096, &dev).unwrap();
        let run = || {
            let w = ringtrain_runtime::Var::from_vec(vec![0.1; 13 * 8], (13, 8), &dev).unwrap();
            let g: Vec<f32> = (0..4096 * 8)
                .map(|i| ((i % 97) as f32 - 48.0) * 1e-3)
                .collect();
            let g = Tensor::from_vec(g, (4096, 8), &dev).unwrap();
            let loss = w
                .as_tensor()
                .index_select(0, &ids)
                .unwrap()
                .mul(&g)
                .unwrap()
                .sum_all()
                .unwrap();
            loss.backward().unwrap().get(&w).unwrap().to_vec().unwrap()
        };
        let first = run();
        for _ in 0..3 {
            assert_eq!(run(), first, "scatter-add differs between runs on {dev:?}");
        }
    }
}
