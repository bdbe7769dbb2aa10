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

pub mod settings;

/// The usual TCP port of a shared `maestrod` (`--listen 127.0.0.1:7700`).
pub const DEFAULT_PORT: u16 = 7700;

/// The Unix socket of a user's own daemon, under `home`: where `maestrod`
/// listens by default and where `maestroctl` looks for (and starts) it.
pub fn local_socket(home: &std::path::Path) -> std::path::PathBuf {
    home.join(".maestro").join("maestrod.sock")
}

/// A connection that sends a bearer token with every call: what clients of an
/// authenticating daemon use in place of a bare `Channel`.
pub type Conn = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to each request (nothing when the token is empty).
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// A token that is not valid header text is refused here, with a message that says so.
    pub fn new(token: &str) -> Result<Bearer, String> {
        let token = token.trim();
        if token.is_empty() {
            return Ok(Bearer(None));
        }
        format!("Bearer {token}")
            .parse()
            .map(|value| Bearer(Some(value)))
            .map_err(|_| "the token holds characters a header cannot carry; check MAESTRO_TOKEN or --token".into())
    }

    /// `channel`, sending this token.
    pub fn connect(self, channel: tonic::transport::Channel) -> Conn {
        tonic::service::interceptor::InterceptedService::new(channel, self)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The canonical name of a status code, as gRPC documents it.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
