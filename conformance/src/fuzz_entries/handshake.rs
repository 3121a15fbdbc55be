//! `handshake`: the §3 header line. Invariants: the sans-IO reader gives
//! the same line and the same outcome whether fed byte by byte, in chunks
//! or all at once, and agrees with the async reader; a parsed header
//! re-parses from its canonical line; at most one expected role accepts a
//! line, and every refusal names the category of the first failing §3.5
//! step; version lists obey the list rules and negotiation is symmetric
//! and picks the highest common major with the lower minor.

use std::str::FromStr;

use codervpn_codec::handshake::{
    Category, Header, HeaderError, MAX_HEADER_LEN, PREAMBLE, Progress, Role, Version, VersionList,
    read_header_line,
};

use super::{chunks, control, runtime};

/// What feeding a reader produced: the line, or how it stopped.
#[derive(Debug, PartialEq, Eq)]
enum Fed {
    Line(Vec<u8>, usize),
    NeedMore(usize),
    Oversize,
}

fn feed(input: &[u8], pieces: &[std::ops::Range<usize>]) -> Fed {
    let mut reader = codervpn_codec::handshake::HeaderReader::default();
    let mut taken = 0;
    for piece in pieces {
        match reader.feed(&input[piece.clone()]) {
            Ok(Progress::NeedMore) => taken += piece.len(),
            Ok(Progress::Complete { consumed }) => {
                assert!(consumed >= 1 && consumed <= piece.len());
                assert_eq!(input[piece.start + consumed - 1], b'\n');
                return Fed::Line(reader.line().to_vec(), taken + consumed);
            }
            Err(err) => {
                assert_eq!(err.category(), Category::Oversize);
                assert_eq!(reader.line().len(), MAX_HEADER_LEN);
                return Fed::Oversize;
            }
        }
    }
    Fed::NeedMore(taken)
}

fn reader_consistency(input: &[u8], sizes: &[u8]) {
    let whole = feed(input, &chunks(input.len(), &[]));
    let bytewise = feed(input, &chunks(input.len(), &[0]));
    let chunked = feed(input, &chunks(input.len(), sizes));
    assert_eq!(whole, bytewise, "whole vs byte by byte");
    assert_eq!(whole, chunked, "whole vs chunked");
    match &whole {
        Fed::Line(line, consumed) => {
            assert_eq!(line.len() + 1, *consumed);
            assert!(*consumed <= MAX_HEADER_LEN);
            assert!(!line.contains(&b'\n'));
            assert_eq!(&input[..line.len()], &line[..]);
        }
        Fed::NeedMore(taken) => {
            assert_eq!(*taken, input.len());
            assert!(input.len() < MAX_HEADER_LEN);
        }
        Fed::Oversize => assert!(input.len() >= MAX_HEADER_LEN),
    }
    // The async reader, one byte per read, agrees.
    let mut stream = input;
    let read = runtime().block_on(read_header_line(&mut stream));
    match (&whole, read) {
        (Fed::Line(line, consumed), Ok(read)) => {
            assert_eq!(*line, read);
            // Nothing after the LF was consumed (§3.3 item 1).
            assert_eq!(stream.len(), input.len() - consumed);
        }
        (Fed::NeedMore(_), Err(HeaderError::Eof { read })) => assert_eq!(read, input.len()),
        (Fed::Oversize, Err(HeaderError::Oversize { .. })) => {}
        (fed, read) => panic!("sans-IO reader said {fed:?}, async reader {read:?}"),
    }
}

/// The §3.5 step a line fails first, computed independently of the parser.
fn expected_category(line: &[u8], role: Role) -> Option<Category> {
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let [preamble, word, list] = parts[..] else {
        return Some(Category::Parts);
    };
    if preamble != PREAMBLE.as_bytes() {
        return Some(Category::Preamble);
    }
    if word != role.as_str().as_bytes() {
        return Some(Category::Role);
    }
    let Ok(list) = std::str::from_utf8(list) else {
        return Some(Category::Version);
    };
    let mut versions = Vec::new();
    for entry in list.split(',') {
        match Version::parse(entry) {
            Ok(v) => versions.push(v),
            Err(_) => return Some(Category::Version),
        }
    }
    let ascending = versions.windows(2).all(|w| w[0].major < w[1].major);
    (!ascending).then_some(Category::List)
}

fn parse_consistency(line: &[u8]) {
    let mut accepted = Vec::new();
    for role in Role::ALL {
        let parsed = Header::parse(line, role);
        let expected = expected_category(line, role);
        match parsed {
            Ok(header) => {
                assert_eq!(expected, None, "accepted a line the rules refuse");
                assert_eq!(header.role, role);
                let canonical = header.to_line();
                assert!(canonical.ends_with('\n') && canonical.len() <= line.len() + 1);
                let again = Header::parse(&canonical.as_bytes()[..canonical.len() - 1], role);
                assert!(
                    matches!(again, Ok(ref h) if *h == header),
                    "canonical line re-parses"
                );
                check_list(&header.versions);
                accepted.push(role);
            }
            Err(err) => assert_eq!(Some(err.category()), expected, "{err}"),
        }
    }
    assert!(accepted.len() <= 1, "one line, several roles: {accepted:?}");
}

fn check_list(list: &VersionList) {
    let versions = list.versions();
    assert!(!versions.is_empty());
    assert!(versions.iter().all(|v| v.major != 0));
    assert!(versions.windows(2).all(|w| w[0].major < w[1].major));
    let text = list.to_string();
    assert!(matches!(VersionList::from_str(&text), Ok(ref l) if l == list));
}

fn negotiation(a: &VersionList, b: &VersionList) {
    let ab = a.negotiate(b);
    assert_eq!(ab, b.negotiate(a), "negotiation is symmetric");
    let common = a
        .versions()
        .iter()
        .filter_map(|x| {
            b.versions()
                .iter()
                .find(|y| y.major == x.major)
                .map(|y| (x, y))
        })
        .max_by_key(|(x, _)| x.major);
    let expected = common.map(|(x, y)| Version::new(x.major, x.minor.min(y.minor)));
    assert_eq!(ab, expected);
    let peer = Header::new(Role::Tunnel, b.clone());
    match Header::negotiate(a, &peer) {
        Ok(v) => assert_eq!(Some(v), ab),
        Err(err) => {
            assert_eq!(ab, None);
            assert_eq!(err.category(), Category::Incompatible);
        }
    }
}

/// Control byte: chunk size for the chunked feed. The rest is a header
/// stream; its text (lossy) split at `|` also gives two version lists.
pub fn handshake(data: &[u8]) {
    let (ctl, input) = control(data);
    reader_consistency(input, &[ctl]);
    let line = input.split(|&b| b == b'\n').next().unwrap_or_default();
    parse_consistency(line);

    let text = String::from_utf8_lossy(input);
    let lists: Vec<VersionList> = text
        .split('|')
        .filter_map(|t| VersionList::from_str(t.trim_end_matches('\n')).ok())
        .collect();
    for list in &lists {
        check_list(list);
    }
    if let [a, b, ..] = &lists[..] {
        negotiation(a, b);
        negotiation(a, a);
    }
    if let Some(a) = lists.first() {
        negotiation(a, &VersionList::default());
    }
}
