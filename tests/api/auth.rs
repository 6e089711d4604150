//! Every EventService call needs a valid `Bearer` key of its tenant.

use chatkpi::grpc::pb;
use tonic::{Code, Request};

use crate::helpers::{TestApp, with_key};

#[tokio::test]
async fn ingest_without_a_key_is_unauthenticated() {
    let app = TestApp::spawn().await;
    let status = app
        .events()
        .ingest_events(Request::new(pb::IngestEventsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn ingest_with_a_wrong_or_malformed_key_is_unauthenticated() {
    let app = TestApp::spawn().await;
    // Right tenant, wrong secret; unknown tenant; not a key at all; not Bearer.
    let wrong_secret = format!("ck_{}_{}", app.tenant, "0".repeat(64));
    let unknown_tenant = app
        .api_key
        .replacen(&format!("ck_{}_", app.tenant), "ck_999999999_", 1);
    for key in [wrong_secret.as_str(), unknown_tenant.as_str(), "hunter2"] {
        let status = app
            .events()
            .ingest_events(with_key(pb::IngestEventsRequest::default(), key))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "key {key}");
    }
    let mut basic = Request::new(pb::IngestEventsRequest::default());
    basic
        .metadata_mut()
        .insert("authorization", format!("Basic {}", app.api_key).parse().unwrap());
    assert_eq!(
        app.events().ingest_events(basic).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn a_valid_key_is_accepted_and_streams_need_one_too() {
    let app = TestApp::spawn().await;
    let response = app
        .events()
        .ingest_events(app.authed(pb::IngestEventsRequest::default()))
        .await
        .unwrap();
    assert!(response.into_inner().results.is_empty());
    let status = app
        .events()
        .stream_events(Request::new(tokio_stream::iter(
            Vec::<pb::StreamEventsRequest>::new(),
        )))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}
