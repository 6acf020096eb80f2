//! The HTTP face of the store: etcd's v2 keys API (`/v2/keys/...`) with its
//! parameters, status codes, headers and error bodies, plus the small
//! endpoints etcd clients probe (`/version`, `/health`, `/v2/members`,
//! `/v2/machines`) and the FleetLock reboot-lock protocol (`/v1/...`).

use crate::error::{ErrorCode, EtcdError};
use crate::event::{Action, Event};
use crate::form::{self, Form, FormError};
use crate::reboot_lock::{self, RebootLock};
use crate::request::Mutation;
use crate::service::{Store, Watch};
use crate::timestamp::Timestamp;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub const KEYS_PREFIX: &str = "/v2/keys";
/// The version string `/version` reports for the etcd API it speaks.
pub const ETCD_API_VERSION: &str = "3.4.0";

/// What the handlers share.
pub struct App {
    pub store: Store,
    /// The URLs clients reach this store at (for `/v2/members`).
    pub client_urls: Vec<String>,
}

type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn full(body: impl Into<Bytes>) -> ResponseBody {
    Full::new(body.into()).boxed_unsync()
}

fn json_response(status: u16, index: Option<u64>, body: String) -> Response<ResponseBody> {
    let mut r = Response::new(full(body + "\n"));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(i) = index {
        r.headers_mut().insert("X-Etcd-Index", HeaderValue::from(i));
    }
    r
}

pub fn error_response(e: &EtcdError) -> Response<ResponseBody> {
    json_response(e.code.http_status(), Some(e.index), e.to_json())
}

fn event_response(e: &Event, no_value_on_success: bool) -> Response<ResponseBody> {
    let status = if e.is_created() { 201 } else { 200 };
    let body = if no_value_on_success && matches!(e.action, Action::Set | Action::CompareAndSwap | Action::Create | Action::Update) {
        serde_json::json!({ "action": e.action }).to_string()
    } else {
        e.to_json()
    };
    json_response(status, Some(e.etcd_index), body)
}

fn plain(status: StatusCode, text: &str) -> Response<ResponseBody> {
    let mut r = Response::new(full(format!("{text}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Go's ServeMux path cleaning (etcd's router): `path.Clean`, keeping a
/// trailing slash.
fn go_clean_path(path: &str) -> String {
    let p = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    let mut clean = crate::tree::clean_path(&p);
    if p.ends_with('/') && clean != "/" {
        clean.push('/');
    }
    clean
}

/// etcd's router answers an unclean path (`a//b`, `./`, `../`) with a
/// permanent redirect to the clean one, and does nothing else.
fn redirect_unclean(req: &Request<Incoming>) -> Option<Response<ResponseBody>> {
    let decoded = form::decode(req.uri().path(), false, "the path").ok()?;
    let clean = go_clean_path(&decoded);
    if clean == decoded {
        return None;
    }
    let mut location = crate::client::encode(&clean, true);
    if let Some(q) = req.uri().query() {
        location.push('?');
        location.push_str(q);
    }
    let get = req.method() == Method::GET;
    let body = if get { format!("<a href=\"{location}\">Moved Permanently</a>.\n\n") } else { String::new() };
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if get || req.method() == Method::HEAD {
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    }
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert("Location", v);
    }
    Some(r)
}

/// Serve one request.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<ResponseBody>, Infallible> {
    if let Some(r) = redirect_unclean(&req) {
        return Ok(r);
    }
    let path = req.uri().path().to_string();
    let response = if path == KEYS_PREFIX || path.starts_with("/v2/keys/") {
        match keys(&app, req).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        }
    } else {
        match (req.method(), path.as_str()) {
            (&Method::GET, "/version") => {
                json_response(200, None, serde_json::json!({"etcdserver": ETCD_API_VERSION, "etcdcluster": ETCD_API_VERSION, "basalt": env!("CARGO_PKG_VERSION")}).to_string())
            }
            (&Method::GET, "/health") => json_response(200, None, r#"{"health":"true"}"#.into()),
            (&Method::GET, "/v2/members") => json_response(200, None, serde_json::json!({"members": [{"id": "1", "name": "basalt", "peerURLs": [], "clientURLs": app.client_urls}]}).to_string()),
            (&Method::GET, "/v2/machines") => plain(StatusCode::OK, &app.client_urls.join(", ")),
            (&Method::POST, reboot_lock::FLEETLOCK_PRE_REBOOT) | (&Method::POST, reboot_lock::FLEETLOCK_STEADY_STATE) => fleetlock(&app, req).await,
            _ => plain(StatusCode::NOT_FOUND, "404 page not found"),
        }
    };
    Ok(response)
}

async fn read_body(req: Request<Incoming>, limit: usize, index: u64) -> Result<(Bytes, Option<String>), EtcdError> {
    let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => Ok((b.to_bytes(), content_type)),
        Err(e) => {
            let cause = if e.is::<http_body_util::LengthLimitError>() { format!("request body larger than {limit} bytes") } else { format!("cannot read the request body: {e}") };
            Err(EtcdError::new(ErrorCode::InvalidForm, cause, index))
        }
    }
}

fn invalid(field: &str, index: u64) -> EtcdError {
    EtcdError::new(ErrorCode::InvalidField, format!("invalid value for {field:?}"), index)
}

async fn keys(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<ResponseBody>, EtcdError> {
    let store = &app.store;
    // Errors found while parsing the request carry index 0, as etcd's do.
    let index = 0;
    let method = req.method().clone();
    if ![Method::GET, Method::HEAD, Method::PUT, Method::POST, Method::DELETE].contains(&method) {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        r.headers_mut().insert("Allow", HeaderValue::from_static("HEAD,GET,PUT,POST,DELETE"));
        return Ok(r);
    }
    let form_error = |e: FormError| match e {
        FormError::BadEscape(_) => EtcdError::new(ErrorCode::InvalidForm, e.to_string(), index),
        FormError::NotUtf8(_) => EtcdError::new(ErrorCode::InvalidField, e.to_string(), index),
    };
    let raw_key = &req.uri().path()[KEYS_PREFIX.len()..];
    let key = form::decode(raw_key, false, "the key").map_err(form_error)?;
    let query = form::parse_pairs(req.uri().query().unwrap_or("")).map_err(form_error)?;
    let limits = store.limits();
    let body_limit = limits.max_value_bytes * 3 + limits.max_key_bytes + 64 * 1024;
    let (body, content_type) = read_body(req, body_limit, index).await?;
    let body_pairs = if (method == Method::PUT || method == Method::POST) && content_type.as_deref().is_some_and(|c| c.starts_with("application/x-www-form-urlencoded")) {
        let text = std::str::from_utf8(&body).map_err(|_| EtcdError::new(ErrorCode::InvalidForm, "the form body is not UTF-8", index))?;
        form::parse_pairs(text).map_err(form_error)?
    } else {
        Vec::new()
    };
    let form = Form::new(body_pairs, query);

    // The same checks, in the same order, as etcd's parseKeyRequest.
    let prev_index = form.uint("prevIndex").map_err(|_| EtcdError::new(ErrorCode::IndexNaN, r#"invalid value for "prevIndex""#, index))?;
    let wait_index = form.uint("waitIndex").map_err(|_| EtcdError::new(ErrorCode::IndexNaN, r#"invalid value for "waitIndex""#, index))?;
    let recursive = form.bool("recursive").map_err(|_| invalid("recursive", index))?;
    form.bool("sorted").map_err(|_| invalid("sorted", index))?;
    let wait = form.bool("wait").map_err(|_| invalid("wait", index))?;
    let dir = form.bool("dir").map_err(|_| invalid("dir", index))?;
    let quorum = form.bool("quorum").map_err(|_| invalid("quorum", index))?;
    let stream = form.bool("stream").map_err(|_| invalid("stream", index))?;
    if wait && method != Method::GET {
        return Err(EtcdError::new(ErrorCode::InvalidField, r#""wait" can only be used with GET requests"#, index));
    }
    let prev_value = form.value("prevValue").unwrap_or("").to_string();
    if form.has("prevValue") && prev_value.is_empty() {
        return Err(EtcdError::new(ErrorCode::PrevValueRequired, r#""prevValue" cannot be empty"#, index));
    }
    let no_value_on_success = form.bool("noValueOnSuccess").map_err(|_| invalid("noValueOnSuccess", index))?;
    let ttl = match form.value("ttl") {
        Some(t) if !t.is_empty() => Some(form.uint("ttl").map_err(|_| EtcdError::new(ErrorCode::TtlNaN, r#"invalid value for "ttl""#, index))?),
        _ => None,
    };
    let prev_exist = if form.has("prevExist") { Some(form.bool("prevExist").map_err(|_| EtcdError::new(ErrorCode::InvalidField, "invalid value for prevExist", index))?) } else { None };
    let mut refresh = false;
    if form.has("refresh") {
        refresh = form.bool("refresh").map_err(|_| EtcdError::new(ErrorCode::InvalidField, "invalid value for refresh", index))?;
        if refresh {
            if form.value("value").is_some_and(|v| !v.is_empty()) {
                return Err(EtcdError::new(ErrorCode::RefreshValue, "A value was provided on a refresh", index));
            }
            if ttl.is_none() {
                return Err(EtcdError::new(ErrorCode::RefreshTtlRequired, "No TTL value set", index));
            }
        }
    }
    let value = form.value("value").unwrap_or("").to_string();
    let expires = ttl.map(|t| Timestamp::now().plus_seconds(t));

    let mutation = match method {
        Method::GET | Method::HEAD => {
            if wait && method == Method::GET {
                let watch = store.watch(&key, recursive, wait_index)?;
                return Ok(watch_response(watch, stream));
            }
            if quorum {
                // Be current with the backend first (a no-op on one machine).
                store.sync().await;
            }
            let event = store.get(&key, recursive)?;
            let mut r = event_response(&event, false);
            if method == Method::HEAD {
                *r.body_mut() = full(Bytes::new());
            }
            return Ok(r);
        }
        Method::POST => Mutation::Create { key, dir, value, unique: true, expires },
        Method::PUT => match prev_exist {
            Some(true) if prev_index == 0 && prev_value.is_empty() => Mutation::Update { key, value, expires, refresh },
            Some(true) => Mutation::CompareAndSwap { key, prev_value, prev_index, value, expires, refresh },
            Some(false) => Mutation::Create { key, dir, value, unique: false, expires },
            None if prev_index > 0 || !prev_value.is_empty() => Mutation::CompareAndSwap { key, prev_value, prev_index, value, expires, refresh },
            None => Mutation::Set { key, dir, value, expires, refresh },
        },
        _ => {
            if prev_index > 0 || !prev_value.is_empty() {
                Mutation::CompareAndDelete { key, prev_value, prev_index }
            } else {
                Mutation::Delete { key, dir, recursive }
            }
        }
    };
    let event = store.write(mutation).await?;
    Ok(event_response(&event, no_value_on_success))
}

/// A watch answers at once with its headers; the body is the event (or, with
/// `stream=true`, every event) once it happens. A client that goes away drops
/// the body, and with it the watch.
fn watch_response(watch: Watch, stream: bool) -> Response<ResponseBody> {
    let start_index = watch.start_index;
    let body = WatchBody { next: Some(Box::pin(next_line(watch))), stream };
    let mut r = Response::new(BodyExt::boxed_unsync(body));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert("X-Etcd-Index", HeaderValue::from(start_index));
    r
}

type NextLine = Pin<Box<dyn Future<Output = Option<(Bytes, Watch)>> + Send>>;

async fn next_line(mut watch: Watch) -> Option<(Bytes, Watch)> {
    match watch.next_event().await {
        Ok(e) => Some((Bytes::from(e.to_json() + "\n"), watch)),
        Err(e) => Some((Bytes::from(e.to_json() + "\n"), watch)).filter(|_| e.code != ErrorCode::Internal),
    }
}

struct WatchBody {
    next: Option<NextLine>,
    stream: bool,
}

impl Body for WatchBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let Some(fut) = self.next.as_mut() else {
            return Poll::Ready(None);
        };
        match fut.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.next = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some((line, watch))) => {
                self.next = if self.stream { Some(Box::pin(next_line(watch))) } else { None };
                Poll::Ready(Some(Ok(Frame::data(line))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none()
    }
}

async fn fleetlock(app: &Arc<App>, req: Request<Incoming>) -> Response<ResponseBody> {
    let path = req.uri().path().to_string();
    if req.headers().get("fleet-lock-protocol").and_then(|v| v.to_str().ok()) != Some("true") {
        return fleetlock_error(400, "missing_header", "fleet-lock-protocol header must be \"true\"");
    }
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return fleetlock_error(400, "bad_body", &e.to_string()),
    };
    let params = match reboot_lock::parse_fleetlock_body(&body) {
        Ok(p) => p,
        Err(e) => return fleetlock_error(400, "bad_body", &e),
    };
    let lock = RebootLock::new(app.store.clone(), &params.group);
    let store_op = {
        let id = params.id.clone();
        let pre = path == reboot_lock::FLEETLOCK_PRE_REBOOT;
        tokio::task::spawn_blocking(move || if pre { lock.acquire(&id) } else { lock.release(&id) }).await
    };
    match store_op {
        Ok(Ok(())) => json_response(200, None, "{}".into()),
        Ok(Err(e)) => {
            let status = if e.is_busy() { 409 } else { 500 };
            fleetlock_error(status, e.kind(), &e.to_string())
        }
        Err(e) => fleetlock_error(500, "internal", &e.to_string()),
    }
}

fn fleetlock_error(status: u16, kind: &str, value: &str) -> Response<ResponseBody> {
    json_response(status, None, serde_json::json!({"kind": kind, "value": value}).to_string())
}
