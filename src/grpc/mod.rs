//! gRPC adapters: generated code, the services (proto <-> domain only), auth and status mapping.

pub mod admin;
pub mod auth;
pub mod convert;
pub mod events;
pub mod metrics;
pub mod status;

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures::Stream;

/// A response stream that holds `guard` (an open-stream slot of the tenant's limits) for as
/// long as the stream is open.
pub(crate) struct Holding<S, G> {
    stream: Pin<Box<S>>,
    _guard: G,
}

impl<S, G> Holding<S, G> {
    pub fn new(stream: S, guard: G) -> Self {
        Self {
            stream: Box::pin(stream),
            _guard: guard,
        }
    }
}

impl<S: Stream, G: Unpin> Stream for Holding<S, G> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.get_mut().stream.as_mut().poll_next(cx)
    }
}

/// Code generated from `proto/chatkpi/v1` (prost messages, tonic services, pbjson serde).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("chatkpi.v1");
    include!(concat!(env!("OUT_DIR"), "/chatkpi.v1.serde.rs"));

    /// The file descriptor set served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chatkpi_descriptor");
}
