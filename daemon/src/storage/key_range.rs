//! etcd's encoding of key ranges in `(key, range_end)` pairs.

/// The keys a request covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly one key (`range_end` empty).
    Single(Vec<u8>),
    /// `[start, end)`.
    Span(Vec<u8>, Vec<u8>),
    /// Every key `>= start` (`range_end` is `"\0"`; with key `"\0"` too: all keys).
    From(Vec<u8>),
    /// `range_end` sorts at or before `key`: nothing can match.
    Empty,
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key.to_vec()),
            [0] => KeyRange::From(key.to_vec()),
            end if end <= key => KeyRange::Empty,
            end => KeyRange::Span(key.to_vec(), end.to_vec()),
        }
    }

    /// Whether `key` falls in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k.as_slice() == key,
            KeyRange::Span(s, e) => s.as_slice() <= key && key < e.as_slice(),
            KeyRange::From(s) => s.as_slice() <= key,
            KeyRange::Empty => false,
        }
    }

    /// Whether two ranges share a key.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        use KeyRange::*;
        match (self, other) {
            (Empty, _) | (_, Empty) => false,
            (Single(k), r) | (r, Single(k)) => r.contains(k),
            (From(_), From(_)) => true,
            (From(a), Span(_, e)) | (Span(_, e), From(a)) => a.as_slice() < e.as_slice(),
            (Span(s1, e1), Span(s2, e2)) => s1 < e2 && s2 < e1,
        }
    }

    /// What is left of the range once a scan reached `last`: the keys after it, or
    /// before it when scanning in descending order.
    pub fn past(&self, last: &[u8], descending: bool) -> KeyRange {
        let start = |r: &KeyRange| match r {
            KeyRange::Single(k) | KeyRange::Span(k, _) | KeyRange::From(k) => k.clone(),
            KeyRange::Empty => Vec::new(),
        };
        if descending {
            return match self {
                KeyRange::Span(..) | KeyRange::From(_) if start(self).as_slice() < last => {
                    KeyRange::Span(start(self), last.to_vec())
                }
                _ => KeyRange::Empty,
            };
        }
        // The smallest key after `last`.
        let mut next = last.to_vec();
        next.push(0);
        match self {
            KeyRange::Span(_, end) if next < *end => KeyRange::Span(next, end.clone()),
            KeyRange::From(_) => KeyRange::From(next),
            _ => KeyRange::Empty,
        }
    }

    /// A SQL condition on column `key`, with the parameters it binds.
    pub(crate) fn sql(&self) -> (&'static str, Vec<&[u8]>) {
        match self {
            KeyRange::Single(k) => ("key = ?", vec![k.as_slice()]),
            KeyRange::Span(s, e) => ("key >= ? AND key < ?", vec![s.as_slice(), e.as_slice()]),
            KeyRange::From(s) => ("key >= ?", vec![s.as_slice()]),
            KeyRange::Empty => ("0", vec![]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KeyRange;

    #[test]
    fn decodes_etcd_range_forms() {
        assert_eq!(KeyRange::new(b"a", b""), KeyRange::Single(b"a".to_vec()));
        assert_eq!(KeyRange::new(b"a", b"\0"), KeyRange::From(b"a".to_vec()));
        assert_eq!(KeyRange::new(b"\0", b"\0"), KeyRange::From(b"\0".to_vec()));
        assert_eq!(
            KeyRange::new(b"a", b"c"),
            KeyRange::Span(b"a".to_vec(), b"c".to_vec())
        );
        assert_eq!(KeyRange::new(b"c", b"a"), KeyRange::Empty);
        assert_eq!(KeyRange::new(b"c", b"c"), KeyRange::Empty);
    }

    #[test]
    fn what_is_left_past_a_key() {
        let span = KeyRange::new(b"b", b"d");
        assert_eq!(
            span.past(b"c", false),
            KeyRange::Span(b"c\0".to_vec(), b"d".to_vec())
        );
        assert_eq!(
            span.past(b"c", true),
            KeyRange::Span(b"b".to_vec(), b"c".to_vec())
        );
        assert_eq!(span.past(b"b", true), KeyRange::Empty);
        assert_eq!(
            KeyRange::From(b"a".to_vec()).past(b"x", false),
            KeyRange::From(b"x\0".to_vec())
        );
        assert_eq!(
            KeyRange::Single(b"a".to_vec()).past(b"a", false),
            KeyRange::Empty
        );
    }

    #[test]
    fn overlap_rules() {
        let span = KeyRange::new(b"b", b"d");
        assert!(span.overlaps(&KeyRange::new(b"c", b"")));
        assert!(!span.overlaps(&KeyRange::new(b"d", b"")));
        assert!(span.overlaps(&KeyRange::new(b"a", b"c")));
        assert!(!span.overlaps(&KeyRange::new(b"d", b"z")));
        assert!(span.overlaps(&KeyRange::new(b"c", b"\0")));
        assert!(!span.overlaps(&KeyRange::new(b"d", b"\0")));
        assert!(!span.overlaps(&KeyRange::Empty));
    }
}
