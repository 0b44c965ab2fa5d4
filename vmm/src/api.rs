//! The host API: HTTP/1.1 with JSON on a unix socket (`curl --unix-socket` works), with
//! host authority over the partition name space, metrics in JSON and Prometheus text,
//! VM information and the balloon. `vmm/api/openapi.yaml` describes it.
//!
//! | method and path | does |
//! | --- | --- |
//! | `GET /vm` | backend, classes and their guest-physical placement |
//! | `GET /config` | the configuration the VM runs with |
//! | `GET /metrics` | Prometheus text: per class and per partition |
//! | `GET /partition/mem/...` | a partition's or class's metrics; `?list` lists instead |
//! | `POST /partition/mem/...` | create, body `{"min": N, "max": N, "mode": N}` (all optional) |
//! | `PATCH /partition/mem/...` | change limits, body `{"min": N, "max": N, "reclaim": bool}` |
//! | `DELETE /partition/mem/...` | destroy |
//! | `GET /balloon` | target, actual, released pages, statistics |
//! | `PUT /balloon` | body `{"target_pages": N}` |

use std::io::Read;
use std::path::Path;
use std::thread::JoinHandle;

use mempart::{Credential, Limits, NewPartition, Node, UNLIMITED};
use serde::Deserialize;
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    min: Option<u64>,
    max: Option<u64>,
    #[serde(default)]
    reclaim: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalloonBody {
    target_pages: u32,
}

/// Serves the API on `path` (replacing a stale socket) on its own thread.
/// `config` is what `GET /config` reports.
pub fn serve(path: &Path, vm: VmHandle, config: Value) -> std::io::Result<JoinHandle<()>> {
    let _ = std::fs::remove_file(path);
    let server = Server::http_unix(path)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                answer(request, &vm, &config);
            }
        })
}

fn answer(mut request: Request, vm: &VmHandle, config: &Value) {
    let result = body(&mut request)
        .and_then(|body| route(request.method(), request.url(), &body, vm, config));
    let (status, payload, content_type) = match result {
        Ok((payload, ct)) => (200, payload, ct),
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

type Answer = Result<(String, &'static str), ApiError>;

fn json_answer(value: Value) -> Answer {
    Ok((value.to_string(), "application/json"))
}

fn route(method: &Method, url: &str, body: &[u8], vm: &VmHandle, config: &Value) -> Answer {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let host = Credential::Host;
    match (method, path) {
        (Method::Get, "/vm") => json_answer(vm.info()),
        (Method::Get, "/config") => json_answer(config.clone()),
        (Method::Get, "/metrics") => Ok((vm.with_engine(prometheus), "text/plain; version=0.0.4")),
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
                        _ => json_answer(json!(e.metrics(&host, &p)?)),
                    },
                    Method::Post => {
                        let b: CreateBody = parse(if body.is_empty() { b"{}" } else { body })?;
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
                            },
                        )?;
                        json_answer(json!({ "created": p }))
                    }
                    Method::Patch => {
                        let b: LimitsBody = parse(body)?;
                        json_answer(json!(e.set_limits(&host, &p, b.min, b.max, b.reclaim)?))
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

/// Escapes a label value for the Prometheus text format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
