//! Generated gRPC types for tillgate's protocol, package `tillgate.v1`.
#![allow(missing_docs, clippy::derive_partial_eq_without_eq)]

pub mod v1 {
    tonic::include_proto!("tillgate.v1");

    /// Encoded `FileDescriptorSet` of the tillgate.v1 protos, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tillgate_descriptor");
}
