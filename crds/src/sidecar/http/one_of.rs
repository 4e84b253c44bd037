//! Enums as a Kubernetes manifest writes them: a bare word for a choice without a value
//! (`balance: roundRobin`), a one-key map for one with (`path: {prefix: /api}`). serde's
//! derive asks YAML for a `!tag` instead, which nobody writes in a ConfigMap, and the
//! sidecar and the operator must read and write exactly the same shape.

/// Implements `Serialize` and `Deserialize` for an enum of unit and newtype variants in
/// that shape: `one_of!(Type { Unit = "word", ...; Newtype(T) = "key", ... })`.
macro_rules! one_of {
    ($ty:ident { $($unit:ident = $uname:literal),* ; $($var:ident($inner:ty) = $vname:literal),* $(,)? }) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                #[allow(unused_imports)]
                use serde::ser::SerializeMap;
                match self {
                    $(Self::$unit => serializer.serialize_str($uname),)*
                    $(Self::$var(value) => {
                        let mut map = serializer.serialize_map(Some(1))?;
                        map.serialize_entry($vname, value)?;
                        map.end()
                    })*
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                const NAMES: &[&str] = &[$($uname,)* $($vname,)*];
                struct Visitor;
                impl<'de> serde::de::Visitor<'de> for Visitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        write!(f, "one of {}", NAMES.join(", "))
                    }
                    #[allow(unused_variables)]
                    fn visit_str<E: serde::de::Error>(self, word: &str) -> Result<$ty, E> {
                        match word {
                            $($uname => Ok($ty::$unit),)*
                            _ => Err(E::unknown_variant(word, NAMES)),
                        }
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<$ty, A::Error> {
                        use serde::de::Error;
                        let Some(key) = map.next_key::<String>()? else {
                            return Err(A::Error::custom(format!("an empty map: expected {}", NAMES.join(", "))));
                        };
                        let value = match key.as_str() {
                            $($vname => $ty::$var(map.next_value::<$inner>()?),)*
                            $($uname => {
                                map.next_value::<serde::de::IgnoredAny>()?;
                                $ty::$unit
                            })*
                            other => return Err(A::Error::unknown_variant(other, NAMES)),
                        };
                        if let Some(extra) = map.next_key::<String>()? {
                            return Err(A::Error::custom(format!("{key:?} and {extra:?}: give only one")));
                        }
                        Ok(value)
                    }
                }
                deserializer.deserialize_any(Visitor)
            }
        }
    };
}
