//! Field checks shared by the domains. Each names the field it rejects.

use super::error::{Result, SsotError};

/// How an error shows a value the client sent: quoted, and cut to a few
/// dozen characters so that a huge field never comes back in the message.
pub fn shown(value: &str) -> String {
    const MAX: usize = 48;
    if value.chars().count() <= MAX {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(MAX).collect();
    format!("{head:?}… ({} bytes)", value.len())
}

/// An identifier: starts with a lowercase letter or digit, then lowercase
/// letters, digits, `-`, `_` or `.`, at most `max` characters.
pub fn ident(field: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(SsotError::invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(SsotError::invalid(field, format!("is {} characters, the limit is {max}", value.len())));
    }
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')) {
        return Err(SsotError::invalid(
            field,
            format!(
                "{} must start with a lowercase letter or digit and hold only a-z, 0-9, '-', '_' and '.'",
                shown(value)
            ),
        ));
    }
    Ok(())
}

/// Free text of at most `max` bytes; `required` also rejects empty or blank text.
pub fn text(field: &str, value: &str, max: usize, required: bool) -> Result<()> {
    if required && value.trim().is_empty() {
        return Err(SsotError::invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(SsotError::invalid(field, format!("is {} bytes, the limit is {max}", value.len())));
    }
    if value.contains('\0') {
        return Err(SsotError::invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

/// Parses an etag: empty means unconditional, otherwise a decimal revision
/// ("0": the resource must not exist yet).
pub fn etag(value: &str) -> Result<Option<u64>> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .trim_matches('"')
        .parse::<u64>()
        .map(Some)
        .map_err(|_| SsotError::invalid("etag", format!("{} is not an etag (a decimal revision)", shown(value))))
}

/// Clamps a requested page size: 0 means the default of 100, the limit is 1000.
pub fn page_size(requested: i32) -> Result<usize> {
    match requested {
        0 => Ok(100),
        n if n < 0 => Err(SsotError::invalid("page_size", "must not be negative")),
        n => Ok((n as usize).min(1000)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        let check = |value: &str, ok: bool| assert_eq!(ident("id", value, 63).is_ok(), ok, "{value:?}");
        check("todo-app", true);
        check("a", true);
        check("9lives", true);
        check("", false);
        check("Upper", false);
        check("-lead", false);
        check("has space", false);
        check("slash/inside", false);
        check(&"x".repeat(64), false);
    }

    #[test]
    fn echoed_input_is_capped() {
        assert_eq!(shown("R01"), "\"R01\"");
        let huge = "x".repeat(1 << 20);
        let error = ident("id", &format!("A{huge}"), usize::MAX).unwrap_err().to_string();
        assert!(error.len() < 300 && error.contains("1048577 bytes"), "{error}");
    }

    #[test]
    fn etags() {
        assert_eq!(etag("").unwrap(), None);
        assert_eq!(etag("0").unwrap(), Some(0));
        assert_eq!(etag("\"42\"").unwrap(), Some(42));
        assert!(etag("abc").is_err());
        assert!(etag("-1").is_err());
    }
}
