//! The host API: HTTP/1.1 with JSON on a unix socket (`curl --unix-socket` works), with
//! host authority over the partition name space, metrics in JSON and Prometheus text,
//! VM information and the balloon. `vmm/api/openapi.yaml` describes it.
//!
//! | method and path | does |
//! | --- | --- |
//! | `GET /vm` | backend, classes and their guest-physical placement |
//! | `GET /config` | the configuration the VM runs with |
//! | `GET /metrics` | Prometheus text: per class (resident host bytes included) and per partition |
//! | `GET /partition/mem/...` | a partition's or class's metrics; `?list` lists instead |
//! | `POST /partition/mem/...` | create, body `{"min": N, "max": N, "mode": N, "zone": B}` (all optional); in a group, `{"link": P}` makes a pseudo partition naming P |
//! | `PATCH /partition/mem/...` with `mode`, `uid` and `gid`, `policy`, `clear_policy` or `reset_highest` | chmod, chown, set a one-way policy (clearing one is `EPERM`), reset the highest size answering the old one |
//! | `PATCH /partition/mem/...` | change limits, body `{"min": N, "max": N}`; raising a sysram max deflates what reclaims ballooned |
//! | `PATCH /partition/mem/...` with `"reclaim": true` | start a reclaim, body `{"max": N, "reclaim": true, "deadline_ms": N}`: 202 and its status |
//! | `GET /reclaim`, `GET /reclaim/{id}` | reclaims' progress |
//! | `GET /events?path=P` | a stream of P's events, one JSON object per line, until the client leaves |
//! | `DELETE /partition/mem/...` | destroy |
//! | `GET /objects`, `GET /objects/{name}`, `DELETE /objects/{name}` | shared objects with their partition, size and mappers; unlink one |
//! | `GET /balloon` | target, actual, released pages, statistics |
//! | `PUT /balloon` | body `{"target_pages": N}` |
//!
//! `client.rs` is its client, as `mempart-vmm ctl` uses it.

pub mod client;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mempart::{Credential, EventFilter, Limits, NewPartition, Node, UNLIMITED};
use serde::Deserialize;
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::reclaim::DEFAULT_DEADLINE;
use crate::vm::VmHandle;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// A refusal: the HTTP status and a message.
struct ApiError(u16, String);

impl From<mempart::Error> for ApiError {
    fn from(e: mempart::Error) -> ApiError {
        let status = match e.errno {
            mempart::Errno::Enoent | mempart::Errno::Esrch => 404,
            mempart::Errno::Eacces | mempart::Errno::Eperm => 403,
            mempart::Errno::Eexist
            | mempart::Errno::Ebusy
            | mempart::Errno::Enotempty
            | mempart::Errno::Enomem => 409,
            _ => 400,
        };
        ApiError(status, e.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    min: Option<u64>,
    max: Option<u64>,
    mode: Option<u32>,
    /// Backs the new partition with a zone.
    #[serde(default)]
    zone: bool,
    /// Makes the new node a pseudo partition naming this real partition.
    link: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    min: Option<u64>,
    max: Option<u64>,
    #[serde(default)]
    reclaim: bool,
    deadline_ms: Option<u64>,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    policy: Option<mempart::Policy>,
    clear_policy: Option<mempart::Policy>,
    #[serde(default)]
    reset_highest: bool,
}

/// Most event streams served at once.
pub const MAX_EVENT_STREAMS: usize = 16;
/// Queue of each event stream's subscription.
const STREAM_QUEUE: usize = 1024;
/// An idle event stream sends an empty line this often, to notice a client that left.
const STREAM_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneBody {
    requested: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalloonBody {
    target_pages: u32,
}

/// A running API server; [`ApiServer::stop`] ends it and removes its socket.
pub struct ApiServer {
    server: Arc<Server>,
    thread: JoinHandle<()>,
    path: PathBuf,
}

impl ApiServer {
    /// Stops answering (event streams already open run on until their clients leave),
    /// waits for the server thread and removes the socket.
    pub fn stop(self) {
        let ApiServer {
            server,
            thread,
            path,
        } = self;
        server.unblock();
        let _ = thread.join();
        drop(server);
        // tiny_http wakes its accept thread by connecting to the address it was bound at,
        // the staging name; connecting here, at the real one, does it instead.
        let _ = std::os::unix::net::UnixStream::connect(&path);
        let _ = std::fs::remove_file(path);
    }
}

/// Binds a unix socket at `path` (replacing a stale one) that only its owner may use:
/// bound under a staging name, made 0600, then renamed into place, so it is never
/// reachable with the umask's mode.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other(format!("{}: not a file name", path.display())))?;
    let staging = path.with_file_name(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let at = |e: std::io::Error, p: &Path| {
        std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))
    };
    let listener = UnixListener::bind(&staging).map_err(|e| at(e, &staging))?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&staging, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(at(e, path));
    }
    Ok(listener)
}

/// Serves the API on `path` (replacing a stale socket, mode 0600) on its own thread.
/// `config` is what `GET /config` reports. Each request is answered on its own thread
/// (at most [`MAX_REQUESTS_IN_FLIGHT`]), so a client that holds its body back or does
/// not read its answer delays nobody else.
pub fn serve(path: &Path, vm: VmHandle, config: Value) -> std::io::Result<ApiServer> {
    let listener = bind_private(path)?;
    let server = Server::from_listener(listener, None)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
    let server = Arc::new(server);
    let serving = Arc::clone(&server);
    let config = Arc::new(config);
    let thread = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            let streams = Arc::new(AtomicUsize::new(0));
            let in_flight = Arc::new(AtomicUsize::new(0));
            for request in serving.incoming_requests() {
                let url = request.url().to_string();
                let (path, query) = url.split_once('?').unwrap_or((&url, ""));
                if *request.method() == Method::Get && path == "/events" {
                    start_stream(request, query, &vm, &streams);
                } else {
                    dispatch(request, &vm, &config, &in_flight);
                }
            }
        })?;
    Ok(ApiServer {
        server,
        thread,
        path: path.to_path_buf(),
    })
}

/// Most requests answered at once, event streams aside; beyond that, 503.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 32;
/// A request whose body has not arrived this long after its headers is refused (408)
/// and not acted on.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// Answers `request` on a thread of its own, or 503 when too many are in flight.
fn dispatch(request: Request, vm: &VmHandle, config: &Arc<Value>, in_flight: &Arc<AtomicUsize>) {
    if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_REQUESTS_IN_FLIGHT {
        in_flight.fetch_sub(1, Ordering::AcqRel);
        let busy = format!("{MAX_REQUESTS_IN_FLIGHT} requests are being answered; try again");
        send(request, Err(ApiError(503, busy)));
        return;
    }
    let (vm, config, in_flight) = (vm.clone(), Arc::clone(config), Arc::clone(in_flight));
    let arrived = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("api-request".into())
        .spawn(move || {
            answer(request, &vm, &config, arrived);
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        // The request went with the closure: its client sees the connection close.
        eprintln!("mempart-vmm: api: no thread for a request: {e}");
    }
}

fn answer(mut request: Request, vm: &VmHandle, config: &Value, arrived: Instant) {
    let result = body(&mut request).and_then(|body| {
        if arrived.elapsed() > BODY_DEADLINE {
            let late = format!("the body took over {}s to arrive", BODY_DEADLINE.as_secs());
            return Err(ApiError(408, late));
        }
        route(request.method(), request.url(), &body, vm, config)
    });
    if result.is_ok() && *request.method() != Method::Get {
        // Whatever changed, the guest's followers (the agent, event streams) look again,
        // and zones follow their partitions before the client hears the answer.
        vm.follow_zones();
        vm.service().changed();
    }
    send(request, result);
}

/// Writes `result` as the answer to `request`.
fn send(request: Request, result: Answer) {
    let (status, payload, content_type) = match result {
        Ok(Reply {
            status,
            body,
            content_type,
        }) => (status, body, content_type),
        Err(ApiError(status, message)) => (
            status,
            json!({ "error": message }).to_string(),
            "application/json",
        ),
    };
    let header = Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes());
    let mut response = Response::from_string(payload).with_status_code(status);
    if let Ok(header) = header {
        response = response.with_header(header);
    }
    let _ = request.respond(response);
}

fn body(request: &mut Request) -> Result<Vec<u8>, ApiError> {
    if request.body_length().is_some_and(|n| n > MAX_BODY) {
        return Err(ApiError(
            413,
            format!("bodies are at most {MAX_BODY} bytes"),
        ));
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError(400, format!("reading the body: {e}")))?;
    if body.len() > MAX_BODY {
        return Err(ApiError(
            413,
            format!("bodies are at most {MAX_BODY} bytes"),
        ));
    }
    Ok(body)
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError(400, format!("bad JSON body: {e}")))
}

/// A successful answer.
struct Reply {
    status: u16,
    body: String,
    content_type: &'static str,
}

type Answer = Result<Reply, ApiError>;

fn json_answer(value: Value) -> Answer {
    Ok(Reply {
        status: 200,
        body: value.to_string(),
        content_type: "application/json",
    })
}

fn route(method: &Method, url: &str, body: &[u8], vm: &VmHandle, config: &Value) -> Answer {
    let (raw, query) = url.split_once('?').unwrap_or((url, ""));
    let decoded = decode_path(raw)?;
    let path = decoded.as_str();
    let host = Credential::Host;
    match (method, path) {
        (Method::Get, "/vm") => json_answer(vm.info()),
        (Method::Get, "/config") => json_answer(config.clone()),
        (Method::Get, "/metrics") => Ok(Reply {
            status: 200,
            body: vm.with_engine(prometheus)
                + &resident_gauge(vm)
                + &violation_counter(vm)
                + &zone_gauges(vm)
                + &disk_counters(vm)
                + &net_counters(vm),
            content_type: "text/plain; version=0.0.4",
        }),
        (Method::Get, "/reclaim") => json_answer(json!(vm.reclaimer().list())),
        (Method::Get, "/objects") => json_answer(json!(vm.with_engine(|e| e.objects())?)),
        (Method::Get, p) if p.starts_with("/objects/") => {
            let name = p.trim_start_matches("/objects/");
            json_answer(json!(vm.with_engine(|e| e.object(name))?))
        }
        (Method::Delete, p) if p.starts_with("/objects/") => {
            let name = p.trim_start_matches("/objects/");
            vm.service().unlink_object(&host, name)?;
            json_answer(json!({ "unlinked": name }))
        }
        (Method::Get, p) if p.starts_with("/reclaim/") => {
            let id = p
                .trim_start_matches("/reclaim/")
                .parse::<u64>()
                .map_err(|_| ApiError(400, format!("{p}: not a reclaim number")))?;
            let status = vm
                .reclaimer()
                .status(id)
                .ok_or_else(|| ApiError(404, format!("no reclaim {id}")))?;
            json_answer(json!(status))
        }
        (Method::Patch, p) if p.starts_with(mempart::MEM_ROOT) => {
            let b: LimitsBody = parse(body)?;
            patch(vm, p, b)
        }
        (Method::Get, p) if p.starts_with("/zone/") => {
            let name = p.trim_start_matches("/zone/");
            let zone = vm
                .zones()
                .into_iter()
                .find(|z| z.name == name)
                .ok_or_else(|| ApiError(404, format!("ENOENT: no zone {name:?}")))?;
            json_answer(zone.to_json())
        }
        (Method::Patch, p) if p.starts_with("/zone/") => {
            let name = p.trim_start_matches("/zone/");
            let b: ZoneBody = parse(body)?;
            vm.set_zone_requested(name, b.requested)
                .map_err(|e| match e {
                    crate::VmError::NoZone(_) => ApiError(404, format!("ENOENT: {e}")),
                    crate::VmError::ZoneBound { .. } => ApiError(409, format!("EBUSY: {e}")),
                    _ => ApiError(400, format!("EINVAL: {e}")),
                })?;
            json_answer(json!({ "zone": name, "requested": b.requested }))
        }
        (Method::Get, "/balloon") => {
            let s = vm.balloon().status();
            json_answer(json!({
                "target_pages": s.target_pages, "actual_pages": s.actual_pages,
                "inflated_pages": s.inflated_pages, "reported_bytes": s.reported_bytes,
                "rejected": s.rejected, "stats": s.stats,
            }))
        }
        (Method::Put, "/balloon") => {
            let b: BalloonBody = parse(body)?;
            vm.balloon()
                .set_target(b.target_pages)
                .map_err(|e| ApiError(500, format!("balloon: {e}")))?;
            json_answer(json!({ "target_pages": b.target_pages }))
        }
        (_, p) if p.starts_with(mempart::MEM_ROOT) => {
            let p = p.to_string();
            vm.with_engine(|e| -> Answer {
                match method {
                    Method::Get if query == "list" => json_answer(json!(e.list(&host, &p)?)),
                    Method::Get => match e.resolve(&p)? {
                        Node::Class(_) => json_answer(json!(e.class_metrics(&host, &p)?)),
                        _ => {
                            let mut metrics = e.metrics(&host, &p)?;
                            vm.service().measure_zone(&mut metrics);
                            json_answer(json!(metrics))
                        }
                    },
                    Method::Post => {
                        let b: CreateBody = parse(if body.is_empty() { b"{}" } else { body })?;
                        if let Some(target) = b.link {
                            if b.min.is_some() || b.max.is_some() || b.mode.is_some() || b.zone {
                                return Err(ApiError(
                                    400,
                                    "a pseudo partition (link) takes no min, max, mode or zone"
                                        .into(),
                                ));
                            }
                            e.link(&host, &p, &target)?;
                            return json_answer(json!({ "linked": p, "target": target }));
                        }
                        let limits = Limits {
                            min: b.min.unwrap_or(0),
                            max: b.max.unwrap_or(UNLIMITED),
                        };
                        e.create(
                            &host,
                            &p,
                            NewPartition {
                                limits,
                                mode: b.mode.unwrap_or(0o755),
                                zone: b.zone,
                            },
                        )?;
                        json_answer(json!({ "created": p }))
                    }
                    Method::Delete => {
                        e.destroy(&host, &p)?;
                        json_answer(json!({ "destroyed": p }))
                    }
                    _ => Err(ApiError(405, format!("{method} is not served on {p}"))),
                }
            })
        }
        _ => Err(ApiError(404, format!("no endpoint {method} {path}"))),
    }
}

/// Changes one thing: limits (a reclaim when asked: 202 and its status), the mode, the
/// owner, or a policy.
fn patch(vm: &VmHandle, path: &str, b: LimitsBody) -> Answer {
    let limits = b.min.is_some() || b.max.is_some() || b.reclaim;
    let owner = b.uid.is_some() || b.gid.is_some();
    let kinds = [
        limits,
        b.mode.is_some(),
        owner,
        b.policy.is_some(),
        b.clear_policy.is_some(),
        b.reset_highest,
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(ApiError(
            400,
            "give one change: limits (min, max, reclaim), mode, uid and gid, policy, \
             clear_policy or reset_highest"
                .into(),
        ));
    }
    let host = Credential::Host;
    if b.reset_highest {
        let old = vm.with_engine(|e| e.reset_highest(&host, path))?;
        return json_answer(json!({ "highest": old }));
    }
    if let Some(policy) = b.clear_policy {
        vm.with_engine(|e| e.clear_policy(&host, path, policy))?;
        return json_answer(json!({ "cleared": policy }));
    }
    if let Some(mode) = b.mode {
        vm.with_engine(|e| e.chmod(&host, path, mode))?;
        return json_answer(json!({ "mode": mode }));
    }
    if owner {
        let (Some(uid), Some(gid)) = (b.uid, b.gid) else {
            return Err(ApiError(400, "uid and gid go together".into()));
        };
        vm.with_engine(|e| e.chown(&host, path, uid, gid))?;
        return json_answer(json!({ "uid": uid, "gid": gid }));
    }
    if let Some(policy) = b.policy {
        vm.with_engine(|e| e.set_policy(&host, path, policy))?;
        return json_answer(json!({ "policy": policy }));
    }
    if !b.reclaim {
        if b.deadline_ms.is_some() {
            return Err(ApiError(400, "deadline_ms goes with reclaim".into()));
        }
        let (outcome, deflated) = vm.reclaimer().set_limits(path, b.min, b.max)?;
        return json_answer(json!({ "outcome": outcome, "deflated_pages": deflated }));
    }
    let Some(max) = b.max.filter(|_| b.min.is_none()) else {
        return Err(ApiError(
            400,
            "a reclaim takes max (and deadline_ms) only".into(),
        ));
    };
    let deadline = b
        .deadline_ms
        .map_or(DEFAULT_DEADLINE, std::time::Duration::from_millis);
    let status = vm.reclaimer().start(path, max, deadline)?;
    Ok(Reply {
        status: 202,
        body: json!(status).to_string(),
        content_type: "application/json",
    })
}

/// Answers `GET /events?path=P` on a thread of its own: the response head, then each of
/// `{"subscribed": P}` and then P's events as one JSON line each as they happen (chunked),
/// until the client leaves or P is destroyed.
fn start_stream(request: Request, query: &str, vm: &VmHandle, streams: &Arc<AtomicUsize>) {
    let refuse = |request: Request, ApiError(status, message)| {
        let body = json!({ "error": message }).to_string();
        let _ = request.respond(Response::from_string(body).with_status_code(status));
    };
    let Some(path) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("path="))
        .map(percent_decode)
    else {
        return refuse(request, ApiError(400, "events need ?path=P".into()));
    };
    if streams.fetch_add(1, Ordering::SeqCst) >= MAX_EVENT_STREAMS {
        streams.fetch_sub(1, Ordering::SeqCst);
        return refuse(
            request,
            ApiError(503, format!("at most {MAX_EVENT_STREAMS} event streams")),
        );
    }
    let filter = EventFilter {
        violations: true,
        ..EventFilter::default()
    };
    let sub = vm.with_engine(|e| e.subscribe(&Credential::Host, &path, filter, STREAM_QUEUE));
    let sub = match sub {
        Ok(sub) => sub,
        Err(e) => {
            streams.fetch_sub(1, Ordering::SeqCst);
            return refuse(request, e.into());
        }
    };
    let vm = vm.clone();
    let streams = Arc::clone(streams);
    let spawned = std::thread::Builder::new()
        .name("api-events".into())
        .spawn(move || {
            let writer = request.into_writer();
            let _ = stream_events(writer, &vm, &path, sub);
            let _ = vm.with_engine(|e| e.unsubscribe(sub));
            streams.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        eprintln!("mempart-vmm: api: no thread for an event stream");
    }
}

/// Writes the stream's head and its events until a write fails or the target is gone.
fn stream_events(
    mut writer: Box<dyn Write + Send>,
    vm: &VmHandle,
    path: &str,
    sub: mempart::SubId,
) -> std::io::Result<()> {
    writer.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    writer.flush()?;
    let mut chunk = |data: &[u8]| -> std::io::Result<()> {
        write!(writer, "{:x}\r\n", data.len())?;
        writer.write_all(data)?;
        writer.write_all(b"\r\n")?;
        writer.flush()
    };
    chunk(format!("{}\n", json!({ "subscribed": path })).as_bytes())?;
    let service = vm.service();
    let mut seen = service.generation();
    loop {
        let batch = vm
            .with_engine(|e| e.drain_events(sub))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut out = String::new();
        if batch.missed > 0 {
            out.push_str(&json!({ "missed": batch.missed }).to_string());
            out.push('\n');
        }
        let mut ended = false;
        for event in &batch.events {
            ended |= event.kind == mempart::EventKind::Destroyed;
            out.push_str(&json!(event).to_string());
            out.push('\n');
        }
        if out.is_empty() {
            let now = service.wait_change(seen, STREAM_HEARTBEAT);
            if now == seen {
                chunk(b"\n")?;
            }
            seen = now;
            continue;
        }
        chunk(out.as_bytes())?;
        if ended {
            return chunk(b"");
        }
    }
}

/// Decodes a query value: `+` is a space, `%XX` a byte.
fn percent_decode(value: &str) -> String {
    let spaced = value.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// Decodes a resource path segment by segment (`%20` is a space). A segment that
/// decodes to a name holding `/` or NUL, or to bytes that are not UTF-8, is refused: it
/// would name something else than what was sent.
fn decode_path(raw: &str) -> Result<String, ApiError> {
    let segments = raw
        .split('/')
        .map(|segment| {
            let name = percent_encoding::percent_decode_str(segment)
                .decode_utf8()
                .map_err(|_| {
                    ApiError(
                        400,
                        format!("EINVAL: {raw}: {segment:?} is not UTF-8 once decoded"),
                    )
                })?;
            if name.contains(['/', '\0']) {
                return Err(ApiError(
                    400,
                    format!("EINVAL: {raw}: the name {name:?} holds '/' or NUL"),
                ));
            }
            Ok(name.into_owned())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(segments.join("/"))
}

/// Escapes a label value for the Prometheus text format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Host bytes actually backing each class, as a Prometheus gauge.
fn resident_gauge(vm: &VmHandle) -> String {
    let name = "mempart_class_resident_bytes";
    let mut out = format!(
        "# HELP {name} Host bytes actually backing the class (resident pages).\n# TYPE {name} gauge\n"
    );
    for class in vm.with_engine(|e| e.class_names()) {
        if let Some(bytes) = vm.resident(&class) {
            out.push_str(&format!("{name}{{class=\"{}\"}} {bytes}\n", label(&class)));
        }
    }
    out
}

/// Guest accesses to ungranted class memory, per class, as a Prometheus counter.
fn violation_counter(vm: &VmHandle) -> String {
    let name = "mempart_class_violations_total";
    let mut out = format!(
        "# HELP {name} Guest accesses to class memory that was not granted.\n# TYPE {name} counter\n"
    );
    for (class, count) in vm.violation_counts().1 {
        out.push_str(&format!("{name}{{class=\"{}\"}} {count}\n", label(&class)));
    }
    out
}

/// A metric family over rows of `R`: its name, Prometheus type, help and how to read a row.
type Metric<R> = (&'static str, &'static str, &'static str, fn(&R) -> u64);

/// Each family of `metrics` with one sample a row, labelled `labels(row)`.
fn families<R>(rows: &[R], metrics: &[Metric<R>], labels: impl Fn(&R) -> String) -> String {
    let mut out = String::new();
    for (name, kind, help, value) in metrics {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for row in rows {
            out.push_str(&format!("{name}{{{}}} {}\n", labels(row), value(row)));
        }
    }
    out
}

/// Every zone's sizes, host-resident bytes and accesses to unplugged memory, labelled with
/// the zoned partition it backs.
fn zone_gauges(vm: &VmHandle) -> String {
    let zones = vm.zones();
    let metrics: [Metric<crate::ZoneFigures>; 5] = [
        (
            "mempart_zone_size_bytes",
            "gauge",
            "Size of the zone's region.",
            |z| z.device.region_size,
        ),
        (
            "mempart_zone_requested_bytes",
            "gauge",
            "Bytes the host asks the guest to have plugged.",
            |z| z.device.requested_size,
        ),
        (
            "mempart_zone_plugged_bytes",
            "gauge",
            "Bytes of the zone the guest has plugged.",
            |z| z.device.plugged_size,
        ),
        (
            "mempart_zone_resident_bytes",
            "gauge",
            "Host bytes actually backing the zone.",
            |z| z.resident,
        ),
        (
            "mempart_zone_violations_total",
            "counter",
            "Guest accesses to unplugged zone memory.",
            |z| z.violations,
        ),
    ];
    families(&zones, &metrics, |z| {
        let partition = z
            .partition
            .as_ref()
            .map(|p| format!(",partition=\"{}\"", label(p)))
            .unwrap_or_default();
        format!("zone=\"{}\"{partition}", label(&z.name))
    })
}

/// Every disk's request, byte and error counters, labelled with the disk's id.
fn disk_counters(vm: &VmHandle) -> String {
    use devices::virtio::block::{BlockCounters, DiskInfo};
    let rows: Vec<(DiskInfo, BlockCounters)> = vm
        .disks()
        .into_iter()
        .map(|d| {
            let c = d.counters();
            (d, c)
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    const C: &str = "counter";
    let metrics: [Metric<(DiskInfo, BlockCounters)>; 7] = [
        (
            "mempart_disk_reads_total",
            C,
            "Read requests served.",
            |r| r.1.reads,
        ),
        (
            "mempart_disk_read_bytes_total",
            C,
            "Bytes read from the image.",
            |r| r.1.read_bytes,
        ),
        (
            "mempart_disk_writes_total",
            C,
            "Write requests served.",
            |r| r.1.writes,
        ),
        (
            "mempart_disk_write_bytes_total",
            C,
            "Bytes written to the image.",
            |r| r.1.write_bytes,
        ),
        ("mempart_disk_flushes_total", C, "Flushes served.", |r| {
            r.1.flushes
        }),
        (
            "mempart_disk_zeroings_total",
            C,
            "Discard and write-zeroes requests served.",
            |r| r.1.zeroings,
        ),
        (
            "mempart_disk_errors_total",
            C,
            "Requests answered with an error status.",
            |r| r.1.errors,
        ),
    ];
    families(&rows, &metrics, |r| format!("disk=\"{}\"", label(&r.0.id)))
}

/// Every network device's frame, byte and drop counters, labelled with its tap.
fn net_counters(vm: &VmHandle) -> String {
    use devices::virtio::net::{NetCounters, NetInfo};
    let rows: Vec<(NetInfo, NetCounters)> = vm
        .nets()
        .into_iter()
        .map(|n| {
            let c = n.counters();
            (n, c)
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    const C: &str = "counter";
    let metrics: [Metric<(NetInfo, NetCounters)>; 6] = [
        (
            "mempart_net_rx_frames_total",
            C,
            "Frames delivered to the guest.",
            |r| r.1.rx_frames,
        ),
        (
            "mempart_net_rx_bytes_total",
            C,
            "Bytes delivered to the guest.",
            |r| r.1.rx_bytes,
        ),
        (
            "mempart_net_rx_dropped_total",
            C,
            "Frames that did not fit the guest's buffer.",
            |r| r.1.rx_dropped,
        ),
        (
            "mempart_net_tx_frames_total",
            C,
            "Frames the guest sent.",
            |r| r.1.tx_frames,
        ),
        (
            "mempart_net_tx_bytes_total",
            C,
            "Bytes the guest sent.",
            |r| r.1.tx_bytes,
        ),
        (
            "mempart_net_tx_dropped_total",
            C,
            "Frames from the guest that were malformed or refused.",
            |r| r.1.tx_dropped,
        ),
    ];
    families(&rows, &metrics, |r| format!("tap=\"{}\"", label(&r.0.id)))
}

/// Every class and partition as Prometheus gauges.
fn prometheus(e: &mut mempart::Engine) -> String {
    let mut out = String::new();
    let gauges = [
        ("mempart_class_size_bytes", "Size of the class."),
        (
            "mempart_class_allocated_bytes",
            "Bytes allocated in the class.",
        ),
        (
            "mempart_class_reserved_unused_bytes",
            "Reserved and unused bytes of the class.",
        ),
        (
            "mempart_class_free_bytes",
            "Discretionary bytes nobody holds.",
        ),
        (
            "mempart_partition_used_bytes",
            "Current size of the partition.",
        ),
        (
            "mempart_partition_min_bytes",
            "Reserved minimum of the partition.",
        ),
        (
            "mempart_partition_highest_bytes",
            "Highest size of the partition.",
        ),
        (
            "mempart_partition_processes",
            "Processes associated with the partition.",
        ),
    ];
    let mut rows: Vec<Vec<String>> = vec![Vec::new(); gauges.len()];
    for name in e.class_names() {
        let Some(id) = e.class_id(&name) else {
            continue;
        };
        let Ok(c) = e.class_figures(id) else { continue };
        let l = format!("{{class=\"{}\"}}", label(&name));
        for (i, v) in [c.size, c.allocated, c.reserved_unused, c.free]
            .iter()
            .enumerate()
        {
            if let Some(r) = rows.get_mut(i) {
                r.push(format!("{}{l} {v}", gauges.get(i).map_or("", |g| g.0)));
            }
        }
    }
    for id in e.partitions() {
        let Ok(m) = e.partition_metrics(id) else {
            continue;
        };
        let l = format!(
            "{{class=\"{}\",path=\"{}\"}}",
            label(&m.class),
            label(&m.path)
        );
        let values = [
            m.used,
            m.current.limits.min,
            m.highest,
            m.processes.len() as u64,
        ];
        for (i, v) in values.iter().enumerate() {
            if let Some(r) = rows.get_mut(4 + i) {
                r.push(format!("{}{l} {v}", gauges.get(4 + i).map_or("", |g| g.0)));
            }
        }
    }
    for ((name, help), lines) in gauges.iter().zip(rows) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}
