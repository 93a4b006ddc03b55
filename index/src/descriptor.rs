//! What a descriptor is (version, dimensions, encoding, metric) and how request bytes become a
//! query in the index's serving encoding.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use serde::{Deserialize, Serialize};

/// Magic that starts the LUNA SDK descriptor form: `dp\0\0`, then the version (u32 LE).
pub const SDK_MAGIC: &[u8; 4] = b"dp\0\0";
/// Upper bound on dimensions; keeps integer accumulators far from overflow (see `kernels`).
pub const MAX_DIMENSIONS: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    U8,
    I8,
    F16,
    F32,
}

impl Encoding {
    /// Bytes per dimension on the wire.
    pub fn width(self) -> usize {
        match self {
            Encoding::U8 | Encoding::I8 => 1,
            Encoding::F16 => 2,
            Encoding::F32 => 4,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::U8 => "u8",
            Encoding::I8 => "i8",
            Encoding::F16 => "f16",
            Encoding::F32 => "f32",
        }
    }
    /// Default zero point: LUNA's u8 descriptors are centred on 128.
    pub fn default_zero_point(self) -> i32 {
        if self == Encoding::U8 {
            128
        } else {
            0
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Cosine,
    Dot,
    L2,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::Dot => "dot",
            Metric::L2 => "l2",
        }
    }
}

macro_rules! str_enum {
    ($t:ty, $what:literal, $($s:literal => $v:expr),+) => {
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.to_ascii_lowercase().as_str() {
                    $($s => Ok($v),)+
                    other => Err(format!(concat!("unknown ", $what, " {:?} (expected one of: {})"), other, [$($s),+].join(", "))),
                }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
str_enum!(Encoding, "encoding", "u8" => Encoding::U8, "i8" => Encoding::I8, "f16" => Encoding::F16, "f32" => Encoding::F32);
str_enum!(Metric, "metric", "cosine" => Metric::Cosine, "dot" => Metric::Dot, "l2" => Metric::L2);

/// Everything needed to interpret descriptor bytes and compare descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescriptorSpec {
    pub version: u32,
    pub dimensions: usize,
    pub encoding: Encoding,
    pub metric: Metric,
    /// Integer encodings: stored value minus this is the signed component.
    pub zero_point: i32,
    /// Integer encodings: real component = (value − zero_point) · scale. Only `dot` and `l2`
    /// similarities depend on it; cosine is scale-free.
    pub scale: f32,
}

impl DescriptorSpec {
    pub fn new(version: u32, dimensions: usize, encoding: Encoding, metric: Metric) -> Self {
        let scale = if matches!(encoding, Encoding::U8 | Encoding::I8) { 1.0 / 127.0 } else { 1.0 };
        DescriptorSpec { version, dimensions, encoding, metric, zero_point: encoding.default_zero_point(), scale }
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.dimensions == 0 || self.dimensions > MAX_DIMENSIONS {
            return Err(Error::Settings(format!(
                "dimensions must be in 1..={MAX_DIMENSIONS}, got {}",
                self.dimensions
            )));
        }
        match self.encoding {
            Encoding::U8 if !(0..=255).contains(&self.zero_point) => {
                Err(Error::Settings(format!("u8 zero point must be in 0..=255, got {}", self.zero_point)))
            }
            Encoding::I8 | Encoding::F16 | Encoding::F32 if self.zero_point != 0 => Err(Error::Settings(format!(
                "zero point applies to u8 only, got {} for {}",
                self.zero_point, self.encoding
            ))),
            _ if !(self.scale.is_finite() && self.scale > 0.0) => {
                Err(Error::Settings(format!("scale must be a positive number, got {}", self.scale)))
            }
            _ => Ok(()),
        }
    }

    /// Bytes of a bare payload.
    pub fn payload_len(&self) -> usize {
        self.dimensions * self.encoding.width()
    }

    /// Turns request bytes (bare payload, or the SDK form) into a query.
    pub fn decode(&self, bytes: &[u8], request_version: u32) -> Result<Query, DecodeError> {
        self.decode_request(bytes, Some(request_version))
    }

    /// Like [`DescriptorSpec::decode`] for a request that may carry no version of its own:
    /// then the descriptor must be in the SDK form, whose header says the version.
    pub fn decode_request(&self, bytes: &[u8], request_version: Option<u32>) -> Result<Query, DecodeError> {
        if let Some(v) = request_version.filter(|&v| v != self.version) {
            return Err(DecodeError::VersionMismatch { descriptor: v, index: self.version });
        }
        let sdk = bytes.len() != self.payload_len() && bytes.len() >= 8 && &bytes[..4] == SDK_MAGIC;
        let payload = if sdk {
            let embedded = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
            if embedded != self.version {
                return Err(DecodeError::VersionMismatch { descriptor: embedded, index: self.version });
            }
            &bytes[8..]
        } else if request_version.is_none() {
            return Err(DecodeError::VersionMissing);
        } else {
            bytes
        };
        if payload.len() != self.payload_len() {
            return Err(DecodeError::Length {
                got: bytes.len(),
                want: self.payload_len(),
                encoding: self.encoding,
                dimensions: self.dimensions,
            });
        }
        Ok(Query::from_payload(self, payload))
    }
}

/// Why request bytes could not become a query.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("Descriptor of version {descriptor} cannot be searched in index of version {index}")]
    VersionMismatch { descriptor: u32, index: u32 },
    #[error("the request has no version and the descriptor is a bare payload: give the version field, or send the SDK form (dp\\0\\0 + version) that carries it")]
    VersionMissing,
    #[error("descriptor has {got} bytes; index expects {want} ({dimensions} × {encoding}), optionally behind the 8-byte SDK header")]
    Length { got: usize, want: usize, encoding: Encoding, dimensions: usize },
}

/// A query in the index's serving encoding (see [`crate::VectorStore`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// u8 and i8 payloads are kept as raw bytes: the kernels handle the zero point / sign.
    Bytes(Vec<u8>),
    F32(Vec<f32>),
}

impl Query {
    fn from_payload(spec: &DescriptorSpec, payload: &[u8]) -> Query {
        match spec.encoding {
            Encoding::U8 | Encoding::I8 => Query::Bytes(payload.to_vec()),
            Encoding::F16 => {
                Query::F32(payload.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
            }
            Encoding::F32 => {
                Query::F32(payload.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            }
        }
    }
}

/// Prepends the SDK header (`dp\0\0` + version) to a payload.
pub fn sdk_form(version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(SDK_MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DescriptorSpec {
        DescriptorSpec::new(59, 4, Encoding::U8, Metric::Cosine)
    }

    #[test]
    fn bare_and_sdk_forms_decode_identically() {
        let payload = [1u8, 2, 3, 4];
        let a = spec().decode(&payload, 59).unwrap();
        let b = spec().decode(&sdk_form(59, &payload), 59).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, Query::Bytes(payload.to_vec()));
    }

    #[test]
    fn version_mismatch_in_request_or_header() {
        let e = spec().decode(&[0; 4], 60).unwrap_err();
        assert_eq!(e.to_string(), "Descriptor of version 60 cannot be searched in index of version 59");
        let e = spec().decode(&sdk_form(61, &[0; 4]), 59).unwrap_err();
        assert_eq!(e, DecodeError::VersionMismatch { descriptor: 61, index: 59 });
    }

    #[test]
    fn version_from_the_sdk_header_when_the_request_has_none() {
        let payload = [1u8, 2, 3, 4];
        assert_eq!(spec().decode_request(&sdk_form(59, &payload), None).unwrap(), Query::Bytes(payload.to_vec()));
        let e = spec().decode_request(&sdk_form(0, &payload), None).unwrap_err();
        assert_eq!(e, DecodeError::VersionMismatch { descriptor: 0, index: 59 });
        assert_eq!(spec().decode_request(&payload, None).unwrap_err(), DecodeError::VersionMissing);
        // A bare payload that happens to start with the magic is still bare.
        let s = DescriptorSpec::new(59, 8, Encoding::U8, Metric::Cosine);
        assert_eq!(s.decode_request(&sdk_form(59, &[]), None).unwrap_err(), DecodeError::VersionMissing);
        assert!(s.decode_request(&sdk_form(59, &[]), Some(59)).is_ok());
        assert!(matches!(spec().decode_request(&sdk_form(59, &[0; 3]), None), Err(DecodeError::Length { .. })));
        assert!(spec().decode_request(&[], None).is_err());
    }

    #[test]
    fn wrong_length_is_an_error() {
        assert!(matches!(spec().decode(&[0; 5], 59), Err(DecodeError::Length { got: 5, want: 4, .. })));
        assert!(matches!(spec().decode(&sdk_form(59, &[0; 3]), 59), Err(DecodeError::Length { .. })));
        assert!(matches!(spec().decode(&[], 59), Err(DecodeError::Length { .. })));
    }

    #[test]
    fn float_encodings_decode_little_endian() {
        let s = DescriptorSpec::new(1, 2, Encoding::F32, Metric::L2);
        let bytes: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(s.decode(&bytes, 1).unwrap(), Query::F32(vec![1.5, -2.0]));
        let s = DescriptorSpec::new(1, 2, Encoding::F16, Metric::L2);
        let bytes: Vec<u8> = [0.5f32, -3.0].iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect();
        assert_eq!(s.decode(&bytes, 1).unwrap(), Query::F32(vec![0.5, -3.0]));
    }

    #[test]
    fn validate_rejects_nonsense() {
        assert!(DescriptorSpec::new(1, 0, Encoding::U8, Metric::L2).validate().is_err());
        let mut s = DescriptorSpec::new(1, 8, Encoding::I8, Metric::L2);
        s.zero_point = 3;
        assert!(s.validate().is_err());
        assert!("cosine".parse::<Metric>().is_ok());
        assert!("hamming".parse::<Metric>().unwrap_err().contains("cosine"));
    }
}
