//! Shapes and strides as kernels see them: plain element counts, no tensor semantics.

/// Product of `dims`, or `usize::MAX` when it overflows: no buffer is that long, so a
/// length check against it fails instead of wrapping around to a small number.
pub fn saturating_product(dims: &[usize]) -> usize {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .unwrap_or(usize::MAX)
}

/// Row-major strides of a contiguous array of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc *= d;
    }
    strides
}

/// A view of a buffer: element `idx` lives at `offset + sum(idx[d] * strides[d])`.
/// A stride of 0 repeats (broadcasts) a dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StridedLayout {
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub offset: usize,
}

impl StridedLayout {
    pub fn contiguous(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: 0,
        }
    }

    pub fn elem_count(&self) -> usize {
        saturating_product(&self.shape)
    }

    /// One past the largest buffer index this view touches (0 for an empty view;
    /// `usize::MAX` if it overflows).
    pub fn span(&self) -> usize {
        if self.shape.contains(&0) {
            return 0;
        }
        self.shape
            .iter()
            .zip(&self.strides)
            .try_fold(self.offset, |acc, (&d, &s)| {
                acc.checked_add((d - 1).checked_mul(s)?)
            })
            .and_then(|last| last.checked_add(1))
            .unwrap_or(usize::MAX)
    }
}

/// Operands of an elementwise binary op over an output of `shape` (contiguous). The input
/// strides are 0 along broadcast dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryLayout {
    pub shape: Vec<usize>,
    pub lhs_strides: Vec<usize>,
    pub rhs_strides: Vec<usize>,
}

impl BinaryLayout {
    /// Both operands have the output's shape.
    pub fn same_shape(shape: &[usize]) -> Self {
        let s = contiguous_strides(shape);
        Self {
            shape: shape.to_vec(),
            lhs_strides: s.clone(),
            rhs_strides: s,
        }
    }

    pub fn elem_count(&self) -> usize {
        saturating_product(&self.shape)
    }
}

/// Merges adjacent dimensions that every operand walks contiguously, so most broadcasts
/// become one or two dimensions (a bias add is `[rows, cols] op [0-stride, cols]`).
pub(crate) fn collapse(shape: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_shape: Vec<usize> = Vec::new();
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    for d in 0..shape.len() {
        if shape[d] == 1 {
            continue;
        }
        let mergeable = strides
            .iter()
            .zip(&out_strides)
            .all(|(s, o)| o.last() == Some(&(s[d] * shape[d])));
        match out_shape.last_mut() {
            Some(last) if mergeable => {
                *last *= shape[d];
                for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                    if let Some(last) = o.last_mut() {
                        *last = s[d];
                    }
                }
            }
            _ => {
                out_shape.push(shape[d]);
                for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                    o.push(s[d]);
                }
            }
        }
    }
    if out_shape.is_empty() {
        out_shape.push(1);
        out_strides.iter_mut().for_each(|o| o.push(0));
    }
    (out_shape, out_strides)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_and_span() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<usize>::new());
        let l = StridedLayout::contiguous(&[2, 3]);
        assert_eq!(l.span(), 6);
        let t = StridedLayout {
            shape: vec![3, 2],
            strides: vec![1, 3],
            offset: 0,
        };
        assert_eq!(t.span(), 6);
        let b = StridedLayout {
            shape: vec![4, 3],
            strides: vec![0, 1],
            offset: 0,
        };
        assert_eq!(b.span(), 3);
        assert_eq!(StridedLayout::contiguous(&[0, 3]).span(), 0);
        let huge = StridedLayout::contiguous(&[3, usize::MAX / 2]);
        assert_eq!(huge.elem_count(), usize::MAX);
        assert_eq!(huge.span(), usize::MAX);
    }
}
