//! Answers for the tunnel's resolver at `[fd60:627a:a42b::53]:53`
//! (protocol.md §9.4): AAAA records for every name the tunnel has
//! published in PeerUpdates, NXDOMAIN for any other name under the suffix.
//!
//! Sans-IO: a query datagram in, a response datagram out, so the packet
//! path and the fuzzers can share it.

use std::collections::HashMap;
use std::net::Ipv6Addr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::AAAA;
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// TTL of the answers: short, since agents come and go.
pub const TTL: u32 = 30;

/// The names the tunnel answers for, lower case with the trailing dot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostTable {
    names: HashMap<String, Ipv6Addr>,
}

impl HostTable {
    /// A table of `(fqdn, address)` pairs.
    pub fn new(entries: impl IntoIterator<Item = (String, Ipv6Addr)>) -> Self {
        HostTable {
            names: entries
                .into_iter()
                .map(|(name, addr)| (normalise(&name), addr))
                .collect(),
        }
    }

    pub fn lookup(&self, name: &str) -> Option<Ipv6Addr> {
        self.names.get(&normalise(name)).copied()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

fn normalise(name: &str) -> String {
    let mut name = name.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

/// Why a datagram got no answer at all.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("not a DNS message: {0}")]
    Malformed(String),
    #[error("not a query")]
    NotAQuery,
}

/// The response to one query datagram. A query for a known name gets its
/// AAAA record (an A query for it: no records, NOERROR); an unknown name
/// gets NXDOMAIN; anything but a standard query gets NOTIMP.
pub fn answer(table: &HostTable, query: &[u8]) -> Result<Vec<u8>, DnsError> {
    let request = Message::from_vec(query).map_err(|e| DnsError::Malformed(e.to_string()))?;
    if request.message_type() != MessageType::Query {
        return Err(DnsError::NotAQuery);
    }
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(false)
        .set_authoritative(true);
    response.add_queries(request.queries().to_vec());
    if request.op_code() != OpCode::Query || request.queries().len() != 1 {
        response.set_response_code(ResponseCode::NotImp);
        return response
            .to_vec()
            .map_err(|e| DnsError::Malformed(e.to_string()));
    }
    let question = &request.queries()[0];
    let name = question.name().to_ascii();
    match table.lookup(&name) {
        None => {
            response.set_response_code(ResponseCode::NXDomain);
        }
        Some(addr) => {
            response.set_response_code(ResponseCode::NoError);
            if question.query_type() == RecordType::AAAA {
                let owner: Name = question.name().clone();
                response.add_answer(Record::from_rdata(owner, TTL, RData::AAAA(AAAA(addr))));
            }
        }
    }
    response
        .to_vec()
        .map_err(|e| DnsError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut msg = Message::new();
        msg.set_id(4242).set_recursion_desired(true);
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        msg.to_vec().unwrap()
    }

    fn table() -> HostTable {
        let addr: Ipv6Addr = "fd60:627a:a42b:708:90a:b0c:d0e:f10".parse().unwrap();
        HostTable::new([
            ("wrk.coder.".to_string(), addr),
            ("agnt.wrk.me.coder.".to_string(), addr),
            ("agnt.wrk.rootbeer.coder.".to_string(), addr),
        ])
    }

    #[test]
    fn known_names_get_their_aaaa_record() {
        for name in [
            "agnt.wrk.me.coder.",
            "AGNT.wrk.rootbeer.coder",
            "wrk.coder.",
        ] {
            let reply =
                Message::from_vec(&answer(&table(), &query(name, RecordType::AAAA)).unwrap())
                    .unwrap();
            assert_eq!(reply.id(), 4242);
            assert_eq!(reply.response_code(), ResponseCode::NoError);
            assert_eq!(reply.answers().len(), 1, "{name}");
            assert_eq!(
                reply.answers()[0].data(),
                &RData::AAAA(AAAA("fd60:627a:a42b:708:90a:b0c:d0e:f10".parse().unwrap()))
            );
        }
    }

    #[test]
    fn unknown_names_are_nxdomain_and_a_queries_get_no_records() {
        let reply =
            Message::from_vec(&answer(&table(), &query("nope.coder.", RecordType::AAAA)).unwrap())
                .unwrap();
        assert_eq!(reply.response_code(), ResponseCode::NXDomain);
        assert!(reply.answers().is_empty());
        let reply =
            Message::from_vec(&answer(&table(), &query("wrk.coder.", RecordType::A)).unwrap())
                .unwrap();
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert!(reply.answers().is_empty());
    }

    #[test]
    fn garbage_and_responses_get_no_answer() {
        assert!(matches!(
            answer(&table(), b"\x00\x01garbage"),
            Err(DnsError::Malformed(_))
        ));
        let mut response = Message::new();
        response.set_message_type(MessageType::Response);
        assert!(matches!(
            answer(&table(), &response.to_vec().unwrap()),
            Err(DnsError::NotAQuery)
        ));
    }
}
