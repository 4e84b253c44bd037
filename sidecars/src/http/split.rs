//! Sticky, weighted experiments: the arm is chosen before load balancing, from the
//! user's cookie when it names an arm that still exists, else from a stable hash of the
//! user's key, and is then remembered in the cookie.
//!
//! The hash is mapped onto 10,000 buckets and each arm owns a contiguous run of them in
//! proportion to its weight. A change of weights moves only the buckets between the old
//! and new boundaries, so a user without a cookie changes arm only when the arm they were
//! in shrank past them; a user with the cookie stays in their arm whatever the weights,
//! as long as the arm is in the config (an arm of weight 0 keeps its users and takes no
//! new ones). This is what keeps a user's experience consistent as a canary is ramped up.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use http::header::{self, HeaderValue};
use rigging_crds::sidecar::http as config;

use super::backend::Backend;
use super::keys::{self, Key};

const BUCKETS: u64 = 10_000;

/// A compiled split.
pub struct Split {
    route: String,
    key: Key,
    cookie: String,
    arms: Vec<Arm>,
}

/// One arm of a split.
pub struct Arm {
    /// Its name (the cookie's value).
    pub name: String,
    /// The backend that serves it.
    pub backend: Arc<Backend>,
    /// The first bucket past this arm's.
    end: u64,
    /// The `Set-Cookie` that puts a user in this arm.
    set_cookie: HeaderValue,
    /// Requests sent to this arm.
    pub requests: prometheus::IntCounter,
}

impl Split {
    /// Compiles the split of route `route`; `backend` resolves names (checked already).
    pub fn compile(
        at: &str,
        route: &str,
        split: &config::Split,
        backend: impl Fn(&str) -> Arc<Backend>,
        arm_requests: impl Fn(&str) -> prometheus::IntCounter,
    ) -> Result<Self, (String, String)> {
        let key = Key::compile(&split.key).map_err(|m| (format!("{at}.split.key"), m))?;
        let cookie = split
            .cookie
            .clone()
            .unwrap_or_else(|| format!("rigging-{route}"));
        if cookie.is_empty()
            || !cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err((
                format!("{at}.split.cookie"),
                format!("{cookie:?} is not a cookie name"),
            ));
        }
        let total: u64 = split.arms.iter().map(|a| u64::from(a.weight)).sum();
        let mut cumulative = 0u64;
        let arms = split
            .arms
            .iter()
            .map(|arm| {
                cumulative += u64::from(arm.weight);
                let set_cookie = format!(
                    "{cookie}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
                    arm.name,
                    split.cookie_max_age.as_secs()
                );
                Arm {
                    name: arm.name.clone(),
                    backend: backend(&arm.backend),
                    end: cumulative * BUCKETS / total.max(1),
                    set_cookie: HeaderValue::from_str(&set_cookie)
                        .expect("arm and cookie names were checked"),
                    requests: arm_requests(&arm.name),
                }
            })
            .collect();
        Ok(Self {
            route: route.to_owned(),
            key,
            cookie,
            arms,
        })
    }

    /// Removes the split's own cookie from a request on its way to the arm: it is the
    /// ambassador's, not the app's, and a request with no other cookie can then be
    /// served from the cache (which passes requests that carry cookies).
    pub fn strip_cookie(&self, headers: &mut HeaderMap) {
        if !headers.contains_key(header::COOKIE) {
            return;
        }
        let mut kept = Vec::new();
        for value in headers.get_all(header::COOKIE) {
            let Ok(text) = value.to_str() else {
                // Not text: leave the header exactly as it came.
                return;
            };
            kept.extend(text.split(';').map(str::trim).filter(|pair| {
                !pair.is_empty() && pair.split_once('=').map_or(*pair, |(k, _)| k) != self.cookie
            }));
        }
        let joined = kept.join("; ");
        headers.remove(header::COOKIE);
        if let Ok(value) = HeaderValue::from_str(&joined)
            && !joined.is_empty()
        {
            headers.insert(header::COOKIE, value);
        }
    }

    /// The arm for a request, and the `Set-Cookie` to send when the request's cookie did
    /// not already name it.
    pub fn choose(&self, headers: &HeaderMap, peer: IpAddr) -> (&Arm, Option<HeaderValue>) {
        if let Some(name) = keys::cookie(headers, &self.cookie)
            && let Some(arm) = self.arms.iter().find(|a| a.name == name)
        {
            return (arm, None);
        }
        let key = self.key.of(headers, peer);
        let bucket = keys::stable_hash(&[self.route.as_bytes(), &key]) % BUCKETS;
        let arm = self
            .arms
            .iter()
            .find(|a| bucket < a.end)
            .unwrap_or_else(|| self.arms.last().expect("a split has arms"));
        (arm, Some(arm.set_cookie.clone()))
    }
}
