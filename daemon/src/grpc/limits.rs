//! Message size limits as gRPC reports them. tonic refuses a request over the server's
//! `max_decoding_message_size` with OUT_OF_RANGE; gRPC's code for "over a limit" is
//! RESOURCE_EXHAUSTED, which is what a client (and its retry policy) expects. The refusal is a
//! trailers-only response carrying the `Status` in its extensions, so a response map rewrites it.

use tonic::codegen::http;
use tonic::{Code, Status};

/// tonic's message for a request over `max_decoding_message_size` (tonic 0.14, codec/decode.rs).
const DECODE_LIMIT_MESSAGE: &str = "Error, decoded message length too large";

/// Turns tonic's OUT_OF_RANGE for an over-limit request into RESOURCE_EXHAUSTED, naming the
/// sizes; every other response passes unchanged.
pub fn over_limit_is_resource_exhausted(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let Some(status) = response.extensions().get::<Status>() else {
        return response;
    };
    if status.code() != Code::OutOfRange || !status.message().starts_with(DECODE_LIMIT_MESSAGE) {
        return response;
    }
    // "…: found N bytes, the limit is: M bytes" → "request of N bytes is over the limit of M bytes"
    let numbers: Vec<&str> = status
        .message()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .collect();
    let message = match numbers.as_slice() {
        [found, limit] => format!(
            "request of {found} bytes is over this listener's message limit of {limit} bytes"
        ),
        _ => "request is over this listener's message limit".to_owned(),
    };
    let replacement = Status::resource_exhausted(message);
    let headers = response.headers_mut();
    headers.remove(Status::GRPC_STATUS);
    headers.remove(Status::GRPC_MESSAGE);
    if replacement.add_header(headers).is_ok() {
        response.extensions_mut().insert(replacement);
    }
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn rewritten(status: Status) -> (String, String) {
        let response = over_limit_is_resource_exhausted(status.into_http());
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        (header("grpc-status"), header("grpc-message"))
    }

    #[test]
    fn an_over_limit_request_becomes_resource_exhausted() {
        let (code, message) = rewritten(Status::out_of_range(
            "Error, decoded message length too large: found 70012 bytes, the limit is: 65536 bytes",
        ));
        assert_eq!(code, (Code::ResourceExhausted as i32).to_string());
        assert_eq!(
            message,
            "request%20of%2070012%20bytes%20is%20over%20this%20listener's%20message%20limit%20of%2065536%20bytes"
        );
    }

    #[test]
    fn other_statuses_pass_unchanged() {
        for status in [
            Status::out_of_range("cursor out of range"),
            Status::resource_exhausted("PIN entry locked"),
            Status::invalid_argument("Error, decoded message length too large"),
        ] {
            let code = (status.code() as i32).to_string();
            assert_eq!(rewritten(status).0, code);
        }
    }
}
