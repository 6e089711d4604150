//! The dashboard in a real browser: headless Chromium (Debian's `chromium`; `scripts/test.sh`
//! installs it, `CHROMIUM` names another binary) loads the page from the running server with
//! simulated data; the tiles must show what GetOverview answers for the same question, in the
//! formats the page promises (re-implemented here, independently of the page's script).

use std::{path::Path, time::Duration};

use chatkpi::grpc::{convert::chrono_to_timestamp, pb};
use chatkpi_tools::sim::{SimConfig, simulate};
use chrono::{NaiveDate, TimeZone};

use crate::helpers::TestApp;

/// Runs headless Chromium on `url` with `args` and returns what it printed.
async fn chromium(url: &str, args: &[&str]) -> String {
    let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(&binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("chromium finished within 120 s")
        .unwrap_or_else(|e| {
            panic!("cannot run `{binary}` ({e}): install Debian's chromium (scripts/test.sh does) or set CHROMIUM")
        });
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

async fn page(url: &str) -> String {
    chromium(url, &["--dump-dom"]).await
}

/// The `data-raw` number and the shown text of the tile `kpi`.
fn tile(dom: &str, kpi: &str) -> (Option<f64>, String) {
    let at = dom
        .find(&format!("data-kpi=\"{kpi}\""))
        .unwrap_or_else(|| panic!("no tile {kpi} in the page"));
    let rest = &dom[at..];
    let raw = between(rest, "data-raw=\"", "\"");
    let shown = between(rest, "class=\"value\">", "<");
    (
        (!raw.is_empty()).then(|| raw.parse().expect("a number")),
        shown.to_owned(),
    )
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> &'a str {
    let start = text.find(open).unwrap_or_else(|| panic!("no {open}")) + open.len();
    let len = text[start..].find(close).expect("closed");
    &text[start..start + len]
}

// ---- the page's formats, written again from their description in app.js -------------------------

#[derive(Clone, Copy)]
enum Kind {
    Count,
    Duration,
    Percent,
    Nps,
    Decimal,
}

/// JavaScript's Math.round: half up.
fn round(x: f64) -> f64 {
    (x + 0.5).floor()
}

fn one_decimal(x: f64) -> String {
    format!("{:.1}", round(x * 10.0) / 10.0)
}

fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn shown(kind: Kind, value: Option<f64>) -> String {
    let Some(v) = value else {
        return "–".to_owned();
    };
    match kind {
        Kind::Count => grouped(v as u64),
        Kind::Duration if v < 60.0 => format!("{} s", round(v)),
        Kind::Duration if v < 600.0 => format!("{} min", one_decimal(v / 60.0)),
        Kind::Duration if v < 3600.0 => format!("{} min", round(v / 60.0)),
        Kind::Duration if v < 172_800.0 => format!("{} h", one_decimal(v / 3600.0)),
        Kind::Duration => format!("{} d", one_decimal(v / 86_400.0)),
        Kind::Percent if v.abs() < 10.0 => format!("{} %", one_decimal(v)),
        Kind::Percent => format!("{} %", round(v)),
        Kind::Nps if round(v) > 0.0 => format!("+{}", round(v)),
        Kind::Nps => format!("{}", round(v)),
        Kind::Decimal => one_decimal(v),
    }
}

#[test]
fn the_formats_read_at_a_glance() {
    assert_eq!(shown(Kind::Duration, Some(45.2)), "45 s");
    assert_eq!(shown(Kind::Duration, Some(270.0)), "4.5 min");
    assert_eq!(shown(Kind::Duration, Some(725.0)), "12 min");
    assert_eq!(shown(Kind::Duration, Some(11_520.0)), "3.2 h");
    assert_eq!(shown(Kind::Percent, Some(87.3)), "87 %");
    assert_eq!(shown(Kind::Percent, Some(4.25)), "4.3 %");
    assert_eq!(shown(Kind::Nps, Some(31.6)), "+32");
    assert_eq!(shown(Kind::Count, Some(1_234_567.0)), "1,234,567");
    assert_eq!(shown(Kind::Count, Some(999.0)), "999");
    assert_eq!(shown(Kind::Decimal, None), "–");
}

/// The tiles: id, format, value in the overview.
fn tiles(k: &pb::Kpis) -> Vec<(&'static str, Kind, Option<f64>)> {
    let p50 = |s: &Option<pb::DurationStats>| s.as_ref().and_then(|s| s.p50);
    vec![
        ("conversations", Kind::Count, Some(k.conversations as f64)),
        ("frt_p50", Kind::Duration, p50(&k.first_response)),
        (
            "frt_p90",
            Kind::Duration,
            k.first_response.as_ref().and_then(|s| s.p90),
        ),
        ("human_frt_p50", Kind::Duration, p50(&k.human_first_response)),
        ("resolution_p50", Kind::Duration, p50(&k.resolution)),
        ("fcr", Kind::Percent, k.fcr_rate),
        (
            "csat",
            Kind::Percent,
            k.csat.as_ref().and_then(|c| c.csat_percent),
        ),
        ("nps", Kind::Nps, k.nps.as_ref().and_then(|n| n.nps)),
        ("ces", Kind::Decimal, k.ces.as_ref().and_then(|c| c.mean_score)),
        ("missed_rate", Kind::Percent, k.missed_rate),
        ("automation_rate", Kind::Percent, k.automation_rate),
        (
            "conversion_rate",
            Kind::Percent,
            k.conversion.as_ref().and_then(|c| c.rate),
        ),
        (
            "sla_first_response",
            Kind::Percent,
            sla_met(k, |s| &s.first_response),
        ),
        (
            "sla_next_response",
            Kind::Percent,
            sla_met(k, |s| &s.next_response),
        ),
        ("sla_resolution", Kind::Percent, sla_met(k, |s| &s.resolution)),
    ]
}

/// The page's SLA tiles: achieved / (achieved + breached), %.
fn sla_met(k: &pb::Kpis, metric: fn(&pb::SlaKpis) -> &Option<pb::SlaStats>) -> Option<f64> {
    let s = metric(k.sla.as_ref()?).as_ref()?;
    let judged = s.achieved + s.breached;
    (judged > 0).then(|| 100.0 * s.achieved as f64 / judged as f64)
}

/// Chat `i`: opened on 5 March 2026 at 10:00 + i minutes UTC with a customer message, never
/// answered.
fn waiting_chat(i: u32) -> Vec<chatkpi::domain::event::Event> {
    use chatkpi::domain::event::*;
    let at = chrono::Utc.with_ymd_and_hms(2026, 3, 5, 10, i, 0).unwrap();
    let conversation = format!("waiting-{i:02}");
    let event = |kind: &str, payload| Event {
        event_id: format!("{conversation}-{kind}"),
        conversation_id: Some(conversation.clone()),
        occurred_at: at,
        payload,
    };
    vec![
        event(
            "open",
            Payload::ConversationOpened(ConversationOpened {
                customer_id: format!("waiting-customer-{i}"),
                channel: Channel::Webchat,
                inbox: None,
                team: None,
                priority: None,
                initiated_by: Initiator::Customer,
            }),
        ),
        event(
            "message",
            Payload::Message(Message {
                message_id: format!("{conversation}-message"),
                sender: Sender::Customer,
                agent_id: None,
                private: false,
            }),
        ),
    ]
}

/// Calendar-time policies, so the at-risk list at "now" has the same order whenever it is asked.
async fn set_policies(app: &TestApp) {
    let target = |seconds| {
        Some(pb::SlaTarget {
            seconds,
            business_hours: false,
        })
    };
    let policy = |name: &str, priorities: Vec<i32>, seconds: [u32; 3]| pb::SlaPolicy {
        name: name.into(),
        conditions: Some(pb::SlaConditions {
            priorities,
            ..Default::default()
        }),
        first_response: target(seconds[0]),
        next_response: target(seconds[1]),
        resolution: target(seconds[2]),
    };
    app.metrics()
        .update_settings(app.authed(pb::UpdateSettingsRequest {
            sla_policies: Some(pb::SlaPolicies {
                policies: vec![
                    policy(
                        "urgent",
                        vec![pb::Priority::Urgent as i32, pb::Priority::High as i32],
                        [60, 300, 3600],
                    ),
                    policy("everyone", vec![], [300, 600, 4 * 3600]),
                ],
            }),
            ..Default::default()
        }))
        .await
        .unwrap();
}

/// 2 to 5 March 2026 in Berlin (the page's "to" date is included), as the API's window.
fn berlin_window(filters: Option<pb::Filters>) -> pb::Query {
    let day = |d: u32| {
        let local = NaiveDate::from_ymd_opt(2026, 3, d)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        chrono_tz::Europe::Berlin
            .from_local_datetime(&local)
            .unwrap()
            .to_utc()
    };
    pb::Query {
        from: Some(chrono_to_timestamp(day(2))),
        to: Some(chrono_to_timestamp(day(6))),
        time_zone: "Europe/Berlin".into(),
        filters,
        ..Default::default()
    }
}

/// A rule on the backlog (the waiting chats keep it above 0), once it fires; returns its id.
async fn firing_rule(app: &TestApp) -> String {
    let created = app
        .post_json(
            "/chatkpi.v1.AdminService/CreateAlertRule",
            &serde_json::json!({"rule": {"name": "backlog", "metric": "backlog",
                "comparison": "ALERT_COMPARISON_ABOVE", "threshold": 0,
                "destinations": ["http://127.0.0.1:9/nobody-listens"]}}),
        )
        .await
        .json();
    let id = created["ruleId"].as_str().unwrap().to_owned();
    for _ in 0..300 {
        let firing = app
            .metrics()
            .get_firing_alerts(app.authed(pb::GetFiringAlertsRequest {}))
            .await
            .unwrap()
            .into_inner();
        if firing.alerts.iter().any(|a| a.rule_id.to_string() == id) {
            return id;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("rule {id} did not fire");
}

async fn overview(app: &TestApp, query: pb::Query) -> pb::GetOverviewResponse {
    app.metrics()
        .get_overview(app.authed(pb::GetOverviewRequest {
            query: Some(query),
            compare_previous: true,
        }))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn the_dashboard_shows_what_the_api_answers_in_a_real_browser() {
    let app = TestApp::spawn().await;
    // Eight days, so the four shown have a previous period with data.
    let events = simulate(&SimConfig {
        conversations: 400,
        days: 8,
        seed: 21,
        start: NaiveDate::from_ymd_opt(2026, 2, 26).unwrap(),
        agents: 6,
    });
    for chunk in events.chunks(1000) {
        app.ingest(chunk).await.unwrap();
    }
    // Twelve chats still waiting for a human: their first-response clocks run until now.
    let waiting: Vec<chatkpi::domain::event::Event> = (0..12).flat_map(waiting_chat).collect();
    app.ingest(&waiting).await.unwrap();
    set_policies(&app).await;
    let rule = firing_rule(&app).await;
    let base = format!(
        "http://{}/#from=2026-03-02&to=2026-03-05&tz=Europe/Berlin",
        app.addr
    );
    let url = format!("{base}&key={}", app.api_key);

    let dom = page(&url).await;
    assert!(
        dom.contains("data-state=\"ready\""),
        "the page did not finish loading: {dom}"
    );
    let expected = overview(&app, berlin_window(None)).await;
    let current = expected.current.unwrap();
    for (id, kind, value) in tiles(&current) {
        let (raw, text) = tile(&dom, id);
        assert_eq!(raw, value, "tile {id}");
        assert_eq!(text, shown(kind, value), "tile {id}");
    }
    // The change against the previous four days.
    let previous = expected.previous.unwrap().conversations as f64;
    assert!(previous > 0.0);
    let change = round((current.conversations as f64 - previous) / previous * 100.0);
    let sign = if change > 0.0 { "+" } else { "" };
    assert!(
        dom.contains(&format!("{sign}{change} % vs previous")),
        "no conversations change of {change} %"
    );

    // One chart point per bucket of the daily series.
    let series = app
        .metrics()
        .get_time_series(app.authed(pb::GetTimeSeriesRequest {
            query: Some(berlin_window(None)),
            granularity: pb::Granularity::Day as i32,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(series.points.len(), 4);
    assert_eq!(dom.matches("class=\"bucket\"").count(), series.points.len());
    // One table row per agent row of the breakdown.
    let agents = app
        .metrics()
        .get_breakdown(app.authed(pb::GetBreakdownRequest {
            limit: 0,
            query: Some(berlin_window(None)),
            dimension: pb::Dimension::Agent as i32,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dom.matches("data-agent=").count(), agents.rows.len());

    // A filter changes the numbers, to what the API answers with that filter.
    let filtered = page(&format!("{url}&channel=whatsapp")).await;
    let whatsapp = pb::Filters {
        channels: vec![pb::Channel::Whatsapp as i32],
        ..Default::default()
    };
    let expected = overview(&app, berlin_window(Some(whatsapp)))
        .await
        .current
        .unwrap();
    assert!(expected.conversations < current.conversations);
    for (id, kind, value) in tiles(&expected) {
        let (raw, text) = tile(&filtered, id);
        assert_eq!(raw, value, "filtered tile {id}");
        assert_eq!(text, shown(kind, value), "filtered tile {id}");
    }

    // A drill-down lists the conversations behind a tile: the missed ones here.
    let drilled = page(&format!("{url}&drill=missed")).await;
    let mut missed = app
        .metrics()
        .list_conversations(app.authed(pb::ListConversationsRequest {
            query: Some(berlin_window(None)),
            kpi: pb::DrillDown::Missed as i32,
            limit: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    while let Some(facts) = missed.message().await.unwrap() {
        ids.push(facts.conversation_id);
    }
    assert_eq!(ids.len() as u64, current.missed);
    assert!(!ids.is_empty() && ids.len() <= 100, "{} missed", ids.len());
    assert_eq!(drilled.matches("class=\"drill-row\"").count(), ids.len());
    for id in &ids {
        assert!(drilled.contains(&format!("<td>{id}</td>")), "{id} not listed");
    }

    // The SLA clocks at risk now, soonest to breach first, as GetSlaStatus lists them; a
    // conversation of the list opens its facts.
    let status = app
        .metrics()
        .get_sla_status(app.authed(pb::GetSlaStatusRequest {
            query: None,
            at: None,
            limit: 10,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.at_risk.len(), 10, "the simulation leaves clocks running");
    let listed: Vec<&str> = dom
        .match_indices("data-risk=\"")
        .map(|(at, m)| between(&dom[at..], m, "\""))
        .collect();
    let expected: Vec<&str> = status
        .at_risk
        .iter()
        .map(|r| r.conversation_id.as_str())
        .collect();
    assert_eq!(listed, expected);
    let id = &status.at_risk[0].conversation_id;
    let facts = page(&format!("{url}&conversation={id}")).await;
    assert!(facts.contains(&format!("Conversation {id}")), "{facts}");
    assert!(facts.matches("class=\"fact-row\"").count() > 5, "{facts}");

    // The alert rule firing now is listed.
    assert!(
        dom.contains(&format!("data-alert=\"{rule}\"")),
        "alert {rule} not shown"
    );

    // A wrong key is an error the page shows, and it asks for the key again.
    let refused = page(&format!("{base}&key=ck_{}_wrong", app.tenant)).await;
    assert!(refused.contains("data-state=\"error\""), "{refused}");
    assert!(refused.contains("data-code=\"unauthenticated\""), "{refused}");
    assert!(refused.contains("The API key was not accepted"), "{refused}");
    assert!(
        refused.contains("<section id=\"login\" class=\"panel login\">"),
        "the key form is shown"
    );

    // Screenshots at a desktop and a phone width (the README's picture is made this way).
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for (width, height) in [(1280, 1500), (390, 2600)] {
        let file = dir.join(format!("dashboard-{width}.png"));
        let _ = std::fs::remove_file(&file);
        chromium(
            &url,
            &[
                &format!("--window-size={width},{height}"),
                &format!("--screenshot={}", file.display()),
            ],
        )
        .await;
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "screenshot {} has {size} bytes", file.display());
    }
}
