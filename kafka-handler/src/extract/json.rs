use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{DecodeError, FromRecord};
use crate::{HandlerError, Record};

/// A JSON payload decoded with serde.
///
/// A null (tombstone) or malformed payload is a permanent [`DecodeError`].
///
/// ```
/// use kafka_handler::{extract::{FromRecord, Json}, Disposition, Record};
///
/// #[derive(serde::Deserialize)]
/// struct Ping { n: u32 }
///
/// let mut ok = Record::builder("t").payload(r#"{"n":3}"#).build();
/// let Json(ping) = Json::<Ping>::from_record(&mut ok).unwrap();
/// assert_eq!(ping.n, 3);
///
/// let mut bad = Record::builder("t").payload("{not json").build();
/// let err = Json::<Ping>::from_record(&mut bad).err().unwrap();
/// assert_eq!(err.disposition(), Disposition::Permanent);
/// assert!(err.is_decode());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRecord for Json<T> {
    const __READS_HEADERS: bool = false;

    fn from_record(record: &mut Record) -> Result<Self, HandlerError> {
        let payload = record.payload().ok_or_else(|| HandlerError::permanent(DecodeError::tombstone()))?;
        serde_json::from_slice(payload)
            .map(Json)
            .map_err(|e| HandlerError::permanent(DecodeError::new(format!("invalid JSON: {e}"))))
    }
}

impl<T: Serialize> Json<T> {
    /// Encodes the value as JSON bytes.
    pub fn to_vec(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&self.0)
    }
}
