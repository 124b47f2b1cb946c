//! The exposition: the published state as Prometheus text, compressed and assembled.

pub(crate) mod gzip;
pub(crate) mod metrics;
pub(crate) mod process;
pub(crate) mod publisher;
pub(crate) mod writer;
