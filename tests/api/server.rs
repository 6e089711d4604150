//! Health, reflection, readiness without a database, and graceful shutdown.

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1alpha::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::helpers::TestApp;

#[tokio::test]
async fn health_is_open_and_serving_once_migrated() {
    let app = TestApp::spawn().await;
    let mut client = HealthClient::new(app.channel.clone());
    let status = client
        .check(HealthCheckRequest {
            service: "chatkpi.v1.EventService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_services_for_grpcurl() {
    let app = TestApp::spawn().await;
    let mut client = ServerReflectionClient::new(app.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in ["chatkpi.v1.EventService", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn without_a_reachable_database_health_is_not_serving_and_ingest_is_unavailable() {
    // Port 1 on loopback: nothing listens there.
    let app = TestApp::spawn_unready("postgres://postgres@127.0.0.1:1/nothing").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.health().await, ServingStatus::NotServing);
    let status = app.ingest_proto(vec![]).await.unwrap_err();
    // The key cannot be checked without the database: the client is told to retry.
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn shutdown_finishes_within_the_grace_period_even_with_an_open_watch_stream() {
    let app = TestApp::spawn_with(crate::helpers::Options {
        grace_secs: 1,
        ..Default::default()
    })
    .await;
    let mut client = HealthClient::new(app.channel.clone());
    let mut watch = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    let started = Instant::now();
    app.shutdown().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
}
