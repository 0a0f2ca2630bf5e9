//! Tensor shapes and the broadcasting rules (NumPy's: align trailing dimensions; a
//! dimension of 1 stretches to match).

use crate::{Error, Result};
use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

/// A dimension of a tensor, as ops take it: a `usize` counts from the front, a signed
/// integer may also count from the end (`-1` is the last dimension), as in PyTorch. An
/// integer literal is an `i32`, so `x.sum(-1)` and `x.sum(1)` both read naturally.
pub trait Dim: Copy + fmt::Debug {
    /// The dimension as an index below `rank`, or an error naming `op`.
    fn index(self, rank: usize, op: &'static str) -> Result<usize>;
}

impl Dim for usize {
    fn index(self, rank: usize, op: &'static str) -> Result<usize> {
        if self < rank {
            Ok(self)
        } else {
            Err(Error::DimOutOfRange {
                op,
                dim: i64::try_from(self).unwrap_or(i64::MAX),
                rank,
            })
        }
    }
}

macro_rules! signed_dim {
    ($($t:ty),*) => {$(
        impl Dim for $t {
            fn index(self, rank: usize, op: &'static str) -> Result<usize> {
                let dim = i64::from(self);
                let rank_i = i64::try_from(rank).unwrap_or(i64::MAX);
                let index = if dim < 0 { dim + rank_i } else { dim };
                if (0..rank_i).contains(&index) {
                    Ok(index as usize)
                } else {
                    Err(Error::DimOutOfRange { op, dim, rank })
                }
            }
        }
    )*};
}
signed_dim!(i32, i64);

impl Dim for isize {
    fn index(self, rank: usize, op: &'static str) -> Result<usize> {
        (self as i64).index(rank, op)
    }
}

/// Several dimensions at once (`x.sum_keepdims(&[0, 2, 3])`), each resolved as a [`Dim`].
pub(crate) fn dim_indices<D: Dim>(dims: &[D], rank: usize, op: &'static str) -> Result<Vec<usize>> {
    dims.iter().map(|d| d.index(rank, op)).collect()
}

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    pub fn scalar() -> Self {
        Shape(Vec::new())
    }

    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements; `usize::MAX` for a shape too large to exist, so every length
    /// check against it fails rather than wrapping around.
    pub fn elem_count(&self) -> usize {
        ringtrain_kernels::saturating_product(&self.0)
    }

    /// Size of dimension `dim` (negative counts from the end), or an error naming `op`.
    pub fn dim(&self, dim: impl Dim, op: &'static str) -> Result<usize> {
        Ok(self.0[dim.index(self.rank(), op)?])
    }

    /// The two dimensions of a matrix.
    pub fn dims2(&self, op: &'static str) -> Result<(usize, usize)> {
        match self.0[..] {
            [a, b] => Ok((a, b)),
            _ => Err(Error::InvalidShape {
                op,
                reason: format!("expected a 2-d tensor, got shape {self}"),
            }),
        }
    }

    /// Product of the dimensions before `dim`, `dim` itself, and after it.
    pub fn split_at(&self, dim: usize) -> (usize, usize, usize) {
        let outer = self.0[..dim].iter().product();
        let inner = self.0[dim + 1..].iter().product();
        (outer, self.0[dim], inner)
    }

    /// The shape both operands broadcast to.
    pub fn broadcast(&self, other: &Shape, op: &'static str) -> Result<Shape> {
        let rank = self.rank().max(other.rank());
        let mut out = vec![0; rank];
        for (i, o) in out.iter_mut().enumerate() {
            let a = self.padded_dim(i, rank);
            let b = other.padded_dim(i, rank);
            *o = match (a, b) {
                (a, b) if a == b => a,
                (1, b) => b,
                (a, 1) => a,
                _ => {
                    return Err(Error::ShapeMismatch {
                        op,
                        lhs: self.clone(),
                        rhs: other.clone(),
                        hint: " (and cannot be broadcast together)",
                    })
                }
            };
        }
        Ok(Shape(out))
    }

    /// Strides for reading this (contiguous) shape as if broadcast to `target`: 0 along
    /// stretched or missing dimensions.
    pub fn broadcast_strides(&self, target: &Shape) -> Vec<usize> {
        let rank = target.rank();
        let own = ringtrain_kernels::contiguous_strides(&self.0);
        (0..rank)
            .map(|i| {
                let offset = rank - self.rank();
                if i < offset || self.0[i - offset] == 1 {
                    0
                } else {
                    own[i - offset]
                }
            })
            .collect()
    }

    fn padded_dim(&self, i: usize, rank: usize) -> usize {
        let offset = rank - self.rank();
        if i < offset {
            1
        } else {
            self.0[i - offset]
        }
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}

impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}

impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}

impl From<usize> for Shape {
    fn from(n: usize) -> Self {
        Shape(vec![n])
    }
}

impl From<(usize, usize)> for Shape {
    fn from((a, b): (usize, usize)) -> Self {
        Shape(vec![a, b])
    }
}

impl From<(usize, usize, usize)> for Shape {
    fn from((a, b, c): (usize, usize, usize)) -> Self {
        Shape(vec![a, b, c])
    }
}

impl From<(usize, usize, usize, usize)> for Shape {
    fn from((a, b, c, d): (usize, usize, usize, usize)) -> Self {
        Shape(vec![a, b, c, d])
    }
}

impl From<(usize, usize, usize, usize, usize)> for Shape {
    fn from((a, b, c, d, e): (usize, usize, usize, usize, usize)) -> Self {
        Shape(vec![a, b, c, d, e])
    }
}

impl From<(usize, usize, usize, usize, usize, usize)> for Shape {
    fn from((a, b, c, d, e, f): (usize, usize, usize, usize, usize, usize)) -> Self {
        Shape(vec![a, b, c, d, e, f])
    }
}

impl From<()> for Shape {
    fn from((): ()) -> Self {
        Shape::scalar()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting() {
        let a = Shape::from((4, 3));
        let b = Shape::from(3);
        assert_eq!(a.broadcast(&b, "t").unwrap(), a);
        assert_eq!(b.broadcast_strides(&a), vec![0, 1]);
        let c = Shape::from((4, 1));
        assert_eq!(c.broadcast_strides(&a), vec![1, 0]);
        assert_eq!(
            Shape::from((2, 1, 3))
                .broadcast(&Shape::from((5, 1)), "t")
                .unwrap(),
            Shape::from((2, 5, 3))
        );
        let err = a.broadcast(&Shape::from(4), "add").unwrap_err();
        assert!(err.to_string().contains("[4, 3] and [4]"), "{err}");
    }

    #[test]
    fn tuples_up_to_rank_six() {
        assert_eq!(Shape::from(()).dims(), &[] as &[usize]);
        assert_eq!(Shape::from((1, 2, 3, 4)).dims(), &[1, 2, 3, 4]);
        assert_eq!(Shape::from((1, 2, 3, 4, 5)).dims(), &[1, 2, 3, 4, 5]);
        assert_eq!(Shape::from((1, 2, 3, 4, 5, 6)).dims(), &[1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn negative_dims_count_from_the_end() {
        let s = Shape::from((2, 3, 5));
        assert_eq!(s.dim(-1, "t").unwrap(), 5);
        assert_eq!(s.dim(-3, "t").unwrap(), 2);
        assert_eq!(s.dim(1, "t").unwrap(), 3);
        assert_eq!(s.dim(1usize, "t").unwrap(), 3);
        assert_eq!(s.dim(-2isize, "t").unwrap(), 3);
        for bad in [-4i64, 3] {
            let err = s.dim(bad, "sum").unwrap_err().to_string();
            assert!(
                err.contains(&format!("dimension {bad}")) && err.contains("rank 3"),
                "{err}"
            );
        }
        assert!(s.dim(3usize, "sum").is_err());
    }
}
