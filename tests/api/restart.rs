//! A restarted server: before it reports SERVING it asks again the dashboard questions asked of
//! the one before it, so their totals are kept when the first dashboard asks.

use std::time::Duration;

use chatkpi::{
    app::kpis::{KpiService, QueryCache},
    domain::{
        Error,
        calendar::Granularity,
        event::*,
        kpi::{Kpis, Targets},
        query::{Asked, AskedKind, Query, Window},
        settings::SettingsUpdate,
        tenant::TenantId,
    },
    engine::{
        kpi::Dimension,
        schedule::Scheduler,
        source::{Snapshot, SnapshotPart, Source, SourceReads},
    },
    grpc::{convert::chrono_to_timestamp, pb},
    store::{self, segments::PgSource},
};
use chrono::NaiveDate;
use sqlx::PgPool;

use crate::helpers::{TestApp, ev, msg, pool, t};

/// Two conversations of one customer, answered and resolved by ann.
fn fixture() -> Vec<Event> {
    [converting("r1", "C", 0, None), converting("r2", "C", 3_600, None)].concat()
}

fn query() -> pb::Query {
    pb::Query {
        from: Some(chrono_to_timestamp(t(-86_400))),
        to: Some(chrono_to_timestamp(t(86_400))),
        ..Default::default()
    }
}

/// Waits (up to 10 s) until `sql`, counting rows of `tenant`, counts at least `at_least`.
async fn wait_for_rows(pool: &PgPool, sql: &'static str, tenant: TenantId, at_least: i64) {
    for _ in 0..100 {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(tenant.0)
            .fetch_one(pool)
            .await
            .unwrap();
        if n >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{sql} never counted {at_least} rows of tenant {}", tenant.0);
}

/// The KPI use case of a freshly started process on the test database: an empty cache.
fn restarted(pool: &PgPool) -> KpiService {
    KpiService::new(
        pool.clone(),
        QueryCache::new(PgSource(pool.clone()), 256 << 20, Duration::from_secs(20)),
        std::sync::Arc::new(Scheduler::new().unwrap()),
    )
}

const SNAPSHOTS: &str = "select count(*) from segments where tenant_id = $1";
const QUESTIONS: &str = "select count(*) from asked_questions where tenant_id = $1";

#[tokio::test]
async fn a_restarted_server_keeps_the_totals_of_the_questions_asked_before_it_before_it_serves() {
    // `asking` asks the dashboard's overview; `quiet` has the same data and is read only by a
    // scorecard (not a dashboard question that is noted).
    let asking = TestApp::spawn().await;
    let quiet = TestApp::spawn().await;
    for app in [&asking, &quiet] {
        app.ingest(&fixture()).await.unwrap();
    }
    let before = asking
        .metrics()
        .get_overview(asking.authed(pb::GetOverviewRequest {
            query: Some(query()),
            compare_previous: false,
        }))
        .await
        .unwrap()
        .into_inner();
    quiet
        .metrics()
        .get_scorecard(quiet.authed(pb::GetScorecardRequest { query: Some(query()) }))
        .await
        .unwrap();
    wait_for_rows(&asking.pool, QUESTIONS, asking.tenant, 1).await;
    for app in [&asking, &quiet] {
        wait_for_rows(&app.pool, SNAPSHOTS, app.tenant, 1).await;
    }

    let kpis = restarted(&asking.pool);
    kpis.warm_up(35, Duration::from_secs(30)).await;
    assert!(kpis.cache().kept_totals(asking.tenant).await > 0);
    assert_eq!(kpis.cache().kept_totals(quiet.tenant).await, 0);
    assert_eq!(before.current.unwrap().conversations, 2);
}

#[tokio::test]
async fn a_tenant_keeps_its_eight_most_recently_asked_questions_newest_first() {
    let pool = pool().await;
    let (tenant, _) = store::tenants::create_tenant(&pool, "questions").await.unwrap();
    let window = Window::new(t(0), t(86_400)).unwrap();
    let zones = [
        "UTC",
        "Europe/Berlin",
        "Europe/Paris",
        "America/New_York",
        "Asia/Tokyo",
    ];
    let mut asked = Vec::new();
    for zone in zones {
        for compare_previous in [false, true] {
            let mut query = Query::new(window);
            query.time_zone = zone.parse().unwrap();
            asked.push((zone, compare_previous));
            let kind = AskedKind::Overview { compare_previous };
            store::questions::note(&pool, tenant, &Asked { query, kind })
                .await
                .unwrap();
        }
    }
    // Asking the first shape again makes it the newest, and moves no other.
    let mut query = Query::new(window);
    query.time_zone = chrono_tz::UTC;
    let kind = AskedKind::Overview {
        compare_previous: false,
    };
    store::questions::note(&pool, tenant, &Asked { query, kind })
        .await
        .unwrap();
    asked.remove(0);
    asked.push(("UTC", false));

    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let recent = store::questions::recent(&pool, tenant, since).await.unwrap();
    let got: Vec<(String, bool)> = recent
        .iter()
        .map(|a| match a.kind {
            AskedKind::Overview { compare_previous } => {
                (a.query.time_zone.name().to_owned(), compare_previous)
            }
            other => panic!("only overviews were asked, got {other:?}"),
        })
        .collect();
    let newest_eight: Vec<(String, bool)> = asked
        .iter()
        .rev()
        .take(8)
        .map(|(z, c)| ((*z).to_owned(), *c))
        .collect();
    assert_eq!(got, newest_eight);
    let stored: i64 = sqlx::query_scalar(QUESTIONS)
        .bind(tenant.0)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 8);
}

fn snapshot_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, 5).unwrap()
}

/// Writes a snapshot of `snapshot_day()` built at `built_xmin` from `parts`, sent as the cache's
/// encoder sends them; the last is marked last only when `finished`.
async fn save_parts(
    pool: &PgPool,
    tenant: TenantId,
    built_xmin: i64,
    parts: &[&[u8]],
    finished: bool,
) -> Result<(), Error> {
    let (tx, rx) = tokio::sync::mpsc::channel(parts.len() + 1);
    for (i, bytes) in parts.iter().enumerate() {
        let last = finished && i + 1 == parts.len();
        tx.send(SnapshotPart {
            bytes: bytes.to_vec(),
            last,
        })
        .await
        .unwrap();
    }
    drop(tx);
    let snapshot = Snapshot {
        day: snapshot_day(),
        built_xmin,
        erasures: 0,
    };
    PgSource(pool.clone()).save_snapshot(tenant, &snapshot, rx).await
}

/// The stored snapshot of `snapshot_day()`: its xmin and body, as a loading replica reads it.
async fn stored_snapshot(pool: &PgPool, tenant: TenantId) -> Option<(i64, Vec<u8>)> {
    let mut reads = PgSource(pool.clone()).begin().await.unwrap();
    let stored = reads.snapshots(tenant, &[snapshot_day()]).await.unwrap().pop();
    reads.finish().await.unwrap();
    stored.map(|s| (s.built_xmin, s.body))
}

#[tokio::test]
async fn a_snapshot_stored_in_parts_is_read_back_as_their_bytes_in_order() {
    let app = TestApp::spawn().await;
    save_parts(&app.pool, app.tenant, 10, &[b"abc", b"de", b"f"], true)
        .await
        .unwrap();
    assert_eq!(
        stored_snapshot(&app.pool, app.tenant).await,
        Some((10, b"abcdef".to_vec()))
    );
}

#[tokio::test]
async fn a_snapshot_whose_last_part_never_came_leaves_the_stored_one() {
    let app = TestApp::spawn().await;
    save_parts(&app.pool, app.tenant, 10, &[b"abc", b"def"], true)
        .await
        .unwrap();
    assert!(
        save_parts(&app.pool, app.tenant, 20, &[b"xyz"], false)
            .await
            .is_err()
    );
    assert_eq!(
        stored_snapshot(&app.pool, app.tenant).await,
        Some((10, b"abcdef".to_vec()))
    );
}

#[tokio::test]
async fn a_snapshot_built_before_the_stored_one_does_not_replace_it() {
    let app = TestApp::spawn().await;
    save_parts(&app.pool, app.tenant, 20, &[b"new"], true)
        .await
        .unwrap();
    save_parts(&app.pool, app.tenant, 10, &[b"old", b"er"], true)
        .await
        .unwrap();
    assert_eq!(
        stored_snapshot(&app.pool, app.tenant).await,
        Some((20, b"new".to_vec()))
    );
}

/// Seven conversations of one day (one customer each, answered and resolved by ann), and a
/// second message in three of them written later (changes after a snapshot).
fn one_day(later: bool) -> Vec<Event> {
    let mut events = Vec::new();
    for n in 0..7 {
        let (conv, at) = (format!("d{n}"), 600 * n);
        let customer = format!("C{n}");
        if later {
            if n % 2 == 0 {
                events.push(msg(
                    &format!("{conv}-m2"),
                    &conv,
                    at + 400,
                    Sender::Agent,
                    Some("ann"),
                ));
            }
            continue;
        }
        events.push(ev(
            &format!("{conv}-o"),
            Some(&conv),
            at,
            Payload::ConversationOpened(ConversationOpened {
                customer_id: customer,
                channel: Channel::Email,
                inbox: None,
                team: None,
                priority: None,
                initiated_by: Initiator::Customer,
            }),
        ));
        events.push(msg(
            &format!("{conv}-m"),
            &conv,
            at + 20 * (n + 1),
            Sender::Agent,
            Some("ann"),
        ));
    }
    events
}

/// The overview of `query` from a freshly started process, and from one that loads days two
/// records at a time.
async fn overview_whole_and_in_batches(app: &TestApp, query: &Query) -> (Kpis, Kpis) {
    let whole = restarted(&app.pool)
        .overview(app.tenant, query, false)
        .await
        .unwrap();
    let in_batches = restarted(&app.pool);
    in_batches.cache().load_in_batches_of(2);
    let batched = in_batches.overview(app.tenant, query, false).await.unwrap();
    (whole.0, batched.0)
}

#[tokio::test]
async fn a_day_loaded_two_records_at_a_time_answers_as_one_loaded_at_once() {
    let app = TestApp::spawn().await;
    app.ingest(&one_day(false)).await.unwrap();
    let query = Query::new(Window::new(t(-86_400), t(86_400)).unwrap());
    // From the records alone, then (after a snapshot is stored) from the snapshot and the
    // records changed since it.
    let (whole, in_batches) = overview_whole_and_in_batches(&app, &query).await;
    assert_eq!((in_batches, whole.conversations), (whole, 7));
    wait_for_rows(&app.pool, SNAPSHOTS, app.tenant, 1).await;
    app.ingest(&one_day(true)).await.unwrap();
    let (whole, in_batches) = overview_whole_and_in_batches(&app, &query).await;
    assert_eq!((in_batches, whole.messages_sent), (whole, 11));
}

const TOTALS: &str = "select count(*) from kept_totals where tenant_id = $1";
const SIDE: &str = "select count(*) from side_snapshots where tenant_id = $1";

/// A conversation of `customer` opened at `t(at)`, answered and resolved by ann; with a
/// conversion of `value` cents (EUR) 100 s after it opened when `value` is given.
fn converting(conv: &str, customer: &str, at: i64, value: Option<i64>) -> Vec<Event> {
    let mut events = vec![
        ev(
            &format!("{conv}-o"),
            Some(conv),
            at,
            Payload::ConversationOpened(ConversationOpened {
                customer_id: customer.into(),
                channel: Channel::Webchat,
                inbox: None,
                team: None,
                priority: None,
                initiated_by: Initiator::Customer,
            }),
        ),
        ev(
            &format!("{conv}-m"),
            Some(conv),
            at + 30,
            Payload::Message(Message {
                message_id: format!("{conv}-m"),
                sender: Sender::Agent,
                agent_id: Some("ann".into()),
                private: false,
            }),
        ),
        ev(
            &format!("{conv}-r"),
            Some(conv),
            at + 60,
            Payload::Resolved(Resolved {
                by: ResolvedBy::Agent,
                agent_id: Some("ann".into()),
            }),
        ),
    ];
    if let Some(value) = value {
        events.push(conversion(&format!("{conv}-c"), customer, at + 100, value));
    }
    events
}

fn conversion(id: &str, customer: &str, at: i64, value: i64) -> Event {
    ev(
        id,
        None,
        at,
        Payload::Conversion(Conversion {
            customer_id: customer.into(),
            kind: "purchase".into(),
            value_minor: Some(value),
            currency: Some("EUR".into()),
        }),
    )
}

/// Three days: customer A on the first and (a repeat contact) the second, B converting on the
/// second, C on the third.
fn three_days() -> Vec<Event> {
    [
        converting("d1", "A", 0, Some(500)),
        converting("d2a", "A", 86_400, None),
        converting("d2b", "B", 86_400 + 600, Some(7)),
        converting("d3", "C", 2 * 86_400, None),
    ]
    .concat()
}

fn three_day_window() -> Query {
    Query::new(Window::new(t(-86_400), t(4 * 86_400)).unwrap())
}

/// A tenant holding [`three_days`], and the window over them.
async fn three_days_stored() -> (TestApp, Query) {
    let app = TestApp::spawn().await;
    app.ingest(&three_days()).await.unwrap();
    (app, three_day_window())
}

/// The overview of `query` asked twice of a fresh process (the second call persists the totals
/// the first kept, if the snapshots were written before them), once the tenant's kept totals
/// are stored.
async fn asked_and_persisted(app: &TestApp, query: &Query) -> Kpis {
    let process = restarted(&app.pool);
    let first = process.overview(app.tenant, query, false).await.unwrap().0;
    wait_for_rows(&app.pool, SNAPSHOTS, app.tenant, 3).await;
    wait_for_rows(&app.pool, SIDE, app.tenant, 1).await;
    process.overview(app.tenant, query, false).await.unwrap();
    wait_for_rows(&app.pool, TOTALS, app.tenant, 3).await;
    first
}

#[tokio::test]
async fn a_restarted_server_reads_back_the_kept_totals_of_its_settled_days_and_answers_the_same() {
    let (app, query) = three_days_stored().await;
    let before = asked_and_persisted(&app, &query).await;
    assert_eq!(
        (before.conversations, before.conversion.revenue.clone()),
        (4, vec![("EUR".to_owned(), 507)])
    );

    // Loading the days (no question asked) restores the totals of the three days.
    let next = restarted(&app.pool);
    next.cache().warm_up(35, Duration::from_secs(30)).await;
    assert_eq!(next.cache().kept_totals(app.tenant).await, 3);
    let after = next.overview(app.tenant, &query, false).await.unwrap().0;
    assert_eq!(after, before);
}

/// The overview of `query` computed from the tenant's rows by a fresh process (no kept totals,
/// no kept answer): the reference the restored totals must agree with.
async fn from_rows(app: &TestApp, query: &Query) -> Kpis {
    sqlx::query("delete from kept_answers where tenant_id = $1")
        .bind(app.tenant.0)
        .execute(&app.pool)
        .await
        .unwrap();
    computed_again_from_rows(app, query).await
}

/// A tenant holding [`three_days`] and `more`, the totals of its overview persisted by a process,
/// then `since` stored: the app, the window and that overview.
async fn persisted_then_written(more: Vec<Event>, since: &[Event]) -> (TestApp, Query, Kpis) {
    let app = TestApp::spawn().await;
    let query = three_day_window();
    app.ingest(&[three_days(), more].concat()).await.unwrap();
    let before = asked_and_persisted(&app, &query).await;
    app.ingest(since).await.unwrap();
    (app, query, before)
}

/// A restarted process that loaded the tenant's days (reading back what totals hold): how many
/// totals it holds, and its overview of `query`.
async fn restarted_overview(app: &TestApp, query: &Query) -> (usize, Kpis) {
    let next = restarted(&app.pool);
    next.cache().warm_up(35, Duration::from_secs(30)).await;
    let restored = next.cache().kept_totals(app.tenant).await;
    (restored, next.overview(app.tenant, query, false).await.unwrap().0)
}

#[tokio::test]
async fn kept_totals_of_the_days_a_write_left_alone_are_read_back_and_answer_as_the_rows() {
    // C comes back on the second day: the second day's snapshot is stale; the first day's
    // totals read the second day's openings, but only A's, which did not change.
    let since = converting("d2c", "C", 86_400 + 1_200, None);
    let (app, query, _) = persisted_then_written(Vec::new(), &since).await;

    let (restored, after) = restarted_overview(&app, &query).await;
    assert_eq!(restored, 2, "the first and third days' totals hold");
    assert_eq!(after, from_rows(&app, &query).await);
    assert_eq!(after.conversations, 5);
}

#[tokio::test]
async fn a_restored_total_whose_customer_came_back_since_is_computed_again() {
    // D's conversation on the first day is no repeat contact when the totals are persisted; D
    // comes back on the second day: the first day's persisted totals, which read the second
    // day's openings, judged D's conversation otherwise.
    let d = converting("d1d", "D", 1_000, None);
    let since = converting("d2d", "D", 86_400 + 2_000, None);
    let (app, query, before) = persisted_then_written(d, &since).await;

    let (restored, after) = restarted_overview(&app, &query).await;
    assert_eq!(restored, 2, "the first and third days' totals are read back");
    assert_eq!(after, from_rows(&app, &query).await);
    assert_ne!(after.repeat_contact_rate, before.repeat_contact_rate);
}

#[tokio::test]
async fn a_restored_total_that_attributes_a_conversion_stored_since_is_computed_again() {
    // A converts again after everything: attributed to A's conversation of the second day.
    let since = [conversion("a-c2", "A", 2 * 86_400 + 5_000, 40)];
    let (app, query, _) = persisted_then_written(Vec::new(), &since).await;

    let (restored, after) = restarted_overview(&app, &query).await;
    assert_eq!(
        restored, 3,
        "no conversation changed: every day's totals are read back"
    );
    assert_eq!(after, from_rows(&app, &query).await);
    assert_eq!(after.conversion.revenue, vec![("EUR".to_owned(), 547)]);
}

#[tokio::test]
async fn restored_totals_attribute_the_same_conversions_after_one_dated_before_them_was_stored() {
    // Z, who opened no conversation, converts before everyone: every later conversion's place
    // in the time-sorted list moves by one.
    let since = [conversion("z-c", "Z", -3_600, 100_000)];
    let (app, query, _) = persisted_then_written(Vec::new(), &since).await;

    let (restored, after) = restarted_overview(&app, &query).await;
    assert_eq!(
        restored, 3,
        "no conversation changed: every day's totals are read back"
    );
    assert_eq!(after, from_rows(&app, &query).await);
    assert_eq!(after.conversion.revenue, vec![("EUR".to_owned(), 507)]);
}

/// The overview of `query` asked of a fresh process once the tenant's persisted totals were
/// deleted: it computes every day from rows and persists what it may.
async fn computed_again_from_rows(app: &TestApp, query: &Query) -> Kpis {
    sqlx::query("delete from kept_totals where tenant_id = $1")
        .bind(app.tenant.0)
        .execute(&app.pool)
        .await
        .unwrap();
    restarted(&app.pool)
        .overview(app.tenant, query, false)
        .await
        .unwrap()
        .0
}

/// The UTC day of `t(0)` plus `n` days.
fn day(n: i64) -> NaiveDate {
    (t(0) + chrono::Duration::days(n)).date_naive()
}

/// The days of the tenant's persisted totals.
async fn persisted_days(app: &TestApp) -> Vec<NaiveDate> {
    sqlx::query_scalar("select distinct segment_day from kept_totals where tenant_id = $1 order by 1")
        .bind(app.tenant.0)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn totals_computed_while_a_day_they_read_had_drifted_are_persisted_on_its_snapshot() {
    // E, new, writes into the third day, which the first two days' repeat-contact checks read:
    // it is no longer held as its snapshot (one row of a thousand: not written again).
    let since = converting("d3e", "E", 2 * 86_400 + 1_500, None);
    let (app, query, _) = persisted_then_written(Vec::new(), &since).await;
    computed_again_from_rows(&app, &query).await;

    wait_for_rows(&app.pool, TOTALS, app.tenant, 2).await;
    assert_eq!(persisted_days(&app).await, vec![day(0), day(1)]);
    let (restored, after) = restarted_overview(&app, &query).await;
    assert_eq!(restored, 2);
    assert_eq!(after, from_rows(&app, &query).await);
}

#[tokio::test]
async fn totals_computed_after_a_conversion_moved_the_places_are_not_persisted_on_the_older_list() {
    // Z converts before everyone; a process computes the days again with Z first in its list
    // (its totals name B's conversion as the third, the side snapshot as the second).
    let since = [conversion("z-c", "Z", -3_600, 100_000)];
    let (app, query, _) = persisted_then_written(Vec::new(), &since).await;
    computed_again_from_rows(&app, &query).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (_, after) = restarted_overview(&app, &query).await;
    assert_eq!(after, from_rows(&app, &query).await);
    assert_eq!(after.conversion.revenue, vec![("EUR".to_owned(), 507)]);
}

#[tokio::test]
async fn a_conversion_dated_before_those_held_leaves_kept_revenue_right() {
    let (app, query) = three_days_stored().await;
    let process = restarted(&app.pool);
    let before = process.overview(app.tenant, &query, false).await.unwrap().0;
    assert_eq!(before.conversion.revenue, vec![("EUR".to_owned(), 507)]);
    // Z, who opened no conversation, converts before everyone: it is attributed to nobody.
    app.ingest(&[conversion("z-c", "Z", -3_600, 100_000)])
        .await
        .unwrap();
    let after = process.overview(app.tenant, &query, false).await.unwrap().0;
    assert_eq!(after.conversion.revenue, vec![("EUR".to_owned(), 507)]);
    assert_eq!(after.conversion.conversions, 2);
}

// Kept answers (docs/metrics.md §9, "Kept answers"): a process that does not hold the tenant
// answers a question asked before from the answer kept, while nothing it read changed.

const ANSWERS: &str = "select count(*) from kept_answers where tenant_id = $1";

/// The overview of `query` computed by a fresh process, once its answer is kept.
async fn asked_and_kept(app: &TestApp, query: &Query) -> Kpis {
    let answer = restarted(&app.pool)
        .overview(app.tenant, query, false)
        .await
        .unwrap()
        .0;
    wait_for_rows(&app.pool, ANSWERS, app.tenant, 1).await;
    answer
}

#[tokio::test]
async fn a_restarted_server_answers_the_dashboard_questions_asked_before_without_loading_a_day() {
    let (app, query) = three_days_stored().await;
    let first = restarted(&app.pool);
    let overview = first.overview(app.tenant, &query, true).await.unwrap();
    let agents = first
        .breakdown(app.tenant, &query, Dimension::Agent, 10)
        .await
        .unwrap();
    let days = first
        .time_series(app.tenant, &query, Granularity::Day)
        .await
        .unwrap();
    wait_for_rows(&app.pool, ANSWERS, app.tenant, 3).await;

    let next = restarted(&app.pool);
    assert_eq!(next.overview(app.tenant, &query, true).await.unwrap(), overview);
    assert_eq!(
        next.breakdown(app.tenant, &query, Dimension::Agent, 10)
            .await
            .unwrap(),
        agents
    );
    assert_eq!(
        next.time_series(app.tenant, &query, Granularity::Day)
            .await
            .unwrap(),
        days
    );
    assert_eq!(next.cache().bytes(), 0, "no day loaded");
    assert_eq!((overview.0.conversations, agents.1, days.len()), (4, 1, 6));
}

#[tokio::test]
async fn a_kept_answer_is_not_read_back_for_another_window() {
    let (app, query) = three_days_stored().await;
    asked_and_kept(&app, &query).await;
    let next = restarted(&app.pool);
    let first_day = Query::new(Window::new(t(-86_400), t(86_400)).unwrap());
    let answer = next.overview(app.tenant, &first_day, false).await.unwrap().0;
    assert_eq!(answer.conversations, 1);
    assert!(next.cache().bytes() > 0);
}

#[tokio::test]
async fn a_kept_answer_is_not_read_back_once_a_conversation_changed_since() {
    let (app, query) = three_days_stored().await;
    asked_and_kept(&app, &query).await;
    app.ingest(&converting("d3b", "D", 2 * 86_400 + 600, None))
        .await
        .unwrap();
    let answer = restarted(&app.pool)
        .overview(app.tenant, &query, false)
        .await
        .unwrap()
        .0;
    assert_eq!(answer.conversations, 5);
}

#[tokio::test]
async fn a_kept_answer_is_not_read_back_once_a_conversion_was_stored_since() {
    let (app, query) = three_days_stored().await;
    asked_and_kept(&app, &query).await;
    // C converts after its conversation on the third day: attributed to it (no record changes).
    app.ingest(&[conversion("d3-c", "C", 2 * 86_400 + 300, 40)])
        .await
        .unwrap();
    let answer = restarted(&app.pool)
        .overview(app.tenant, &query, false)
        .await
        .unwrap()
        .0;
    assert_eq!(answer.conversion.revenue, vec![("EUR".to_owned(), 547)]);
}

#[tokio::test]
async fn a_kept_answer_is_not_read_back_under_other_settings() {
    let (app, query) = three_days_stored().await;
    let before = asked_and_kept(&app, &query).await;
    assert_eq!(before.resolution.within_target, Some(100.0));
    // Every conversation was resolved 60 s after it opened: none within a 10 s target.
    let targets = Targets {
        resolution_seconds: 10.0,
        ..Targets::default()
    };
    let update = SettingsUpdate {
        targets: Some(targets),
        ..SettingsUpdate::default()
    };
    store::settings::update(&app.pool, app.tenant, update)
        .await
        .unwrap();
    let answer = restarted(&app.pool)
        .overview(app.tenant, &query, false)
        .await
        .unwrap()
        .0;
    assert_eq!(answer.resolution.within_target, Some(0.0));
}

#[tokio::test]
async fn an_erasure_deletes_the_kept_answers_of_the_tenant() {
    let (app, query) = three_days_stored().await;
    asked_and_kept(&app, &query).await;
    store::tenants::erase_customer(&app.pool, app.tenant, "A")
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar(ANSWERS)
        .bind(app.tenant.0)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let answer = restarted(&app.pool)
        .overview(app.tenant, &query, false)
        .await
        .unwrap()
        .0;
    assert_eq!(answer.conversations, 2);
}
