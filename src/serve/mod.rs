//! Serving: the HTTP server, its routes and the web configuration.

pub mod routes;
pub mod server;
pub mod webconfig;
