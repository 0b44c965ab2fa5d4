//! The partition service's request round trip over a unix socket: latency of one client,
//! and throughput with 1 and 16 concurrent clients.

// A benchmark whose set-up fails has nothing to measure: it stops with the reason.
#![allow(clippy::expect_used)]

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion};
use mempart::{ClassSpec, Credential, Engine};
use protocol::{Client, Op};
use vmm::service::{Authority, PartitionService};

fn service() -> PartitionService {
    let engine = Engine::new(&[ClassSpec::new("sysram", 1 << 30)]).expect("engine");
    PartitionService::new(Arc::new(Mutex::new(engine)))
}

fn client(service: &PartitionService) -> Client<UnixStream> {
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let service = service.clone();
    std::thread::spawn(move || {
        let reader = theirs.try_clone().expect("clone");
        service.serve(reader, theirs, Authority::Guest)
    });
    Client::connect(ours).expect("handshake")
}

fn metrics_op() -> Op {
    Op::Metrics {
        path: "/partition/mem/sysram/sys".into(),
    }
}

/// One end of a unix socket pair whose other end a thread echoes 64 bytes at a time.
fn echo_socket() -> UnixStream {
    use std::io::{Read, Write};
    let (ours, mut theirs) = UnixStream::pair().expect("socket pair");
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while theirs.read_exact(&mut buf).is_ok() {
            if theirs.write_all(&buf).is_err() {
                break;
            }
        }
    });
    ours
}

/// One 64-byte echo over `socket`.
fn echo_once(socket: &mut UnixStream, buf: &mut [u8; 64]) {
    use std::io::{Read, Write};
    socket.write_all(buf).expect("write");
    socket.read_exact(buf).expect("read");
}

/// The floor: 64 bytes echoed by a thread over a unix socket pair, no protocol.
fn socket_echo(c: &mut Criterion) {
    let mut ours = echo_socket();
    let mut buf = [0u8; 64];
    c.bench_function("baseline: 64-byte socket echo", |b| {
        b.iter(|| echo_once(&mut ours, &mut buf))
    });
}

fn round_trip(c: &mut Criterion) {
    let service = service();
    let mut one = client(&service);
    let me = Credential::guest(0, 0);
    c.bench_function("round trip (metrics of sys)", |b| {
        b.iter(|| one.call(&me, metrics_op()).expect("io").expect("reply"))
    });
}

/// The median and 99th percentile of `samples` timings of `once`, in microseconds.
fn percentiles(samples: usize, mut once: impl FnMut()) -> (f64, f64) {
    let mut times: Vec<Duration> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            once();
            start.elapsed()
        })
        .collect();
    times.sort();
    let at = |q: f64| {
        let i = ((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1));
        times.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    (at(0.50), at(0.99))
}

/// Median and p99 of one request's round trip, beside the socket echo's, each over
/// 20,000 requests one after another.
fn tail_latency(_: &mut Criterion) {
    const SAMPLES: usize = 20_000;
    let mut ours = echo_socket();
    let mut buf = [0u8; 64];
    let (echo_median, echo_p99) = percentiles(SAMPLES, || echo_once(&mut ours, &mut buf));
    let service = service();
    let mut one = client(&service);
    let me = Credential::guest(0, 0);
    let (median, p99) = percentiles(SAMPLES, || {
        one.call(&me, metrics_op()).expect("io").expect("reply");
    });
    println!(
        "round trip: median {median:.1} µs, p99 {p99:.1} µs \
         (socket echo: median {echo_median:.1} µs, p99 {echo_p99:.1} µs)"
    );
}

/// Requests per second with `clients` clients each calling in a loop for `span`.
fn throughput(clients: usize, span: Duration) -> f64 {
    let service = service();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let mut c = client(&service);
            std::thread::spawn(move || {
                let me = Credential::guest(0, 0);
                let end = Instant::now() + span;
                let mut n = 0u64;
                while Instant::now() < end {
                    c.call(&me, metrics_op()).expect("io").expect("reply");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().expect("client")).sum();
    total as f64 / span.as_secs_f64()
}

fn concurrency(_: &mut Criterion) {
    for clients in [1, 16] {
        let rate = throughput(clients, Duration::from_secs(2));
        println!("requests/s with {clients:>2} clients: {rate:.0}");
    }
}

/// Criterion's macros generate the undocumented entry points.
#[allow(missing_docs)]
mod entry {
    criterion::criterion_group!(
        benches,
        super::socket_echo,
        super::round_trip,
        super::tail_latency,
        super::concurrency
    );
}

criterion_main!(entry::benches);
