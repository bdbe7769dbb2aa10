//! Page tokens: opaque to clients, they hold the revision a listing started at
//! (so every page reads the same state) and the last key returned.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::error::{Result, SsotError};
use super::store::Revision;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    pub revision: Revision,
    pub after: Vec<u8>,
}

impl PageToken {
    pub fn encode(&self) -> String {
        let mut raw = b"v1:".to_vec();
        raw.extend_from_slice(&self.revision.to_be_bytes());
        raw.extend_from_slice(&self.after);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decodes a client's token; empty means "first page".
    pub fn decode(token: &str) -> Result<Option<PageToken>> {
        if token.is_empty() {
            return Ok(None);
        }
        let malformed =
            || SsotError::invalid("page_token", "malformed page token; pass the next_page_token of a previous reply");
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
        let rest = raw.strip_prefix(b"v1:").ok_or_else(malformed)?;
        if rest.len() < 9 {
            return Err(malformed());
        }
        let (revision, after) = rest.split_at(8);
        let revision = Revision::from_be_bytes(revision.try_into().map_err(|_| malformed())?);
        if revision == 0 {
            return Err(malformed());
        }
        Ok(Some(PageToken { revision, after: after.to_vec() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let token = PageToken { revision: 17, after: b"p/x/requirements/00000003".to_vec() };
        assert_eq!(PageToken::decode(&token.encode()).unwrap(), Some(token));
        assert_eq!(PageToken::decode("").unwrap(), None);
        for bad in ["!!!", "djE6", "bm9wZQ", &URL_SAFE_NO_PAD.encode(b"v1:\0\0\0\0\0\0\0\0k")] {
            assert!(PageToken::decode(bad).is_err(), "{bad}");
        }
    }
}
