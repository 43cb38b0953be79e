//! The raft message stream's wire format (etcd's rafthttp stream, without HTTP): a member opens
//! a plain TCP connection to a peer's peer port and writes [`MAGIC`], a hello (its cluster ID
//! and member ID), then frames: a 4-byte big-endian length and one raft `Message` encoded by
//! rust-protobuf. A frame of length 0 is a link heartbeat. The receiver writes nothing back
//! unless it refuses the stream: then one frame holding the reason as UTF-8, and it closes.
//!
//! Why not a gRPC stream (as before): every batch went through a sender task, HTTP/2 framing and
//! flow control and the connection task on both sides. Here the raft loop and the syncer write
//! a Ready's frames straight into the socket, and the receiver steps them as they are read:
//! fewer thread wakeups and syscalls on every put's path.
//!
//! The peer port serves this stream and the gRPC peer services (snapshots, forwarding) side by
//! side: [`MAGIC`]'s first byte can never start an HTTP/2 connection.

use raft::eraftpb::Message;

/// Opens a raft message stream. 0xFF cannot begin an HTTP/2 client preface (`PRI * ...`).
pub const MAGIC: [u8; 8] = [0xFF, b'p', b'g', b'r', b'a', b'f', b't', 1];
/// Magic plus the hello: cluster ID and sender's member ID, big-endian.
pub const PREAMBLE_LEN: usize = MAGIC.len() + 16;
/// Largest frame accepted: a raft append carries at most 1 MiB of entries (`max_size_per_msg`)
/// plus one entry that may exceed it alone (a request up to the 1.5 MiB request limit).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// The bytes that open a stream from member `from` of cluster `cluster_id`.
pub fn preamble(cluster_id: u64, from: u64) -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    let (magic, hello) = p.split_at_mut(MAGIC.len());
    magic.copy_from_slice(&MAGIC);
    hello[..8].copy_from_slice(&cluster_id.to_be_bytes());
    hello[8..].copy_from_slice(&from.to_be_bytes());
    p
}

/// Reads a preamble: `(cluster_id, from)`, or `None` when the magic is wrong.
pub fn parse_preamble(p: &[u8; PREAMBLE_LEN]) -> Option<(u64, u64)> {
    let (magic, hello) = p.split_at(MAGIC.len());
    if magic != MAGIC {
        return None;
    }
    let word = |at: usize| u64::from_be_bytes(hello[at..at + 8].try_into().expect("8 bytes"));
    Some((word(0), word(8)))
}

/// A link heartbeat: an empty frame.
pub const HEARTBEAT: [u8; 4] = [0; 4];

/// Appends one message's frame to `out`.
pub fn put_message(out: &mut Vec<u8>, m: &Message) {
    use protobuf::Message as _;
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    // Writing into a Vec cannot fail; a message is far below 4 GiB (raft caps appends).
    m.write_to_vec(out).expect("encode raft message");
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a frame carrying raw bytes (a refusal's reason).
pub fn put_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// What the front of a receive buffer holds.
#[derive(Debug, PartialEq)]
pub enum Frame<'a> {
    /// A whole frame's payload (empty: a heartbeat) and the bytes it took, header included.
    Whole(&'a [u8], usize),
    /// Not all of the next frame has arrived yet.
    Partial,
    /// The length is over [`MAX_FRAME`]: the stream is broken or hostile.
    TooLarge(usize),
}

/// Splits the first frame off `buf`.
pub fn next_frame(buf: &[u8]) -> Frame<'_> {
    let Some(head) = buf.get(..4) else {
        return Frame::Partial;
    };
    let len = u32::from_be_bytes(head.try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME {
        return Frame::TooLarge(len);
    }
    match buf.get(4..4 + len) {
        Some(payload) => Frame::Whole(payload, 4 + len),
        None => Frame::Partial,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message as _;
    use raft::eraftpb::MessageType;

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.from = 1;
        m.to = 2;
        m.term = 7;
        let mut buf = Vec::new();
        put_message(&mut buf, &m);
        buf.extend_from_slice(&HEARTBEAT);
        for cut in 0..buf.len() {
            let first = next_frame(&buf[..cut]);
            assert!(
                first == Frame::Partial || cut >= buf.len() - 4,
                "cut {cut}: {first:?}"
            );
        }
        let Frame::Whole(payload, used) = next_frame(&buf) else {
            panic!("no frame")
        };
        assert_eq!(Message::parse_from_bytes(payload).unwrap(), m);
        assert_eq!(next_frame(&buf[used..]), Frame::Whole(&[], 4));
    }

    #[test]
    fn preamble_checks_magic_and_oversized_frames_are_refused() {
        let p = preamble(0xabc, 3);
        assert_eq!(parse_preamble(&p), Some((0xabc, 3)));
        let mut bad = p;
        bad[0] = b'P';
        assert_eq!(parse_preamble(&bad), None);
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(next_frame(&huge), Frame::TooLarge(MAX_FRAME + 1));
    }
}
