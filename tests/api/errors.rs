//! The error path: garbage request bodies are the client's fault (INVALID_ARGUMENT), a broken
//! database is INTERNAL with its cause in the log only, and concurrent settings updates lose
//! nothing.

use std::time::Duration;

use chatkpi::grpc::pb;
use tonic::{Code, codegen::http::uri::PathAndQuery};

use crate::helpers::{TestApp, pool};

/// Bytes that are not an `Event` where `IngestEventsRequest.events` expects one.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(bytes = "vec", tag = "1")]
    junk: Vec<u8>,
}

fn garbage() -> Garbage {
    Garbage { junk: vec![0xff; 7] }
}

#[tokio::test]
async fn undecodable_request_bodies_are_invalid_arguments() {
    let app = TestApp::spawn().await;
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.unwrap();
    let err = grpc
        .unary::<Garbage, pb::IngestEventsResponse, _>(
            app.authed(garbage()),
            PathAndQuery::from_static("/chatkpi.v1.EventService/IngestEvents"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("request body: failed to decode"),
        "{}",
        err.message()
    );

    // The same inside a stream: the stream ends with INVALID_ARGUMENT.
    grpc.ready().await.unwrap();
    let batches = futures::stream::iter(vec![garbage()]);
    let result = grpc
        .streaming::<_, Garbage, pb::StreamEventsResponse, _>(
            app.authed(batches),
            PathAndQuery::from_static("/chatkpi.v1.EventService/StreamEvents"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let err = match result {
        Err(err) => err,
        Ok(response) => {
            let mut acks = response.into_inner();
            loop {
                match acks.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("a garbage batch was acknowledged"),
                    Err(err) => break err,
                }
            }
        }
    };
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn concurrent_settings_updates_of_different_fields_lose_nothing() {
    let app = TestApp::spawn().await;
    let hours = |holiday: u32| pb::UpdateSettingsRequest {
        sla_policies: None,
        business_hours: Some(pb::BusinessHours {
            time_zone: "Europe/Berlin".into(),
            days: vec![pb::DayHours {
                weekday: 1,
                intervals: vec![pb::OpenInterval {
                    open: "09:00".into(),
                    close: "17:00".into(),
                }],
            }],
            holidays: vec![format!("2026-12-{holiday:02}")],
        }),
        ..Default::default()
    };
    let targets = |seconds: f64| pb::UpdateSettingsRequest {
        sla_policies: None,
        targets: Some(pb::Targets {
            human_frt_seconds: Some(seconds),
            ..Default::default()
        }),
        ..Default::default()
    };
    let rounds = 20;
    let (mut a, mut b) = (app.metrics(), app.metrics());
    let (ra, rb) = tokio::join!(
        async {
            for i in 1..=rounds {
                a.update_settings(app.authed(hours(i))).await.unwrap();
            }
        },
        async {
            for i in 1..=rounds {
                b.update_settings(app.authed(targets(f64::from(i))))
                    .await
                    .unwrap();
            }
        }
    );
    let ((), ()) = (ra, rb);
    let settings = app
        .metrics()
        .get_settings(app.authed(pb::GetSettingsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        settings.business_hours.unwrap().holidays,
        [format!("2026-12-{rounds:02}")]
    );
    assert_eq!(
        settings.targets.unwrap().human_frt_seconds,
        Some(f64::from(rounds))
    );
}

#[tokio::test]
async fn a_broken_schema_is_internal_for_the_client_with_the_cause_in_the_log() {
    // A database of its own, migrated, then broken.
    let base = crate::helpers::database_url();
    let name = format!("chatkpi_broken_{}", std::process::id());
    let url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
    let admin = pool().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("drop database if exists {name}")))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let broken = chatkpi::store::lazy_pool(&url, 2).unwrap();
    chatkpi::store::migrate(&broken).await.unwrap();
    let (_, key) = chatkpi::store::tenants::create_tenant(&broken, "broken")
        .await
        .unwrap();
    sqlx::query("alter table tenant_settings rename to tenant_settings_gone")
        .execute(&broken)
        .await
        .unwrap();
    broken.close().await;

    // The real binary, so its log can be read.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chatkpi"))
        .args([
            "serve",
            "--database-url",
            &url,
            "--listen",
            "127.0.0.1:0",
            "--warmup-days",
            "0",
        ])
        .env("RUST_LOG", "warn,chatkpi=info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut log = Vec::new();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.recv())
            .await
            .expect("the server logs its address")
            .expect("the server is running");
        log.push(line.clone());
        if let Some(addr) = line.split("addr=").nth(1) {
            break addr.trim().to_owned();
        }
    };
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut metrics = pb::metrics_service_client::MetricsServiceClient::new(channel);
    let err = loop {
        match metrics
            .get_settings(crate::helpers::with_key(
                pb::GetSettingsRequest {},
                &key.plaintext,
            ))
            .await
        {
            Err(err) if err.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => break other.unwrap_err(),
        }
    };
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert_eq!(err.message(), "internal error", "no SQL reaches the client");
    let logged = loop {
        match tokio::time::timeout(Duration::from_secs(10), lines.recv()).await {
            Ok(Some(line)) => {
                log.push(line.clone());
                if line.contains("internal error") {
                    break line;
                }
            }
            _ => panic!("no internal error logged:\n{}", log.join("\n")),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        logged.contains("tenant_settings"),
        "the cause is logged: {logged}"
    );
    assert!(!logged.contains("stack backtrace"), "one line: {logged}");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database if exists {name} with (force)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}
