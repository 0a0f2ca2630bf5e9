//! Where each parameter's gradient sits in the flat buffers that are all-reduced.

use ringtrain_runtime::Shape;

/// A parameter's place: bucket, offset within it, element count, shape.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub bucket: usize,
    pub offset: usize,
    pub len: usize,
    pub shape: Shape,
}

/// Parameters grouped into buckets, in reverse order of the model's parameter list:
/// backward produces the last layers' gradients first, so the first bucket fills first.
/// The first bucket is small so that its reduction starts early; the others are large so
/// that each all-reduce moves enough data to run at full bandwidth.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// By parameter index (the model's order).
    pub slots: Vec<Slot>,
    /// Elements per bucket.
    pub bucket_lens: Vec<usize>,
    /// Parameters per bucket.
    pub bucket_params: Vec<usize>,
}

impl Layout {
    /// A fingerprint of the parameters (`names`, with their shapes) and of how their
    /// gradients are bucketed: ranks whose fingerprints differ would all-reduce buffers
    /// of different lengths or meanings. FNV-1a: stable across platforms and builds,
    /// which a `std` hasher does not promise.
    pub fn hash(&self, names: &[(String, Vec<usize>)]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for (name, dims) in names {
            eat(name.as_bytes());
            eat(&[0xff]);
            for &d in dims {
                eat(&(d as u64).to_le_bytes());
            }
            eat(&[0xfe]);
        }
        for &len in &self.bucket_lens {
            eat(&(len as u64).to_le_bytes());
        }
        // Where each parameter sits, not just how long the buckets are.
        for slot in &self.slots {
            eat(&(slot.bucket as u64).to_le_bytes());
            eat(&(slot.offset as u64).to_le_bytes());
        }
        h
    }

    /// Buckets for parameters of `shapes`, named `names` (`fc1.weight`): consecutive
    /// parameters of one module (the same name up to its last dot) stay in one bucket,
    /// since backward makes a layer's gradients ready together; a layer's bias taken
    /// into the first bucket without its weight would hold that bucket back to the end
    /// of the layer's backward.
    pub fn new(
        shapes: &[Shape],
        names: &[&str],
        first_bucket_bytes: usize,
        bucket_bytes: usize,
    ) -> Self {
        assert_eq!(shapes.len(), names.len(), "a name per parameter");
        let mut slots = vec![None; shapes.len()];
        let (mut bucket_lens, mut bucket_params) = (Vec::<usize>::new(), Vec::new());
        let cap = |b: usize| {
            (if b == 0 {
                first_bucket_bytes
            } else {
                bucket_bytes
            }) / 4
        };
        let module = |name: &str| name.rsplit_once('.').map_or("", |(m, _)| m).to_string();
        let mut end = shapes.len();
        while end > 0 {
            // The module of parameter end - 1: every parameter before it with its prefix.
            let owner = module(names[end - 1]);
            let mut start = end - 1;
            while start > 0 && module(names[start - 1]) == owner && !owner.is_empty() {
                start -= 1;
            }
            let len: usize = shapes[start..end].iter().map(Shape::elem_count).sum();
            // A module joins the open bucket unless that would take it past its cap (a
            // module larger than a cap gets a bucket of its own).
            let open = bucket_lens.len().checked_sub(1);
            let bucket = match open {
                Some(b) if bucket_lens[b] == 0 || bucket_lens[b] + len <= cap(b) => b,
                _ => {
                    bucket_lens.push(0);
                    bucket_params.push(0);
                    bucket_lens.len() - 1
                }
            };
            for i in (start..end).rev() {
                let len = shapes[i].elem_count();
                slots[i] = Some(Slot {
                    bucket,
                    offset: bucket_lens[bucket],
                    len,
                    shape: shapes[i].clone(),
                });
                bucket_lens[bucket] += len;
                bucket_params[bucket] += 1;
            }
            end = start;
        }
        Self {
            slots: slots
                .into_iter()
                .map(|s| s.expect("every slot set"))
                .collect(),
            bucket_lens,
            bucket_params,
        }
    }

    pub fn buckets(&self) -> usize {
        self.bucket_lens.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_order_small_first_bucket_and_oversized_parameters() {
        let shapes: Vec<Shape> = [10usize, 3, 100, 5, 5]
            .iter()
            .map(|&n| Shape::from(n))
            .collect();
        let names = ["a", "b", "c", "d", "e"];
        // caps: first 8 elements, then 40.
        let l = Layout::new(&shapes, &names, 32, 160);
        // Reverse order: 5, 5 -> bucket 0 (10 > 8, so the second opens bucket 1)...
        assert_eq!(l.slots[4].bucket, 0);
        assert_eq!(l.slots[3].bucket, 1);
        // 100 is larger than any cap: a bucket of its own.
        assert_eq!(l.slots[2].bucket, 2);
        assert_eq!(l.slots[1].bucket, 3);
        assert_eq!(l.slots[0].bucket, 3);
        assert_eq!(l.bucket_lens, vec![5, 5, 100, 13]);
        assert_eq!(l.bucket_params, vec![1, 1, 1, 2]);
        assert_eq!((l.slots[1].offset, l.slots[0].offset), (0, 3));
    }

    /// An MLP's parameters: the small first bucket takes the last layers whole, and the
    /// first layer's bias stays with its weight (both are ready only at the very end).
    #[test]
    fn a_module_s_parameters_share_a_bucket() {
        let shapes: Vec<Shape> = [
            (512, 784),
            (512, 1),
            (256, 512),
            (256, 1),
            (10, 256),
            (10, 1),
        ]
        .iter()
        .map(|&(a, b)| Shape::from(a * b))
        .collect();
        let names = [
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias",
            "fc3.weight",
            "fc3.bias",
        ];
        let l = Layout::new(&shapes, &names, 1 << 20, 25 << 20);
        let buckets: Vec<usize> = l.slots.iter().map(|s| s.bucket).collect();
        assert_eq!(buckets, vec![1, 1, 0, 0, 0, 0]);
        assert_eq!(l.bucket_params, vec![4, 2]);
        // Within a bucket, reverse order: the bias before its weight.
        assert_eq!((l.slots[1].offset, l.slots[0].offset), (0, 512));
    }
}
