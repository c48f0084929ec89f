//! One rule for empty inputs, across ops: an op whose output has no elements returns that
//! empty output, shaped as the op defines it, and its VJP an empty gradient (as JAX and XLA
//! do); an op that needs a value of an empty set (a maximum, a batch statistic) is an error
//! naming it. A window larger than its padded input is a shape error, as in PyTorch.

use tapegrad::nn::{BatchNorm, Pool};
use tapegrad::{ApplyOptions, ConvOptions, ModuleExt, Mutable, Padding, Tape, Tensor, Variables};

fn zeros(shape: &[usize]) -> Tensor<f64> {
    Tensor::constant(ndarray::ArrayD::zeros(shape.to_vec()))
}

/// `f` of a tracked input of `shape`: the output's shape, and the input's gradient's.
fn output_and_gradient_shapes(
    shape: &[usize],
    f: impl Fn(&Tensor<f64>) -> tapegrad::Result<Tensor<f64>>,
) -> (Vec<usize>, Vec<usize>) {
    let tape = Tape::new();
    let x = tape.leaf("x", ndarray::ArrayD::<f64>::zeros(shape.to_vec()));
    let y = f(&x).unwrap();
    let gradient = y.sum_all().backward().unwrap().wrt(&x).unwrap();
    (y.shape().to_vec(), gradient.shape().to_vec())
}

#[test]
fn softmax_over_an_empty_axis_is_empty() {
    let (y, g) = output_and_gradient_shapes(&[3, 0], |x| x.softmax(1));
    assert_eq!((y, g), (vec![3, 0], vec![3, 0]));
    let (y, _) = output_and_gradient_shapes(&[3, 0], |x| x.log_softmax(1));
    assert_eq!(y, vec![3, 0]);
}

#[test]
fn convolution_and_pooling_of_empty_inputs_are_empty() {
    let kernel = zeros(&[3, 3, 2, 4]);
    for shape in [[0, 5, 5, 2], [2, 0, 5, 2], [2, 5, 0, 2]] {
        let (y, g) =
            output_and_gradient_shapes(&shape, |x| x.conv2d(&kernel, &ConvOptions::default()));
        assert_eq!(y.iter().product::<usize>(), 0, "{shape:?}: {y:?}");
        assert_eq!(g, shape.to_vec());
    }
    for shape in [[2, 4, 4, 0], [0, 4, 4, 3]] {
        let (y, g) =
            output_and_gradient_shapes(&shape, |x| x.max_pool([2, 2], [2, 2], Padding::Valid));
        assert_eq!(y.iter().product::<usize>(), 0, "{shape:?}: {y:?}");
        assert_eq!(g, shape.to_vec());
        let (y, _) =
            output_and_gradient_shapes(&shape, |x| x.avg_pool([2, 2], [2, 2], Padding::Valid));
        assert_eq!(y.iter().product::<usize>(), 0, "{shape:?}: {y:?}");
    }
    // A window larger than the padded input is a shape error, not an empty output.
    let err = zeros(&[1, 2, 2, 1])
        .max_pool([3, 3], [1, 1], Padding::Valid)
        .unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
}

#[test]
fn a_maximum_of_nothing_is_an_error_naming_it() {
    let err = zeros(&[3, 0]).max_axes(&[1], false).unwrap_err();
    assert!(err.to_string().contains("max"), "{err}");
}

/// BatchNorm in training has no statistics of zero rows: an error, and the running
/// statistics stay as they were (PyTorch returns an empty output and leaves them alone; an
/// error says more about a data pipeline that produced an empty batch). In evaluation an
/// empty batch is an empty output.
#[test]
fn batch_norm_of_an_empty_batch_is_an_error_in_training_and_empty_in_evaluation() {
    let layer = BatchNorm::new();
    let variables: Variables<f64> = layer.init(0, &zeros(&[4, 3])).unwrap();
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let err = layer
        .apply(&variables, &zeros(&[0, 3]), &train)
        .unwrap_err();
    assert!(err.to_string().contains("BatchNorm"), "{err}");
    let (y, _) = layer
        .apply(&variables, &zeros(&[0, 3]), &ApplyOptions::eval())
        .unwrap();
    assert_eq!(y.shape(), &[0, 3]);
}

#[test]
fn pooling_layers_keep_the_rule() {
    let pool = Pool::max([2, 2]);
    let x = zeros(&[0, 4, 4, 3]);
    let variables: Variables<f64> = pool.init(0, &x).unwrap();
    let (y, _) = pool.apply(&variables, &x, &ApplyOptions::eval()).unwrap();
    assert_eq!(y.shape(), &[0, 2, 2, 3]);
}
