//! A hostile agent session: the partition service as the guest reaches it, fed any
//! sequence of requests — any operation, any arguments, as root, as users, or claiming
//! to be the host. The agent forwards its clients' operations as they come (with the
//! kernel-verified caller), so this is what guest users can make the VMM do. The
//! service must answer each or end the session, and never panic.
#![no_main]

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use mempart::{ClassSpec, Credential, Engine};
use protocol::{write_frame, ClientFrame, Op, MAGIC, VERSION};
use vmm::service::{Authority, PartitionService};

/// Most requests taken from one input.
const MOST_REQUESTS: u32 = 64;

fuzz_target!(|data: &[u8]| {
    let Ok(engine) = Engine::new(&[
        ClassSpec::new("sysram", 64 << 20),
        ClassSpec::new("fast", 16 << 20),
    ]) else {
        return;
    };
    let service = PartitionService::new(Arc::new(Mutex::new(engine)));
    let mut stream = Vec::new();
    let hello = ClientFrame::Hello {
        magic: MAGIC,
        version: VERSION,
    };
    if write_frame(&mut stream, &hello).is_err() {
        return;
    }
    let mut rest = data;
    let mut id = 0;
    while let Some((&who, after)) = rest.split_first() {
        if id == MOST_REQUESTS {
            break;
        }
        let caller = match who % 4 {
            0 => Credential::guest_root(),
            1 => Credential::guest(1000, 1000),
            2 => Credential::Guest {
                uid: 1001,
                gid: 100,
                groups: vec![1000],
            },
            _ => Credential::Host,
        };
        let Ok((op, after)) = postcard::take_from_bytes::<Op>(after) else {
            break;
        };
        id += 1;
        let request = ClientFrame::Request { id, caller, op };
        if write_frame(&mut stream, &request).is_err() {
            break;
        }
        rest = after;
    }
    let _ = service.serve(Cursor::new(stream), std::io::sink(), Authority::Guest);
});
