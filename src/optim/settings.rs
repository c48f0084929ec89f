//! The range checks of optimizer and schedule settings, as PyTorch's constructors make them.

use crate::error::{Error, Result};

/// An error unless `value` is finite and at least 0.
pub(crate) fn setting_at_least_zero(
    op: &'static str,
    setting: &'static str,
    value: f64,
) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidSetting {
            op,
            setting,
            value,
            expected: "finite and at least 0",
        })
    }
}

/// An error unless `value` is finite and in `[0, 1)` (a β of Adam, a decay rate).
pub(crate) fn setting_below_one(op: &'static str, setting: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(Error::InvalidSetting {
            op,
            setting,
            value,
            expected: "in [0, 1)",
        })
    }
}

/// An error unless the count `value` is at least 1 (decay intervals, micro-batches, batches).
pub(crate) fn count_at_least_one(
    op: &'static str,
    setting: &'static str,
    value: usize,
) -> Result<()> {
    if value >= 1 {
        Ok(())
    } else {
        Err(Error::InvalidSetting {
            op,
            setting,
            value: 0.0,
            expected: "at least 1",
        })
    }
}
