//! The four speaker roles as types: which message type each sends and
//! receives (§1.2), and the role-specific write rules of §7.

use codervpn_proto::{
    ClientMessage, Envelope, ManagerMessage, ServiceMessage, TunnelMessage, manager_message,
    tunnel_message,
};

use crate::handshake::Role;
use crate::rpc::{is_request, is_response};

/// What writing a message does to the sending side of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterWrite {
    /// Nothing special.
    Continue,
    /// Nothing more may be sent, but the stream stays open (the manager
    /// after Stop keeps reading and keeps its write side open until the
    /// StopResponse, §7.2 items 1 and 3).
    Seal,
    /// Nothing more is sent and the stream closes (the tunnel after its
    /// StopResponse, §7.1 rule 2).
    SealAndClose,
}

/// A speaker role: its header word, its message types and its write rules.
pub trait Side: Send + Sync + 'static {
    /// The header word this side sends.
    const ROLE: Role;
    /// What this side sends.
    type Out: Envelope;
    /// What this side receives.
    type In: Envelope;

    /// The write rule `msg` triggers once written.
    fn after_write(msg: &Self::Out) -> AfterWrite {
        let _ = msg;
        AfterWrite::Continue
    }
}

/// The manager: sends `ManagerMessage`, receives `TunnelMessage`.
#[derive(Debug)]
pub enum Manager {}

/// The tunnel: sends `TunnelMessage`, receives `ManagerMessage`.
#[derive(Debug)]
pub enum Tunnel {}

/// The Windows client (desktop app): sends `ClientMessage`.
#[derive(Debug)]
pub enum Client {}

/// The Windows service toward its clients: sends `ServiceMessage`.
#[derive(Debug)]
pub enum Service {}

impl Side for Manager {
    const ROLE: Role = Role::Manager;
    type Out = ManagerMessage;
    type In = TunnelMessage;

    fn after_write(msg: &ManagerMessage) -> AfterWrite {
        match msg.msg {
            Some(manager_message::Msg::Stop(_)) if is_request(msg) => AfterWrite::Seal,
            _ => AfterWrite::Continue,
        }
    }
}

impl Side for Tunnel {
    const ROLE: Role = Role::Tunnel;
    type Out = TunnelMessage;
    type In = ManagerMessage;

    fn after_write(msg: &TunnelMessage) -> AfterWrite {
        match msg.msg {
            Some(tunnel_message::Msg::Stop(_)) if is_response(msg) => AfterWrite::SealAndClose,
            _ => AfterWrite::Continue,
        }
    }
}

impl Side for Client {
    const ROLE: Role = Role::Client;
    type Out = ClientMessage;
    type In = ServiceMessage;
}

impl Side for Service {
    const ROLE: Role = Role::Service;
    type Out = ServiceMessage;
    type In = ClientMessage;
}
