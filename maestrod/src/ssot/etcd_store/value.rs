//! What one etcd value holds: who wrote it, then the SSOT's value, so the
//! author travels with the write in the same record (etcd has no per-revision
//! metadata of its own).
//!
//! `[FORMAT][actor length: u8][actor bytes][value bytes]`

use crate::ssot::store::StoreError;

const FORMAT: u8 = 1;
/// Longest author kept; longer names are cut at a character boundary.
const MAX_ACTOR: usize = u8::MAX as usize;

pub(super) fn encode(actor: &str, value: &[u8]) -> Vec<u8> {
    let mut end = actor.len().min(MAX_ACTOR);
    while !actor.is_char_boundary(end) {
        end -= 1;
    }
    let actor = &actor.as_bytes()[..end];
    let mut out = Vec::with_capacity(2 + actor.len() + value.len());
    out.push(FORMAT);
    out.push(actor.len() as u8);
    out.extend_from_slice(actor);
    out.extend_from_slice(value);
    out
}

/// Splits a stored value into its author and the SSOT's value.
pub(super) fn decode(raw: &[u8]) -> Result<(&str, &[u8]), StoreError> {
    let corrupt = || {
        StoreError::Backend(
            "etcd holds a value under maestrod's prefix that maestrod did not write (is another program using the \
             prefix?)"
                .into(),
        )
    };
    let [format, len, rest @ ..] = raw else { return Err(corrupt()) };
    if *format != FORMAT || rest.len() < usize::from(*len) {
        return Err(corrupt());
    }
    let (actor, value) = rest.split_at(usize::from(*len));
    Ok((std::str::from_utf8(actor).map_err(|_| corrupt())?, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_author() {
        for (actor, value) in [("alice", &b"{\"a\":1}"[..]), ("", b""), ("loop-7", &[0, 1, 255])] {
            let raw = encode(actor, value);
            assert_eq!(decode(&raw).unwrap(), (actor, value));
        }
        // A name longer than the field is cut on a character boundary.
        let long = "é".repeat(200);
        let raw = encode(&long, b"v");
        let (actor, value) = decode(&raw).unwrap();
        assert!(long.starts_with(actor) && actor.len() <= MAX_ACTOR && value == b"v");
    }

    #[test]
    fn foreign_values_are_refused() {
        for raw in [&b""[..], b"x", &[2, 0], &[1, 5, b'a']] {
            assert!(matches!(decode(raw), Err(StoreError::Backend(_))), "{raw:?}");
        }
    }
}
