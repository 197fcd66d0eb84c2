//! The integration tests: one binary, real loopback servers and real clients.

mod support;

mod check_output;
mod clients;
mod config;
mod core;
mod crash;
mod credentials;
mod dance;
mod edl;
mod hostile;
mod jar;
mod leak;
mod netrc_safety;
mod process;
mod rc_compat;
mod safety;
