//! Serving: the HTTP server, its routes and the web configuration.

mod connection;
pub(crate) mod routes;
pub(crate) mod server;
pub(crate) mod webconfig;
