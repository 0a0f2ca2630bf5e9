//! Finiteness checks as a training loop uses them: the count of infinite and NaN values
//! in a tensor and in a step's gradients, computed on the device (CPU, and GPU on
//! lavapipe in CI) and read back only when asked.

use ringtrain_runtime::{Device, Tensor, Var};

fn devices() -> Vec<Device> {
    let mut d = vec![Device::cpu()];
    d.extend(Device::test_gpu());
    d
}

#[test]
fn non_finite_values_are_counted_on_every_device() {
    for dev in devices() {
        let x = Tensor::from_vec(
            vec![
                1.0,
                f32::NAN,
                -f32::INFINITY,
                f32::MAX,
                f32::MIN_POSITIVE / 4.0,
                0.0,
            ],
            (2, 3),
            &dev,
        )
        .unwrap();
        assert_eq!(x.count_nonfinite().unwrap().to_scalar().unwrap(), 2.0);
        assert_eq!(
            x.nonfinite_mask().unwrap().to_vec().unwrap(),
            vec![0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
            "{}",
            dev.name()
        );
        // f32::MAX doubled overflows to infinity.
        let doubled = x.scale(2.0).unwrap().count_nonfinite().unwrap();
        assert_eq!(doubled.to_scalar().unwrap(), 3.0, "{}", dev.name());
    }
}

#[test]
fn a_step_with_an_infinite_input_has_non_finite_gradients() {
    for dev in devices() {
        let w = Var::from_vec(vec![0.5, -0.25, 2.0], (3, 1), &dev).unwrap();
        let b = Var::from_vec(vec![0.1], (1, 1), &dev).unwrap();
        let loss_of = |x: Vec<f32>| {
            let x = Tensor::from_vec(x, (2, 3), &dev).unwrap();
            x.matmul(w.as_tensor())
                .unwrap()
                .add(b.as_tensor())
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let finite = loss_of(vec![1.0, 2.0, 3.0, -1.0, 0.5, 0.0]);
        let grads = finite.backward().unwrap();
        assert!(grads.all_finite().unwrap(), "{}", dev.name());
        assert_eq!(
            grads
                .count_nonfinite()
                .unwrap()
                .unwrap()
                .to_scalar()
                .unwrap(),
            0.0
        );

        let poisoned = loss_of(vec![1.0, 2.0, f32::INFINITY, -1.0, 0.5, 0.0]);
        assert_eq!(
            poisoned.count_nonfinite().unwrap().to_scalar().unwrap(),
            1.0
        );
        let grads = poisoned.backward().unwrap();
        assert!(!grads.all_finite().unwrap(), "{}", dev.name());
        let count = grads
            .count_nonfinite()
            .unwrap()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(count >= 2.0, "{}: {count}", dev.name());
    }
}
