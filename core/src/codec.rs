//! Versioned binary encoding for everything the controller persists or ships between
//! controllers: log entries, the state machine, snapshots.
//!
//! Layout of an encoded record: one byte of format version, then the value in postcard's
//! stable wire format (a compact, typed serde format; not JSON). Decoding checks the version
//! first, so a record written by a newer, incompatible release is refused with a clear error
//! instead of being misread. Bumping [`FORMAT_VERSION`] requires a migration in `decode`.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Current encoding version of persisted records.
pub const FORMAT_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty record: expected at least the format-version byte")]
    Empty,
    #[error("record has format version {found}, this build reads version {expected}")]
    UnsupportedVersion { found: u8, expected: u8 },
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
}

/// Encodes `value` as `[FORMAT_VERSION, postcard bytes...]`.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    postcard::to_io(value, &mut out).map_err(|source| CodecError::Encode { what, source })?;
    Ok(out)
}

/// Decodes a record produced by [`encode`], checking its format version.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnsupportedVersion {
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    postcard::from_bytes(body).map_err(|source| CodecError::Decode { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let bytes = encode("pair", &(7u64, "x".to_string())).expect("encode");
        let back: (u64, String) = decode("pair", &bytes).expect("decode");
        assert_eq!(back, (7, "x".to_string()));

        let mut future = bytes.clone();
        future[0] = FORMAT_VERSION + 1;
        let err = decode::<(u64, String)>("pair", &future).expect_err("must refuse");
        assert!(
            matches!(err, CodecError::UnsupportedVersion { .. }),
            "{err}"
        );

        assert!(matches!(decode::<u64>("x", &[]), Err(CodecError::Empty)));
        assert!(decode::<(u64, String)>("pair", &[FORMAT_VERSION, 0xff]).is_err());
    }
}
