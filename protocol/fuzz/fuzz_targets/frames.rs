//! Arbitrary bytes as a peer's stream: every frame read from them, as either side would
//! read it, must decode or fail with an error — never panic, never allocate more than a
//! frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{read_frame, ClientFrame, ServerFrame};

fuzz_target!(|data: &[u8]| {
    let mut as_server = data;
    while read_frame::<_, ClientFrame>(&mut as_server).is_ok() {}
    let mut as_client = data;
    while read_frame::<_, ServerFrame>(&mut as_client).is_ok() {}
    let _ = protocol::decode::<ClientFrame>(data);
    let _ = protocol::decode::<ServerFrame>(data);
});
