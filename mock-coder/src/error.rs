//! Error types. A scenario error says what is wrong and where (file, line and
//! column from serde_json, or the timeline step), so a bad file is fixed in
//! one go rather than by trial.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A scenario that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The text is not a scenario: bad JSON, an unknown or missing field, a
    /// wrong type. serde_json's message names the line and column.
    #[error("invalid scenario JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON is well formed but describes an impossible state, e.g. two
    /// agents with one id, or a timeline step that upserts an agent into a
    /// workspace that does not exist at that point.
    #[error("invalid scenario: {0}")]
    Invalid(String),
    /// The scenario file could not be read.
    #[error("cannot read scenario file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The scenario file was read but its content is wrong.
    #[error("scenario file {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: Box<ScenarioError>,
    },
}

/// The mock could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("mock control plane I/O error: {0}")]
    Io(#[from] std::io::Error),
}
