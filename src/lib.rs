/*!
authproxy: a local authenticating forward proxy.

Tools that cannot log in by themselves (old curl and wget, ncdump, GDAL, urllib) set
`http_proxy=http://127.0.0.1:3128`; the daemon adds what each host needs and hands them
the data. `main.rs` is a thin CLI over this library, so tests drive the same code:
build a [`config::Snapshot`], bind a listener, and call [`server::Daemon::run`].
*/
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod auth;
pub mod client;
pub mod config;
pub mod conn;
pub mod explain;
pub mod failure;
pub mod head;
pub mod install;
pub mod intercept;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod origin;
pub mod policy;
pub mod proxy;
pub mod redact;
pub mod redirect;
pub mod reload;
pub mod resolve;
pub mod rule;
pub mod secret;
pub mod server;
pub mod session;
pub mod small_file;
pub mod status;
pub mod target;
pub mod telemetry;
pub mod tls;
pub mod tunnel;
pub mod upstream;

pub use server::{Daemon, Tuning};
