//! etcd's key-value semantics for one key, as a sequential specification: given the
//! key's state and one operation with what it returned, is that answer possible, and
//! what is the state after it?
//!
//! Revisions are global in etcd, so a per-key model cannot know which revision the next
//! write gets; it knows that revisions of one key's writes strictly increase, that a
//! read's header revision is at least the revision of the key's latest write, and that
//! a read returns the value *and* mod revision of the latest write. A write that failed
//! has an unknown revision until a read (or a `prev_kv`) reveals it.
//!
//! A failed write is modelled as "applied, if it could apply": never applying it is the
//! search's other choice (it may leave an indeterminate operation out), so the model
//! stays deterministic.

use crate::history::{Kv, Outcome, Request, Response};

/// One key's state between operations.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize)]
pub struct KeyState {
    /// The key's value and mod revision (`None`: set by a write whose revision nobody
    /// has seen yet). `current: None`: the key does not exist.
    pub current: Option<(String, Option<i64>)>,
    /// The highest known revision of a write to this key (0: none yet).
    pub floor: i64,
    /// The latest write to this key has an unknown revision, above `floor`.
    pub unknown_above_floor: bool,
}

impl KeyState {
    /// The least revision a response header may carry now.
    fn min_header(&self) -> i64 {
        self.floor + i64::from(self.unknown_above_floor)
    }

    /// Whether a new write of this key may get revision `rev`.
    fn may_write_at(&self, rev: i64) -> bool {
        rev > self.min_header()
    }

    /// The state after a read saw `kv` (`None`: no such key), or `None` if it could not
    /// have seen that. Reveals the revision of a value whose write failed.
    fn observe(&self, kv: Option<&Kv>) -> Option<KeyState> {
        match (&self.current, kv) {
            (None, None) => Some(self.clone()),
            (Some((v, Some(rev))), Some(kv)) => {
                (*v == kv.value && *rev == kv.mod_revision).then(|| self.clone())
            }
            (Some((v, None)), Some(kv)) => {
                (*v == kv.value && kv.mod_revision > self.floor).then(|| KeyState {
                    current: Some((v.clone(), Some(kv.mod_revision))),
                    floor: kv.mod_revision,
                    unknown_above_floor: false,
                })
            }
            _ => None,
        }
    }

    fn written(value: &str, rev: i64) -> KeyState {
        KeyState {
            current: Some((value.to_string(), Some(rev))),
            floor: rev,
            unknown_above_floor: false,
        }
    }

    fn written_unknown(&self, value: Option<&str>) -> KeyState {
        KeyState {
            current: value.map(|v| (v.to_string(), None)),
            floor: self.floor,
            unknown_above_floor: true,
        }
    }

    /// Whether `mod_revision(key) == expected` holds (0: the key is absent); `None`
    /// when the key's revision is unknown and `expected` could be it.
    fn compare(&self, expected: i64) -> Option<bool> {
        match &self.current {
            None => Some(expected == 0),
            Some((_, Some(rev))) => Some(*rev == expected),
            Some((_, None)) if expected > self.floor => None,
            Some((_, None)) => Some(false),
        }
    }
}

/// The state after `request` answered `outcome`, or `None` if etcd could not have
/// answered that from `state`. A failed read must not be passed here (it has no
/// effect; the checker drops it).
pub fn step(state: &KeyState, request: &Request, outcome: &Outcome) -> Option<KeyState> {
    match outcome {
        Outcome::Ok(response) => step_ok(state, request, response),
        Outcome::Failed(_) => Some(step_failed(state, request)),
    }
}

fn step_ok(s: &KeyState, request: &Request, response: &Response) -> Option<KeyState> {
    match (request, response) {
        (Request::Get { .. }, Response::Get { header, kv }) => {
            if *header < s.min_header() {
                return None;
            }
            s.observe(kv.as_ref())
        }
        (
            Request::Put { value, prev_kv, .. },
            Response::Put {
                header,
                prev: returned,
            },
        ) => {
            let s = if *prev_kv {
                s.observe(returned.as_ref())?
            } else {
                s.clone()
            };
            s.may_write_at(*header)
                .then(|| KeyState::written(value, *header))
        }
        (
            Request::Delete { .. },
            Response::Delete {
                header,
                deleted,
                prev,
            },
        ) => match deleted {
            0 => (s.current.is_none() && *header >= s.min_header()).then(|| s.clone()),
            1 => {
                let s = s.observe(Some(prev.as_ref()?))?;
                s.may_write_at(*header).then_some(KeyState {
                    current: None,
                    floor: *header,
                    unknown_above_floor: false,
                })
            }
            _ => None,
        },
        (
            Request::Cas {
                expected, value, ..
            },
            Response::Cas {
                header,
                succeeded,
                kv,
            },
        ) => {
            if *succeeded {
                let s = match s.compare(*expected) {
                    Some(true) => s.clone(),
                    Some(false) => return None,
                    // The key's unknown revision must have been `expected`.
                    None => KeyState {
                        current: s.current.clone().map(|(v, _)| (v, Some(*expected))),
                        floor: *expected,
                        unknown_above_floor: false,
                    },
                };
                s.may_write_at(*header)
                    .then(|| KeyState::written(value, *header))
            } else {
                if *header < s.min_header() {
                    return None;
                }
                let s = s.observe(kv.as_ref())?;
                (s.compare(*expected) == Some(false)).then_some(s)
            }
        }
        _ => None,
    }
}

fn step_failed(s: &KeyState, request: &Request) -> KeyState {
    match request {
        Request::Get { .. } => s.clone(),
        Request::Put { value, .. } => s.written_unknown(Some(value)),
        Request::Delete { .. } if s.current.is_some() => s.written_unknown(None),
        Request::Delete { .. } => s.clone(),
        Request::Cas {
            expected, value, ..
        } => match s.compare(*expected) {
            Some(false) => s.clone(),
            Some(true) => s.written_unknown(Some(value)),
            None => KeyState {
                floor: *expected,
                ..s.clone()
            }
            .written_unknown(Some(value)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: &str, rev: i64) -> Kv {
        Kv {
            key: "k".into(),
            value: value.into(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
        }
    }

    fn put(value: &str) -> Request {
        Request::Put {
            key: "k".into(),
            value: value.into(),
            prev_kv: false,
        }
    }

    fn get() -> Request {
        Request::Get { key: "k".into() }
    }

    fn ok_put(header: i64) -> Outcome {
        Outcome::Ok(Response::Put { header, prev: None })
    }

    fn ok_get(header: i64, kv: Option<Kv>) -> Outcome {
        Outcome::Ok(Response::Get { header, kv })
    }

    #[test]
    fn a_read_sees_the_latest_write_with_its_revision() {
        let s = step(&KeyState::default(), &put("a"), &ok_put(5)).unwrap();
        assert!(step(&s, &get(), &ok_get(5, Some(kv("a", 5)))).is_some());
        assert!(step(&s, &get(), &ok_get(9, Some(kv("a", 5)))).is_some());
        assert!(step(&s, &get(), &ok_get(5, Some(kv("a", 4)))).is_none());
        assert!(step(&s, &get(), &ok_get(5, None)).is_none());
        // A header older than the key's latest write: a stale read.
        assert!(step(&s, &get(), &ok_get(4, Some(kv("a", 5)))).is_none());
    }

    #[test]
    fn revisions_of_one_key_increase() {
        let s = step(&KeyState::default(), &put("a"), &ok_put(5)).unwrap();
        assert!(step(&s, &put("b"), &ok_put(5)).is_none());
        assert!(step(&s, &put("b"), &ok_put(6)).is_some());
    }

    #[test]
    fn a_failed_write_is_revealed_by_a_read() {
        let s = step(&KeyState::default(), &put("a"), &ok_put(5)).unwrap();
        let s = step(&s, &put("b"), &Outcome::Failed("timeout".into())).unwrap();
        // Its revision is above 5, so a header of 5 is too old.
        assert!(step(&s, &get(), &ok_get(5, Some(kv("b", 5)))).is_none());
        let s = step(&s, &get(), &ok_get(8, Some(kv("b", 7)))).unwrap();
        assert_eq!(s.current, Some(("b".into(), Some(7))));
        assert!(step(&s, &put("c"), &ok_put(7)).is_none());
    }

    #[test]
    fn compare_and_swap_follows_the_mod_revision() {
        let cas = |expected, value: &str| Request::Cas {
            key: "k".into(),
            expected,
            value: value.into(),
        };
        let won = |header| {
            Outcome::Ok(Response::Cas {
                header,
                succeeded: true,
                kv: None,
            })
        };
        let lost = |header, kv| {
            Outcome::Ok(Response::Cas {
                header,
                succeeded: false,
                kv,
            })
        };
        let empty = KeyState::default();
        let s = step(&empty, &cas(0, "a"), &won(3)).unwrap();
        assert!(step(&empty, &cas(2, "a"), &won(3)).is_none());
        assert!(step(&s, &cas(3, "b"), &won(4)).is_some());
        assert!(step(&s, &cas(2, "b"), &won(4)).is_none());
        assert!(step(&s, &cas(2, "b"), &lost(4, Some(kv("a", 3)))).is_some());
        // It lost, but the key it returned matches the compare: impossible.
        assert!(step(&s, &cas(3, "b"), &lost(4, Some(kv("a", 3)))).is_none());
    }
}
