//! Tensor shapes and the broadcasting rules (NumPy's: align trailing dimensions; a
//! dimension of 1 stretches to match).

use crate::{Error, Result};
use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

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

    /// Size of dimension `dim`, or an error naming `op`.
    pub fn dim(&self, dim: usize, op: &'static str) -> Result<usize> {
        self.0.get(dim).copied().ok_or(Error::DimOutOfRange {
            op,
            dim,
            rank: self.rank(),
        })
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
}
