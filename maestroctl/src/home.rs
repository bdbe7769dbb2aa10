//! The user's home folder, which holds `~/.maestro`.

use std::path::PathBuf;

/// `$HOME` when it names an absolute folder. An empty or relative `HOME`
/// counts as none: `.maestro` under the current folder is a project's, and
/// reading it as the user's would mix the two layers up.
pub(crate) fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from).filter(|home| home.is_absolute())
}

/// `~/.maestro/NAME`, when there is a home.
pub(crate) fn maestro_file(name: &str) -> Option<PathBuf> {
    home().map(|home| home.join(".maestro").join(name))
}
