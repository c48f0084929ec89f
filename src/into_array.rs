//! `IntoArray`: the ndarray inputs tapegrad accepts wherever it stores a value.

use ndarray::{Array, ArrayBase, ArrayD, ArrayView, Data, Dimension};

/// Any ndarray array that can become the `ArrayD` tapegrad stores: an owned array of any
/// dimension (moved, not copied), a view, or a reference to any array (copied). This is what
/// [`Tensor::constant`](crate::Tensor::constant), [`Tape::leaf`](crate::Tape::leaf),
/// [`Collection::insert`](crate::Collection::insert) and [`Variable::set`](crate::Variable::set)
/// take, so callers need no ``.
///
/// ```
/// use ndarray::{Array2, arr1};
/// use tapegrad::Tensor;
/// let owned = Tensor::<f64>::constant(arr1(&[1.0, 2.0]));
/// let image = Array2::<f64>::eye(3);
/// let view = Tensor::constant(image.row(1)); // a view, copied
/// let borrowed = Tensor::constant(&image); // a reference, copied
/// assert_eq!(owned.shape(), [2]);
/// assert_eq!(view.value().as_slice().unwrap(), [0.0, 1.0, 0.0]);
/// assert_eq!(borrowed.shape(), [3, 3]);
/// ```
pub trait IntoArray<A> {
    /// The array, with a dynamic dimension.
    fn into_array(self) -> ArrayD<A>;
}

impl<A, D: Dimension> IntoArray<A> for Array<A, D> {
    fn into_array(self) -> ArrayD<A> {
        self.into_dyn()
    }
}

impl<A: Clone, D: Dimension> IntoArray<A> for ArrayView<'_, A, D> {
    fn into_array(self) -> ArrayD<A> {
        self.into_dyn().to_owned()
    }
}

impl<A: Clone, S: Data<Elem = A>, D: Dimension> IntoArray<A> for &ArrayBase<S, D> {
    fn into_array(self) -> ArrayD<A> {
        self.view().into_dyn().to_owned()
    }
}
