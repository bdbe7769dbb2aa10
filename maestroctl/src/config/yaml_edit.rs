//! Setting or removing one key of a YAML file by editing its lines, so the
//! comments, order and layout around it stay as the user wrote them. Works
//! on block-style mappings (what `maestroctl init` writes and people write
//! by hand); every edit is checked by parsing the file before and after, and
//! an edit this cannot make safely is refused, never guessed.

use yaml_serde::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum EditError {
    #[error("{0} is not a mapping in this file, so it cannot hold {1}")]
    NotAMapping(String, String),
    #[error("the file is not valid YAML ({0}); fix it with `maestroctl config edit`")]
    Invalid(String),
    #[error("this file's layout around {0} is more than a line edit can change safely; use `maestroctl config edit`")]
    Layout(String),
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Blank, or only a comment.
fn inert(line: &str) -> bool {
    let code = line.trim_start();
    code.is_empty() || code.starts_with('#')
}

/// The key of a `key: value` or `key:` line (not of list items or comments).
fn key_of(line: &str) -> Option<&str> {
    let code = line.trim_start();
    if code.starts_with('#') || code.starts_with('-') {
        return None;
    }
    let colon = code.find(": ").or_else(|| code.strip_suffix(':').map(str::len))?;
    let key = code[..colon].trim();
    let key = key.strip_prefix('"').and_then(|k| k.strip_suffix('"')).unwrap_or(key);
    let key = key.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')).unwrap_or(key);
    Some(key)
}

/// What follows the key's colon, comment aside ("" for a nested block).
fn value_part(line: &str) -> &str {
    let code = line.trim_start();
    let after = code.find(':').map_or("", |colon| &code[colon + 1..]);
    match after.find(" #") {
        Some(at) => after[..at].trim(),
        None => after.trim(),
    }
}

/// The comment after a value (`  # …`), kept when the value changes.
fn trailing_comment(line: &str) -> &str {
    let code = line.trim_start();
    let after = code.find(':').map_or("", |colon| &code[colon + 1..]);
    // A quoted value may hold " #"; only plain values keep their comment.
    if after.trim_start().starts_with(['"', '\'']) {
        return "";
    }
    after.find(" #").map_or("", |at| {
        let value_end = after[..at].trim_end().len();
        &after[value_end..]
    })
}

/// The end of the lines that belong to the entry on line `at` with indent
/// `own`: up to its last deeper line, a comment (such as a commented-out
/// default under `loop:`) or not.
fn block_end(lines: &[String], at: usize, own: usize, end: usize) -> usize {
    let mut last = at;
    for (i, line) in lines.iter().enumerate().take(end).skip(at + 1) {
        if inert(line) {
            if !line.trim().is_empty() && indent(line) > own {
                last = i;
            }
            continue;
        }
        if indent(line) <= own {
            break;
        }
        last = i;
    }
    last + 1
}

/// Where a walk down `path` ended.
enum Walk {
    /// The line of its entry and the end of its block.
    Found { line: usize, end: usize },
    /// `path[depth]` is not there; it would go in lines `start..end` at `indent`.
    Missing { depth: usize, start: usize, end: usize, indent: usize },
}

/// Walks `path` down the mapping.
fn walk(lines: &[String], path: &[&str]) -> Result<Walk, EditError> {
    let (mut start, mut end, mut parent): (usize, usize, Option<usize>) = (0, lines.len(), None);
    for (depth, segment) in path.iter().enumerate() {
        let child = lines[start..end]
            .iter()
            .find(|line| !inert(line) && parent.is_none_or(|p| indent(line) > p))
            .map(|line| indent(line))
            .unwrap_or(parent.map_or(0, |p| p + 2));
        let at = (start..end).find(|&i| indent(&lines[i]) == child && key_of(&lines[i]) == Some(segment));
        let Some(at) = at else { return Ok(Walk::Missing { depth, start, end, indent: child }) };
        let block = block_end(lines, at, child, end);
        if depth + 1 == path.len() {
            return Ok(Walk::Found { line: at, end: block });
        }
        let inline = value_part(&lines[at]);
        if !inline.is_empty() {
            if inline.starts_with('{') {
                return Err(EditError::Layout(path[..=depth].join(".")));
            }
            if inline != "null" && inline != "~" {
                return Err(EditError::NotAMapping(path[..=depth].join("."), path.join(".")));
            }
        }
        (start, end, parent) = (at + 1, block, Some(child));
    }
    unreachable!("the loop returns at the last segment")
}

fn lines_of(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

/// The lines as a file again, with the line ending `like` uses (CRLF stays CRLF).
fn text_of(lines: &[String], like: &str) -> String {
    let ending = if like.contains("\r\n") { "\r\n" } else { "\n" };
    let mut text = lines.join(ending);
    text.push_str(ending);
    text
}

fn parse(text: &str) -> Result<Value, EditError> {
    if text.trim().is_empty() {
        return Ok(Value::Mapping(Default::default()));
    }
    let value: Value = yaml_serde::from_str(text).map_err(|e| EditError::Invalid(e.to_string()))?;
    Ok(if value.is_null() { Value::Mapping(Default::default()) } else { value })
}

/// `document` with `path` set to `value` (or removed), as a parsed tree: what
/// the edited text must parse to.
fn expected(mut document: Value, path: &[&str], value: Option<Value>) -> Value {
    let mut node = &mut document;
    for segment in &path[..path.len() - 1] {
        if !node.is_mapping() {
            *node = Value::Mapping(Default::default());
        }
        let map = node.as_mapping_mut().expect("made a mapping above");
        let child = map.entry(Value::from(*segment)).or_insert(Value::Null);
        node = child;
    }
    if !node.is_mapping() {
        *node = Value::Mapping(Default::default());
    }
    let map = node.as_mapping_mut().expect("made a mapping above");
    let last = Value::from(path[path.len() - 1]);
    match value {
        Some(value) => {
            map.insert(last, value);
        }
        None => {
            map.remove(&last);
        }
    }
    document
}

/// Mappings emptied by an edit read as `null` in YAML (`loop:` with only
/// comments under it): the same thing for comparing.
fn normalized(value: Value) -> Value {
    match value {
        Value::Mapping(map) => {
            let map: yaml_serde::Mapping = map.into_iter().map(|(k, v)| (k, normalized(v))).collect();
            Value::Mapping(map)
        }
        Value::Null => Value::Mapping(Default::default()),
        other => other,
    }
}

fn check(before: Value, path: &[&str], value: Option<Value>, after: &str) -> Result<(), EditError> {
    let want = normalized(expected(before, path, value));
    let got = normalized(parse(after).map_err(|_| EditError::Layout(path.join(".")))?);
    if want == got { Ok(()) } else { Err(EditError::Layout(path.join("."))) }
}

/// `text` with `path` set to `value`, written as YAML (`3`, `openai`,
/// `["a","b"]`). A key left commented out at that place (the defaults
/// `maestroctl init` writes) is uncommented in place, keeping its comment.
pub(crate) fn set(text: &str, path: &[&str], value: &str) -> Result<String, EditError> {
    let before = parse(text)?;
    let parsed: Value = yaml_serde::from_str(value).map_err(|e| EditError::Invalid(e.to_string()))?;
    let mut lines = lines_of(text);
    match walk(&lines, path)? {
        Walk::Found { line: at, end } => {
            let line = &lines[at];
            let pad = " ".repeat(indent(line));
            let key = path[path.len() - 1];
            let comment = if value_part(line).is_empty() { "" } else { trailing_comment(line) };
            let new = format!("{pad}{key}: {value}{comment}");
            lines.splice(at..end, [new]);
        }
        Walk::Missing { depth, start, end, indent: child } => {
            let pad = " ".repeat(child);
            let commented = if depth + 1 == path.len() {
                (start..end).find(|&i| {
                    let line = &lines[i];
                    indent(line) == child
                        && line.trim_start().strip_prefix('#').is_some_and(|rest| {
                            key_of(rest.trim_start()) == Some(path[depth])
                                && indent(rest) <= 1
                                && !rest.trim_start().starts_with('#')
                        })
                })
            } else {
                None
            };
            match commented {
                Some(at) => {
                    let uncommented = lines[at].trim_start().trim_start_matches('#').trim_start().to_string();
                    let comment = trailing_comment(&uncommented);
                    lines[at] = format!("{pad}{}: {value}{comment}", path[depth]);
                }
                None => {
                    let mut new = Vec::new();
                    for (i, segment) in path[depth..].iter().enumerate() {
                        let pad = " ".repeat(child + 2 * i);
                        if depth + i + 1 == path.len() {
                            new.push(format!("{pad}{segment}: {value}"));
                        } else {
                            new.push(format!("{pad}{segment}:"));
                        }
                    }
                    // After the parent's last entry, else right under the parent (at the
                    // top level: at the end, below a header comment).
                    let last = (start..end).rev().find(|&i| !inert(&lines[i]));
                    let at = last.map_or(if depth == 0 { end } else { start }, |i| i + 1);
                    lines.splice(at..at, new);
                }
            }
        }
    }
    let after = text_of(&lines, text);
    check(before, path, Some(parsed), &after)?;
    Ok(after)
}

/// `text` without `path` (and what was nested under it); `None` when it is
/// not set. Works on a file whose other keys are wrong, so a typo can be
/// removed; a file that is not YAML at all needs `config edit`.
pub(crate) fn unset(text: &str, path: &[&str]) -> Result<Option<String>, EditError> {
    let before = parse(text)?;
    let mut lines = lines_of(text);
    let Walk::Found { line, end } = walk(&lines, path)? else { return Ok(None) };
    lines.drain(line..end);
    let after = text_of(&lines, text);
    check(before, path, None, &after)?;
    Ok(Some(after))
}

/// The value at `path` in `text`, if set.
pub(crate) fn get(text: &str, path: &[&str]) -> Result<Option<Value>, EditError> {
    let mut node = &parse(text)?;
    for segment in path {
        match node.get(*segment) {
            Some(child) => node = child,
            None => return Ok(None),
        }
    }
    Ok(if node.is_null() { None } else { Some(node.clone()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = "\
# Maestro project configuration.
project:
  id: shop

llm:
  provider: openai              # openai, anthropic, scripted
  # model: gpt-4o-mini
  # base_url: https://api.openai.com/v1     # Ollama: http://localhost:11434/v1

loop:
  # retries: 2                  # full-cycle retries

# harness:
#   roles:
";

    fn path(key: &str) -> Vec<&str> {
        key.split('.').collect()
    }

    #[test]
    fn a_set_value_keeps_every_comment_and_its_own() {
        let text = set(TEMPLATE, &path("llm.provider"), "anthropic").unwrap();
        assert!(text.contains("  provider: anthropic              # openai, anthropic, scripted\n"), "{text}");
        assert_eq!(text.lines().count(), TEMPLATE.lines().count());
        assert!(text.starts_with("# Maestro project configuration.\n"));
    }

    #[test]
    fn a_commented_default_is_uncommented_in_place() {
        let text = set(TEMPLATE, &path("loop.retries"), "5").unwrap();
        assert!(text.contains("loop:\n  retries: 5                  # full-cycle retries\n"), "{text}");
        let text = set(&text, &path("llm.base_url"), "http://localhost:11434/v1").unwrap();
        assert!(text.contains("  base_url: http://localhost:11434/v1     # Ollama"), "{text}");
        assert!(text.contains("  # model: gpt-4o-mini\n"), "the others stay commented: {text}");
    }

    #[test]
    fn missing_sections_are_added_and_nested_keys_find_their_place() {
        let text = set(TEMPLATE, &path("llm.roles.review.model"), "claude-sonnet-4-5").unwrap();
        let value = get(&text, &path("llm.roles.review.model")).unwrap().unwrap();
        assert_eq!(value.as_str(), Some("claude-sonnet-4-5"));
        assert_eq!(get(&text, &path("llm.provider")).unwrap().unwrap().as_str(), Some("openai"));
        let text = set(&text, &path("harness.roles.backend.write"), r#"["src/api/**"]"#).unwrap();
        assert!(text.contains("harness:\n  roles:\n    backend:\n      write: [\"src/api/**\"]\n"), "{text}");
        assert!(text.contains("# harness:\n#   roles:\n"), "comments stay: {text}");
        let text = set("", &path("project.id"), "x").unwrap();
        assert_eq!(text, "project:\n  id: x\n");
        let text = set("# my settings\n", &path("output"), "json").unwrap();
        assert_eq!(text, "# my settings\noutput: json\n", "below the header");
        let text = set("project:\r\n  id: x\r\n", &path("project.id"), "y").unwrap();
        assert_eq!(text, "project:\r\n  id: y\r\n", "CRLF stays CRLF");
    }

    #[test]
    fn unset_removes_the_key_and_what_is_under_it() {
        let text = set(TEMPLATE, &path("llm.roles.review.model"), "m").unwrap();
        let text = unset(&text, &path("llm.roles")).unwrap().unwrap();
        assert_eq!(get(&text, &path("llm.roles")).unwrap(), None);
        assert_eq!(unset(&text, &path("llm.roles")).unwrap(), None, "nothing to remove");
        let broken = "server: http://h:1\nsever: typo\n";
        assert_eq!(unset(broken, &path("sever")).unwrap().unwrap(), "server: http://h:1\n");
    }

    #[test]
    fn what_a_line_edit_cannot_do_is_refused() {
        let flow = "llm: {provider: openai}\n";
        assert!(matches!(set(flow, &path("llm.model"), "m"), Err(EditError::Layout(_))));
        let scalar = "llm: openai\n";
        assert!(matches!(set(scalar, &path("llm.model"), "m"), Err(EditError::NotAMapping(..))));
        assert!(matches!(set("a: [\n", &path("a"), "1"), Err(EditError::Invalid(_))));
    }
}
