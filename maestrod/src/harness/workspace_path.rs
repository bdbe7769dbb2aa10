//! Safe paths inside a workspace. A `WorkspacePath` can only be made by
//! [`WorkspaceRoot::resolve`], which normalises the request, refuses `..`
//! that leaves the root and absolute paths outside it, and follows every
//! existing symlink on the way so the path names its final target.
//!
//! This decides on the target as it is now; the executing side (the sandbox)
//! must still open relative to a directory handle without following links,
//! or re-check after opening, against a swap between check and use.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Why a requested path is refused; each has the rule id the harness reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathViolation {
    #[error("path is empty")]
    Empty,
    #[error("{0:?} is absolute and outside the workspace")]
    Absolute(String),
    #[error("{0:?} climbs out of the workspace with '..'")]
    Escape(String),
    #[error("{requested:?} leads through a symlink to {target}, outside the workspace")]
    Symlink { requested: String, target: String },
    #[error("{0:?} is not a valid path")]
    Invalid(String),
}

impl PathViolation {
    pub fn rule(&self) -> &'static str {
        match self {
            PathViolation::Empty | PathViolation::Invalid(_) => "path.invalid",
            PathViolation::Absolute(_) => "path.absolute",
            PathViolation::Escape(_) => "path.escape",
            PathViolation::Symlink { .. } => "path.symlink",
        }
    }
}

/// The canonical root of a workspace.
#[derive(Debug, Clone)]
pub struct WorkspaceRoot {
    root: PathBuf,
}

/// A path whose final target lies inside the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspacePath {
    /// Relative to the root, `/`-separated, no `.` or `..`; empty for the root itself.
    relative: String,
    absolute: PathBuf,
}

impl WorkspacePath {
    pub fn relative(&self) -> &str {
        &self.relative
    }

    pub fn absolute(&self) -> &Path {
        &self.absolute
    }
}

impl WorkspaceRoot {
    pub fn new(dir: &Path) -> io::Result<Self> {
        let root = dir.canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, format!("{} is not a directory", root.display())));
        }
        Ok(Self { root })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn resolve(&self, requested: &str) -> Result<WorkspacePath, PathViolation> {
        if requested.is_empty() {
            return Err(PathViolation::Empty);
        }
        if requested.contains('\0') {
            return Err(PathViolation::Invalid(requested.to_string()));
        }
        let path = Path::new(requested);
        let relative = if path.is_absolute() {
            let normal = normalize(path).ok_or_else(|| PathViolation::Escape(requested.to_string()))?;
            normal
                .strip_prefix(&self.root)
                .map(Path::to_path_buf)
                .map_err(|_| PathViolation::Absolute(requested.to_string()))?
        } else {
            normalize(path).ok_or_else(|| PathViolation::Escape(requested.to_string()))?
        };
        // Follow links: canonicalize the longest existing prefix (the target itself
        // when it exists), then append the components that do not exist yet.
        let mut existing = self.root.join(&relative);
        let mut missing = Vec::new();
        let canonical = loop {
            match existing.canonicalize() {
                Ok(canonical) => break canonical,
                Err(_) => {
                    // A dangling symlink is refused outright: its target is unknowable now.
                    if existing.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
                        let target = std::fs::read_link(&existing).map(|t| t.display().to_string()).unwrap_or_default();
                        return Err(PathViolation::Symlink { requested: requested.to_string(), target });
                    }
                    let Some(name) = existing.file_name().map(|n| n.to_os_string()) else {
                        return Err(PathViolation::Invalid(requested.to_string()));
                    };
                    missing.push(name);
                    if !existing.pop() {
                        return Err(PathViolation::Invalid(requested.to_string()));
                    }
                }
            }
        };
        let inside = canonical.strip_prefix(&self.root).map_err(|_| PathViolation::Symlink {
            requested: requested.to_string(),
            target: canonical.display().to_string(),
        })?;
        let mut final_relative = inside.to_path_buf();
        for name in missing.into_iter().rev() {
            final_relative.push(name);
        }
        let relative = final_relative
            .components()
            .map(|c| c.as_os_str().to_str().ok_or_else(|| PathViolation::Invalid(requested.to_string())))
            .collect::<Result<Vec<_>, _>>()?
            .join("/");
        Ok(WorkspacePath { absolute: self.root.join(&relative), relative })
    }
}

/// Lexical normalisation: drops `.`, applies `..`; `None` if `..` climbs above the start.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    let mut depth = 0usize;
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => out.push(component.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth == 0 {
                    return None;
                }
                out.pop();
                depth -= 1;
            }
            Component::Normal(name) => {
                out.push(name);
                depth += 1;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(root: &WorkspaceRoot, requested: &str, expected: Result<&str, &str>) {
        let got = root.resolve(requested);
        match (got, expected) {
            (Ok(path), Ok(want)) => assert_eq!(path.relative(), want, "{requested}"),
            (Err(violation), Err(rule)) => assert_eq!(violation.rule(), rule, "{requested}: {violation}"),
            (got, want) => panic!("{requested}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn resolution_table() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/api")).unwrap();
        std::fs::write(dir.path().join("src/api/app.py"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("src/api/out")).unwrap();
        std::os::unix::fs::symlink(dir.path().join(".git"), dir.path().join("src/api/git")).unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/target", dir.path().join("src/dangling")).unwrap();
        let root = WorkspaceRoot::new(dir.path()).unwrap();
        let abs_inside = format!("{}/src/api/app.py", root.path().display());

        check(&root, "src/api/app.py", Ok("src/api/app.py"));
        check(&root, "./src/api/../api/new.py", Ok("src/api/new.py"));
        check(&root, "src/api/deep/new/file.py", Ok("src/api/deep/new/file.py"));
        check(&root, &abs_inside, Ok("src/api/app.py"));
        check(&root, "src/api/git/config", Ok(".git/config"));
        check(&root, "", Err("path.invalid"));
        check(&root, "../x", Err("path.escape"));
        check(&root, "src/api/../../../x", Err("path.escape"));
        check(&root, "/etc/passwd", Err("path.absolute"));
        check(&root, "src/api/out/secret", Err("path.symlink"));
        check(&root, "src/api/out", Err("path.symlink"));
        check(&root, "src/dangling", Err("path.symlink"));
        check(&root, "src/dangling/x", Err("path.symlink"));
    }
}
