//! The HTTP side shared by the wire formats: one client with timeouts, and
//! retries with exponential backoff on 429 and 5xx that honour `Retry-After`.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Client, StatusCode};
use tracing::warn;

use super::LlmError;

/// Retry and timeout settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (the first one included).
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            request_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

pub fn client(policy: &RetryPolicy) -> Client {
    Client::builder()
        .timeout(policy.request_timeout)
        .connect_timeout(policy.connect_timeout)
        .build()
        .expect("a client with timeouts only cannot fail to build")
}

/// `Retry-After` as seconds (HTTP dates are rare from these APIs and ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<f64>().ok().filter(|s| *s >= 0.0).map(Duration::from_secs_f64)
}

fn retryable(status: StatusCode) -> bool {
    // 529 is Anthropic's "overloaded".
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() || status.as_u16() == 529
}

/// A response that arrived (any status) with its body.
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
}

/// Sends the request made by `make`, retrying as the policy says. Returns the
/// first non-retryable reply; errors when retries run out or the server is unreachable.
pub async fn send(
    provider: &str,
    url: &str,
    policy: &RetryPolicy,
    on_retry: Option<&(dyn Fn(&str) + Send + Sync)>,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Result<Reply, LlmError> {
    let mut attempt = 0;
    let mut timeouts = 0;
    let mut last_body: Option<String> = None;
    loop {
        attempt += 1;
        let last = attempt >= policy.attempts;
        let wait = match make().send().await {
            Ok(response) => {
                let status = response.status();
                let after = retry_after(response.headers());
                let body = response.text().await.unwrap_or_default();
                // A server error that says the same thing twice is not transient (a request it
                // cannot handle): stop asking.
                let repeated = status.is_server_error() && last_body.as_deref() == Some(body.as_str());
                if !retryable(status) || last || repeated {
                    if retryable(status) {
                        return Err(if status == StatusCode::TOO_MANY_REQUESTS {
                            LlmError::RateLimited {
                                provider: provider.into(),
                                attempts: attempt,
                                detail: error_message(&body),
                            }
                        } else {
                            LlmError::Server {
                                provider: provider.into(),
                                status: status.as_u16(),
                                attempts: attempt,
                                detail: excerpt(&body),
                            }
                        });
                    }
                    return Ok(Reply { status, body });
                }
                warn!(provider, %status, attempt, "model server asked to retry");
                if let Some(notify) = on_retry {
                    notify(&format!(
                        "model retry {}/{} after {}: {}",
                        attempt + 1,
                        policy.attempts,
                        status.as_u16(),
                        excerpt_line(&error_message(&body))
                    ));
                }
                last_body = Some(body);
                after.unwrap_or_else(|| backoff(policy, attempt))
            }
            Err(error) => {
                let detail = if error.is_timeout() {
                    format!("no answer within {} s (llm.timeout_seconds)", policy.request_timeout.as_secs())
                } else {
                    error.to_string()
                };
                // A server that stalls once usually stalls again: one more try at most.
                let timed_out_before = error.is_timeout() && timeouts > 0;
                timeouts += u32::from(error.is_timeout());
                if last || timed_out_before || !(error.is_connect() || error.is_timeout() || error.is_request()) {
                    return Err(LlmError::Unreachable { provider: provider.into(), url: url.into(), detail });
                }
                warn!(provider, %detail, attempt, "model server unreachable; retrying");
                if let Some(notify) = on_retry {
                    notify(&format!(
                        "model retry {}/{} after: {}",
                        attempt + 1,
                        policy.attempts,
                        excerpt_line(&detail)
                    ));
                }
                backoff(policy, attempt)
            }
        };
        tokio::time::sleep(wait.min(policy.max_delay)).await;
    }
}

fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    policy.base_delay.saturating_mul(1 << (attempt - 1).min(16)).min(policy.max_delay)
}

/// The start of a body, for error messages.
pub fn excerpt(body: &str) -> String {
    let trimmed: String = body.trim().chars().take(300).collect();
    if trimmed.is_empty() { "no details".into() } else { trimmed }
}

/// The message of a provider's JSON error body, else the start of the body.
fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(|m| m.as_str()).map(String::from))
        .unwrap_or_else(|| excerpt(body))
}

fn excerpt_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(160).collect()
}

/// Maps a final non-success reply to an error; the message of the provider's JSON error if any.
pub fn status_error(provider: &str, model: &str, reply: &Reply) -> LlmError {
    let detail = error_message(&reply.body);
    let mentions_model = detail.to_lowercase().contains("model");
    match reply.status.as_u16() {
        401 | 403 => LlmError::Auth { provider: provider.into(), detail },
        404 if mentions_model || detail == "no details" => {
            LlmError::UnknownModel { provider: provider.into(), model: model.into(), detail }
        }
        400 if mentions_model && detail.to_lowercase().contains("not") => {
            LlmError::UnknownModel { provider: provider.into(), model: model.into(), detail }
        }
        status => LlmError::Rejected { provider: provider.into(), status, detail },
    }
}
