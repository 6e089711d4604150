//! `chatkpi import` end to end: the real binary reads a JSON-lines history into a running
//! server; bad lines become rejections with their line numbers; a killed import resumes from
//! its checkpoint and the tenant ends with every event exactly once.

use std::{io::Write, path::Path, process::Stdio, time::Duration};

use chatkpi::{
    config::Limits,
    grpc::{convert::chrono_to_timestamp, pb},
};

use crate::helpers::{Options, TestApp, t};

/// The four events of conversation `i`: opened (customer `cust-<i % 50>`), a customer message,
/// an agent answer `30 + i % 60` seconds later, resolved. Proto3 JSON mapping, one per line.
fn conversation_lines(i: usize) -> [String; 4] {
    let base = (i as i64) * 60;
    let at = |s: i64| t(base + s).to_rfc3339();
    let answer = 30 + (i % 60) as i64;
    [
        format!(
            r#"{{"eventId":"c{i}-o","conversationId":"c{i}","occurredAt":"{}","conversationOpened":{{"customerId":"cust-{}","channel":"CHANNEL_WHATSAPP"}}}}"#,
            at(0),
            i % 50
        ),
        format!(
            r#"{{"eventId":"c{i}-m1","conversationId":"c{i}","occurredAt":"{}","message":{{"messageId":"c{i}-m1","sender":"SENDER_CUSTOMER"}}}}"#,
            at(1)
        ),
        format!(
            r#"{{"eventId":"c{i}-m2","conversationId":"c{i}","occurredAt":"{}","message":{{"messageId":"c{i}-m2","sender":"SENDER_AGENT","agentId":"ann"}}}}"#,
            at(1 + answer)
        ),
        format!(
            r#"{{"eventId":"c{i}-r","conversationId":"c{i}","occurredAt":"{}","resolved":{{"by":"RESOLVED_BY_AGENT"}}}}"#,
            at(50 + answer)
        ),
    ]
}

fn write_lines(path: &Path, lines: &[String]) {
    let text = lines.join("\n") + "\n";
    if path.extension().is_some_and(|e| e == "gz") {
        let file = std::fs::File::create(path).unwrap();
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        gz.finish().unwrap();
    } else {
        std::fs::write(path, text).unwrap();
    }
}

fn import_command(app: &TestApp, input: &Path, batch: u32) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatkpi"));
    cmd.arg("import")
        .arg(input)
        .args([
            "--server",
            &format!("http://{}", app.addr),
            "--batch",
            &batch.to_string(),
        ])
        .args(["--streams", "2"])
        .env("CHATKPI_API_KEY", &app.api_key)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs an import to its end; returns its stderr (progress lines and the summary).
async fn import_to_end(app: &TestApp, input: &Path, batch: u32) -> String {
    let out = import_command(app, input, batch).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "import failed: {stderr}");
    stderr
}

/// The `name=value` figure of the summary line.
fn summary(stderr: &str, name: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("import done:"))
        .expect("a summary line");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

async fn overview(app: &TestApp) -> pb::Kpis {
    let request = pb::GetOverviewRequest {
        query: Some(pb::Query {
            from: Some(chrono_to_timestamp(t(-3_600))),
            to: Some(chrono_to_timestamp(t(10 * 86_400))),
            ..Default::default()
        }),
        compare_previous: false,
    };
    app.metrics()
        .get_overview(app.authed(request))
        .await
        .unwrap()
        .into_inner()
        .current
        .unwrap()
}

#[tokio::test]
async fn import_stores_a_history_and_reports_bad_lines_with_their_numbers() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("history.jsonl");
    let n = 200;
    let mut lines: Vec<String> = (0..n).flat_map(conversation_lines).collect();
    // Line 11: not JSON. Line 22: an agent message without its agent (the server rejects it).
    // Line 33: blank. Line 44: a repeat of line 1's event id.
    lines.insert(10, "{not json".into());
    lines.insert(
        21,
        format!(
            r#"{{"eventId":"bad-agent","conversationId":"c0","occurredAt":"{}","message":{{"messageId":"x","sender":"SENDER_AGENT"}}}}"#,
            t(5).to_rfc3339()
        ),
    );
    lines.insert(32, String::new());
    lines.insert(43, lines[0].clone());
    write_lines(&input, &lines);

    let stderr = import_to_end(&app, &input, 50).await;
    assert_eq!(summary(&stderr, "accepted"), 4 * n as u64);
    assert_eq!(summary(&stderr, "duplicates"), 1);
    assert_eq!(summary(&stderr, "rejected"), 2);
    assert_eq!(app.event_count().await, 4 * n as i64);

    let rejects = std::fs::read_to_string(dir.path().join("history.jsonl.rejects.jsonl")).unwrap();
    let mut rejects: Vec<serde_json::Value> = rejects
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    rejects.sort_by_key(|r| r["line"].as_u64());
    assert_eq!(rejects.len(), 2, "{rejects:?}");
    assert_eq!(rejects[0]["line"], 11);
    assert!(
        rejects[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("not a chatkpi.v1.Event"),
        "{rejects:?}"
    );
    assert_eq!(rejects[1]["line"], 22);
    assert_eq!(rejects[1]["event_id"], "bad-agent");
    assert_eq!(rejects[1]["field"], "message.agent_id");

    // The numbers are those of the file: 200 conversations, each answered after 30 + i % 60 s.
    let kpis = overview(&app).await;
    assert_eq!(kpis.conversations, n as u64);
    let frt = kpis.first_response.unwrap();
    assert_eq!(frt.count, n as u64);
    let mean = (0..n).map(|i| 30.0 + (i % 60) as f64).sum::<f64>() / n as f64;
    assert!((frt.mean.unwrap() - mean).abs() < 1e-9, "{frt:?} vs {mean}");

    // Done: a second run has nothing left after the checkpoint.
    let again = import_to_end(&app, &input, 50).await;
    assert!(
        again.contains(&format!("resuming after line {}", lines.len())),
        "{again}"
    );
    assert_eq!(summary(&again, "accepted") + summary(&again, "duplicates"), 0);
}

#[tokio::test]
async fn a_killed_import_resumes_from_its_checkpoint_and_stores_every_event_once() {
    // A slow tenant (1,000 events/s) so the import is still running when it is killed.
    let app = TestApp::spawn_with(Options {
        limits: Limits {
            tenant_events_per_sec: 1_000,
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("history.jsonl.gz");
    let n = 1_500;
    let lines: Vec<String> = (0..n).flat_map(conversation_lines).collect();
    write_lines(&input, &lines);
    let checkpoint = dir.path().join("history.jsonl.gz.checkpoint");

    let mut first = import_command(&app, &input, 100).spawn().unwrap();
    let reached = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = std::fs::read_to_string(&checkpoint)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["line"].as_u64())
                .unwrap_or(0);
            if line > 0 {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a checkpoint within 30 s");
    first.kill().await.unwrap(); // SIGKILL: no chance to tidy up
    let stored_before = app.event_count().await;
    assert!(
        stored_before < lines.len() as i64,
        "the first run finished before it was killed"
    );
    let line: u64 = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&checkpoint).unwrap())
        .unwrap()["line"]
        .as_u64()
        .unwrap();
    assert!(line >= reached && line < lines.len() as u64);

    let stderr = import_to_end(&app, &input, 100).await;
    assert!(
        stderr.contains(&format!("resuming after line {line}")),
        "{stderr}"
    );
    // The rest of the file, each line once: stored now, or already stored by the killed run.
    assert_eq!(
        summary(&stderr, "accepted") + summary(&stderr, "duplicates"),
        lines.len() as u64 - line
    );
    assert_eq!(summary(&stderr, "rejected"), 0);
    assert_eq!(app.event_count().await, lines.len() as i64);
    assert_eq!(overview(&app).await.conversations, n as u64);
}
