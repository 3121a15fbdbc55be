//! The proto3 canonical JSON mapping of the four top-level messages, through
//! prost-reflect and the descriptor set embedded at build time.
//!
//! Output: lowerCamelCase names, default values left out, `bytes` as base64,
//! enums by name, 64-bit integers as strings, `Timestamp` as RFC 3339 and
//! `Duration` as `"1.5s"`. Input accepts both the JSON and the proto field
//! names, and rejects unknown fields so that a typo in a transcript is an
//! error rather than a silently empty message.

use std::sync::LazyLock;

use prost::Message as _;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor};

use crate::{DESCRIPTOR_SET, Envelope};

/// Why a JSON document or a payload could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The JSON text is not valid JSON or does not fit the message schema.
    #[error("not a valid {message} in proto3 JSON: {source}")]
    Json {
        /// The message type it was read as.
        message: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The payload is not valid protobuf for the message type.
    #[error("payload is not a valid {message}: {source}")]
    Protobuf {
        /// The message type it was decoded as.
        message: &'static str,
        #[source]
        source: prost::DecodeError,
    },
}

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(DESCRIPTOR_SET).expect("descriptor set compiled by build.rs is valid")
});

/// The descriptor pool of `vpn.proto` (and its well-known imports).
pub fn pool() -> &'static DescriptorPool {
    &POOL
}

/// The reflection descriptor of a top-level message type.
pub fn descriptor<M: Envelope>() -> MessageDescriptor {
    POOL.get_message_by_name(M::FULL_NAME)
        .expect("every Envelope type is in the embedded descriptor set")
}

/// A protobuf payload of type `M` as a proto3 JSON value.
pub fn payload_to_json<M: Envelope>(payload: &[u8]) -> Result<serde_json::Value, JsonError> {
    let dynamic = DynamicMessage::decode(descriptor::<M>(), payload).map_err(|source| {
        JsonError::Protobuf {
            message: M::FULL_NAME,
            source,
        }
    })?;
    Ok(serde_json::to_value(&dynamic).expect("a DynamicMessage always serializes"))
}

/// A proto3 JSON value of type `M` as its canonical protobuf payload.
pub fn json_to_payload<M: Envelope>(json: &serde_json::Value) -> Result<Vec<u8>, JsonError> {
    let dynamic = DynamicMessage::deserialize_with_options(
        descriptor::<M>(),
        json,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|source| JsonError::Json {
        message: M::FULL_NAME,
        source,
    })?;
    Ok(dynamic.encode_to_vec())
}

/// A message as a proto3 JSON value.
pub fn to_json<M: Envelope>(msg: &M) -> serde_json::Value {
    payload_to_json::<M>(&msg.encode_to_vec()).expect("a message's own encoding decodes")
}

/// A message from a proto3 JSON value.
pub fn from_json<M: Envelope>(json: &serde_json::Value) -> Result<M, JsonError> {
    let payload = json_to_payload::<M>(json)?;
    M::decode(payload.as_slice()).map_err(|source| JsonError::Protobuf {
        message: M::FULL_NAME,
        source,
    })
}
