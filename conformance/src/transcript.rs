//! The transcript format: one JSON document for a scripted case and for a
//! recording (documented in `docs/transcripts.md`).
//!
//! A transcript is metadata (stable ID, the rule it checks, level, tier)
//! and a list of events, each a one-key object: `{"send": …}`,
//! `{"expect": …}`, `{"expect_eof": …}` and so on. A recording is the same
//! document with `recorded` filled in: what was actually sent and received,
//! with the API token and header values redacted.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::packet::{Packet, PacketPattern};

/// Which side the implementation under test plays; the harness plays its
/// peer (protocol.md §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The harness is the manager.
    #[default]
    Tunnel,
    /// The manager under test launches the harness's mock tunnel.
    Manager,
    /// A Windows service (§8): the harness connects as a client.
    Service,
    /// A Windows client (§8): the harness listens as the service.
    Client,
}

/// What a case needs besides the protocol itself. Each tier includes the
/// ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Nothing but the protocol: any tunnel, no control plane.
    Wire,
    /// The reference (mock) control plane.
    Control,
    /// Packet flow through the tunnel.
    Dataplane,
}

/// How a broken rule is graded (protocol.md §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// FAIL.
    Must,
    /// WARN; FAIL in a strict run.
    Should,
    /// A rule a shipped implementation is known to break: WARN, FAIL in a
    /// strict run.
    Hazard,
}

/// How the harness, as manager, answers NetworkSettings requests
/// (protocol.md §6.4 item 1, §6.4 item 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Answer at once with `success: true`.
    #[default]
    Answer,
    /// Answer after a delay.
    Delay { ms: u64 },
    /// Never answer.
    Withhold,
}

/// One case, or one recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transcript {
    /// Stable ID such as `HS-003`.
    pub id: String,
    pub title: String,
    /// The rule it checks: `protocol.md §7.1 rule 2`.
    pub spec: String,
    pub level: Level,
    pub tier: Tier,
    #[serde(default)]
    pub target: Target,
    /// Bound on the whole case, in milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// What the harness does with NetworkSettings requests.
    #[serde(default)]
    pub network_settings: Answer,
    /// Extra words for the command line of the implementation under test
    /// (the built-in tunnel only; e.g. a short update interval).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tunnel_args: Vec<String>,
    pub events: Vec<Event>,
    /// What happened, in a recording.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recorded: Vec<Recorded>,
}

fn default_timeout() -> u64 {
    15_000
}

/// A step of a case. Expectations skip background traffic (Log messages,
/// unsolicited PeerUpdates, NetworkSettings requests, which are answered per
/// [`Transcript::network_settings`]) unless their pattern asks for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// Send our standard header and expect a valid, compatible peer header
    /// (protocol.md §3). With `withhold`, ours goes out only after the
    /// peer's has fully arrived (§3.4 item 3).
    Handshake {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        versions: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        withhold: bool,
    },
    /// Write these header bytes (text, `\n` included) as they are.
    SendHeader(String),
    /// Expect the peer's header line, and that it is a valid header of its
    /// role (the harness keeps going whatever the versions say).
    ExpectHeader {
        #[serde(default = "default_header_wait")]
        within_ms: u64,
    },
    /// Send one message, given as proto3 JSON of the harness's message
    /// type. `"$name"` as `rpc.msgId` takes the next request id and binds
    /// it to `name`; `$coder_url` and `$api_token` are the mock control
    /// plane's.
    Send(Value),
    /// Write raw bytes, given as hex (spaces allowed).
    SendRaw(String),
    /// Write raw bytes one per write (§3.3 item 2).
    SendRawSlowly(String),
    /// Expect a message matching `message` (partial match, `"$name"` for a
    /// bound id, `"$any"` for any value, `null` for absent).
    Expect(Expectation),
    /// Expect all of these, in any order.
    ExpectAnyOrder {
        messages: Vec<Value>,
        #[serde(default = "default_wait")]
        within_ms: u64,
        /// Answer matched requests as background traffic would be.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        answer: bool,
    },
    /// Expect the peer to close: no frame first. Later than `warn_after_ms`
    /// is a warning.
    ExpectEof {
        #[serde(default = "default_wait")]
        within_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        warn_after_ms: Option<u64>,
        /// Let background traffic come before the EOF (not after a
        /// StopResponse, where nothing may come, §7.1 rule 2).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_background: bool,
    },
    /// Expect no message other than background traffic for this long.
    ExpectNothing { for_ms: u64 },
    /// Wait.
    Sleep { ms: u64 },
    /// Close our write direction (the peer reads EOF).
    CloseWrite,
    /// Change the mock control plane (tier `control`): an action of the
    /// scenario timeline (`docs/scenario.schema.json`).
    Control(Value),
    /// Write one packet to the tunnel's tun descriptor (tier `dataplane`).
    SendPacket(Packet),
    /// Read packets from the tun until one matches `packet`; others are
    /// recorded and skipped. Messages meanwhile are handled as in `sleep`.
    ExpectPacket {
        packet: PacketPattern,
        #[serde(default = "default_wait")]
        within_ms: u64,
        /// Arriving later than this is a warning, not a failure (e.g. a
        /// first packet that waited for a retried WireGuard handshake).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        warn_after_ms: Option<u64>,
    },
    /// Expect no packet matching `packet` (any packet when it is empty) for
    /// `for_ms`; others are recorded and skipped.
    ExpectNoPacket {
        #[serde(default)]
        packet: PacketPattern,
        for_ms: u64,
    },
    /// Close the current link and take the next one (targets `service` and
    /// `client`): as a client, connect to the service again; as the
    /// service, wait for the client under test to come back (§8.8 item 1).
    Reconnect {
        #[serde(default = "default_wait")]
        within_ms: u64,
    },
    /// Open one more link, named `name`, and make it the current one
    /// (targets `service` and `client`): several clients of one service
    /// (§8.7). The first link is named `main`.
    Connect {
        name: String,
        #[serde(default = "default_wait")]
        within_ms: u64,
    },
    /// Make the link named `name` the current one; later events act on it.
    Switch(String),
}

fn default_wait() -> u64 {
    5_000
}

fn default_header_wait() -> u64 {
    5_000
}

/// One expected message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub message: Value,
    #[serde(default = "default_wait")]
    pub within_ms: u64,
    /// Arriving later than this is a warning, not a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_after_ms: Option<u64>,
    /// When the matched message is a request the harness answers as
    /// background (NetworkSettings, GetPeerUpdate), answer it as well.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub answer: bool,
}

/// What happened, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recorded {
    /// Milliseconds since the case started.
    pub at_ms: u64,
    /// `sent` or `received`.
    pub dir: Direction,
    #[serde(flatten)]
    pub what: RecordedItem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Sent,
    Received,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordedItem {
    Header(String),
    Message(Value),
    Raw(String),
    Eof,
    Error(String),
    /// A packet on the tun, described (`crate::packet`).
    Packet(Value),
}

/// Why a transcript file was refused.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct TranscriptError {
    #[from]
    source: serde_json::Error,
}

impl Transcript {
    pub fn from_json(text: &str) -> Result<Transcript, TranscriptError> {
        Ok(serde_json::from_str(text)?)
    }
}
