//! The HTTP endpoints: auth, bodies, JSON errors, injected faults, and the
//! request record with redaction.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use codervpn_mock_coder::{Action, REQUESTS_PATH, RecordedRequest, Scenario, fingerprint};
use codervpn_reference_tunnel::control::api::{self, ApiError, BuildInfo, ConnectionInfo, User};
use common::{TOKEN, client, start, try_dial};

async fn get(url: String, token: Option<&str>) -> reqwest::Response {
    let mut request = client().get(url);
    if let Some(token) = token {
        request = request.header(api::SESSION_TOKEN_HEADER, token);
    }
    request.send().await.unwrap()
}

async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: ApiError = response.json().await.unwrap();
    (status, body.message)
}

#[tokio::test]
async fn buildinfo_needs_no_token() {
    let mock = start(Scenario::demo()).await;
    let response = get(format!("{}{}", mock.url(), api::BUILDINFO_PATH), None).await;
    assert_eq!(response.status(), 200);
    let info: BuildInfo = response.json().await.unwrap();
    assert_eq!(info.version, Scenario::demo().version);
    mock.shutdown().await;
}

#[tokio::test]
async fn missing_and_wrong_tokens_get_401_with_distinct_messages() {
    let mock = start(Scenario::demo()).await;
    for path in [api::USER_PATH, api::CONNECTION_PATH] {
        let (status, missing) = error_of(get(format!("{}{path}", mock.url()), None).await).await;
        assert_eq!(status, 401);
        assert!(missing.contains("missing"), "{missing}");
        let (status, wrong) =
            error_of(get(format!("{}{path}", mock.url()), Some("nope")).await).await;
        assert_eq!(status, 401);
        assert!(wrong.contains("invalid"), "{wrong}");
    }
    // The stream dial too.
    let url = common::stream_url(&mock);
    let (status, body) = try_dial(&url, None).await.err().unwrap();
    assert_eq!(status, 401);
    assert!(body.contains("missing"), "{body}");
    let (status, body) = try_dial(&url, Some("nope")).await.err().unwrap();
    assert_eq!(status, 401);
    assert!(body.contains("invalid"), "{body}");
    assert_eq!(mock.stream_dials(), 0);
    mock.shutdown().await;
}

#[tokio::test]
async fn user_and_connection_info() {
    let mut scenario = Scenario::demo();
    scenario.hostname_suffix = "float".into();
    let mock = start(scenario).await;
    let user: User = get(format!("{}{}", mock.url(), api::USER_PATH), Some(TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(user, Scenario::demo().user);
    let response = get(
        format!("{}{}", mock.url(), api::CONNECTION_PATH),
        Some(TOKEN),
    )
    .await;
    assert_eq!(response.status(), 200);
    let info: ConnectionInfo = response.json().await.unwrap();
    assert_eq!(info.hostname_suffix, "float");
    assert_eq!(info.suffix(), "float");
    mock.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_wrong_methods_and_bad_dials_get_json_errors() {
    let mock = start(Scenario::demo()).await;
    let (status, message) =
        error_of(get(format!("{}/api/v2/nope", mock.url()), Some(TOKEN)).await).await;
    assert_eq!(status, 404);
    assert!(message.contains("/api/v2/nope"), "{message}");

    let response = client()
        .post(format!("{}{}", mock.url(), api::USER_PATH))
        .send()
        .await
        .unwrap();
    let (status, _) = error_of(response).await;
    assert_eq!(status, 405);

    // A plain GET of the stream path with the right version: not an upgrade.
    let url = format!(
        "{}{}?version={}",
        mock.url(),
        api::STREAM_PATH,
        api::STREAM_VERSION
    );
    let (status, message) = error_of(get(url, Some(TOKEN)).await).await;
    assert!((400..500).contains(&status), "{status}");
    assert!(message.contains("WebSocket"), "{message}");

    // Wrong and missing versions.
    let base = format!("ws://{}{}", mock.local_addr(), api::STREAM_PATH);
    let (status, body) = try_dial(&format!("{base}?version=2.3"), Some(TOKEN))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 400);
    let message = serde_json::from_str::<ApiError>(&body).unwrap().message;
    assert!(message.contains("\"2.3\""), "{message}");
    let (status, body) = try_dial(&base, Some(TOKEN)).await.err().unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("missing version"), "{body}");
    assert_eq!(mock.stream_dials(), 0);
    mock.shutdown().await;
}

#[tokio::test]
async fn fail_requests_counts_down_per_path() {
    let mock = start(Scenario::demo()).await;
    mock.apply(Action::FailRequests {
        count: 2,
        status: 503,
        path: Some(api::USER_PATH.into()),
    });
    let user_url = format!("{}{}", mock.url(), api::USER_PATH);
    // Other paths are not affected.
    let response = get(format!("{}{}", mock.url(), api::BUILDINFO_PATH), None).await;
    assert_eq!(response.status(), 200);
    for _ in 0..2 {
        let (status, message) = error_of(get(user_url.clone(), Some(TOKEN)).await).await;
        assert_eq!(status, 503);
        assert!(message.contains("injected"), "{message}");
    }
    assert_eq!(get(user_url.clone(), Some(TOKEN)).await.status(), 200);

    // Without a path, any request; the stream dial included.
    mock.apply(Action::FailRequests {
        count: 1,
        status: 500,
        path: None,
    });
    let (status, _) = try_dial(&common::stream_url(&mock), Some(TOKEN))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 500);
    assert_eq!(mock.stream_dials(), 0);
    common::dial(&mock).await;
    assert_eq!(mock.stream_dials(), 1);
    mock.shutdown().await;
}

#[tokio::test]
async fn delay_responses_holds_the_next_matching_responses() {
    let mock = start(Scenario::demo()).await;
    let url = format!("{}{}", mock.url(), api::BUILDINFO_PATH);

    mock.apply(Action::DelayResponses {
        ms: 200,
        count: Some(1),
        path: Some(api::BUILDINFO_PATH.into()),
    });
    let begun = std::time::Instant::now();
    assert_eq!(get(url.clone(), None).await.status(), 200);
    assert!(begun.elapsed() >= Duration::from_millis(200));

    // A hang: the client gives up, the request is recorded as pending (0).
    mock.apply(Action::DelayResponses {
        ms: 600_000,
        count: Some(1),
        path: None,
    });
    let hung = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .get(url.clone())
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());
    let last = mock.requests().pop().unwrap();
    assert_eq!((last.path.as_str(), last.status), (api::BUILDINFO_PATH, 0));
    // The count was used up: the next request is served (within WAIT).
    assert_eq!(get(url.clone(), None).await.status(), 200);

    // Unlimited until cancelled with ms 0.
    mock.apply(Action::DelayResponses {
        ms: 600_000,
        count: None,
        path: None,
    });
    mock.apply(Action::DelayResponses {
        ms: 0,
        count: None,
        path: None,
    });
    assert_eq!(get(url, None).await.status(), 200);
    mock.shutdown().await;
}

#[tokio::test]
async fn corrupt_responses_are_not_json() {
    let mock = start(Scenario::demo()).await;
    mock.apply(Action::CorruptResponses {
        count: 1,
        path: Some(api::CONNECTION_PATH.into()),
    });
    let url = format!("{}{}", mock.url(), api::CONNECTION_PATH);
    let response = get(url.clone(), Some(TOKEN)).await;
    assert_eq!(response.status(), 200);
    assert!(response.json::<ConnectionInfo>().await.is_err());
    let response = get(url, Some(TOKEN)).await;
    assert!(response.json::<ConnectionInfo>().await.is_ok());
    mock.shutdown().await;
}

#[tokio::test]
async fn the_record_holds_every_request_with_secrets_redacted() {
    let mock = start(Scenario::demo()).await;
    let telemetry =
        r#"{"device_id":"device001","device_os":"macOS","coder_desktop_version":"0.24.8"}"#;
    let custom = "custom-header-value-42";
    let response = client()
        .get(format!("{}{}?x=1", mock.url(), api::USER_PATH))
        .header(api::SESSION_TOKEN_HEADER, TOKEN)
        .header(api::TELEMETRY_HEADER, telemetry)
        .header("X-Custom", custom)
        .header("X-Custom", "second")
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Cookie", format!("coder_session_token={TOKEN}"))
        .header("User-Agent", "codervpn-test/1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    common::dial(&mock).await;
    get(
        format!("{}{}", mock.url(), api::CONNECTION_PATH),
        Some("wrong"),
    )
    .await;

    let records = mock.requests();
    let paths: Vec<(&str, u16)> = records
        .iter()
        .map(|r| (r.path.as_str(), r.status))
        .collect();
    assert_eq!(
        paths,
        [
            (api::USER_PATH, 200),
            (api::STREAM_PATH, 101),
            (api::CONNECTION_PATH, 401)
        ]
    );
    let first = &records[0];
    assert_eq!(first.method, "GET");
    assert_eq!(first.query, "x=1");
    let values = |name: &str| first.header_values(name);
    assert_eq!(values("coder-session-token"), ["<redacted>"]);
    assert_eq!(values("authorization"), ["<redacted>"]);
    assert_eq!(values("cookie"), ["<redacted>"]);
    assert_eq!(values("Coder-Desktop-Telemetry"), [telemetry]);
    assert_eq!(values("user-agent"), ["codervpn-test/1"]);
    assert_eq!(
        values("x-custom"),
        [
            format!("<redacted:{}>", fingerprint(custom)),
            format!("<redacted:{}>", fingerprint("second"))
        ]
    );
    assert_eq!(records[1].query, format!("version={}", api::STREAM_VERSION));
    assert_eq!(records[1].header_values("upgrade"), ["websocket"]);

    // The same record over HTTP, without the token anywhere in it, and
    // without recording the harness's own reads.
    let text = client()
        .get(format!("{}{REQUESTS_PATH}", mock.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains(TOKEN));
    assert!(!format!("{records:?}").contains(TOKEN));
    assert!(!text.contains(custom));
    let served: Vec<RecordedRequest> = serde_json::from_str(&text).unwrap();
    assert_eq!(served, records);
    assert_eq!(mock.requests().len(), 3);
    mock.shutdown().await;
}
