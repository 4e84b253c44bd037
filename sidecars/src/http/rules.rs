//! Header rules: the decorator pattern, applied to requests on their way to a backend and
//! to responses on their way back.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use rigging_crds::sidecar::http::HeaderRules;

/// Compiled [`HeaderRules`].
#[derive(Debug, Default)]
pub struct Rules {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl Rules {
    /// Compiles `rules`; an error is `(field, message)` under `at`.
    pub fn compile(at: &str, rules: &HeaderRules) -> Result<Self, (String, String)> {
        let name = |field: String, n: &str| {
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| (field, format!("{n:?} is not a header name")))
        };
        let pair = |field: String, (n, v): (&String, &String)| {
            let value = HeaderValue::from_str(v).map_err(|_| {
                (
                    format!("{field}.{n}"),
                    format!("{v:?} is not a header value"),
                )
            })?;
            Ok::<_, (String, String)>((name(field, n)?, value))
        };
        Ok(Self {
            remove: rules
                .remove
                .iter()
                .enumerate()
                .map(|(i, n)| name(format!("{at}.remove[{i}]"), n))
                .collect::<Result<_, _>>()?,
            set: rules
                .set
                .iter()
                .map(|kv| pair(format!("{at}.set"), kv))
                .collect::<Result<_, _>>()?,
            add: rules
                .add
                .iter()
                .map(|kv| pair(format!("{at}.add"), kv))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Removes, then sets, then adds.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_then_sets_then_adds() {
        let rules: HeaderRules = serde_norway::from_str(
            "remove: [x-internal, server]\nset: {x-env: prod, server: rigging}\nadd: {via: 1.1 rigging}\n",
        )
        .unwrap();
        let rules = Rules::compile("routes[0].responseHeaders", &rules).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-internal", HeaderValue::from_static("secret"));
        h.insert("server", HeaderValue::from_static("nginx"));
        h.insert("x-env", HeaderValue::from_static("dev"));
        h.insert("via", HeaderValue::from_static("1.1 cdn"));
        rules.apply(&mut h);
        assert!(!h.contains_key("x-internal"));
        assert_eq!(h["server"], "rigging");
        assert_eq!(h["x-env"], "prod");
        let via: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(via, ["1.1 cdn", "1.1 rigging"]);
    }

    #[test]
    fn a_bad_value_is_refused_naming_the_header() {
        let rules: HeaderRules = serde_norway::from_str("set: {x-a: \"line\\nbreak\"}\n").unwrap();
        let (field, _) = Rules::compile("routes[2].requestHeaders", &rules).unwrap_err();
        assert_eq!(field, "routes[2].requestHeaders.set.x-a");
    }
}
