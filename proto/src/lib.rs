//! poolplane's protobuf API: the generated `poolplane.v1` messages, clients and
//! servers, and the encoded descriptor set that server reflection serves.

/// Package `poolplane.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("poolplane.v1");
}

/// The encoded `FileDescriptorSet` of every file of `poolplane.v1` (with imports), for
/// `tonic_reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/poolplane_descriptor.bin"));
