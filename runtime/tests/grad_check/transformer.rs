// The gradients of the ops a transformer needs, checked against finite differences
// (included after checks.rs by both grad_check files, so the harness is the same).

use ringtrain_runtime::AttentionDropout;

fn ids(data: &[u32], dims: &[usize]) -> Tensor {
    Tensor::from_slice_u32(data, dims, &dev()).unwrap()
}

#[test]
fn grad_permute() {
    check_grads(&[input(200, &[2, 3, 4])], |t| t[0].permute(&[2, 0, 1]));
    check_grads(&[input(201, &[2, 3, 2, 4])], |t| t[0].permute(&[0, 2, 1, 3]));
    check_grads(&[input(202, &[3, 4])], |t| t[0].permute(&[-1, -2]));
}

#[test]
fn grad_narrow_split_chunk() {
    check_grads(&[input(203, &[3, 5, 2])], |t| t[0].narrow(1, 1, 3));
    check_grads(&[input(204, &[4, 6])], |t| {
        let parts = t[0].split(&[1, 3, 2], -1)?;
        parts[0].mul(&parts[2].narrow(1, 0, 1)?)?.add(&parts[1].sum(1)?.reshape((4, 1))?)
    });
    check_grads(&[input(205, &[7, 2])], |t| {
        let parts = t[0].chunk(3, 0)?;
        assert_eq!(parts.iter().map(|p| p.dims()[0]).collect::<Vec<_>>(), [3, 3, 1]);
        parts[0].mul(&parts[1])?.add(&parts[2])
    });
    // Overlapping narrows of a tensor that is also used whole: the pieces are summed
    // with the rest of its gradient rather than joined.
    check_grads(&[input(250, &[3, 4])], |t| {
        let (a, b) = (t[0].narrow(1, 0, 3)?, t[0].narrow(1, 1, 3)?);
        a.mul(&b)?.sum(1)?.add(&t[0].mul(&t[0])?.sum(1)?)
    });
}

#[test]
fn grad_cat_and_stack() {
    check_grads(&[input(206, &[2, 3]), input(207, &[2, 1]), input(208, &[2, 2])], |t| {
        Tensor::cat(&[&t[0], &t[1], &t[2]], 1)
    });
    check_grads(&[input(209, &[2, 3]), input(210, &[1, 3])], |t| {
        Tensor::cat(&[&t[0], &t[1], &t[0]], 0)
    });
    check_grads(&[input(211, &[2, 3]), input(212, &[2, 3])], |t| {
        Tensor::stack(&[&t[0], &t[1]], 1)
    });
}

#[test]
fn grad_index_select_embedding() {
    // Repeated ids: their rows' gradients add up.
    let tokens = ids(&[3, 0, 3, 3, 1, 4], &[2, 3]);
    check_grads(&[input(213, &[5, 4])], |t| t[0].index_select(0, &tokens));
    let cols = ids(&[2, 2, 0], &[3]);
    check_grads(&[input(214, &[2, 3, 2])], |t| t[0].index_select(1, &cols));
}

#[test]
fn grad_gather_and_max() {
    let at = ids(&[1, 0, 2, 2, 0, 0], &[3, 2]);
    check_grads(&[input(215, &[3, 3])], |t| t[0].gather(1, &at));
    check_grads(&[distinct(216, &[3, 4, 2])], |t| t[0].max_dim(1));
    check_grads(&[distinct(217, &[3, 4])], |t| t[0].max_dim(-1));
}

#[test]
fn grad_where_and_masked_fill() {
    let mask = ids(&[1, 0, 0, 1, 1, 0], &[2, 3]);
    check_grads(&[input(218, &[2, 3]), input(219, &[2, 3])], |t| {
        Tensor::where_cond(&mask, &t[0], &t[1])
    });
    // Broadcast branches: a [3] row and a [2, 1] column.
    check_grads(&[input(220, &[3]), input(221, &[2, 1])], |t| {
        Tensor::where_cond(&mask, &t[0], &t[1])
    });
    let causal = Tensor::causal_mask(4, 4, &dev()).unwrap();
    let future = causal.eq(&Tensor::full_u32(0, (), &dev()).unwrap()).unwrap();
    check_grads(&[input(222, &[2, 4, 4])], |t| {
        t[0].masked_fill(&future, -1e9)?.softmax(-1)
    });
}

#[test]
fn grad_tril_triu() {
    check_grads(&[input(223, &[2, 3, 4])], |t| t[0].tril(0));
    check_grads(&[input(224, &[4, 3])], |t| t[0].triu(1));
    check_grads(&[input(225, &[3, 3])], |t| t[0].tril(-1));
}

#[test]
fn grad_softmax_over_any_dim_and_negative_reductions() {
    check_grads(&[input(226, &[3, 4, 2])], |t| t[0].log_softmax(0));
    check_grads(&[input(227, &[3, 4, 2])], |t| t[0].softmax(1));
    check_grads(&[input(228, &[3, 4, 2])], |t| t[0].softmax(-2));
    check_grads(&[input(229, &[3, 4, 2])], |t| t[0].sum(-2));
    check_grads(&[input(230, &[3, 4, 2])], |t| t[0].mean(-1));
}

#[test]
fn grad_matmul_with_batch_dimensions() {
    // [b, h, t, d] x [b, h, d, t], and q k^T without a copy.
    check_grads(&[input(231, &[2, 2, 3, 4]), input(232, &[2, 2, 4, 3])], |t| {
        t[0].matmul(&t[1])
    });
    check_grads(&[input(233, &[2, 2, 3, 4]), input(234, &[2, 2, 5, 4])], |t| {
        t[0].matmul_t(&t[1], false, true)
    });
    // Broadcast batches: [2, 1, 3, 4] x [3, 4, 2] is [2, 3, 3, 2].
    check_grads(&[input(235, &[2, 1, 3, 4]), input(236, &[3, 4, 2])], |t| {
        let y = t[0].matmul(&t[1])?;
        assert_eq!(y.dims(), [2, 3, 3, 2]);
        Ok(y)
    });
}

#[test]
fn grad_cross_entropy_with_device_labels() {
    let labels = ids(&[0, 4, 2, 2, 1, 3], &[2, 3]);
    check_grads(&[input(237, &[2, 3, 5])], |t| t[0].cross_entropy(&labels));
}

fn sdpa(t: &[Tensor], causal: bool, dropout: Option<AttentionDropout>) -> Result<Tensor> {
    Tensor::scaled_dot_product_attention(&t[0], &t[1], &t[2], causal, dropout)
}

#[test]
fn grad_fused_attention() {
    let shapes = |b: u64, q: &[usize], kv: &[usize]| [input(b, q), input(b + 1, kv), input(b + 2, kv)];
    check_grads(&shapes(240, &[2, 2, 5, 4], &[2, 2, 5, 4]), |t| sdpa(t, true, None));
    check_grads(&shapes(243, &[2, 3, 4], &[2, 6, 4]), |t| sdpa(t, false, None));
    // Fewer queries than keys under the causal mask: the queries are the last positions.
    check_grads(&shapes(246, &[1, 3, 3], &[1, 5, 3]), |t| sdpa(t, true, None));
    // Dropout with a fixed seed is a fixed mask, so it has a gradient too.
    let drop = Some(AttentionDropout { p: 0.25, seed: 99 });
    check_grads(&shapes(249, &[2, 1, 6, 4], &[2, 1, 6, 4]), |t| sdpa(t, true, drop));
}

/// The fused op against attention written out with the ops above.
#[test]
fn fused_attention_matches_the_composed_ops() {
    let (b, h, t, d) = (2, 3, 70, 8);
    let data = |seed| input(seed, &[b, h, t, d]);
    let [q, k, v] = [data(260), data(261), data(262)].map(|(x, s)| Tensor::from_vec(x, s, &dev()).unwrap());
    for causal in [false, true] {
        let fused = Tensor::scaled_dot_product_attention(&q, &k, &v, causal, None).unwrap();
        let scores = q.matmul_t(&k, false, true).unwrap().scale(1.0 / (d as f32).sqrt()).unwrap();
        let scores = if causal {
            let future = Tensor::causal_mask(t, t, &dev())
                .unwrap()
                .eq(&Tensor::full_u32(0, (), &dev()).unwrap())
                .unwrap();
            scores.masked_fill(&future, f32::NEG_INFINITY).unwrap()
        } else {
            scores
        };
        let composed = scores.softmax(-1).unwrap().matmul(&v).unwrap();
        let (f, c) = (fused.to_vec().unwrap(), composed.to_vec().unwrap());
        let worst = f.iter().zip(&c).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "causal={causal}: fused and composed differ by {worst}");
    }
}

#[test]
fn grad_linear_in_out() {
    // GPT-2's layout: weight [in, out].
    check_grads(&[input(270, &[4, 3]), input(271, &[3, 5]), input(272, &[5])], |t| {
        t[0].linear_in_out(&t[1], Some(&t[2]))
    });
    check_grads(&[input(273, &[4, 3]), input(274, &[3, 5])], |t| t[0].linear_in_out(&t[1], None));
}

#[test]
fn grad_fused_layer_norm() {
    check_grads(&[input(280, &[4, 6]), input(281, &[6]), input(282, &[6])], |t| {
        t[0].layer_norm(&t[1], &t[2], 1e-5)
    });
    check_grads(&[input(283, &[2, 3, 5]), input(284, &[5]), input(285, &[5])], |t| {
        t[0].layer_norm(&t[1], &t[2], 1e-5)
    });
}
