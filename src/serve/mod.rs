//! Serving: the HTTP server, its routes and the web configuration.

pub(crate) mod routes;
pub(crate) mod server;
pub(crate) mod webconfig;
