//! One integration binary: the exporter against a fake Graph and identity platform on loopback.

mod helpers;
mod lifecycle;
mod promtool;
mod protocol;
