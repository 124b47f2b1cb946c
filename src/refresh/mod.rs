//! Refreshing: one task per tenant and period keeps its state, and the fleet runs them.

pub(crate) mod fleet;
pub(crate) mod refresher;
