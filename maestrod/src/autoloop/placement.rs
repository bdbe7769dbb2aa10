//! Where a project's workspace may be: under a folder the server allows
//! (`--workspace-root`), and apart from the daemon's own data.

use std::path::{Path, PathBuf};

use crate::ssot::SsotError;

/// The rules a workspace path must meet. Paths are compared after resolving
/// symbolic links (for the part that exists), so a link inside a root cannot
/// lead out of it.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The daemon's data dir: no workspace may contain it or lie in it.
    pub data_dir: Option<PathBuf>,
    /// Folders workspaces must lie in; empty allows any folder (a personal daemon).
    pub roots: Vec<PathBuf>,
}

/// `path` with symbolic links resolved in its longest existing prefix, the
/// rest appended (a workspace may not exist yet).
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |acc: PathBuf, part| acc.join(part));
        }
        match (existing.file_name().map(ToOwned::to_owned), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

impl Placement {
    pub fn new(data_dir: Option<PathBuf>, roots: Vec<PathBuf>) -> Placement {
        Placement { data_dir: data_dir.map(|d| resolve(&d)), roots: roots.iter().map(|r| resolve(r)).collect() }
    }

    /// Checks `workspace`; returns it resolved.
    pub fn check(&self, workspace: &Path) -> Result<PathBuf, SsotError> {
        if !workspace.is_absolute() {
            return Err(SsotError::invalid("workspace", "give an absolute path"));
        }
        if workspace.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(SsotError::invalid("workspace", "give a path without `..`"));
        }
        let resolved = resolve(workspace);
        if !self.roots.is_empty() && !self.roots.iter().any(|root| resolved.starts_with(root) && &resolved != root) {
            let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
            return Err(SsotError::PermissionDenied(format!(
                "workspace {} is outside the folders this server allows for workspaces ({}); ask its operator \
                 (maestrod --workspace-root)",
                crate::ssot::validate::shown(&workspace.display().to_string()),
                roots.join(", ")
            )));
        }
        if let Some(data) = &self.data_dir
            && (data.starts_with(&resolved) || resolved.starts_with(data))
        {
            return Err(SsotError::FailedPrecondition(format!(
                "workspace {} and the daemon's data dir {} overlap; keep projects out of the data dir and the data \
                 dir out of projects",
                resolved.display(),
                data.display()
            )));
        }
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspaces_stay_under_the_roots_and_apart_from_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("projects");
        let outside = dir.path().join("elsewhere");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        let placement = Placement::new(Some(root.join("data")), vec![root.clone()]);

        assert!(placement.check(&root.join("a")).is_ok());
        assert!(placement.check(&root.join("not-yet/b")).is_ok(), "a folder to be made");
        for denied in [outside.clone(), root.join("escape"), root.join("escape/x"), root.clone(), "/etc".into()] {
            let error = placement.check(&denied).unwrap_err();
            assert!(matches!(error, SsotError::PermissionDenied(_)), "{}: {error}", denied.display());
        }
        assert!(matches!(placement.check(&root.join("a/../../elsewhere")), Err(SsotError::InvalidArgument { .. })));
        assert!(matches!(placement.check(Path::new("rel")), Err(SsotError::InvalidArgument { .. })));
        assert!(matches!(placement.check(&root.join("data/x")), Err(SsotError::FailedPrecondition(_))));

        let anywhere = Placement::new(None, Vec::new());
        assert!(anywhere.check(&outside).is_ok());
    }
}
