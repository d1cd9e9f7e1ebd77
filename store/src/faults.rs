//! Fault points for tests: with the `fault-injection` feature (never in a build for use), a test
//! can make the worker panic at a named point when it handles a chosen Svix id, to check that a
//! panic neither stalls the consumer nor loses the event. Without the feature every point is a
//! no-op the compiler removes.

/// Where a panic can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Point {
    /// Inside applying the event (the transaction): the apply path must contain it.
    Apply,
    /// After the event was applied, while it is settled: outside any containment, so the task
    /// that handles the delivery dies.
    Settle,
}

#[cfg(feature = "fault-injection")]
mod plans {
    use std::{
        collections::HashMap,
        sync::{LazyLock, Mutex},
    };

    use super::Point;

    /// (point, Svix id) -> panics left.
    static PLANS: LazyLock<Mutex<HashMap<(Point, String), usize>>> = LazyLock::new(Mutex::default);

    /// Panics the next `times` times `point` is reached for `svix_id`.
    pub fn panic_at(point: Point, svix_id: &str, times: usize) {
        if let Ok(mut plans) = PLANS.lock() {
            plans.insert((point, svix_id.to_owned()), times);
        }
    }

    pub fn reached(point: Point, svix_id: Option<&str>) {
        let Some(svix_id) = svix_id else { return };
        let fire =
            PLANS.lock().is_ok_and(
                |mut plans| match plans.get_mut(&(point, svix_id.to_owned())) {
                    Some(left) if *left > 0 => {
                        *left -= 1;
                        true
                    }
                    _ => false,
                },
            );
        if fire {
            panic!("injected panic at {point:?} for {svix_id}");
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use plans::panic_at;

/// A fault point: panics when a test planned it for this Svix id.
#[inline]
#[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))]
pub fn reached(point: Point, svix_id: Option<&str>) {
    #[cfg(feature = "fault-injection")]
    plans::reached(point, svix_id);
}
