//! The suite tests itself: every tunnel-side case must FAIL against a
//! tunnel that breaks the rule it checks. `codervpn faulty-tunnel` runs the
//! built-in tunnel behind a relay that breaks one rule; each fault names
//! the protocol.md sections whose rules it breaks, and each case is run
//! against the faults covering its section (strict grading, so SHOULD and
//! hazard cases must fail too).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_codervpn");

/// The two self-tests each keep several processes busy; run one at a time
/// so their timings stay far from the bounds on a 2-core machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Fault -> the sections (prefixes of a case's `spec`) whose rules it breaks.
const FAULTS: &[(&str, &[&str])] = &[
    ("wrong-role", &["§3.1", "§3.4", "§12.2"]),
    ("wrong-version", &["§3.6"]),
    ("accept-any-header", &["§3.2", "§3.3", "§3.5", "§3.7"]),
    ("frame-after-stop", &["§7.1", "§7.4"]),
    ("no-eof-after-stop", &["§7.1"]),
    ("drop-armless-replies", &["§5.5", "§4.5"]),
    ("rpc-on-one-way", &["§5.7", "§6.12", "§6.8", "§6.9"]),
    (
        "shift-response-to",
        &[
            "§5.2", "§5.3", "§5.4", "§5.8", "§4.1", "§4.4", "§12.5", "§12.6",
        ],
    ),
    ("text-ids", &["§6.6", "§6.7", "§6.8", "§9."]),
    ("no-trailing-dot", &["§6.7", "§9.4"]),
    ("armless-peer-update", &["§6.6"]),
    ("close-on-empty-frame", &["§4.3"]),
    (
        "drop-start-response",
        &["§6.2", "§6.3", "§6.4", "§6.5", "§6.10", "§6.11"],
    ),
    ("survive-bad-input", &["§4.2", "§4.3"]),
    ("ignore-eof", &["§2.1", "§3.3", "§4.3", "§7.4"]),
    ("whole-reads", &["§2.1", "§3.3"]),
    ("unbounded-header", &["§3.3", "§3.8"]),
    ("drop-bytes-after-header", &["§3.3"]),
    ("short-header-limit", &["§3.3"]),
    ("off-by-one-cap", &["§4.2"]),
    ("answer-one-way", &["§5.5", "§5.7"]),
    ("reject-noncanonical", &["§1.5", "§4.5"]),
    ("drop-armless-replies", &["§14"]),
];

/// Cases no fault above covers yet (each needs a fault of its own).
const UNCOVERED: &[&str] = &[];

fn section(spec: &str) -> &str {
    spec.trim_start_matches("protocol.md ")
        .split_whitespace()
        .next()
        .unwrap_or("")
}

fn covers(sections: &[&str], spec: &str) -> bool {
    let sec = section(spec);
    sections.iter().any(|s| {
        sec == *s || sec.starts_with(&format!("{s}.")) || (s.ends_with('.') && sec.starts_with(s))
    })
}

#[test]
fn every_case_fails_against_the_fault_that_breaks_its_rule() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let list = Command::new(BIN)
        .args(["conform", "--list", "--tier", "control"])
        .output()
        .unwrap();
    assert!(list.status.success());
    let text = String::from_utf8(list.stdout).unwrap();
    // `ID  Level Tier spec — title`: the spec runs up to the em dash.
    let cases: BTreeMap<String, String> = text
        .lines()
        .filter(|l| !["MGR-", "SVC-", "CLI-"].iter().any(|p| l.starts_with(p)))
        .filter_map(|l| {
            let (id, rest) = l.split_once(' ')?;
            let spec = rest.split_once("protocol.md")?.1.split('—').next()?.trim();
            Some((id.to_owned(), format!("protocol.md {spec}")))
        })
        .collect();
    assert!(cases.len() > 50, "catalogue not listed: {text}");

    let mut caught: BTreeSet<String> = BTreeSet::new();
    let mut report = String::new();
    for (fault, sections) in FAULTS {
        let ids: Vec<&String> = cases
            .iter()
            .filter(|(_, spec)| covers(sections, spec))
            .map(|(id, _)| id)
            .collect();
        if ids.is_empty() {
            continue;
        }
        let tunnel = format!(
            "{BIN} faulty-tunnel --fault {fault} --rpc-read-fd {{rpc_read_fd}} --rpc-write-fd {{rpc_write_fd}}"
        );
        let mut cmd = Command::new(BIN);
        cmd.args([
            "conform",
            "--tunnel-cmd",
            &tunnel,
            "--tier",
            "control",
            "--level",
            "should",
        ])
        .args(["--format", "json", "--jobs", "4", "--timeout-ms", "4000"]);
        for id in &ids {
            cmd.args(["--only", id]);
        }
        let out = cmd.output().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{fault}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        for case in json["cases"].as_array().unwrap() {
            let id = case["id"].as_str().unwrap().to_owned();
            if case["grade"] == "fail" {
                caught.insert(id);
            }
        }
        report += &format!("{fault}: {} cases run\n", ids.len());
    }
    let missed: Vec<&String> = cases
        .keys()
        .filter(|id| !caught.contains(*id) && !UNCOVERED.contains(&id.as_str()))
        .collect();
    assert!(
        missed.is_empty(),
        "cases that no fault breaking their rule made fail: {missed:?}\n{report}"
    );
}

/// Manager fault -> the manager-side cases it must make fail.
const MANAGER_FAULTS: &[(&str, &[&str])] = &[
    ("write-after-read", &["MGR-001"]),
    ("first-id-five", &["MGR-002"]),
    ("ignore-network-settings", &["MGR-003", "MGR-004"]),
    ("close-on-early-update", &["MGR-005"]),
    (
        "close-on-odd-input",
        &["MGR-006", "MGR-007", "MGR-008", "MGR-010"],
    ),
    ("send-after-stop", &["MGR-009"]),
    ("close-after-stop", &["MGR-009"]),
    ("strict-versions", &["MGR-011"]),
    ("no-stop-after-failed-start", &["MGR-012"]),
    ("no-start-timeout", &["MGR-013"]),
];

/// The same for managers: the mock manager breaks one [M] rule on request,
/// and every manager-side case fails against the manager breaking its rule.
#[test]
fn every_manager_case_fails_against_the_manager_breaking_its_rule() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut caught = BTreeSet::new();
    for (fault, ids) in MANAGER_FAULTS {
        let manager = format!(
            "{BIN} mock-manager --fault {fault} --hold-ms 500 --reply-timeout-ms 2000 --tunnel-cmd {{tunnel_cmd}}"
        );
        let mut cmd = Command::new(BIN);
        cmd.args(["conform", "--manager-cmd", &manager, "--level", "should"])
            .args(["--format", "json", "--jobs", "2", "--timeout-ms", "10000"]);
        for id in *ids {
            cmd.args(["--only", id]);
        }
        let out = cmd.output().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{fault}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        for case in json["cases"].as_array().unwrap() {
            let id = case["id"].as_str().unwrap();
            assert_eq!(
                case["grade"], "fail",
                "{id} was not failed by --fault {fault}: {} {}",
                case["grade"], case["message"]
            );
            caught.insert(id.to_owned());
        }
    }
    let list = Command::new(BIN)
        .args(["conform", "--list"])
        .output()
        .unwrap();
    let all: BTreeSet<String> = String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|id| id.starts_with("MGR-"))
        .map(str::to_owned)
        .collect();
    let missed: Vec<&String> = all.difference(&caught).collect();
    assert!(
        missed.is_empty(),
        "manager cases no fault made fail: {missed:?}"
    );
}

/// Client fault (`mock-client --fault`) -> the client cases it must make fail.
const CLIENT_FAULTS: &[(&str, &[&str])] = &[
    (
        "wrong-role",
        &[
            "CLI-001", "CLI-002", "CLI-003", "CLI-004", "CLI-005", "CLI-006",
        ],
    ),
    ("no-status-request", &["CLI-001", "CLI-002", "CLI-003"]),
    ("no-reconnect", &["CLI-003"]),
    ("close-on-broadcast", &["CLI-004", "CLI-005"]),
    ("unbounded-wait", &["CLI-006"]),
];

/// Runs `conform` with `args` (strict grading, JSON) and returns each
/// case's grade and message.
#[allow(clippy::unwrap_used)]
fn graded(args: &[&str], ids: &[&str]) -> BTreeMap<String, (String, String)> {
    let mut cmd = Command::new(BIN);
    cmd.arg("conform")
        .args(args)
        .args(["--level", "should", "--format", "json", "--jobs", "2"]);
    for id in ids {
        cmd.args(["--only", id]);
    }
    let out = cmd.output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            (
                case["id"].as_str().unwrap().to_owned(),
                (
                    case["grade"].as_str().unwrap().to_owned(),
                    case["message"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

/// The same for clients (protocol.md §8.8): the mock client breaks one [C]
/// rule on request, and every client case fails against a client breaking
/// its rule.
#[test]
fn every_client_case_fails_against_the_client_breaking_its_rule() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut caught = BTreeSet::new();
    for (fault, ids) in CLIENT_FAULTS {
        let client = format!(
            "{BIN} mock-client --socket {{socket}} --reply-timeout-ms 2000 --fault {fault}"
        );
        let grades = graded(&["--client-cmd", &client], ids);
        assert_eq!(grades.len(), ids.len(), "{fault}: {grades:?}");
        for (id, (grade, message)) in grades {
            assert_eq!(
                grade, "fail",
                "{id} was not failed by --fault {fault}: {message}"
            );
            caught.insert(id);
        }
    }
    let list = Command::new(BIN)
        .args(["conform", "--list"])
        .output()
        .unwrap();
    let all: BTreeSet<String> = String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|id| id.starts_with("CLI-"))
        .map(str::to_owned)
        .collect();
    assert!(all.len() >= 5, "{all:?}");
    let missed: Vec<&String> = all.difference(&caught).collect();
    assert!(
        missed.is_empty(),
        "client cases no fault made fail: {missed:?}"
    );
}

/// Scripted service (`tests/fixtures/fake-service/NAME.json`, played by
/// `codervpn fake-service`) -> the service cases it must fail, and the rule
/// the failure must name.
const FAKE_SERVICES: &[(&str, &str, &str)] = &[
    ("wrong-role", "SVC-001", "(E-ROLE)"),
    ("started-at-first", "SVC-002", "\"STOPPED\""),
    ("finalizing-first", "SVC-003", "§8.6 item 3"),
    ("finalizing-first", "SVC-004", "§8.6 item 3"),
    ("reply-before-started", "SVC-003", "§8.6 item 4"),
    ("stop-reply-first", "SVC-006", "§8.6 item 4"),
];

/// Service cases fail against a service that breaks their rule: a fake
/// service scripted with the engine itself plays the broken behaviour.
#[test]
fn service_cases_fail_against_a_service_breaking_their_rule() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake-service");
    for (fake, id, why) in FAKE_SERVICES {
        let service =
            format!("{BIN} fake-service --socket {{socket}} --transcript {fixtures}/{fake}.json");
        let grades = graded(&["--service-cmd", &service], &[id]);
        let Some((grade, message)) = grades.get(*id) else {
            panic!("{id} did not run against {fake}: {grades:?}");
        };
        assert_eq!(grade, "fail", "{id} was not failed by {fake}: {message}");
        assert!(message.contains(why), "{id} against {fake}: {message}");
    }
}
