//! The first exchange on every peer connection: who is calling, from which cluster, for
//! whom. Raft traffic flows only after both sides agree; a peer of another cluster, or
//! a member this cluster removed, is refused (etcd's `cluster ID mismatch` and
//! `removed member`) without disturbing anyone.

use quinn::{RecvStream, SendStream};

const MAGIC: &[u8; 4] = b"QRFT";
const VERSION: u8 = 1;
pub const HELLO_LEN: usize = 4 + 1 + 8 + 8 + 8;

/// What the dialing member says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub cluster_id: u64,
    pub from: u64,
    pub to: u64,
}

/// The answer to a [`Hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// The two members belong to different clusters.
    ClusterIdMismatch {
        ours: u64,
    },
    /// The caller was removed from this cluster.
    RemovedMember,
    /// The caller dialed an address where another member lives.
    WrongMember {
        ours: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("peer handshake: {0}")]
    Io(String),
    #[error("peer handshake: not a qetcd peer (bad magic or version)")]
    NotAPeer,
}

fn io(e: impl std::fmt::Display) -> HandshakeError {
    HandshakeError::Io(e.to_string())
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4] = VERSION;
        b[5..13].copy_from_slice(&self.cluster_id.to_be_bytes());
        b[13..21].copy_from_slice(&self.from.to_be_bytes());
        b[21..29].copy_from_slice(&self.to.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Self, HandshakeError> {
        if &b[..4] != MAGIC || b[4] != VERSION {
            return Err(HandshakeError::NotAPeer);
        }
        let u = |r: std::ops::Range<usize>| u64::from_be_bytes(b[r].try_into().expect("8 bytes"));
        Ok(Hello {
            cluster_id: u(5..13),
            from: u(13..21),
            to: u(21..29),
        })
    }

    pub async fn send(&self, s: &mut SendStream) -> Result<(), HandshakeError> {
        s.write_all(&self.encode()).await.map_err(io)
    }
}

impl Verdict {
    fn encode(&self) -> [u8; 9] {
        let (code, id) = match *self {
            Verdict::Accepted => (0, 0),
            Verdict::ClusterIdMismatch { ours } => (1, ours),
            Verdict::RemovedMember => (2, 0),
            Verdict::WrongMember { ours } => (3, ours),
        };
        let mut b = [0u8; 9];
        b[0] = code;
        b[1..].copy_from_slice(&id.to_be_bytes());
        b
    }

    pub async fn send(&self, s: &mut SendStream) -> Result<(), HandshakeError> {
        s.write_all(&self.encode()).await.map_err(io)?;
        s.finish().map_err(io)
    }

    pub async fn receive(r: &mut RecvStream) -> Result<Self, HandshakeError> {
        let mut b = [0u8; 9];
        r.read_exact(&mut b).await.map_err(io)?;
        Self::decode(&b)
    }

    /// The answer as sent: a code byte, then an ID.
    fn decode(b: &[u8; 9]) -> Result<Self, HandshakeError> {
        let id = u64::from_be_bytes(b[1..].try_into().expect("8 bytes"));
        Ok(match b[0] {
            0 => Verdict::Accepted,
            1 => Verdict::ClusterIdMismatch { ours: id },
            2 => Verdict::RemovedMember,
            3 => Verdict::WrongMember { ours: id },
            _ => return Err(HandshakeError::NotAPeer),
        })
    }
}

/// The acceptor's judgement of a caller.
pub fn judge(hello: &Hello, cluster_id: u64, local_id: u64, is_member: bool) -> Verdict {
    if hello.cluster_id != cluster_id {
        Verdict::ClusterIdMismatch { ours: cluster_id }
    } else if hello.to != local_id {
        Verdict::WrongMember { ours: local_id }
    } else if !is_member {
        Verdict::RemovedMember
    } else {
        Verdict::Accepted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any 29 bytes: a hello only with our magic and version, and then exactly the
        /// hello that encodes to them.
        #[test]
        fn any_opening_decodes_only_with_the_magic(b in proptest::array::uniform29(any::<u8>())) {
            match Hello::decode(&b) {
                Ok(h) => prop_assert_eq!(h.encode(), b),
                Err(e) => {
                    prop_assert!(&b[..4] != MAGIC || b[4] != VERSION);
                    prop_assert_eq!(
                        e.to_string(),
                        "peer handshake: not a qetcd peer (bad magic or version)"
                    );
                }
            }
            // The membership queries share the opening's size; garbage is not one.
            if let Some(id) = crate::transport::members_query::parse_promote_query(&b) {
                prop_assert_eq!(crate::transport::members_query::promote_query(id), b);
            }
        }

        /// Any hello survives the trip; a byte changed in the magic or version is refused.
        #[test]
        fn hellos_round_trip_and_a_bad_header_is_refused(
            cluster_id in any::<u64>(), from in any::<u64>(), to in any::<u64>(),
            at in 0usize..5, flip in 1u8..=255,
        ) {
            let h = Hello { cluster_id, from, to };
            prop_assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
            let mut bad = h.encode();
            bad[at] ^= flip;
            prop_assert!(Hello::decode(&bad).is_err());
        }

        /// Any 9 bytes: one of the four answers, or refused; answers round-trip.
        #[test]
        fn any_answer_decodes_or_is_refused(b in proptest::array::uniform9(any::<u8>())) {
            match Verdict::decode(&b) {
                Ok(v) => {
                    prop_assert!(b[0] < 4);
                    let again = Verdict::decode(&v.encode()).unwrap();
                    prop_assert_eq!(again, v);
                }
                Err(_) => prop_assert!(b[0] >= 4),
            }
        }
    }

    #[test]
    fn hello_round_trips() {
        let h = Hello {
            cluster_id: 0xacccc8912db0cd57,
            from: 0x140fedbeeb74765d,
            to: 0x8a0a11c6194fc77,
        };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        let mut bad = h.encode();
        bad[0] = b'X';
        assert!(Hello::decode(&bad).is_err());
    }

    #[test]
    fn judgement() {
        let h = Hello {
            cluster_id: 1,
            from: 2,
            to: 3,
        };
        assert_eq!(judge(&h, 1, 3, true), Verdict::Accepted);
        assert_eq!(
            judge(&h, 9, 3, true),
            Verdict::ClusterIdMismatch { ours: 9 }
        );
        assert_eq!(judge(&h, 1, 4, true), Verdict::WrongMember { ours: 4 });
        assert_eq!(judge(&h, 1, 3, false), Verdict::RemovedMember);
    }
}
