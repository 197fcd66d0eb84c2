//! The Earthdata Login world (issue 14): loopback servers that model NASA's login
//! redirects ([`World`], in `world.rs`), and tests that prove the model against curl
//! doing the dance itself (`curl.rs`). Proxy tests build on the same [`World`].

mod world;

#[allow(unused_imports)]
pub(crate) use world::{
    basic_header, loopback, pattern, pattern_range, Approval, Hit, Options, Role, Serve, World,
    ACCESS_DENIED_BODY, CLIENT_ID, LOGIN_COOKIE, PASSWORD, REALM, SESSION_COOKIE, USER,
};

mod curl;
