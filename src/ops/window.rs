//! Sliding-window geometry shared by convolution and pooling: how a window of a given size,
//! stride, dilation and padding moves along one spatial axis, with Flax's (XLA's) `SAME`.

use crate::error::{Error, Result};
pub(crate) use crate::kernels::window::WindowAxis;

/// How the input is padded before a window slides over it (per spatial axis).
///
/// * `Same`: as XLA and Flax, enough zeros that the output has `ceil(input / stride)`
///   positions, split evenly with the odd one at the end.
/// * `Valid`: no padding; the window must fit inside the input.
/// * `Explicit`: `(before, after)` for height, then width, as Flax's
///   `padding=((1, 1), (2, 2))` and PyTorch's `padding=(1, 2)` (which pads both sides).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// Output size `ceil(input / stride)`.
    #[default]
    Same,
    /// No padding.
    Valid,
    /// `[(before, after) for height, (before, after) for width]`.
    Explicit([(usize, usize); 2]),
}

/// The geometry of both spatial axes, or an error naming `op` and the input's `shape` for a
/// zero window, stride or dilation, a window that does not fit, or sizes whose arithmetic
/// overflows (every sum and product here is checked: `-1i64 as usize` is a padding too).
pub(crate) fn window_axes(
    op: &'static str,
    shape: &[usize],
    window: [usize; 2],
    strides: [usize; 2],
    dilation: [usize; 2],
    padding: Padding,
) -> Result<[WindowAxis; 2]> {
    let invalid = |detail: String| Error::invalid(op, shape, detail);
    let mut axes = [None, None];
    for (a, slot) in axes.iter_mut().enumerate() {
        let (input, k, s, d) = (shape[1 + a], window[a], strides[a], dilation[a]);
        if k == 0 || s == 0 || d == 0 {
            return Err(invalid(format!(
                "window {window:?}, strides {strides:?} and dilation {dilation:?} must be at least 1"
            )));
        }
        let reach = (k - 1)
            .checked_mul(d)
            .and_then(|r| r.checked_add(1))
            .ok_or_else(|| invalid("the dilated window's size overflows".into()))?;
        let (pad_before, output) = match padding {
            Padding::Same => {
                let output = input.div_ceil(s);
                let needed = (output.max(1) - 1)
                    .checked_mul(s)
                    .and_then(|n| n.checked_add(reach))
                    .ok_or_else(|| invalid("the padded input's size overflows".into()))?;
                (needed.saturating_sub(input) / 2, output)
            }
            Padding::Valid | Padding::Explicit(_) => {
                let (before, after) = match padding {
                    Padding::Explicit(pads) => pads[a],
                    _ => (0, 0),
                };
                let padded = input
                    .checked_add(before)
                    .and_then(|n| n.checked_add(after))
                    .ok_or_else(|| {
                        invalid(format!(
                            "padding {padding:?} overflows the padded input's size"
                        ))
                    })?;
                if reach > padded {
                    return Err(invalid(format!(
                        "a window of {reach} (size {k}, dilation {d}) does not fit in {padded} \
                         positions of axis {} (padding {padding:?})",
                        a + 1
                    )));
                }
                (before, (padded - reach) / s + 1)
            }
        };
        *slot = Some(WindowAxis {
            input,
            window: k,
            stride: s,
            dilation: d,
            pad_before,
            output,
        });
    }
    Ok(axes.map(|a| a.expect("both axes set")))
}

/// Checks that `shape` is NHWC.
pub(crate) fn require_nhwc(op: &'static str, shape: &[usize]) -> Result<()> {
    if shape.len() == 4 {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            shape,
            "expected an input (batch, height, width, channels)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::pooling::tiles;

    fn axis(input: usize, k: usize, s: usize, padding: Padding) -> WindowAxis {
        window_axes("t", &[1, input, input, 1], [k, k], [s, s], [1, 1], padding).unwrap()[0]
    }

    #[test]
    fn same_padding_follows_xla() {
        // 5 positions, 3-wide window, stride 2: output 3, total padding 2, one each side.
        let a = axis(5, 3, 2, Padding::Same);
        assert_eq!((a.output, a.pad_before), (3, 1));
        // 6 positions, stride 2: output 3, total padding 1, all of it after.
        let a = axis(6, 3, 2, Padding::Same);
        assert_eq!((a.output, a.pad_before), (3, 0));
        // Stride 1 keeps the size; 2-wide windows pad after.
        assert_eq!(axis(6, 3, 1, Padding::Same).output, 6);
        assert_eq!(axis(4, 2, 1, Padding::Same).pad_before, 0);
    }

    #[test]
    fn tiles_exactly_when_each_input_position_is_read_once() {
        for input in 1..9 {
            for (k, s, d) in [
                (1, 1, 1),
                (2, 2, 1),
                (3, 3, 1),
                (2, 1, 1),
                (2, 3, 1),
                (2, 2, 2),
                (1, 1, 2),
            ] {
                let paddings = [
                    Padding::Same,
                    Padding::Valid,
                    Padding::Explicit([(1, 0); 2]),
                ];
                for padding in paddings {
                    let Ok([a, _]) =
                        window_axes("t", &[1, input, input, 1], [k, k], [s, s], [d, d], padding)
                    else {
                        continue;
                    };
                    let mut reads = vec![0; input];
                    for o in 0..a.output {
                        for k in 0..a.window {
                            if let Some(i) = a.source(o, k) {
                                reads[i] += 1;
                            }
                        }
                    }
                    let once = reads.iter().all(|&r| r == 1);
                    if s == k && d == 1 {
                        assert_eq!(tiles(&a), once, "{a:?}: reads {reads:?}");
                    } else {
                        assert!(!tiles(&a) || once, "{a:?}: reads {reads:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn inside_is_exactly_the_offsets_that_read_the_input() {
        for (input, k, s, d) in [
            (5, 3, 2, 1),
            (6, 3, 1, 2),
            (4, 4, 1, 1),
            (3, 2, 3, 3),
            (9, 5, 2, 2),
        ] {
            for padding in [Padding::Same, Padding::Explicit([(3, 2), (3, 2)])] {
                let Ok([a, _]) =
                    window_axes("t", &[1, input, input, 1], [k, k], [s, s], [d, d], padding)
                else {
                    continue;
                };
                for o in 0..a.output {
                    let expected: Vec<usize> =
                        (0..k).filter(|&k| a.source(o, k).is_some()).collect();
                    assert_eq!(
                        a.inside(o).collect::<Vec<_>>(),
                        expected,
                        "{a:?}, output {o}"
                    );
                }
            }
        }
    }

    #[test]
    fn valid_and_explicit_padding() {
        assert_eq!(axis(6, 3, 1, Padding::Valid).output, 4);
        assert_eq!(axis(7, 2, 2, Padding::Valid).output, 3); // the last row is dropped
        assert_eq!(axis(4, 3, 1, Padding::Explicit([(1, 1), (1, 1)])).output, 4);
        assert!(window_axes("t", &[1, 2, 2, 1], [3, 3], [1, 1], [1, 1], Padding::Valid).is_err());
        assert!(window_axes("t", &[1, 4, 4, 1], [3, 3], [0, 1], [1, 1], Padding::Same).is_err());
        assert!(window_axes("t", &[1, 4, 4, 1], [3, 3], [1, 1], [0, 1], Padding::Same).is_err());
    }
}
