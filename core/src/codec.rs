//! Versioned binary encoding for everything the controller persists or ships between
//! controllers.
//!
//! Layout of an encoded record: one byte of format version, then the value in postcard's
//! stable wire format (compact, typed; not self-describing). Every kind of record has its
//! own version: a [`Record`] type says which version it writes and how to read each older
//! one (its migrations), and the storage of foreign types (openraft's vote, log ids,
//! entries) names its versions where it encodes them. A record of a newer version than the
//! build knows, or one that does not decode, is an error, never "absent".
//!
//! How to change a persisted type: keep the old layout as a frozen type (for the cluster
//! state, `state::v1`), bump the kind's version, and read the old version in `migrate`.
//! Add a golden file of the old format (`tests/data/format-N/`) that a test loads.
//! Commands are different: they only ever gain variants at the end (old entries keep
//! decoding), and a new variant is proposed only once every controller knows it (see
//! `features`).

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty {what} record: expected at least the format-version byte")]
    Empty { what: &'static str },
    #[error(
        "{what} record has format version {found}; this build reads versions {oldest} to {newest} (a newer Steward wrote it?)"
    )]
    UnsupportedVersion {
        what: &'static str,
        found: u8,
        oldest: u8,
        newest: u8,
    },
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("cannot migrate {what} from format {from}: {message}")]
    Migration {
        what: &'static str,
        from: u8,
        message: String,
    },
}

/// A kind of record with its own format version and migrations from older versions.
pub trait Record: Serialize + DeserializeOwned {
    /// Name in errors ("cluster state").
    const KIND: &'static str;
    /// The version this build writes.
    const VERSION: u8;
    /// The oldest version this build reads.
    const OLDEST: u8 = Self::VERSION;

    /// Reads `body`, written at `version` (`OLDEST..VERSION`), into the current type.
    fn migrate(version: u8, body: &[u8]) -> Result<Self, CodecError> {
        let _ = body;
        Err(CodecError::UnsupportedVersion {
            what: Self::KIND,
            found: version,
            oldest: Self::OLDEST,
            newest: Self::VERSION,
        })
    }
}

/// Encodes `value` as `[version, postcard bytes...]`.
pub fn encode_as<T: Serialize>(
    what: &'static str,
    version: u8,
    value: &T,
) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![version];
    postcard::to_io(value, &mut out).map_err(|source| CodecError::Encode { what, source })?;
    Ok(out)
}

/// Splits a record into its version and body.
pub fn split<'a>(what: &'static str, bytes: &'a [u8]) -> Result<(u8, &'a [u8]), CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty { what })?;
    Ok((version, body))
}

/// Decodes a record body (for migrations, which know the version they read).
pub fn decode_body<T: DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T, CodecError> {
    postcard::from_bytes(body).map_err(|source| CodecError::Decode { what, source })
}

/// Decodes a record that must be exactly `version` (a kind with one version so far).
pub fn decode_as<T: DeserializeOwned>(
    what: &'static str,
    version: u8,
    bytes: &[u8],
) -> Result<T, CodecError> {
    match split(what, bytes)? {
        (v, body) if v == version => decode_body(what, body),
        (found, _) => Err(CodecError::UnsupportedVersion {
            what,
            found,
            oldest: version,
            newest: version,
        }),
    }
}

/// Encodes a [`Record`] at its current version.
pub fn encode<T: Record>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_as(T::KIND, T::VERSION, value)
}

/// Decodes a [`Record`] of any version from `OLDEST` to `VERSION`, migrating older ones.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, CodecError> {
    match split(T::KIND, bytes)? {
        (v, body) if v == T::VERSION => decode_body(T::KIND, body),
        (v, body) if (T::OLDEST..T::VERSION).contains(&v) => T::migrate(v, body),
        (found, _) => Err(CodecError::UnsupportedVersion {
            what: T::KIND,
            found,
            oldest: T::OLDEST,
            newest: T::VERSION,
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct PairV1(u64);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Pair(u64, String);

    impl Record for Pair {
        const KIND: &'static str = "pair";
        const VERSION: u8 = 2;
        const OLDEST: u8 = 1;
        fn migrate(version: u8, body: &[u8]) -> Result<Self, CodecError> {
            assert_eq!(version, 1);
            let PairV1(n) = decode_body("pair", body)?;
            Ok(Pair(n, "migrated".into()))
        }
    }

    #[test]
    fn round_trip_migration_and_version_check() {
        let bytes = encode(&Pair(7, "x".into())).expect("encode");
        assert_eq!(bytes[0], 2);
        assert_eq!(decode::<Pair>(&bytes).expect("decode"), Pair(7, "x".into()));

        let old = encode_as("pair", 1, &PairV1(9)).expect("encode v1");
        assert_eq!(
            decode::<Pair>(&old).expect("migrate"),
            Pair(9, "migrated".into())
        );

        let mut future = bytes.clone();
        future[0] = 3;
        let err = decode::<Pair>(&future).expect_err("must refuse");
        assert!(
            matches!(
                err,
                CodecError::UnsupportedVersion {
                    found: 3,
                    oldest: 1,
                    newest: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("versions 1 to 2"), "{err}");

        assert!(matches!(
            decode::<Pair>(&[]),
            Err(CodecError::Empty { what: "pair" })
        ));
        assert!(decode::<Pair>(&[2, 0xff]).is_err());
        assert!(decode_as::<u64>("n", 1, &encode_as("n", 2, &5u64).expect("e")).is_err());
        assert_eq!(
            decode_as::<u64>("n", 1, &encode_as("n", 1, &5u64).expect("e")).expect("d"),
            5
        );
    }
}
