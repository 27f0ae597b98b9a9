//! The CLI's side of the API: HTTP over the agent's Unix socket.

use crate::api::ApiError;
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
    #[error("talking to the agent on {path}: {error}")]
    Transport { path: PathBuf, error: String },
    /// The agent refused the request; its message is for the operator.
    #[error("{message}")]
    Refused { status: u16, message: String },
}

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

    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Bytes,
    ) -> Result<T, ClientError> {
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
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| self.transport(err))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| self.transport(err))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body)
            .map_err(|err| self.transport(format!("unexpected answer: {err}")))
    }

    fn transport(&self, error: impl std::fmt::Display) -> ClientError {
        ClientError::Transport {
            path: self.socket.clone(),
            error: error.to_string(),
        }
    }
}
