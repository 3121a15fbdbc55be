//! The mock tunnel: what a manager under test launches in place of
//! `coder vpn-daemon run` for a manager-side case. It plays the case's
//! transcript as the tunnel over the inherited descriptors and sends the
//! outcome to the harness over a Unix socket.

use std::path::Path;
use std::time::Duration;

use codervpn_codec::Tunnel;
use tokio::io::AsyncWriteExt;

use crate::catalogue;
use crate::engine::{self, Outcome, Verdict};

/// Runs case `id` on descriptors `read`/`write` (or stdio when absent) and
/// reports to `report`. Returns whether the case passed.
pub async fn run(
    id: &str,
    report: &Path,
    fds: Option<(i64, i64)>,
    timeout_ms: Option<u64>,
) -> Result<bool, String> {
    let cases = catalogue::all().map_err(|e| e.to_string())?;
    let mut case = cases
        .into_iter()
        .find(|c| c.id == id)
        .ok_or_else(|| format!("no case {id:?} in the catalogue"))?;
    if let Some(ms) = timeout_ms {
        case.timeout_ms = ms;
    }
    let stream = match fds {
        Some((read, write)) => codervpn_reference_tunnel::fd::inherited(read, write),
        None => codervpn_reference_tunnel::fd::stdio(),
    }
    .map_err(|e| e.to_string())?;
    let outcome = engine::run::<Tunnel>(&case, stream, None, "", None).await;
    let passed = !matches!(outcome.verdict, Verdict::Fail(_));
    send(report, &outcome).await?;
    Ok(passed)
}

async fn send(report: &Path, outcome: &Outcome) -> Result<(), String> {
    let text = serde_json::to_vec(outcome).map_err(|e| e.to_string())?;
    let connect = tokio::net::UnixStream::connect(report);
    let mut socket = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| {
            format!(
                "cannot reach the harness at {}: timed out",
                report.display()
            )
        })?
        .map_err(|e| format!("cannot reach the harness at {}: {e}", report.display()))?;
    socket.write_all(&text).await.map_err(|e| e.to_string())?;
    socket.shutdown().await.map_err(|e| e.to_string())
}
