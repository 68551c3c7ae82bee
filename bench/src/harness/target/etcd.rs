//! The etcd target: a running etcd v3 cluster, reached through its JSON gateway over
//! HTTP/1.1.
//!
//! [`EtcdTarget::connect`] checks every endpoint with `GET /version`, and each
//! [`EtcdSession`] is one keep-alive connection to one endpoint, the endpoints taken round
//! robin by session index. A put is `POST /v3/kv/put` and a get is `POST /v3/kv/range` with
//! the key alone, so it reads exactly that key. Keys and values travel base64-encoded, as
//! the gateway's JSON mapping of protobuf `bytes` requires. A stale read sets
//! `serializable: true`, so the contacted member serves it from its own state. A
//! linearizable read leaves it at its default (`false`), so etcd confirms its read index
//! with a quorum first. A write sent to a follower is fine because etcd forwards proposals
//! to the leader.
//!
//! The HTTP/1.1 client is small and strict: one request at a time per connection, replies
//! framed by `Content-Length`, `Transfer-Encoding: chunked` (etcd's error replies use chunks
//! and trailers) or the end of the connection. Every size is bounded, and no reply bytes can
//! make it panic. A reply it cannot frame closes the connection, and the next request opens
//! a new one.
//!
//! How failures map to [`RequestError`], which the linearizability checker relies on:
//!
//! - Nothing was sent (connecting failed or timed out): [`RequestError::Refused`].
//! - A put was sent and then the connection failed, the reply could not be understood, or
//!   the request timed out: [`RequestError::Indeterminate`], because etcd may have applied it.
//! - etcd replied with an error: `Refused` when its gRPC code means the put cannot have been
//!   applied (invalid argument, permission denied, resource exhausted, unauthenticated),
//!   otherwise `Indeterminate` (for example `etcdserver: request timed out`).
//! - Any failure of a get is `Refused`, because a read has no effect.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use serde::{Deserialize, Serialize};

use super::{ReadMode, Request, RequestError, Response, Session, Target, TargetFacts};

/// Maximum bytes of a reply's status line and headers. etcd's replies have about 400; the
/// bound stops a peer that never ends its head.
pub const REPLY_HEAD_BYTES_MAX: usize = 16 * 1024;

/// Maximum headers in one reply. etcd sends 8.
pub const REPLY_HEADERS_MAX: usize = 64;

/// Maximum bytes of a reply body. etcd 3.4 rejects requests over 1.5 MiB by default
/// (`--max-request-bytes`), and base64 makes a value 4/3 larger in JSON, so the reply to a
/// get of one key stays under about 2.1 MiB.
pub const REPLY_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Maximum bytes of one chunk-size line of a chunked body, chunk extensions included.
const CHUNK_LINE_BYTES_MAX: usize = 1024;

/// Bytes read from the socket per call.
const READ_BYTES: usize = 16 * 1024;

/// What [`EtcdTarget::facts`] states as durability. In etcd 3.4 (`etcdserver/raft.go`) the
/// leader sends an entry to the followers, then writes and fdatasyncs it to its WAL before it
/// takes the next raft `Ready`, which is where the entry's commit reaches the apply loop. A
/// follower acknowledges an entry only after its own WAL write, and a put is acknowledged
/// once applied. In a single-member cluster commit and append share one `Ready`, so the
/// apply can finish before the fdatasync does. `--unsafe-no-fsync` turns the fdatasync off
/// (etcd 3.4.23 accepts it without listing it in `--help`); `scripts/peer-etcd.sh` does not
/// pass it, but this target cannot see how a member was started.
const ETCD_DURABILITY: &str = "etcd default: WAL fdatasync before acknowledgement (etcd 3.4 \
    acknowledges a put once applied, which in a cluster of 2 or more members follows the \
    fdatasync of its WAL entry on a majority, the leader included)";

/// gRPC status codes with which etcd rejects a put that it has not applied and never will:
/// 3 invalid argument (no key, request too large), 7 permission denied, 8 resource
/// exhausted (too many requests, database space exceeded) and 16 unauthenticated.
const GRPC_CODES_NOT_APPLIED: [i64; 4] = [3, 7, 8, 16];

/// A running etcd v3 cluster, reached through the JSON gateway of its members.
///
/// ```no_run
/// use std::time::Duration;
///
/// use shardraft_bench::harness::target::etcd::EtcdTarget;
/// use shardraft_bench::harness::target::{ReadMode, Request, Session, Target};
///
/// glommio::LocalExecutor::default().run(async {
///     let endpoints = vec!["127.0.0.1:2379".to_string(), "127.0.0.1:22379".to_string()];
///     let target = EtcdTarget::connect(endpoints, Duration::from_secs(5)).await.unwrap();
///     let session = target.open_session(0).await.unwrap();
///     let key = bytes::Bytes::from_static(b"k");
///     let put = Request::Put { key: key.clone(), value: bytes::Bytes::from_static(b"v") };
///     session.execute(&put).await.unwrap();
///     session.execute(&Request::Get { key, mode: ReadMode::Linearizable }).await.unwrap();
/// });
/// ```
#[derive(Debug)]
pub struct EtcdTarget {
    endpoints: Vec<Endpoint>,
    request_timeout: Duration,
    /// `etcdserver` of each endpoint's `GET /version`, deduplicated.
    versions: Vec<String>,
}

impl EtcdTarget {
    /// Checks that every endpoint is an etcd member, with `GET /version`, and returns the
    /// target. An endpoint is `host:port` or `http://host:port`, for example
    /// `127.0.0.1:2379`. `request_timeout` bounds each request of every session, connecting
    /// included, and each version check.
    ///
    /// # Errors
    ///
    /// Fails when `endpoints` is empty, `request_timeout` is zero, an endpoint is not
    /// `host:port` or uses `https`, or an endpoint does not answer `GET /version` like etcd.
    pub async fn connect(
        endpoints: Vec<String>,
        request_timeout: Duration,
    ) -> anyhow::Result<EtcdTarget> {
        anyhow::ensure!(
            !endpoints.is_empty(),
            "the etcd target needs at least one endpoint, such as 127.0.0.1:2379"
        );
        anyhow::ensure!(
            !request_timeout.is_zero(),
            "the etcd request timeout is 0; give it a positive duration"
        );
        let endpoints = endpoints
            .iter()
            .map(|text| Endpoint::parse(text))
            .collect::<anyhow::Result<Vec<_>>>()?;

        let mut versions = Vec::new();
        for endpoint in &endpoints {
            let version = fetch_version(endpoint, request_timeout).await?;
            if !versions.contains(&version) {
                versions.push(version);
            }
        }
        Ok(EtcdTarget {
            endpoints,
            request_timeout,
            versions,
        })
    }
}

impl Target for EtcdTarget {
    type Session = EtcdSession;

    async fn open_session(&self, index: usize) -> anyhow::Result<EtcdSession> {
        let endpoint = self.endpoints[index % self.endpoints.len()].clone();
        let connection = with_timeout(self.request_timeout, HttpConnection::open(&endpoint))
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "opening etcd session {index} to {endpoint} failed: {error}; check that \
                     etcd listens there (scripts/peer-etcd.sh status)"
                )
            })?;
        Ok(EtcdSession {
            endpoint,
            request_timeout: self.request_timeout,
            connection: RefCell::new(Some(connection)),
            busy: Cell::new(false),
        })
    }

    fn facts(&self) -> TargetFacts {
        let addresses: Vec<&str> = self.endpoints.iter().map(|e| e.text.as_str()).collect();
        TargetFacts {
            kind: "etcd".to_string(),
            system: format!("etcd {}", self.versions.join(", ")),
            durability: ETCD_DURABILITY.to_string(),
            reached_through: format!(
                "{} (JSON gateway over HTTP/1.1, one request at a time per connection)",
                addresses.join(", ")
            ),
        }
    }
}

/// One keep-alive HTTP/1.1 connection to one etcd member. It serves one request at a time,
/// and reconnects on the next request after a connection failed or timed out.
#[derive(Debug)]
pub struct EtcdSession {
    endpoint: Endpoint,
    request_timeout: Duration,
    /// The open connection; `None` after a failure, or while a request uses it.
    connection: RefCell<Option<HttpConnection>>,
    /// Whether a request is in progress.
    busy: Cell<bool>,
}

impl Session for EtcdSession {
    async fn execute(&self, request: &Request) -> Result<Response, RequestError> {
        if self.busy.replace(true) {
            return Err(RequestError::Refused(format!(
                "the etcd session to {} already serves a request; HTTP/1.1 sessions serve \
                 one at a time, so give each client its own session",
                self.endpoint
            )));
        }
        let _busy = BusyGuard(&self.busy);

        let is_write = matches!(request, Request::Put { .. });
        let (path, body) = encode_request(request);
        let sent = Cell::new(false);
        let exchange = self.exchange(path, &body, &sent);
        let outcome = match with_timeout(self.request_timeout, exchange).await {
            Ok(response) => return decode_reply(request, &response, &self.endpoint),
            Err(ExchangeError::TimedOut) if !sent.get() => ExchangeError::ConnectTimedOut,
            Err(error) => error,
        };
        Err(classify_failure(&outcome, is_write, &self.endpoint, path))
    }

    fn multiplexes(&self) -> bool {
        false
    }
}

impl EtcdSession {
    /// Sends one request on the session's connection, opening one when there is none, and
    /// reads the reply. Sets `sent` just before the first request byte is written. Keeps the
    /// connection for the next request only when the reply allows it.
    async fn exchange(
        &self,
        path: &str,
        body: &[u8],
        sent: &Cell<bool>,
    ) -> Result<HttpResponse, ExchangeError> {
        let taken = self.connection.borrow_mut().take();
        let mut connection = match taken {
            Some(connection) => connection,
            None => HttpConnection::open(&self.endpoint).await?,
        };

        // NOTE: a member that closed an idle kept-alive connection makes the next put on it
        // fail as Indeterminate, although the member never read it. etcd 3.4 sets no idle
        // timeout on its client listener, so this happens only after a member restarts.
        sent.set(true);
        connection.send("POST", path, body).await?;
        let response = connection.receive().await?;

        if response.keep_alive && connection.buffer.is_empty() {
            *self.connection.borrow_mut() = Some(connection);
        }
        Ok(response)
    }
}

/// Clears a session's busy flag when a request ends, also when its future is dropped.
struct BusyGuard<'a>(&'a Cell<bool>);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// One member's client address, resolved once.
#[derive(Clone, Debug)]
struct Endpoint {
    /// `host:port` as given, for the `Host` header and messages.
    text: String,
    address: SocketAddr,
}

impl Endpoint {
    fn parse(given: &str) -> anyhow::Result<Endpoint> {
        if given.starts_with("https://") {
            anyhow::bail!(
                "etcd endpoint {given:?} uses https, which the etcd target does not support; \
                 give a plain http endpoint such as 127.0.0.1:2379"
            );
        }
        let text = given.strip_prefix("http://").unwrap_or(given);
        let text = text.strip_suffix('/').unwrap_or(text);
        let port_valid = text
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        anyhow::ensure!(
            port_valid && !text.contains('/'),
            "invalid etcd endpoint {given:?}: expected host:port, such as 127.0.0.1:2379"
        );

        let resolved = text.to_socket_addrs().map_err(|error| {
            anyhow::anyhow!("resolving etcd endpoint {given:?} failed: {error}")
        })?;
        let address = resolved.into_iter().next().ok_or_else(|| {
            anyhow::anyhow!("etcd endpoint {given:?} resolves to no address; give an IP:port")
        })?;
        Ok(Endpoint {
            text: text.to_string(),
            address,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.text)
    }
}

/// Reads the `etcdserver` version of one member.
async fn fetch_version(endpoint: &Endpoint, timeout: Duration) -> anyhow::Result<String> {
    let exchange = async {
        let mut connection = HttpConnection::open(endpoint).await?;
        connection.send("GET", "/version", b"").await?;
        connection.receive().await
    };
    let response = with_timeout(timeout, exchange).await.map_err(|error| {
        anyhow::anyhow!(
            "GET /version on etcd endpoint {endpoint} failed: {error}; check that etcd \
             listens there (scripts/peer-etcd.sh start starts a local cluster)"
        )
    })?;
    anyhow::ensure!(
        response.status == 200,
        "GET /version on etcd endpoint {endpoint} returned HTTP {}: {}",
        response.status,
        excerpt(&response.body)
    );
    let version: VersionReply = serde_json::from_slice(&response.body).map_err(|error| {
        anyhow::anyhow!(
            "GET /version on {endpoint} returned no etcd version ({error}): {}",
            excerpt(&response.body)
        )
    })?;
    Ok(version.etcdserver)
}

/// Runs `exchange` for at most `timeout`.
async fn with_timeout<T>(
    timeout: Duration,
    exchange: impl Future<Output = Result<T, ExchangeError>>,
) -> Result<T, ExchangeError> {
    match glommio::timer::timeout(timeout, async { Ok(exchange.await) }).await {
        Ok(result) => result,
        Err(_) => Err(ExchangeError::TimedOut),
    }
}

// ---------------------------------------------------------------------------------------
// The etcd JSON gateway: request bodies and replies.

#[derive(Serialize)]
struct PutBody {
    key: String,
    value: String,
}

#[derive(Serialize)]
struct RangeBody {
    key: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    serializable: bool,
}

/// The fields of a `PutResponse` that are checked: every etcd reply has a header.
#[derive(Deserialize)]
struct PutReply {
    header: Option<serde_json::Value>,
}

/// A `RangeResponse`. The gateway leaves out empty fields, so a missing `kvs` means no key.
#[derive(Deserialize)]
struct RangeReply {
    header: Option<serde_json::Value>,
    #[serde(default)]
    kvs: Vec<KeyValueReply>,
}

/// A `KeyValue`; an empty value is left out.
#[derive(Deserialize)]
struct KeyValueReply {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

/// The gateway's error body, for example
/// `{"error":"etcdserver: key is not provided","message":"...","code":3}`.
#[derive(Deserialize)]
struct ErrorReply {
    error: Option<String>,
    message: Option<String>,
    code: Option<i64>,
}

#[derive(Deserialize)]
struct VersionReply {
    etcdserver: String,
}

/// Returns the gateway path and JSON body of `request`.
fn encode_request(request: &Request) -> (&'static str, Vec<u8>) {
    // serde_json fails only on non-string map keys and on failing `Serialize` impls, and
    // these bodies have neither. The empty fallback would only make etcd reject the request.
    match request {
        Request::Put { key, value } => {
            let body = PutBody {
                key: BASE64.encode(key),
                value: BASE64.encode(value),
            };
            ("/v3/kv/put", serde_json::to_vec(&body).unwrap_or_default())
        }
        Request::Get { key, mode } => {
            let body = RangeBody {
                key: BASE64.encode(key),
                serializable: *mode == ReadMode::Stale,
            };
            (
                "/v3/kv/range",
                serde_json::to_vec(&body).unwrap_or_default(),
            )
        }
    }
}

/// Maps a complete HTTP reply to the outcome of `request`.
fn decode_reply(
    request: &Request,
    response: &HttpResponse,
    endpoint: &Endpoint,
) -> Result<Response, RequestError> {
    if response.status != 200 {
        return Err(classify_error_reply(request, response, endpoint));
    }
    match request {
        Request::Put { .. } => decode_put(&response.body).map_err(|reason| {
            RequestError::Indeterminate(format!(
                "etcd at {endpoint} returned HTTP 200 to a put with a body that is not a put \
                 reply ({reason}): {}",
                excerpt(&response.body)
            ))
        }),
        Request::Get { key, .. } => decode_range(key, &response.body).map_err(|reason| {
            RequestError::Refused(format!(
                "etcd at {endpoint} returned HTTP 200 to a get with a body that is not a \
                 range reply ({reason}): {}",
                excerpt(&response.body)
            ))
        }),
    }
}

fn decode_put(body: &[u8]) -> Result<Response, String> {
    let reply: PutReply = serde_json::from_slice(body).map_err(|error| error.to_string())?;
    match reply.header {
        Some(_) => Ok(Response::Written),
        None => Err("no header".to_string()),
    }
}

fn decode_range(key: &Bytes, body: &[u8]) -> Result<Response, String> {
    let reply: RangeReply = serde_json::from_slice(body).map_err(|error| error.to_string())?;
    if reply.header.is_none() {
        return Err("no header".to_string());
    }
    let Some(first) = reply.kvs.first() else {
        return Ok(Response::Value(None));
    };
    if reply.kvs.len() > 1 {
        return Err(format!("{} keys for a get of one key", reply.kvs.len()));
    }

    let returned_key = BASE64
        .decode(&first.key)
        .map_err(|error| format!("key is not base64: {error}"))?;
    if returned_key != key.as_ref() {
        return Err(format!(
            "key {:?} returned for a get of {:?}",
            String::from_utf8_lossy(&returned_key),
            String::from_utf8_lossy(key)
        ));
    }
    let value = BASE64
        .decode(&first.value)
        .map_err(|error| format!("value is not base64: {error}"))?;
    Ok(Response::Value(Some(Bytes::from(value))))
}

/// Maps a reply other than HTTP 200 to the request's error.
fn classify_error_reply(
    request: &Request,
    response: &HttpResponse,
    endpoint: &Endpoint,
) -> RequestError {
    let reply: Option<ErrorReply> = serde_json::from_slice(&response.body).ok();
    let code = reply.as_ref().and_then(|reply| reply.code);
    let message = reply
        .as_ref()
        .and_then(|reply| reply.error.clone().or_else(|| reply.message.clone()))
        .unwrap_or_else(|| excerpt(&response.body));
    let code_text = code.map_or(String::new(), |code| format!(", gRPC code {code}"));

    let (operation, not_applied) = match request {
        Request::Put { .. } => ("put", put_not_applied(response.status, code)),
        Request::Get { .. } => ("get", true),
    };
    let text = format!(
        "etcd at {endpoint} rejected the {operation} with HTTP {}{code_text}: {message}",
        response.status
    );
    if not_applied {
        RequestError::Refused(text)
    } else {
        RequestError::Indeterminate(text)
    }
}

/// Whether an error reply to a put proves that etcd did not apply it. Without a gRPC code,
/// only the gateway's own rejections of a request it could not route or read count.
fn put_not_applied(status: u16, code: Option<i64>) -> bool {
    match code {
        Some(code) => GRPC_CODES_NOT_APPLIED.contains(&code),
        None => matches!(status, 400 | 404 | 405 | 413 | 415),
    }
}

/// Maps a failed exchange to the request's error.
fn classify_failure(
    failure: &ExchangeError,
    is_write: bool,
    endpoint: &Endpoint,
    path: &str,
) -> RequestError {
    let text = format!("POST {path} to etcd at {endpoint} failed: {failure}");
    let nothing_sent = matches!(
        failure,
        ExchangeError::Connect(_) | ExchangeError::ConnectTimedOut
    );
    if nothing_sent || !is_write {
        RequestError::Refused(text)
    } else {
        RequestError::Indeterminate(text)
    }
}

/// The start of a body, printable, for error messages.
fn excerpt(body: &[u8]) -> String {
    const EXCERPT_BYTES_MAX: usize = 200;
    let shown = &body[..body.len().min(EXCERPT_BYTES_MAX)];
    let mut text = String::from_utf8_lossy(shown).into_owned();
    if body.len() > EXCERPT_BYTES_MAX {
        text.push_str("...");
    }
    if text.is_empty() {
        text.push_str("(empty body)");
    }
    text
}

// ---------------------------------------------------------------------------------------
// The HTTP/1.1 client.

/// Why one request-reply exchange failed.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("connecting failed: {0}")]
    Connect(io::Error),
    #[error("connecting timed out")]
    ConnectTimedOut,
    #[error("sending the request failed: {0}")]
    Send(io::Error),
    #[error("reading the reply failed: {0}")]
    Receive(io::Error),
    #[error("invalid reply: {0}")]
    Http(#[from] HttpError),
    #[error("no complete reply within the request timeout")]
    TimedOut,
}

/// A reply that cannot be read as HTTP/1.1.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("invalid status line or header: {0}")]
    InvalidHead(httparse::Error),
    #[error("reply head exceeds {max} bytes")]
    HeadTooLarge { max: usize },
    #[error("reply has more than {max} headers")]
    TooManyHeaders { max: usize },
    #[error("invalid Content-Length {value:?}")]
    InvalidContentLength { value: String },
    #[error("conflicting Content-Length headers {first} and {second}")]
    ConflictingContentLength { first: u64, second: u64 },
    #[error("unsupported Transfer-Encoding {value:?}; only chunked is supported")]
    UnsupportedTransferEncoding { value: String },
    #[error("unsupported status {status}: this client speaks HTTP/1.1 only")]
    UnsupportedStatus { status: u16 },
    #[error("reply body of {announced} bytes exceeds the maximum of {max} bytes")]
    BodyTooLarge { announced: u64, max: usize },
    #[error("invalid chunk size line {line:?}")]
    InvalidChunkSize { line: String },
    #[error("line of a chunked body exceeds {max} bytes without CRLF")]
    LineTooLong { max: usize },
    #[error("chunk data of {size} bytes is not followed by CRLF")]
    ChunkNotTerminated { size: usize },
    #[error("connection closed after {received} bytes of an incomplete reply")]
    Truncated { received: usize },
}

/// A complete HTTP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// The body, with chunked transfer coding removed.
    pub body: Vec<u8>,
    /// Whether the connection may carry the next request.
    pub keep_alive: bool,
}

/// The result of [`parse_response`] on the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseStatus {
    /// More bytes are needed.
    Incomplete,
    /// A reply ends at byte `consumed`.
    Complete {
        response: HttpResponse,
        consumed: usize,
    },
}

/// How a reply's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A parsed status line and headers.
#[derive(Debug)]
struct Head {
    status: u16,
    length: usize,
    framing: Framing,
    keep_alive: bool,
}

/// Parses one HTTP/1.x reply from the start of `buffer`. `closed` tells that the peer
/// closed the connection after the last byte of `buffer`. Interim 1xx replies are skipped.
///
/// Parsing starts over on every call. A body grows by at least one read between calls and
/// is bounded by [`REPLY_BODY_BYTES_MAX`], so the repeated work is bounded too.
///
/// # Errors
///
/// Returns an [`HttpError`] for bytes that are not a valid reply, a reply over the size
/// bounds, and, when `closed`, a reply that is incomplete.
pub fn parse_response(buffer: &[u8], closed: bool) -> Result<ParseStatus, HttpError> {
    let mut start = 0;
    loop {
        let rest = &buffer[start..];
        let status = match parse_head(rest)? {
            Some(head) => parse_body(rest, &head, closed)?,
            None => ParseStatus::Incomplete,
        };
        match status {
            ParseStatus::Incomplete if closed => {
                return Err(HttpError::Truncated {
                    received: buffer.len(),
                });
            }
            ParseStatus::Complete { response, consumed } if is_interim(response.status) => {
                start += consumed;
            }
            ParseStatus::Complete { response, consumed } => {
                return Ok(ParseStatus::Complete {
                    response,
                    consumed: start + consumed,
                });
            }
            ParseStatus::Incomplete => return Ok(ParseStatus::Incomplete),
        }
    }
}

fn is_interim(status: u16) -> bool {
    (100..200).contains(&status)
}

/// Parses the status line and headers, or returns `None` when they are not complete yet.
fn parse_head(buffer: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; REPLY_HEADERS_MAX];
    let mut reply = httparse::Response::new(&mut headers);
    let scanned = &buffer[..buffer.len().min(REPLY_HEAD_BYTES_MAX)];
    let length = match reply.parse(scanned) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buffer.len() >= REPLY_HEAD_BYTES_MAX => {
            return Err(HttpError::HeadTooLarge {
                max: REPLY_HEAD_BYTES_MAX,
            });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::TooManyHeaders {
                max: REPLY_HEADERS_MAX,
            });
        }
        Err(error) => return Err(HttpError::InvalidHead(error)),
    };

    // httparse returns a complete head only with a version and a three-digit code.
    let status = reply.code.unwrap_or_default();
    let version = reply.version.unwrap_or_default();
    if status == 101 {
        return Err(HttpError::UnsupportedStatus { status });
    }
    let fields = HeaderFields::collect(reply.headers)?;
    let framing = choose_framing(status, &fields);
    let keep_alive = match version {
        1 => !fields.connection_close,
        _ => fields.connection_keep_alive && !fields.connection_close,
    } && framing != Framing::UntilClose
        && !(fields.chunked && fields.content_length.is_some());
    Ok(Some(Head {
        status,
        length,
        framing,
        keep_alive,
    }))
}

/// The headers that frame a reply.
#[derive(Debug, Default)]
struct HeaderFields {
    content_length: Option<u64>,
    chunked: bool,
    connection_close: bool,
    connection_keep_alive: bool,
}

impl HeaderFields {
    fn collect(headers: &[httparse::Header<'_>]) -> Result<HeaderFields, HttpError> {
        let mut fields = HeaderFields::default();
        for header in headers {
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                fields.add_content_length(header.value)?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                fields.add_transfer_encoding(header.value)?;
            } else if name.eq_ignore_ascii_case("connection") {
                for token in tokens(header.value) {
                    fields.connection_close |= token.eq_ignore_ascii_case("close");
                    fields.connection_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                }
            }
        }
        Ok(fields)
    }

    fn add_content_length(&mut self, value: &[u8]) -> Result<(), HttpError> {
        let text = String::from_utf8_lossy(value);
        let trimmed = text.trim_matches([' ', '\t']);
        let digits_only = !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit());
        let length = digits_only
            .then(|| trimmed.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| HttpError::InvalidContentLength {
                value: text.chars().take(64).collect(),
            })?;
        match self.content_length {
            Some(first) if first != length => Err(HttpError::ConflictingContentLength {
                first,
                second: length,
            }),
            _ => {
                self.content_length = Some(length);
                Ok(())
            }
        }
    }

    /// Accepts `chunked` alone, in one header or several; any other coding is an error.
    fn add_transfer_encoding(&mut self, value: &[u8]) -> Result<(), HttpError> {
        for token in tokens(value) {
            if !token.eq_ignore_ascii_case("chunked") || self.chunked {
                return Err(HttpError::UnsupportedTransferEncoding {
                    value: String::from_utf8_lossy(value).chars().take(64).collect(),
                });
            }
            self.chunked = true;
        }
        Ok(())
    }
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = String> + '_ {
    value
        .split(|&byte| byte == b',')
        .map(|token| String::from_utf8_lossy(token).trim().to_string())
        .filter(|token| !token.is_empty())
}

fn choose_framing(status: u16, fields: &HeaderFields) -> Framing {
    if is_interim(status) || status == 204 || status == 304 {
        Framing::Empty
    } else if fields.chunked {
        // A chunked coding overrides Content-Length (RFC 9112, section 6.3).
        Framing::Chunked
    } else if let Some(length) = fields.content_length {
        Framing::Length(length)
    } else {
        Framing::UntilClose
    }
}

fn parse_body(buffer: &[u8], head: &Head, closed: bool) -> Result<ParseStatus, HttpError> {
    let body_bytes = &buffer[head.length..];
    let (body, body_length) = match head.framing {
        Framing::Empty => (Vec::new(), 0),
        Framing::Length(announced) => {
            let length = checked_body_length(announced)?;
            if body_bytes.len() < length {
                return Ok(ParseStatus::Incomplete);
            }
            (body_bytes[..length].to_vec(), length)
        }
        Framing::Chunked => match parse_chunked(body_bytes)? {
            Some(complete) => complete,
            None => return Ok(ParseStatus::Incomplete),
        },
        Framing::UntilClose => {
            checked_body_length(body_bytes.len() as u64)?;
            if !closed {
                return Ok(ParseStatus::Incomplete);
            }
            (body_bytes.to_vec(), body_bytes.len())
        }
    };
    Ok(ParseStatus::Complete {
        response: HttpResponse {
            status: head.status,
            body,
            keep_alive: head.keep_alive,
        },
        consumed: head.length + body_length,
    })
}

fn checked_body_length(announced: u64) -> Result<usize, HttpError> {
    match usize::try_from(announced) {
        Ok(length) if length <= REPLY_BODY_BYTES_MAX => Ok(length),
        _ => Err(HttpError::BodyTooLarge {
            announced,
            max: REPLY_BODY_BYTES_MAX,
        }),
    }
}

/// Decodes a chunked body at the start of `buffer`, trailers included. Returns the body and
/// the bytes it took, or `None` when it is not complete yet.
fn parse_chunked(buffer: &[u8]) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_length) = find_line(&buffer[at..], CHUNK_LINE_BYTES_MAX)? else {
            return Ok(None);
        };
        let size = parse_chunk_size(&buffer[at..at + line_length])?;
        at += line_length + 2;
        if size == 0 {
            return Ok(skip_trailers(&buffer[at..])?.map(|length| (body, at + length)));
        }

        let total = body.len() as u64 + size;
        let size = checked_body_length(total)? - body.len();
        let data_end = at + size;
        if buffer.len() < data_end + 2 {
            return Ok(None);
        }
        if &buffer[data_end..data_end + 2] != b"\r\n" {
            return Err(HttpError::ChunkNotTerminated { size });
        }
        body.extend_from_slice(&buffer[at..data_end]);
        at = data_end + 2;
    }
}

/// Skips the trailer fields after the last chunk, up to and including the empty line.
/// Returns the bytes they took, or `None` when the empty line has not arrived.
fn skip_trailers(buffer: &[u8]) -> Result<Option<usize>, HttpError> {
    let mut at = 0;
    loop {
        let Some(line_length) = find_line(&buffer[at..], REPLY_HEAD_BYTES_MAX)? else {
            return Ok(None);
        };
        at += line_length + 2;
        if line_length == 0 {
            return Ok(Some(at));
        }
        if at > REPLY_HEAD_BYTES_MAX {
            return Err(HttpError::HeadTooLarge {
                max: REPLY_HEAD_BYTES_MAX,
            });
        }
    }
}

/// Finds the CRLF that ends the line at the start of `buffer` and returns the line's length
/// without it, or `None` when it has not arrived.
fn find_line(buffer: &[u8], line_bytes_max: usize) -> Result<Option<usize>, HttpError> {
    let scanned = &buffer[..buffer.len().min(line_bytes_max + 2)];
    match scanned.windows(2).position(|pair| pair == b"\r\n") {
        Some(length) => Ok(Some(length)),
        None if buffer.len() >= line_bytes_max + 2 => Err(HttpError::LineTooLong {
            max: line_bytes_max,
        }),
        None => Ok(None),
    }
}

/// Parses a chunk-size line: hexadecimal digits, then optional `;` extensions.
fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let invalid = || HttpError::InvalidChunkSize {
        line: String::from_utf8_lossy(line).chars().take(64).collect(),
    };
    let digits = line.split(|&byte| byte == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii();
    // 15 hexadecimal digits hold any size up to 2^60, far over the body bound.
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(invalid());
    }
    let text = std::str::from_utf8(digits).map_err(|_| invalid())?;
    u64::from_str_radix(text, 16).map_err(|_| invalid())
}

/// One keep-alive HTTP/1.1 connection.
#[derive(Debug)]
struct HttpConnection {
    stream: TcpStream,
    host: String,
    /// Bytes received and not yet parsed as a reply.
    buffer: Vec<u8>,
}

impl HttpConnection {
    async fn open(endpoint: &Endpoint) -> Result<HttpConnection, ExchangeError> {
        let stream = TcpStream::connect(endpoint.address)
            .await
            .map_err(|error| ExchangeError::Connect(io::Error::from(error)))?;
        // Requests are small and written whole, so waiting for more bytes to fill a segment
        // only adds latency.
        stream
            .set_nodelay(true)
            .map_err(|error| ExchangeError::Connect(io::Error::from(error)))?;
        Ok(HttpConnection {
            stream,
            host: endpoint.text.clone(),
            buffer: Vec::new(),
        })
    }

    async fn send(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(), ExchangeError> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            self.host,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.stream
            .write_all(&request)
            .await
            .map_err(ExchangeError::Send)?;
        self.stream.flush().await.map_err(ExchangeError::Send)
    }

    /// Reads until one reply is complete and removes it from the buffer.
    async fn receive(&mut self) -> Result<HttpResponse, ExchangeError> {
        let mut chunk = vec![0; READ_BYTES];
        let mut closed = false;
        loop {
            if let ParseStatus::Complete { response, consumed } =
                parse_response(&self.buffer, closed)?
            {
                self.buffer.drain(..consumed);
                return Ok(response);
            }
            let read = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(ExchangeError::Receive)?;
            closed = read == 0;
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reply of etcd 3.4.23 to a put, as received.
    const PUT_REPLY: &[u8] = b"HTTP/1.1 200 OK\r\n\
        Access-Control-Allow-Origin: *\r\n\
        Content-Type: application/json\r\n\
        Grpc-Metadata-Content-Type: application/grpc\r\n\
        Date: Fri, 04 Dec 2026 14:50:05 GMT\r\n\
        Content-Length: 113\r\n\r\n\
        {\"header\":{\"cluster_id\":\"13601084262687118921\",\"member_id\":\"9865295426619755344\",\
        \"revision\":\"2\",\"raft_term\":\"2\"}}";

    /// The reply of etcd 3.4.23 to a range of `foo`, which holds `bar`.
    const RANGE_BODY: &[u8] = b"{\"header\":{\"cluster_id\":\"13601084262687118921\",\
        \"member_id\":\"6182120136057768423\",\"revision\":\"2\",\"raft_term\":\"2\"},\
        \"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":\"2\",\"mod_revision\":\"2\",\
        \"version\":\"1\",\"value\":\"YmFy\"}],\"count\":\"1\"}";

    /// The chunked error reply of etcd 3.4.23 to a put without a key, trailer included.
    const ERROR_REPLY_CHUNKED: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
        Content-Type: application/json\r\n\
        Trailer: Grpc-Trailer-Content-Type\r\n\
        Transfer-Encoding: chunked\r\n\r\n\
        60\r\n\
        {\"error\":\"etcdserver: key is not provided\",\"message\":\"etcdserver: key is not \
        provided\",\"code\":3}\r\n\
        0\r\n\
        Grpc-Trailer-Content-Type: application/grpc\r\n\r\n";

    fn complete(buffer: &[u8]) -> (HttpResponse, usize) {
        match parse_response(buffer, false) {
            Ok(ParseStatus::Complete { response, consumed }) => (response, consumed),
            other => panic!("expected a complete reply, got {other:?}"),
        }
    }

    fn endpoint() -> Endpoint {
        Endpoint::parse("127.0.0.1:2379").unwrap()
    }

    fn reply(status: u16, body: &[u8]) -> HttpResponse {
        HttpResponse {
            status,
            body: body.to_vec(),
            keep_alive: true,
        }
    }

    fn put() -> Request {
        Request::Put {
            key: Bytes::from_static(b"foo"),
            value: Bytes::from_static(b"bar"),
        }
    }

    fn get(mode: ReadMode) -> Request {
        Request::Get {
            key: Bytes::from_static(b"foo"),
            mode,
        }
    }

    #[test]
    fn content_length_reply_parses() {
        let (response, consumed) = complete(PUT_REPLY);
        assert_eq!(response.status, 200);
        assert_eq!(response.body.len(), 113);
        assert!(response.keep_alive);
        assert_eq!(consumed, PUT_REPLY.len());
    }

    #[test]
    fn chunked_reply_with_trailer_parses() {
        let (response, consumed) = complete(ERROR_REPLY_CHUNKED);
        assert_eq!(response.status, 400);
        assert!(
            response
                .body
                .starts_with(b"{\"error\":\"etcdserver: key is not provided\"")
        );
        assert!(response.body.ends_with(b"\"code\":3}"));
        assert!(response.keep_alive);
        assert_eq!(consumed, ERROR_REPLY_CHUNKED.len());
    }

    #[test]
    fn chunked_reply_joins_chunks_and_extensions() {
        let reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            3;name=value\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n";
        let (response, consumed) = complete(reply);
        assert_eq!(response.body, b"abc0123456789");
        assert_eq!(consumed, reply.len());
    }

    #[test]
    fn every_prefix_of_a_reply_is_incomplete() {
        for fixture in [PUT_REPLY, ERROR_REPLY_CHUNKED] {
            for end in 0..fixture.len() {
                let status = parse_response(&fixture[..end], false);
                assert_eq!(status, Ok(ParseStatus::Incomplete), "prefix of {end} bytes");
            }
        }
    }

    #[test]
    fn truncated_reply_is_an_error_when_closed() {
        for fixture in [PUT_REPLY, ERROR_REPLY_CHUNKED] {
            for end in [1, 20, fixture.len() / 2, fixture.len() - 1] {
                let status = parse_response(&fixture[..end], true);
                assert_eq!(status, Err(HttpError::Truncated { received: end }));
            }
        }
    }

    #[test]
    fn bytes_after_a_reply_are_left() {
        let mut buffer = PUT_REPLY.to_vec();
        buffer.extend_from_slice(b"HTTP/1.1 200");
        let (_, consumed) = complete(&buffer);
        assert_eq!(consumed, PUT_REPLY.len());
    }

    #[test]
    fn interim_reply_is_skipped() {
        let mut buffer = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        buffer.extend_from_slice(PUT_REPLY);
        let (response, consumed) = complete(&buffer);
        assert_eq!(response.status, 200);
        assert_eq!(consumed, buffer.len());
    }

    #[test]
    fn reply_without_length_ends_with_the_connection() {
        let reply = b"HTTP/1.1 200 OK\r\n\r\n{\"header\":{}}";
        assert_eq!(parse_response(reply, false), Ok(ParseStatus::Incomplete));
        let status = parse_response(reply, true).unwrap();
        let ParseStatus::Complete { response, .. } = status else {
            panic!("expected a complete reply, got {status:?}");
        };
        assert_eq!(response.body, b"{\"header\":{}}");
        assert!(!response.keep_alive);
    }

    #[test]
    fn connection_close_ends_keep_alive() {
        let reply = b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n";
        assert!(!complete(reply).0.keep_alive);
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(!complete(old).0.keep_alive);
        let old_kept = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        assert!(complete(old_kept).0.keep_alive);
    }

    #[test]
    fn no_content_reply_has_no_body() {
        let reply = b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n";
        let (response, consumed) = complete(reply);
        assert!(response.body.is_empty());
        assert_eq!(consumed, reply.len());
    }

    #[test]
    fn oversized_replies_are_errors() {
        let announced = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 1u64 << 40);
        assert_eq!(
            parse_response(announced.as_bytes(), false),
            Err(HttpError::BodyTooLarge {
                announced: 1 << 40,
                max: REPLY_BODY_BYTES_MAX
            })
        );

        let chunk = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            REPLY_BODY_BYTES_MAX + 1
        );
        let status = parse_response(chunk.as_bytes(), false);
        assert!(
            matches!(status, Err(HttpError::BodyTooLarge { .. })),
            "{status:?}"
        );

        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        while head.len() <= REPLY_HEAD_BYTES_MAX {
            head.extend_from_slice(b"X: y\r\n");
        }
        let status = parse_response(&head, false);
        assert!(
            matches!(
                status,
                Err(HttpError::HeadTooLarge { .. } | HttpError::TooManyHeaders { .. })
            ),
            "{status:?}"
        );

        let mut long_header = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long_header.resize(REPLY_HEAD_BYTES_MAX + 10, b'a');
        let status = parse_response(&long_header, false);
        assert_eq!(
            status,
            Err(HttpError::HeadTooLarge {
                max: REPLY_HEAD_BYTES_MAX
            })
        );

        let mut until_close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        until_close.resize(REPLY_BODY_BYTES_MAX + 100, b'a');
        let status = parse_response(&until_close, false);
        assert!(
            matches!(status, Err(HttpError::BodyTooLarge { .. })),
            "{status:?}"
        );
    }

    #[test]
    fn too_many_headers_is_an_error() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..=REPLY_HEADERS_MAX {
            head.extend_from_slice(b"X: y\r\n");
        }
        head.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_response(&head, false),
            Err(HttpError::TooManyHeaders {
                max: REPLY_HEADERS_MAX
            })
        );
    }

    #[test]
    fn malformed_framing_is_an_error() {
        let cases: [(&[u8], HttpError); 7] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                HttpError::InvalidContentLength {
                    value: "-1".to_string(),
                },
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
                HttpError::InvalidContentLength {
                    value: "1, 2".to_string(),
                },
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                HttpError::ConflictingContentLength {
                    first: 1,
                    second: 2,
                },
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                HttpError::UnsupportedTransferEncoding {
                    value: "gzip, chunked".to_string(),
                },
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                HttpError::InvalidChunkSize {
                    line: "zz".to_string(),
                },
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcde",
                HttpError::ChunkNotTerminated { size: 3 },
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                HttpError::UnsupportedStatus { status: 101 },
            ),
        ];
        for (reply, expected) in cases {
            let status = parse_response(reply, false);
            assert_eq!(status, Err(expected), "{}", String::from_utf8_lossy(reply));
        }
    }

    #[test]
    fn overlong_chunk_line_is_an_error() {
        let mut reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        reply.resize(reply.len() + CHUNK_LINE_BYTES_MAX + 2, b'x');
        assert_eq!(
            parse_response(&reply, false),
            Err(HttpError::LineTooLong {
                max: CHUNK_LINE_BYTES_MAX
            })
        );
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let fixtures: [&[u8]; 6] = [
            b"hello world\r\n\r\n",
            b"\x00\xff\xfe\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n",
        ];
        for fixture in fixtures {
            let status = parse_response(fixture, false);
            assert!(
                matches!(status, Err(HttpError::InvalidHead(_))),
                "{}: {status:?}",
                String::from_utf8_lossy(fixture)
            );
        }
    }

    #[test]
    fn pseudo_random_bytes_never_panic() {
        // A fixed xorshift sequence keeps the test deterministic.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"HTTP/1.1 200 OK\r\n:;0123456789abcdefxX-chunkedContent-Length";
        for _ in 0..20_000 {
            let mut buffer = Vec::new();
            let prefix_length = (next() % PUT_REPLY.len() as u64) as usize;
            if next() % 2 == 0 {
                buffer.extend_from_slice(&ERROR_REPLY_CHUNKED[..prefix_length.min(60)]);
            } else {
                buffer.extend_from_slice(&PUT_REPLY[..prefix_length]);
            }
            for _ in 0..next() % 64 {
                let byte = alphabet[(next() % alphabet.len() as u64) as usize];
                buffer.push(byte);
            }
            let _ = parse_response(&buffer, next() % 2 == 0);
        }
    }

    #[test]
    fn put_body_is_base64_json() {
        let (path, body) = encode_request(&put());
        assert_eq!(path, "/v3/kv/put");
        assert_eq!(body, br#"{"key":"Zm9v","value":"YmFy"}"#);
    }

    #[test]
    fn range_body_sets_serializable_only_for_stale_reads() {
        let (path, body) = encode_request(&get(ReadMode::Stale));
        assert_eq!(path, "/v3/kv/range");
        assert_eq!(body, br#"{"key":"Zm9v","serializable":true}"#);
        let (_, body) = encode_request(&get(ReadMode::Linearizable));
        assert_eq!(body, br#"{"key":"Zm9v"}"#);
    }

    #[test]
    fn put_reply_maps_to_written() {
        let (response, _) = complete(PUT_REPLY);
        let outcome = decode_reply(&put(), &response, &endpoint());
        assert_eq!(outcome, Ok(Response::Written));
    }

    #[test]
    fn range_reply_maps_to_value() {
        let outcome = decode_reply(&get(ReadMode::Stale), &reply(200, RANGE_BODY), &endpoint());
        assert_eq!(
            outcome,
            Ok(Response::Value(Some(Bytes::from_static(b"bar"))))
        );
    }

    #[test]
    fn range_reply_without_kvs_maps_to_absent() {
        let body = br#"{"header":{"revision":"2"}}"#;
        let outcome = decode_reply(&get(ReadMode::Stale), &reply(200, body), &endpoint());
        assert_eq!(outcome, Ok(Response::Value(None)));
    }

    #[test]
    fn range_reply_with_empty_value_maps_to_empty() {
        let body = br#"{"header":{},"kvs":[{"key":"Zm9v"}],"count":"1"}"#;
        let outcome = decode_reply(&get(ReadMode::Stale), &reply(200, body), &endpoint());
        assert_eq!(outcome, Ok(Response::Value(Some(Bytes::new()))));
    }

    #[test]
    fn range_reply_for_another_key_is_refused() {
        let body = br#"{"header":{},"kvs":[{"key":"YmFy","value":"YmFy"}]}"#;
        let outcome = decode_reply(&get(ReadMode::Stale), &reply(200, body), &endpoint());
        let Err(RequestError::Refused(message)) = outcome else {
            panic!("expected a refusal, got {outcome:?}");
        };
        assert!(
            message.contains("key \"bar\" returned for a get of \"foo\""),
            "{message}"
        );
    }

    #[test]
    fn unreadable_put_reply_is_indeterminate() {
        for body in [&b"not json"[..], b"{}", b"{\"header\":"] {
            let outcome = decode_reply(&put(), &reply(200, body), &endpoint());
            assert!(
                matches!(outcome, Err(RequestError::Indeterminate(_))),
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn unreadable_range_reply_is_refused() {
        let bodies = [
            &b"not json"[..],
            b"{}",
            br#"{"header":{},"kvs":[{"key":"!!"}]}"#,
            br#"{"header":{},"kvs":[{"key":"Zm9v","value":"@"}]}"#,
            br#"{"header":{},"kvs":[{"key":"Zm9v"},{"key":"Zm9v"}]}"#,
        ];
        for body in bodies {
            let outcome = decode_reply(&get(ReadMode::Stale), &reply(200, body), &endpoint());
            assert!(
                matches!(outcome, Err(RequestError::Refused(_))),
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn invalid_argument_reply_to_put_is_refused() {
        let (response, _) = complete(ERROR_REPLY_CHUNKED);
        let outcome = decode_reply(&put(), &response, &endpoint());
        let Err(RequestError::Refused(message)) = outcome else {
            panic!("expected a refusal, got {outcome:?}");
        };
        assert!(message.contains("HTTP 400, gRPC code 3"), "{message}");
        assert!(
            message.contains("etcdserver: key is not provided"),
            "{message}"
        );
    }

    #[test]
    fn timeout_reply_to_put_is_indeterminate() {
        let body = br#"{"error":"etcdserver: request timed out","code":14}"#;
        let outcome = decode_reply(&put(), &reply(503, body), &endpoint());
        let Err(RequestError::Indeterminate(message)) = outcome else {
            panic!("expected an unknown outcome, got {outcome:?}");
        };
        assert!(
            message.contains("etcdserver: request timed out"),
            "{message}"
        );
    }

    #[test]
    fn error_reply_to_get_is_refused() {
        let body = br#"{"error":"etcdserver: request timed out","code":14}"#;
        let outcome = decode_reply(&get(ReadMode::Linearizable), &reply(503, body), &endpoint());
        assert!(
            matches!(outcome, Err(RequestError::Refused(_))),
            "{outcome:?}"
        );
    }

    #[test]
    fn error_reply_without_code_maps_by_status() {
        let refused = decode_reply(&put(), &reply(404, b"Not Found"), &endpoint());
        assert!(
            matches!(refused, Err(RequestError::Refused(_))),
            "{refused:?}"
        );
        let unknown = decode_reply(&put(), &reply(502, b""), &endpoint());
        let Err(RequestError::Indeterminate(message)) = unknown else {
            panic!("expected an unknown outcome, got {unknown:?}");
        };
        assert!(message.contains("HTTP 502: (empty body)"), "{message}");
    }

    #[test]
    fn failure_after_sending_put_is_indeterminate() {
        let failure = ExchangeError::Receive(io::Error::from(io::ErrorKind::ConnectionReset));
        let outcome = classify_failure(&failure, true, &endpoint(), "/v3/kv/put");
        assert!(
            matches!(outcome, RequestError::Indeterminate(_)),
            "{outcome:?}"
        );
        let timeout = classify_failure(&ExchangeError::TimedOut, true, &endpoint(), "/v3/kv/put");
        assert!(
            matches!(timeout, RequestError::Indeterminate(_)),
            "{timeout:?}"
        );
    }

    #[test]
    fn failure_before_sending_is_refused() {
        let failure = ExchangeError::Connect(io::Error::from(io::ErrorKind::ConnectionRefused));
        let outcome = classify_failure(&failure, true, &endpoint(), "/v3/kv/put");
        assert!(matches!(outcome, RequestError::Refused(_)), "{outcome:?}");
        let timeout = classify_failure(&ExchangeError::ConnectTimedOut, true, &endpoint(), "/");
        assert!(matches!(timeout, RequestError::Refused(_)), "{timeout:?}");
    }

    #[test]
    fn endpoints_parse_with_and_without_scheme() {
        assert_eq!(
            Endpoint::parse("127.0.0.1:2379").unwrap().text,
            "127.0.0.1:2379"
        );
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:2379/").unwrap().text,
            "127.0.0.1:2379"
        );
        for invalid in [
            "https://127.0.0.1:2379",
            "127.0.0.1",
            ":2379",
            "127.0.0.1:99999",
            "a:1/b",
        ] {
            assert!(Endpoint::parse(invalid).is_err(), "{invalid}");
        }
    }
}
