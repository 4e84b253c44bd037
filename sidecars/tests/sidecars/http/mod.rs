//! `rigging-sidecar http` as users run it: real nginx backends and test backends on
//! 127.0.0.1, configs reloaded while traffic flows.

mod balance;
mod cache;
mod rate_limit;
mod routing;
mod support;
