//! The integration tests: one binary, real loopback servers and real clients.

mod support;

mod access;
mod check_output;
mod clients;
mod config;
mod core;
mod crash;
mod credentials;
mod dance;
mod edl;
mod handcar;
mod handle;
mod hostile;
mod intercept;
mod jar;
mod leak;
mod metrics;
mod netrc_safety;
mod process;
mod rc_compat;
mod safety;
mod service;
mod servlet;
mod side_client;
