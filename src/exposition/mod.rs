//! The exposition: the published state as Prometheus text, compressed and assembled.

pub mod gzip;
pub mod metrics;
pub mod process;
pub mod publisher;
pub mod writer;
