//! A loopback Kubernetes API server for Leases, with fault injection.
//!
//! It speaks real HTTP/1.1 and the API server's JSON, so the real
//! `kube::Client` talks to it unchanged (nothing below the client is mocked).
//! Each client gets its own [`Endpoint`] (its own port) so that faults can hit
//! one client only: a cut endpoint drops its connections, as a partition
//! between one pod and the API server would.

mod semantics;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use semantics::{Change, LeaseStore, Reply, Verb};

/// Every response body: a whole JSON document, or a watch's event stream.
type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// How many changes a watch can resume from (older ones answer 410 Gone).
const HISTORY: usize = 4096;

/// Faults injected on one endpoint.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    latency: Duration,
    cut: bool,
    fail_status: u16,
    fail_remaining: u32,
}

/// Requests an endpoint received, by verb (including failed ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// GET of one lease.
    pub get: u64,
    /// GET of the collection.
    pub list: u64,
    /// POST.
    pub create: u64,
    /// PUT.
    pub update: u64,
    /// DELETE.
    pub delete: u64,
    /// GET with `watch=true` (each watch request, not each event).
    pub watch: u64,
}

impl RequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.get + self.list + self.create + self.update + self.delete + self.watch
    }
}

#[derive(Default)]
struct EndpointState {
    faults: Faults,
    counts: RequestCounts,
}

/// One successful write of a lease, as the server applied it: the ground
/// truth for checkers (who held the lease when).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseWrite {
    /// When the server applied it (tokio time).
    pub at: tokio::time::Instant,
    /// Namespace.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// `spec.holderIdentity` after the write (`None` if cleared).
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds` after the write.
    pub duration_secs: Option<i64>,
    /// `spec.leaseTransitions` after the write.
    pub transitions: Option<i64>,
    /// `metadata.resourceVersion` the write was given (the fencing token of
    /// a tenure the write began).
    pub resource_version: Option<u64>,
}

struct Inner {
    store: Mutex<LeaseStore>,
    writes: Mutex<Vec<LeaseWrite>>,
    endpoints: Mutex<BTreeMap<String, EndpointState>>,
    down: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Recent changes, for watches that resume from a resourceVersion.
    history: Mutex<std::collections::VecDeque<Change>>,
    /// Live changes, to every open watch.
    changes: tokio::sync::broadcast::Sender<Change>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            store: Mutex::default(),
            writes: Mutex::default(),
            endpoints: Mutex::default(),
            down: AtomicBool::default(),
            tasks: Mutex::default(),
            history: Mutex::default(),
            changes: tokio::sync::broadcast::channel(HISTORY).0,
        }
    }
}

impl Inner {
    /// Applies one request to the store and fans its changes out to watches.
    fn apply(&self, verb: Verb, namespace: &str, name: Option<&str>, body: Option<Value>) -> Reply {
        let mut store = lock(&self.store);
        let reply = store.handle(verb, namespace, name, body, &now());
        let changes = store.take_changes();
        // Under the store lock, so watches see changes in order.
        let mut history = lock(&self.history);
        for change in changes {
            history.push_back(change.clone());
            if history.len() > HISTORY {
                history.pop_front();
            }
            let _ = self.changes.send(change);
        }
        reply
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The emulated API server; cheap to clone. Dropping the last clone does not
/// stop it; call [`ApiServer::shutdown`].
#[derive(Clone, Default)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

/// One client's way in: a URL, and a kubeconfig that points to it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The endpoint's name (faults and counters are keyed by it).
    pub name: String,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Endpoint {
    /// A kubeconfig (YAML) whose current context reaches this endpoint.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: loopback\n  cluster:\n    server: {url}\nusers:\n- name: {name}\n  user: {{}}\ncontexts:\n- name: {name}\n  context:\n    cluster: loopback\n    user: {name}\n    namespace: {namespace}\ncurrent-context: {name}\n",
            url = self.url,
            name = self.name,
        )
    }

    /// A `kube::Client` for this endpoint, built through its kubeconfig.
    pub async fn client(&self, namespace: &str) -> Result<kube::Client, kube::Error> {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig(namespace))
            .map_err(kube::Error::InferKubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .map_err(kube::Error::InferKubeconfig)?;
        kube::Client::try_from(config)
    }
}

impl ApiServer {
    /// A server with no endpoints yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens a new endpoint named `name` on a free loopback port. Must be
    /// called inside a tokio runtime.
    pub fn endpoint(&self, name: &str) -> std::io::Result<Endpoint> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = TcpListener::from_std(std_listener)?;
        lock(&self.inner.endpoints)
            .entry(name.to_owned())
            .or_default();
        let task = tokio::spawn(accept(Arc::clone(&self.inner), name.to_owned(), listener));
        lock(&self.inner.tasks).push(task);
        tracing::debug!(endpoint = name, %addr, "emulator endpoint open");
        Ok(Endpoint {
            name: name.to_owned(),
            url: format!("http://{addr}"),
        })
    }

    fn with_faults(&self, endpoint: &str, f: impl FnOnce(&mut Faults)) {
        f(&mut lock(&self.inner.endpoints)
            .entry(endpoint.to_owned())
            .or_default()
            .faults);
    }

    /// Drops every connection to `endpoint` (and refuses new ones) while `cut`.
    pub fn cut(&self, endpoint: &str, cut: bool) {
        self.with_faults(endpoint, |f| f.cut = cut);
    }

    /// Delays every answer on `endpoint` by `latency`.
    pub fn set_latency(&self, endpoint: &str, latency: Duration) {
        self.with_faults(endpoint, |f| f.latency = latency);
    }

    /// Answers the next `count` requests on `endpoint` with `status` (500, 503...).
    pub fn fail_next(&self, endpoint: &str, count: u32, status: u16) {
        self.with_faults(endpoint, |f| {
            f.fail_status = status;
            f.fail_remaining = count;
        });
    }

    /// Clears every fault on `endpoint`.
    pub fn heal(&self, endpoint: &str) {
        self.with_faults(endpoint, |f| *f = Faults::default());
    }

    /// The whole server down (every endpoint drops connections) or back up.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    /// Requests `endpoint` received so far.
    pub fn counts(&self, endpoint: &str) -> RequestCounts {
        lock(&self.inner.endpoints)
            .get(endpoint)
            .map(|e| e.counts)
            .unwrap_or_default()
    }

    /// The stored lease, as JSON.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.inner.store).get(namespace, name).cloned()
    }

    /// Applies a request directly, bypassing HTTP (to stage state in tests).
    pub fn apply(
        &self,
        verb: Verb,
        namespace: &str,
        name: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.inner.apply(verb, namespace, name, body)
    }

    /// Makes `namespace` exist: like the real server, the emulator refuses
    /// writes into a namespace it does not have (it starts with `default`,
    /// `kube-system`, `kube-public` and `kube-node-lease`).
    pub fn create_namespace(&self, namespace: &str) {
        lock(&self.inner.store).create_namespace(namespace);
    }

    /// Every successful create or update so far, in order.
    pub fn writes(&self) -> Vec<LeaseWrite> {
        lock(&self.inner.writes).clone()
    }

    /// Stops every endpoint.
    pub fn shutdown(&self) {
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

fn is_cut(inner: &Inner, endpoint: &str) -> bool {
    inner.down.load(Ordering::SeqCst)
        || lock(&inner.endpoints)
            .get(endpoint)
            .is_some_and(|e| e.faults.cut)
}

async fn accept(inner: Arc<Inner>, endpoint: String, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if is_cut(&inner, &endpoint) {
            drop(stream);
            continue;
        }
        let inner = Arc::clone(&inner);
        let name = endpoint.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let inner = Arc::clone(&inner);
                let name = name.clone();
                async move { serve(inner, &name, req).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Why a request closes its connection instead of getting an answer.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by fault injection")]
struct Dropped;

async fn serve(
    inner: Arc<Inner>,
    endpoint: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Dropped> {
    let inner = &inner;
    let latency = lock(&inner.endpoints)
        .get(endpoint)
        .map(|e| e.faults.latency)
        .unwrap_or_default();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if is_cut(inner, endpoint) {
        return Err(Dropped);
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let Some((namespace, name)) = parse_path(&path) else {
        return Ok(respond(
            404,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("the server could not find the requested resource ({path})")}),
        ));
    };
    let verb = match (&method, name.is_some()) {
        (&Method::GET, true) => Verb::Get,
        (&Method::GET, false) if query.watch => Verb::Watch,
        (&Method::GET, false) => Verb::List,
        (&Method::POST, false) => Verb::Create,
        (&Method::PUT, true) => Verb::Update,
        (&Method::DELETE, true) => Verb::Delete,
        _ => {
            return Ok(respond(
                405,
                serde_json::json!({"kind": "Status", "status": "Failure", "reason": "MethodNotAllowed", "code": 405}),
            ));
        }
    };
    let injected = {
        let mut endpoints = lock(&inner.endpoints);
        let state = endpoints.entry(endpoint.to_owned()).or_default();
        let counts = &mut state.counts;
        match verb {
            Verb::Get => counts.get += 1,
            Verb::List => counts.list += 1,
            Verb::Create => counts.create += 1,
            Verb::Update => counts.update += 1,
            Verb::Delete => counts.delete += 1,
            Verb::Watch => counts.watch += 1,
        }
        let f = &mut state.faults;
        (f.fail_remaining > 0).then(|| {
            f.fail_remaining -= 1;
            f.fail_status
        })
    };
    if let Some(code) = injected {
        let reason = if code == 503 {
            "ServiceUnavailable"
        } else {
            "InternalError"
        };
        return Ok(respond(
            code,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": reason, "code": code, "message": "injected fault"}),
        ));
    }
    let json = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                return Ok(respond(
                    400,
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "BadRequest", "code": 400, "message": format!("invalid JSON: {e}")}),
                ));
            }
        }
    };
    if verb == Verb::Watch {
        return Ok(watch(
            Arc::clone(inner),
            endpoint.to_owned(),
            namespace,
            query,
        ));
    }
    let mut reply = inner.apply(verb, &namespace, name.as_deref(), json);
    if let (Verb::List, Some(only)) = (verb, &query.name) {
        if let Some(items) = reply.body["items"].as_array_mut() {
            items.retain(|item| {
                item.pointer("/metadata/name").and_then(Value::as_str) == Some(only)
            });
        }
    }
    if matches!(verb, Verb::Create | Verb::Update) && (reply.status == 200 || reply.status == 201) {
        let spec = &reply.body["spec"];
        let write = LeaseWrite {
            at: tokio::time::Instant::now(),
            namespace: namespace.clone(),
            name: reply
                .body
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            holder: spec["holderIdentity"]
                .as_str()
                .filter(|h| !h.is_empty())
                .map(str::to_owned),
            duration_secs: spec["leaseDurationSeconds"].as_i64(),
            transitions: spec["leaseTransitions"].as_i64(),
            resource_version: reply
                .body
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|rv| rv.parse().ok()),
        };
        lock(&inner.writes).push(write);
    }
    Ok(respond(reply.status, reply.body))
}

/// The query parameters the emulator understands.
#[derive(Debug, Default)]
struct Query {
    watch: bool,
    /// From `fieldSelector=metadata.name=<name>`.
    name: Option<String>,
    resource_version: Option<u64>,
    timeout: Option<Duration>,
}

impl Query {
    fn parse(query: &str) -> Self {
        let mut parsed = Self::default();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "watch" => parsed.watch = value == "true" || value == "1",
                "fieldSelector" => {
                    parsed.name = value.strip_prefix("metadata.name=").map(str::to_owned);
                }
                "resourceVersion" => parsed.resource_version = value.parse().ok(),
                "timeoutSeconds" => {
                    parsed.timeout = value.parse().ok().map(Duration::from_secs);
                }
                _ => {}
            }
        }
        parsed
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A watch: the changes after `resourceVersion` (410 Gone if they are no
/// longer kept), then live ones, one JSON event per line, until the timeout
/// or a fault cuts the endpoint (the connection then breaks mid-stream).
fn watch(inner: Arc<Inner>, endpoint: String, namespace: String, query: Query) -> Response<Body> {
    let matches = {
        let name = query.name.clone();
        move |c: &Change| c.namespace == namespace && name.as_ref().is_none_or(|n| *n == c.name)
    };
    // Locks in `Inner::apply`'s order (store, then history); subscribing
    // under the store lock means no change falls between history and live.
    let store = lock(&inner.store);
    let live = inner.changes.subscribe();
    let since = query
        .resource_version
        .unwrap_or_else(|| store.resource_version());
    let backlog: std::collections::VecDeque<Change> = {
        let history = lock(&inner.history);
        let oldest = history.front().map_or(u64::MAX, |c| c.resource_version);
        if since + 1 < oldest && since < store.resource_version() {
            return respond(
                410,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410, "message": format!("too old resource version: {since}")}),
            );
        }
        history
            .iter()
            .filter(|c| c.resource_version > since && matches(c))
            .cloned()
            .collect()
    };
    drop(store);
    let deadline = tokio::time::Instant::now() + query.timeout.unwrap_or(Duration::from_secs(1800));
    struct State {
        inner: Arc<Inner>,
        endpoint: String,
        backlog: std::collections::VecDeque<Change>,
        live: tokio::sync::broadcast::Receiver<Change>,
        last: u64,
        done: bool,
    }
    let state = State {
        inner,
        endpoint,
        backlog,
        live,
        last: since,
        done: false,
    };
    let events = futures::stream::unfold(state, move |mut st| {
        let matches = matches.clone();
        async move {
            if st.done {
                return None;
            }
            loop {
                if is_cut(&st.inner, &st.endpoint) {
                    st.done = true;
                    let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, Dropped);
                    return Some((Err(cut), st));
                }
                let change = match st.backlog.pop_front() {
                    Some(change) => Some(change),
                    None => tokio::select! {
                        received = st.live.recv() => match received {
                            Ok(change) => Some(change),
                            // Fell behind or the server is gone: end the watch; the client resumes.
                            Err(_) => return None,
                        },
                        () = tokio::time::sleep(Duration::from_millis(50)) => None,
                        () = tokio::time::sleep_until(deadline) => return None,
                    },
                };
                let Some(change) = change.filter(|c| c.resource_version > st.last && matches(c))
                else {
                    continue;
                };
                st.last = change.resource_version;
                let latency = lock(&st.inner.endpoints)
                    .get(&st.endpoint)
                    .map(|e| e.faults.latency)
                    .unwrap_or_default();
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                let line = serde_json::json!({ "type": change.kind, "object": change.object });
                let frame = hyper::body::Frame::data(Bytes::from(format!("{line}\n")));
                return Some((Ok(frame), st));
            }
        }
    });
    let mut response = Response::new(BodyExt::boxed(http_body_util::StreamBody::new(events)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn respond(status: u16, body: Value) -> Response<Body> {
    let full = Full::new(Bytes::from(body.to_string())).map_err(|never| match never {});
    let mut response = Response::new(BodyExt::boxed(full));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// `/apis/coordination.k8s.io/v1/namespaces/{ns}/leases[/{name}]`.
fn parse_path(path: &str) -> Option<(String, Option<String>)> {
    let rest = path.strip_prefix("/apis/coordination.k8s.io/v1/namespaces/")?;
    let mut parts = rest.split('/');
    let namespace = parts.next()?.to_owned();
    if parts.next()? != "leases" {
        return None;
    }
    let name = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
    if parts.next().is_some() {
        return None;
    }
    Some((namespace, name))
}
