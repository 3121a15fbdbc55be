//! RPC bookkeeping (protocol.md §5), sans-IO: sorting incoming messages and
//! the table of pending outgoing calls.
//!
//! The table is a plain mutex around a map of one-shot senders. Handing a
//! reply over never blocks (a one-shot send), so the reader never waits while
//! holding the lock a cancelling caller needs (§5.9 item 4).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use codervpn_proto::{Envelope, Rpc};
use tokio::sync::oneshot;

/// How an incoming message is routed (§5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `rpc` present with `response_to != 0`: a reply to our request.
    /// `msg_id` is ignored (§5.4 item 2).
    Response(u64),
    /// `rpc` present with `msg_id != 0` and `response_to == 0`.
    Request(u64),
    /// No `rpc`, or both ids 0: goes to the handler as a one-way message.
    OneWay,
}

/// Sorts a message by its `rpc` field.
pub fn classify(rpc: Option<&Rpc>) -> Kind {
    match rpc {
        Some(rpc) if rpc.response_to != 0 => Kind::Response(rpc.response_to),
        Some(rpc) if rpc.msg_id != 0 => Kind::Request(rpc.msg_id),
        _ => Kind::OneWay,
    }
}

/// Whether `msg` is a request (non-zero `msg_id`, no `response_to`).
pub fn is_request(msg: &impl Envelope) -> bool {
    matches!(classify(msg.rpc()), Kind::Request(_))
}

/// Whether `msg` is a response.
pub fn is_response(msg: &impl Envelope) -> bool {
    matches!(classify(msg.rpc()), Kind::Response(_))
}

/// Request ids: 1, 2, 3, ... per speaker (§5.2), never reused on a stream.
#[derive(Debug)]
pub struct IdCounter(AtomicU64);

impl Default for IdCounter {
    fn default() -> Self {
        IdCounter(AtomicU64::new(1))
    }
}

impl IdCounter {
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// Outgoing calls waiting for their reply.
#[derive(Debug)]
pub struct Pending<M> {
    inner: Mutex<Table<M>>,
}

#[derive(Debug)]
struct Table<M> {
    open: bool,
    waiting: HashMap<u64, oneshot::Sender<M>>,
}

/// What became of a reply handed to [`Pending::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// No call waits for that id: never sent, already answered, or given up.
    Unmatched,
}

impl<M> Default for Pending<M> {
    fn default() -> Self {
        Pending {
            inner: Mutex::new(Table {
                open: true,
                waiting: HashMap::new(),
            }),
        }
    }
}

impl<M> Pending<M> {
    fn table(&self) -> std::sync::MutexGuard<'_, Table<M>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert or remove), so poisoning is
        // ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a call. `None` once the stream is closed.
    pub fn register(&self, id: u64) -> Option<oneshot::Receiver<M>> {
        let mut table = self.table();
        if !table.open {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        table.waiting.insert(id, tx);
        Some(rx)
    }

    /// Forgets a call whose caller gave up; a late reply is then unmatched.
    pub fn cancel(&self, id: u64) {
        self.table().waiting.remove(&id);
    }

    /// Hands a reply to its caller, at most once per id.
    pub fn deliver(&self, id: u64, reply: M) -> Delivery {
        let waiter = self.table().waiting.remove(&id);
        match waiter.map(|tx| tx.send(reply)) {
            Some(Ok(())) => Delivery::Delivered,
            _ => Delivery::Unmatched,
        }
    }

    /// Fails every waiting call and refuses new ones (the stream is gone).
    pub fn close(&self) {
        let mut table = self.table();
        table.open = false;
        table.waiting.clear();
    }

    /// Number of calls waiting.
    pub fn len(&self) -> usize {
        self.table().waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_section_5_3() {
        let rpc = |msg_id, response_to| Rpc {
            msg_id,
            response_to,
        };
        assert_eq!(classify(None), Kind::OneWay);
        assert_eq!(classify(Some(&rpc(0, 0))), Kind::OneWay);
        assert_eq!(classify(Some(&rpc(7, 0))), Kind::Request(7));
        assert_eq!(classify(Some(&rpc(0, 9))), Kind::Response(9));
        // Both set: a response, msg_id ignored (R7).
        assert_eq!(classify(Some(&rpc(7, 99))), Kind::Response(99));
    }

    #[test]
    fn replies_are_delivered_once_and_closing_fails_waiters() {
        let pending = Pending::<u32>::default();
        let mut first = pending.register(1).unwrap();
        let mut second = pending.register(2).unwrap();
        assert_eq!(pending.deliver(1, 10), Delivery::Delivered);
        assert_eq!(pending.deliver(1, 11), Delivery::Unmatched);
        assert_eq!(pending.deliver(5, 11), Delivery::Unmatched);
        assert_eq!(first.try_recv(), Ok(10));
        pending.close();
        assert!(second.try_recv().is_err());
        assert!(pending.register(3).is_none());
        assert!(pending.is_empty());
    }

    #[test]
    fn ids_start_at_one() {
        let ids = IdCounter::default();
        assert_eq!((ids.next(), ids.next(), ids.next()), (1, 2, 3));
    }
}
