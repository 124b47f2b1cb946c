//! One integration binary: the exporter against a fake Graph and identity platform on loopback.

mod backfill;
mod e2e;
mod faults;
mod hardening;
mod helpers;
mod identity;
mod layout;
mod lifecycle;
mod outbound;
mod packaging;
mod process;
mod promtool;
mod protocol;
mod selfmetrics;
mod serving;
mod tenants;
mod webconfig;
