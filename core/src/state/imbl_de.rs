//! Decoding the state's persistent maps and sequences without trusting their declared
//! lengths.
//!
//! imbl's own `Deserialize` (imbl 7) reserves a `Vec` of the length the input declares
//! before reading a single element, so a forged or corrupt record with a huge length
//! prefix aborts the process on allocation. These visitors insert element by element:
//! memory grows with the elements actually read, and a short input ends in a decode
//! error. Every imbl field of the state, the frozen formats' included, decodes through
//! them (`#[serde(deserialize_with = ...)]`); encoding is unchanged, so is the format.

use std::fmt;
use std::marker::PhantomData;

use imbl::{OrdMap, Vector};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// An `OrdMap`, entry by entry (a repeated key keeps its last value, as imbl's does).
pub fn ord_map<'de, D, K, V>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    struct MapVisitor<K, V>(PhantomData<(K, V)>);

    impl<'de, K, V> Visitor<'de> for MapVisitor<K, V>
    where
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        type Value = OrdMap<K, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = OrdMap::new();
            while let Some((k, v)) = access.next_entry()? {
                map.insert(k, v);
            }
            Ok(map)
        }
    }

    deserializer.deserialize_map(MapVisitor(PhantomData))
}

/// A `Vector`, element by element.
pub fn vector<'de, D, T>(deserializer: D) -> Result<Vector<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Clone,
{
    struct SeqVisitor<T>(PhantomData<T>);

    impl<'de, T> Visitor<'de> for SeqVisitor<T>
    where
        T: Deserialize<'de> + Clone,
    {
        type Value = Vector<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut out = Vector::new();
            while let Some(x) = access.next_element()? {
                out.push_back(x);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(SeqVisitor(PhantomData))
}
