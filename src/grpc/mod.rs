//! gRPC adapters: generated code, the services (proto <-> domain only), auth and status mapping.

pub mod auth;
pub mod convert;
pub mod events;
pub mod metrics;
pub mod status;

/// Code generated from `proto/chatkpi/v1` (prost messages, tonic services, pbjson serde).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("chatkpi.v1");
    include!(concat!(env!("OUT_DIR"), "/chatkpi.v1.serde.rs"));

    /// The file descriptor set served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chatkpi_descriptor");
}
