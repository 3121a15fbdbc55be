//! The shape shared by `ManagerMessage`, `TunnelMessage`, `ClientMessage` and
//! `ServiceMessage`: field 1 is `RPC rpc`, fields 2 and up are the `msg`
//! oneof (protocol.md §5.1, §6.1). The speaker sorts and stamps messages
//! through this trait, so one speaker serves all four roles.

use crate::vpn::{
    ClientMessage, ManagerMessage, Rpc, ServiceMessage, TunnelMessage, client_message,
    manager_message, service_message, tunnel_message,
};

/// A top-level CoderVPN message.
pub trait Envelope:
    prost::Message + Default + Clone + PartialEq + std::fmt::Debug + Send + Sync + 'static
{
    /// Fully qualified protobuf name, e.g. `vpn.ManagerMessage`.
    const FULL_NAME: &'static str;

    /// The `rpc` field, if present.
    fn rpc(&self) -> Option<&Rpc>;

    /// Replaces the `rpc` field (`None` removes it, as one-way messages need).
    fn set_rpc(&mut self, rpc: Option<Rpc>);

    /// The schema name of the `msg` arm that is set (e.g. `"stop"`), or `None`
    /// for an arm-less message.
    fn arm(&self) -> Option<&'static str>;
}

macro_rules! envelope {
    ($ty:ident, $name:literal, $module:ident { $($variant:ident => $arm:literal),* $(,)? }) => {
        impl Envelope for $ty {
            const FULL_NAME: &'static str = $name;

            fn rpc(&self) -> Option<&Rpc> {
                self.rpc.as_ref()
            }

            fn set_rpc(&mut self, rpc: Option<Rpc>) {
                self.rpc = rpc;
            }

            fn arm(&self) -> Option<&'static str> {
                self.msg.as_ref().map(|msg| match msg {
                    $($module::Msg::$variant(_) => $arm,)*
                })
            }
        }
    };
}

envelope!(ManagerMessage, "vpn.ManagerMessage", manager_message {
    GetPeerUpdate => "get_peer_update",
    NetworkSettings => "network_settings",
    Start => "start",
    Stop => "stop",
});

envelope!(TunnelMessage, "vpn.TunnelMessage", tunnel_message {
    Log => "log",
    PeerUpdate => "peer_update",
    NetworkSettings => "network_settings",
    Start => "start",
    Stop => "stop",
});

envelope!(ClientMessage, "vpn.ClientMessage", client_message {
    Start => "start",
    Stop => "stop",
    Status => "status",
});

envelope!(ServiceMessage, "vpn.ServiceMessage", service_message {
    Start => "start",
    Stop => "stop",
    Status => "status",
    StartProgress => "start_progress",
});
