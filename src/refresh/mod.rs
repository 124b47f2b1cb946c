//! Refreshing: one task per tenant and period keeps its state, and the fleet runs them.

pub mod fleet;
pub mod refresher;
