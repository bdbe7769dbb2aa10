//! Code both `maestrod` and `maestroctl` need: the generated `maestro.v1` gRPC
//! types and clients/servers, and the encoded descriptor set for reflection.

/// The `maestro.v1` API, generated from `proto/maestro/v1/`.
pub mod v1 {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    tonic::include_proto!("maestro.v1");
    include!(concat!(env!("OUT_DIR"), "/maestro.v1.serde.rs"));

    /// Encoded `FileDescriptorSet` of the API, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("maestro_descriptor");
}

/// The port `maestrod` listens on by default (on 127.0.0.1).
pub const DEFAULT_PORT: u16 = 7700;

/// The default server address clients connect to.
pub fn default_server() -> String {
    format!("http://127.0.0.1:{DEFAULT_PORT}")
}
