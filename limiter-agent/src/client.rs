//! The CLI's side of the API: HTTP over the agent's Unix socket.

use crate::api::{ErrorBody, ErrorCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent is listening on {0} — start one with `limiter agent --iface IF` (or pass the --api-socket it uses)")]
    NoAgent(PathBuf),
    #[error(
        "permission denied on {0} — run as root or as a member of the group that owns the socket"
    )]
    PermissionDenied(PathBuf),
    #[error(
        "the agent on {0} did not answer within {secs} s — is it stopped (SIGSTOP) or overloaded? \
         `systemctl status limiter`, or its log, says more",
        secs = ANSWER_TIMEOUT.as_secs()
    )]
    Timeout(PathBuf),
    #[error("talking to the agent on {path}: {error}")]
    Transport { path: PathBuf, error: String },
    /// The agent refused the request; its message is for the operator, its code for the exit
    /// status.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
}

/// How long the CLI waits for the agent: to connect and get an answer's head, and between two
/// pieces of a streamed answer.
pub const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    pub fn new(socket: &Path) -> ApiClient {
        ApiClient {
            socket: socket.to_owned(),
        }
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &impl Serialize,
    ) -> Result<T, ClientError> {
        let query = serde_urlencoded::to_string(query).map_err(|err| self.transport(err))?;
        let uri = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        self.request(Method::GET, &uri, Bytes::new()).await
    }

    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &impl Serialize,
    ) -> Result<T, ClientError> {
        let query = serde_urlencoded::to_string(query).map_err(|err| self.transport(err))?;
        self.request(Method::DELETE, &format!("{path}?{query}"), Bytes::new())
            .await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|err| self.transport(err))?;
        self.request(Method::POST, path, Bytes::from(body)).await
    }

    /// GETs `path` and copies the answer's body to `out` as it arrives, without holding it
    /// in memory (for `list --json` over a million keys).
    pub async fn get_streamed(
        &self,
        path: &str,
        query: &impl Serialize,
        out: &mut impl std::io::Write,
    ) -> Result<(), ClientError> {
        let query = serde_urlencoded::to_string(query).map_err(|err| self.transport(err))?;
        let uri = format!("{path}?{query}");
        let response = self.send(Method::GET, &uri, Bytes::new()).await?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|err| self.transport(err))?
                .to_bytes();
            return Err(self.refusal(status.as_u16(), &bytes));
        }
        while let Some(frame) = tokio::time::timeout(ANSWER_TIMEOUT, body.frame())
            .await
            .map_err(|_| ClientError::Timeout(self.socket.clone()))?
        {
            let frame = frame.map_err(|err| self.transport(err))?;
            if let Some(data) = frame.data_ref() {
                out.write_all(data).map_err(|err| self.transport(err))?;
            }
        }
        out.flush().map_err(|err| self.transport(err))
    }

    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let response = self.send(method, uri, body).await?;
        let status = response.status();
        let body = tokio::time::timeout(ANSWER_TIMEOUT, response.into_body().collect())
            .await
            .map_err(|_| ClientError::Timeout(self.socket.clone()))?
            .map_err(|err| self.transport(err))?
            .to_bytes();
        if !status.is_success() {
            return Err(self.refusal(status.as_u16(), &body));
        }
        serde_json::from_slice(&body)
            .map_err(|err| self.transport(format!("unexpected answer: {err}")))
    }

    /// Connects to the agent and sends one request; the answer's head, within
    /// [`ANSWER_TIMEOUT`].
    async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Bytes,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        tokio::time::timeout(ANSWER_TIMEOUT, self.send_untimed(method, uri, body))
            .await
            .map_err(|_| ClientError::Timeout(self.socket.clone()))?
    }

    async fn send_untimed(
        &self,
        method: Method,
        uri: &str,
        body: Bytes,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|err| match err.kind() {
                ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                    ClientError::NoAgent(self.socket.clone())
                }
                ErrorKind::PermissionDenied => ClientError::PermissionDenied(self.socket.clone()),
                _ => self.transport(err),
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| self.transport(err))?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, "limiter")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|err| self.transport(err))?;
        sender
            .send_request(request)
            .await
            .map_err(|err| self.transport(err))
    }

    /// The agent's refusal, with its message for the operator. Without a code in the answer
    /// (an older agent, or not JSON) the HTTP status stands in for it.
    fn refusal(&self, status: u16, body: &[u8]) -> ClientError {
        let by_status = match status {
            400 => ErrorCode::BadRequest,
            404 => ErrorCode::NotTracked,
            422 => ErrorCode::ReloadRefused,
            _ => ErrorCode::Internal,
        };
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(answer) => ClientError::Refused {
                code: answer.code.unwrap_or(by_status),
                message: answer.error,
            },
            Err(_) => ClientError::Refused {
                code: by_status,
                message: String::from_utf8_lossy(body).into_owned(),
            },
        }
    }

    fn transport(&self, error: impl std::fmt::Display) -> ClientError {
        ClientError::Transport {
            path: self.socket.clone(),
            error: error.to_string(),
        }
    }
}
