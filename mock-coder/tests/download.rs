//! `GET /bin/{name}` (protocol.md §9.2): deterministic content, length,
//! ETag as the quoted SHA-1, 304 on a matching If-None-Match, pacing, and
//! the "no length" variant.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use codervpn_mock_coder::download::{content, sha1_hex};
use codervpn_mock_coder::{DownloadConfig, MockCoder, MockConfig, Scenario};
use common::{TOKEN, client};

async fn start(download: DownloadConfig) -> MockCoder {
    MockCoder::start(MockConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
        scenario: Scenario::demo(),
        download,
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn serves_deterministic_bytes_with_length_and_sha1_etag() {
    let mock = start(DownloadConfig {
        size: 100_000,
        rate: 0,
        omit_length: false,
    })
    .await;
    let url = format!("{}/bin/coder-linux-amd64", mock.url());
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(100_000));
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let body = response.bytes().await.unwrap();
    assert_eq!(&body[..], &content("coder-linux-amd64", 100_000)[..]);
    assert_eq!(etag, format!("\"{}\"", sha1_hex(&body)));

    // Quoted (Windows) and bare (macOS) If-None-Match both give 304.
    for tag in [etag.clone(), sha1_hex(&body)] {
        let cached = client()
            .get(&url)
            .header("If-None-Match", tag)
            .send()
            .await
            .unwrap();
        assert_eq!(cached.status(), 304);
        assert_eq!(cached.headers()["etag"].to_str().unwrap(), etag);
        assert!(cached.bytes().await.unwrap().is_empty());
    }
    let stale = client()
        .get(&url)
        .header(
            "If-None-Match",
            "\"0000000000000000000000000000000000000000\"",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);

    // Another name, other bytes; the request is recorded.
    let other = client()
        .get(format!("{}/bin/coder-windows-amd64.exe", mock.url()))
        .send()
        .await
        .unwrap();
    assert_ne!(other.headers()["etag"].to_str().unwrap(), etag);
    let paths: Vec<String> = mock.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths.contains(&"/bin/coder-linux-amd64".to_owned()),
        "{paths:?}"
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn paces_the_body_and_can_leave_out_the_length() {
    let mock = start(DownloadConfig {
        size: 256 * 1024,
        rate: 1024 * 1024,
        omit_length: true,
    })
    .await;
    let began = Instant::now();
    let response = client()
        .get(format!("{}/bin/coder-linux-amd64", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), None);
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len(), 256 * 1024);
    // 256 KiB at 1 MiB/s: the last chunk is due after at least ~0.2 s.
    assert!(began.elapsed() >= Duration::from_millis(200));
    mock.shutdown().await;
}
