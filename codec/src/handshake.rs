//! The handshake line `codervpn <role> <version-list>\n` (protocol.md §3).
//!
//! Each side writes its own header while reading the peer's (§3.4), then
//! checks the peer's header in the order of §3.5; the first failing check
//! decides the error [`Category`]. The peer's header is read one byte at a
//! time, so no byte of the first frame is consumed (§3.3 item 1).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest header, LF included (§3.1).
pub const MAX_HEADER_LEN: usize = 256;

/// The first word of every header.
pub const PREAMBLE: &str = "codervpn";

/// A speaker's role; the header names the sender's own (§1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Manager,
    Tunnel,
    Client,
    Service,
}

impl Role {
    /// All roles, in schema order.
    pub const ALL: [Role; 4] = [Role::Manager, Role::Tunnel, Role::Client, Role::Service];

    /// The header word.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Tunnel => "tunnel",
            Role::Client => "client",
            Role::Service => "service",
        }
    }

    /// The role a speaker of this role expects on the other end.
    pub fn peer(self) -> Role {
        match self {
            Role::Manager => Role::Tunnel,
            Role::Tunnel => Role::Manager,
            Role::Client => Role::Service,
            Role::Service => Role::Client,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A header word that is not one of the four roles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (expected manager, tunnel, client or service)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// One `major.minor` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
}

impl Version {
    pub const fn new(major: u64, minor: u64) -> Self {
        Version { major, minor }
    }

    /// Parses one entry: `1*DIGIT "." 1*DIGIT`, each fitting in a u64,
    /// leading zeros allowed, major not 0 (§3.1, §3.5).
    pub fn parse(text: &str) -> Result<Version, VersionSyntax> {
        let bad = || VersionSyntax(text.to_owned());
        let (major, minor) = text.split_once('.').ok_or_else(bad)?;
        let number = |digits: &str| {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            digits.parse::<u64>().map_err(|_| bad())
        };
        let version = Version::new(number(major)?, number(minor)?);
        if version.major == 0 {
            return Err(bad());
        }
        Ok(version)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A version entry that does not parse (E-VERSION).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version string: {0:?}")]
pub struct VersionSyntax(pub String);

/// A broken list rule (E-LIST, §3.5 step 5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListRule {
    #[error("no versions")]
    Empty,
    #[error("invalid version: {0} (major version 0)")]
    ZeroMajor(Version),
    #[error("duplicate major version: {0}")]
    DuplicateMajor(u64),
    #[error("versions are not sorted")]
    NotSorted,
}

/// A valid version list: not empty, no major 0, majors strictly ascending.
/// Each entry's minor is the highest supported on that major.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VersionList(Vec<Version>);

impl VersionList {
    /// Checks the list rules of §3.5 step 5, in Go's order.
    pub fn new(versions: Vec<Version>) -> Result<Self, ListRule> {
        if versions.is_empty() {
            return Err(ListRule::Empty);
        }
        if let Some(zero) = versions.iter().find(|v| v.major == 0) {
            return Err(ListRule::ZeroMajor(*zero));
        }
        for pair in versions.windows(2) {
            if pair[0].major == pair[1].major {
                return Err(ListRule::DuplicateMajor(pair[1].major));
            }
            if pair[1].major < pair[0].major {
                return Err(ListRule::NotSorted);
            }
        }
        Ok(VersionList(versions))
    }

    /// The entries, majors ascending.
    pub fn versions(&self) -> &[Version] {
        &self.0
    }

    /// §3.6: the highest common major, with the lower of the two minors.
    /// Symmetric, so both sides agree.
    pub fn negotiate(&self, theirs: &VersionList) -> Option<Version> {
        self.0.iter().rev().find_map(|ours| {
            theirs
                .0
                .iter()
                .find(|t| t.major == ours.major)
                .map(|t| Version::new(ours.major, ours.minor.min(t.minor)))
        })
    }
}

impl Default for VersionList {
    /// `1.2`, the version of this schema (§14).
    fn default() -> Self {
        VersionList(vec![Version::new(1, 2)])
    }
}

impl fmt::Display for VersionList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// Why a version-list text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Syntax(#[from] VersionSyntax),
    #[error(transparent)]
    Rule(#[from] ListRule),
}

impl FromStr for VersionList {
    type Err = ListError;
    /// Parses `version *("," version)` and checks the list rules.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let versions = text
            .split(',')
            .map(Version::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VersionList::new(versions)?)
    }
}

/// The error category of §3.5 (and §3.3 for the read itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    Parts,
    Preamble,
    Role,
    Version,
    List,
    Incompatible,
    Oversize,
    Io,
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Category::Parts => "E-PARTS",
            Category::Preamble => "E-PREAMBLE",
            Category::Role => "E-ROLE",
            Category::Version => "E-VERSION",
            Category::List => "E-LIST",
            Category::Incompatible => "E-INCOMPATIBLE",
            Category::Oversize => "E-OVERSIZE",
            Category::Io => "E-IO",
        })
    }
}

/// A failed handshake: one variant per rule. Texts follow the Go tunnel's
/// where it has one (§3.5).
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("wrong number of parts: {parts} (a header is `codervpn <role> <versions>`)")]
    WrongNumberOfParts { parts: usize },
    #[error("invalid preamble {found:?} (expected \"codervpn\")")]
    InvalidPreamble { found: String },
    #[error(
        "unexpected role: {found:?} looks like the historical header `codervpn <version> <role>` \
         of November 2024, which is not supported (protocol.md §3.2)"
    )]
    HistoricalHeader { found: String },
    #[error("unexpected role {found:?} (expected {expected:?})")]
    UnexpectedRole { expected: Role, found: String },
    #[error("parse version list {list:?}: {source}")]
    InvalidVersion {
        list: String,
        #[source]
        source: VersionSyntax,
    },
    #[error("invalid parsed version list {list:?}: {source}")]
    InvalidList {
        list: String,
        #[source]
        source: ListRule,
    },
    #[error("current supported versions {ours:?} is not compatible with peer versions {theirs:?}")]
    Incompatible { ours: String, theirs: String },
    #[error(
        "header malformed or too large: {read} bytes without a newline (limit {MAX_HEADER_LEN})"
    )]
    Oversize { read: usize },
    #[error("read header: stream ended after {read} bytes, before the newline")]
    Eof { read: usize },
    #[error("read header: {0}")]
    Read(#[source] std::io::Error),
    #[error("write header: {0}")]
    Write(#[source] std::io::Error),
    #[error("handshake did not complete within {0:?}")]
    TimedOut(Duration),
}

impl HeaderError {
    /// The §3.5 category this error belongs to.
    pub fn category(&self) -> Category {
        match self {
            HeaderError::WrongNumberOfParts { .. } => Category::Parts,
            HeaderError::InvalidPreamble { .. } => Category::Preamble,
            HeaderError::HistoricalHeader { .. } | HeaderError::UnexpectedRole { .. } => {
                Category::Role
            }
            HeaderError::InvalidVersion { .. } => Category::Version,
            HeaderError::InvalidList { .. } => Category::List,
            HeaderError::Incompatible { .. } => Category::Incompatible,
            HeaderError::Oversize { .. } => Category::Oversize,
            HeaderError::Eof { .. }
            | HeaderError::Read(_)
            | HeaderError::Write(_)
            | HeaderError::TimedOut(_) => Category::Io,
        }
    }
}

/// A parsed, valid header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub role: Role,
    pub versions: VersionList,
}

impl Header {
    pub fn new(role: Role, versions: VersionList) -> Self {
        Header { role, versions }
    }

    /// The header as sent, LF included.
    pub fn to_line(&self) -> String {
        format!("{PREAMBLE} {} {}\n", self.role, self.versions)
    }

    /// Parses and checks a header line (without its LF) sent by a speaker of
    /// role `expected`, applying §3.5 steps 1 to 5 in order. Parsing is
    /// case-sensitive and trims nothing: a CR before the LF stays in the
    /// version list.
    pub fn parse(line: &[u8], expected: Role) -> Result<Header, HeaderError> {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let [preamble, role, list] = parts[..] else {
            return Err(HeaderError::WrongNumberOfParts { parts: parts.len() });
        };
        if preamble != PREAMBLE.as_bytes() {
            return Err(HeaderError::InvalidPreamble {
                found: text(preamble),
            });
        }
        if role != expected.as_str().as_bytes() {
            let historical = std::str::from_utf8(role).is_ok_and(looks_like_version)
                && std::str::from_utf8(list).is_ok_and(|w| w.parse::<Role>().is_ok());
            return Err(if historical {
                HeaderError::HistoricalHeader { found: text(line) }
            } else {
                HeaderError::UnexpectedRole {
                    expected,
                    found: text(role),
                }
            });
        }
        let list_text = text(list);
        let versions = std::str::from_utf8(list)
            .map_err(|_| VersionSyntax(list_text.clone()).into())
            .and_then(VersionList::from_str)
            .map_err(|err| match err {
                ListError::Syntax(source) => HeaderError::InvalidVersion {
                    list: list_text.clone(),
                    source,
                },
                ListError::Rule(source) => HeaderError::InvalidList {
                    list: list_text.clone(),
                    source,
                },
            })?;
        Ok(Header {
            role: expected,
            versions,
        })
    }

    /// §3.5 step 6: negotiate our list against the peer's.
    pub fn negotiate(ours: &VersionList, peer: &Header) -> Result<Version, HeaderError> {
        ours.negotiate(&peer.versions)
            .ok_or_else(|| HeaderError::Incompatible {
                ours: ours.to_string(),
                theirs: peer.versions.to_string(),
            })
    }
}

/// `digits.digits`, the shape of the historical header's second word.
fn looks_like_version(word: &str) -> bool {
    word.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && (a.bytes().chain(b.bytes())).all(|c| c.is_ascii_digit())
    })
}

/// Sans-IO accumulator for the peer's header line (§3.3): feed it bytes, it
/// says how many it took and when the line is complete, and fails once 256
/// bytes have come without an LF.
#[derive(Debug, Default)]
pub struct HeaderReader {
    line: Vec<u8>,
}

/// What [`HeaderReader::feed`] made of its input.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// All input consumed; the line is not complete yet.
    NeedMore,
    /// The line is complete; `consumed` bytes of the input (LF included)
    /// belonged to it, the rest is frame data.
    Complete { consumed: usize },
}

impl HeaderReader {
    /// Takes bytes until the LF. Never takes a byte after the LF, nor more
    /// than [`MAX_HEADER_LEN`] bytes in all.
    pub fn feed(&mut self, input: &[u8]) -> Result<Progress, HeaderError> {
        let room = MAX_HEADER_LEN - self.line.len();
        let window = &input[..input.len().min(room)];
        if let Some(lf) = window.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&window[..lf]);
            return Ok(Progress::Complete { consumed: lf + 1 });
        }
        self.line.extend_from_slice(window);
        if self.line.len() == MAX_HEADER_LEN {
            return Err(HeaderError::Oversize {
                read: MAX_HEADER_LEN,
            });
        }
        Ok(Progress::NeedMore)
    }

    /// The line so far, without its LF.
    pub fn line(&self) -> &[u8] {
        &self.line
    }
}

/// Reads the peer's header line (without the LF) one byte at a time, so the
/// reader is left exactly at the first frame byte.
pub async fn read_header_line<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Vec<u8>, HeaderError> {
    let mut acc = HeaderReader::default();
    let mut byte = [0u8; 1];
    loop {
        let n = reader.read(&mut byte).await.map_err(HeaderError::Read)?;
        if n == 0 {
            return Err(HeaderError::Eof {
                read: acc.line().len(),
            });
        }
        if let Progress::Complete { .. } = acc.feed(&byte)? {
            return Ok(acc.line);
        }
    }
}

/// The outcome of a successful handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The peer's header.
    pub peer: Header,
    /// The version both sides use (§3.6).
    pub version: Version,
}

/// Runs the handshake: writes `ours` while reading the peer's header, then
/// validates it (§3.4, §3.5). Our header is always sent in full, even when
/// the peer's is going to be rejected. The whole exchange is bounded by
/// `timeout`. On error the caller closes the stream (§3.7 item 3).
pub async fn handshake<R, W>(
    reader: &mut R,
    writer: &mut W,
    ours: &Header,
    timeout: Duration,
) -> Result<Negotiated, HeaderError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let line = ours.to_line();
    let write = async {
        writer.write_all(line.as_bytes()).await?;
        writer.flush().await
    };
    let exchange = async { tokio::join!(write, read_header_line(reader)) };
    let (written, read) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HeaderError::TimedOut(timeout))?;
    let peer_line = read?;
    written.map_err(HeaderError::Write)?;
    let peer = Header::parse(&peer_line, ours.role.peer())?;
    let version = Header::negotiate(&ours.versions, &peer)?;
    Ok(Negotiated { peer, version })
}
