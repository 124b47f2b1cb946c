//! One integration binary: the exporter against a fake Graph and identity platform on loopback.

mod faults;
mod helpers;
mod lifecycle;
mod process;
mod promtool;
mod protocol;
