//! Handshake vectors of protocol.md §12.2-§12.4, each asserting the error
//! variant and category, plus the async exchange in both orders (§3.4).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use codervpn_codec::handshake::{
    Category, Header, HeaderError, HeaderReader, ListError, ListRule, Progress, Role, Version,
    VersionList, handshake, read_header_line,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ours() -> VersionList {
    "1.2".parse().unwrap()
}

/// Parses `bytes` as a tunnel would (expecting `manager`) and negotiates
/// against 1.2, returning the version or the error.
fn tunnel_reads(bytes: &[u8]) -> Result<Version, HeaderError> {
    let mut reader = HeaderReader::default();
    match reader.feed(bytes)? {
        Progress::Complete { consumed } => assert_eq!(consumed, bytes.len(), "no frame bytes"),
        Progress::NeedMore => return Err(HeaderError::Eof { read: bytes.len() }),
    }
    let header = Header::parse(reader.line(), Role::Manager)?;
    Header::negotiate(&ours(), &header)
}

fn category(bytes: &[u8]) -> Category {
    match tunnel_reads(bytes) {
        Ok(v) => panic!("{:?} was accepted as {v}", String::from_utf8_lossy(bytes)),
        Err(err) => err.category(),
    }
}

#[test]
fn h1_to_h5_are_accepted() {
    let v12 = Version::new(1, 2);
    assert_eq!(tunnel_reads(b"codervpn manager 1.2\n").unwrap(), v12);
    assert_eq!(tunnel_reads(b"codervpn manager 1.3\n").unwrap(), v12);
    assert_eq!(tunnel_reads(b"codervpn manager 1.3,2.1\n").unwrap(), v12);
    assert_eq!(
        tunnel_reads(b"codervpn manager 1.0\n").unwrap(),
        Version::new(1, 0)
    );
    assert_eq!(
        tunnel_reads(b"codervpn manager 1.1\n").unwrap(),
        Version::new(1, 1)
    );
    assert_eq!(tunnel_reads(b"codervpn manager 01.02\n").unwrap(), v12);
    assert_eq!(
        tunnel_reads(b"codervpn manager 1.18446744073709551615\n").unwrap(),
        v12
    );
    let mut h5 = b"codervpn manager 1.".to_vec();
    h5.extend(std::iter::repeat_n(b'0', 235));
    h5.extend(b"2\n");
    assert_eq!(h5.len(), 256);
    assert_eq!(tunnel_reads(&h5).unwrap(), v12);
}

#[test]
fn h7_preamble() {
    for h in [&b"ssh manager 1.1\n"[..], b"CODERVPN manager 1.2\n"] {
        assert_eq!(category(h), Category::Preamble);
        assert!(matches!(
            tunnel_reads(h),
            Err(HeaderError::InvalidPreamble { .. })
        ));
    }
}

#[test]
fn h8_parts() {
    for h in [
        &b"ssh manager\n"[..],
        b"invalid\n",
        b"codervpn  manager 1.2\n",
        b"codervpn manager 1.2 \n",
        b"codervpn manager 1.2, 2.0\n",
    ] {
        assert!(
            matches!(tunnel_reads(h), Err(HeaderError::WrongNumberOfParts { .. })),
            "{h:?}"
        );
        assert_eq!(category(h), Category::Parts);
    }
}

#[test]
fn h9_role_and_the_historical_form() {
    for h in [&b"codervpn 0.1 manager\n"[..], b"codervpn 1.1 tunnel\n"] {
        assert!(
            matches!(tunnel_reads(h), Err(HeaderError::HistoricalHeader { .. })),
            "{h:?}"
        );
        assert_eq!(category(h), Category::Role);
    }
    for h in [
        &b"codervpn 1.1 supervisor\n"[..],
        b"codervpn tunnel 1.2\n",
        b"codervpn  1.0\n",
    ] {
        assert!(
            matches!(
                tunnel_reads(h),
                Err(HeaderError::UnexpectedRole {
                    expected: Role::Manager,
                    ..
                })
            ),
            "{h:?}"
        );
        assert_eq!(category(h), Category::Role);
    }
    // The historical form is recognised for every expected role.
    let err = Header::parse(b"codervpn 1.0 manager", Role::Tunnel).unwrap_err();
    assert!(matches!(err, HeaderError::HistoricalHeader { .. }));
}

#[test]
fn h10_version_syntax() {
    for h in [
        &b"codervpn manager 1.2\r\n"[..],
        b"codervpn manager \n",
        b"codervpn manager 1\n",
        b"codervpn manager 1.0.0\n",
        b"codervpn manager a.1\n",
        b"codervpn manager 1.a\n",
        b"codervpn manager +1.2\n",
        b"codervpn manager 1.2,\n",
        b"codervpn manager 0.1\n",
        b"codervpn manager 18446744073709551616.0\n",
        b"codervpn manager 1.\xff\n",
    ] {
        assert!(
            matches!(tunnel_reads(h), Err(HeaderError::InvalidVersion { .. })),
            "{h:?}"
        );
        assert_eq!(category(h), Category::Version);
    }
}

#[test]
fn h11_list_rules() {
    let dup = tunnel_reads(b"codervpn manager 1.0,1.2\n").unwrap_err();
    assert!(matches!(
        dup,
        HeaderError::InvalidList {
            source: ListRule::DuplicateMajor(1),
            ..
        }
    ));
    let unsorted = tunnel_reads(b"codervpn manager 2.0,1.0\n").unwrap_err();
    assert!(matches!(
        unsorted,
        HeaderError::InvalidList {
            source: ListRule::NotSorted,
            ..
        }
    ));
    assert_eq!(unsorted.category(), Category::List);
}

#[test]
fn h12_incompatible() {
    for h in [
        &b"codervpn manager 2.0,3.0\n"[..],
        b"codervpn manager 2.0\n",
    ] {
        assert!(matches!(
            tunnel_reads(h),
            Err(HeaderError::Incompatible { .. })
        ));
        assert_eq!(category(h), Category::Incompatible);
    }
}

#[test]
fn h13_oversize_stops_at_256_bytes() {
    let bad = b"bad".repeat(256);
    let mut reader = HeaderReader::default();
    let err = reader.feed(&bad).unwrap_err();
    assert!(matches!(err, HeaderError::Oversize { read: 256 }));
    assert_eq!(err.category(), Category::Oversize);
    assert_eq!(reader.line().len(), 256);
    // Fed one byte at a time, it fails on the 256th.
    let mut reader = HeaderReader::default();
    for (i, b) in bad.iter().enumerate() {
        match reader.feed(std::slice::from_ref(b)) {
            Ok(Progress::NeedMore) => assert!(i < 255),
            Err(HeaderError::Oversize { .. }) => {
                assert_eq!(i, 255);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn h14_eof_mid_header() {
    let mut input: &[u8] = b"codervpn manag";
    let err = read_header_line(&mut input).await.unwrap_err();
    assert!(matches!(err, HeaderError::Eof { read: 14 }));
    assert_eq!(err.category(), Category::Io);
}

#[test]
fn header_reader_never_takes_frame_bytes() {
    let mut stream = b"codervpn manager 1.2\n".to_vec();
    stream.extend([0, 0, 0, 6, 0x0a, 0x02, 0x08, 0x01, 0x2a, 0x00]);
    let mut reader = HeaderReader::default();
    assert_eq!(
        reader.feed(&stream).unwrap(),
        Progress::Complete { consumed: 21 }
    );
    assert_eq!(reader.line(), b"codervpn manager 1.2");
}

#[test]
fn version_list_parsing_12_3() {
    let ok = |s: &str| s.parse::<VersionList>().unwrap().to_string();
    assert_eq!(ok("1.0"), "1.0");
    assert_eq!(ok("12.34"), "12.34");
    assert_eq!(ok("1.1,2.3,3.2"), "1.1,2.3,3.2");
    assert_eq!(ok("01.002"), "1.2");
    for bad in ["", "1", "1.0.0", "a.1", "1.a", "0.1", "1.0,invalid"] {
        assert!(
            matches!(bad.parse::<VersionList>(), Err(ListError::Syntax(_))),
            "{bad:?}"
        );
    }
    for dup in ["1.0,1.0", "1.0,1.2", "1.1,1.2"] {
        assert!(matches!(
            dup.parse::<VersionList>(),
            Err(ListError::Rule(ListRule::DuplicateMajor(1)))
        ));
    }
    for unsorted in ["2.0,1.0", "2.1,1.1"] {
        assert!(matches!(
            unsorted.parse::<VersionList>(),
            Err(ListError::Rule(ListRule::NotSorted))
        ));
    }
    // Rules reachable only for lists built in code.
    assert_eq!(VersionList::new(vec![]), Err(ListRule::Empty));
    assert_eq!(
        VersionList::new(vec![Version::new(0, 1)]),
        Err(ListRule::ZeroMajor(Version::new(0, 1)))
    );
}

#[test]
fn negotiation_12_4_is_exact_and_symmetric() {
    let table = [
        ("1.0", "1.0", Some("1.0")),
        ("1.2", "1.3", Some("1.2")),
        ("1.0", "1.1", Some("1.0")),
        ("1.1", "1.7", Some("1.1")),
        ("1.7,2.1", "1.7", Some("1.7")),
        ("1.1", "1.3,2.1", Some("1.1")),
        ("1.2", "1.3,2.1", Some("1.2")),
        ("1.3,2.1", "1.7", Some("1.3")),
        ("1.8", "2.8", None),
        ("1.2,2.4,3.2", "4.1,5.2", None),
        ("1.2,2.4,3.2", "1.2,2.3", Some("2.3")),
        ("1.2,2.4,3.2", "2.3,3.3", Some("3.2")),
        ("1.0", "2.0", None),
        ("1.2", "2.0,3.0", None),
    ];
    for (ours, theirs, want) in table {
        let ours: VersionList = ours.parse().unwrap();
        let theirs: VersionList = theirs.parse().unwrap();
        let got = ours.negotiate(&theirs).map(|v| v.to_string());
        assert_eq!(got.as_deref(), want, "{ours} vs {theirs}");
        assert_eq!(theirs.negotiate(&ours), ours.negotiate(&theirs));
    }
}

#[test]
fn header_lines_format_exactly() {
    let header = Header::new(Role::Tunnel, "1.2".parse().unwrap());
    assert_eq!(header.to_line().as_bytes(), b"codervpn tunnel 1.2\n");
    let header = Header::new(Role::Manager, "1.3,2.1".parse().unwrap());
    assert_eq!(header.to_line(), "codervpn manager 1.3,2.1\n");
    for role in Role::ALL {
        assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        assert_eq!(role.peer().peer(), role);
    }
}

const LIMIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn both_sides_write_before_reading() {
    let (a, b) = tokio::io::duplex(64);
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let tunnel = Header::new(Role::Tunnel, "1.2".parse().unwrap());
    let manager = Header::new(Role::Manager, "1.3,2.1".parse().unwrap());
    let (t, m) = tokio::join!(
        handshake(&mut ar, &mut aw, &tunnel, LIMIT),
        handshake(&mut br, &mut bw, &manager, LIMIT)
    );
    assert_eq!(t.unwrap().version, Version::new(1, 2));
    assert_eq!(m.unwrap().version, Version::new(1, 2));
}

#[tokio::test]
async fn h15_peer_that_reads_first_gets_our_header() {
    let (a, b) = tokio::io::duplex(1024);
    let (mut ar, mut aw) = tokio::io::split(a);
    let tunnel = Header::new(Role::Tunnel, "1.2".parse().unwrap());
    let peer = async move {
        let (mut br, mut bw) = tokio::io::split(b);
        let line = read_header_line(&mut br).await.unwrap();
        assert_eq!(line, b"codervpn tunnel 1.2");
        // Header and first frame in one write (H6).
        bw.write_all(b"codervpn manager 1.2\n\0\0\0\x06\x0a\x02\x08\x01\x2a\x00")
            .await
            .unwrap();
        (br, bw)
    };
    let (ours, _peer) = tokio::join!(handshake(&mut ar, &mut aw, &tunnel, LIMIT), peer);
    assert_eq!(ours.unwrap().peer.role, Role::Manager);
    // The frame after the header is still unread.
    let mut frame = [0u8; 10];
    ar.read_exact(&mut frame).await.unwrap();
    assert_eq!(frame, [0, 0, 0, 6, 0x0a, 0x02, 0x08, 0x01, 0x2a, 0x00]);
}

#[tokio::test]
async fn rejecting_still_sends_our_whole_header() {
    let (a, b) = tokio::io::duplex(1024);
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    bw.write_all(b"codervpn manager 2.0\n").await.unwrap();
    let tunnel = Header::new(Role::Tunnel, "1.2".parse().unwrap());
    let err = handshake(&mut ar, &mut aw, &tunnel, LIMIT)
        .await
        .unwrap_err();
    assert_eq!(err.category(), Category::Incompatible);
    let line = read_header_line(&mut br).await.unwrap();
    assert_eq!(line, b"codervpn tunnel 1.2");
}

#[tokio::test(start_paused = true)]
async fn silent_peer_times_out() {
    let (a, _b) = tokio::io::duplex(1024);
    let (mut ar, mut aw) = tokio::io::split(a);
    let tunnel = Header::new(Role::Tunnel, "1.2".parse().unwrap());
    let err = handshake(&mut ar, &mut aw, &tunnel, LIMIT)
        .await
        .unwrap_err();
    assert!(matches!(err, HeaderError::TimedOut(_)));
    assert_eq!(err.category(), Category::Io);
}
