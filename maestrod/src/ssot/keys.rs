//! Typed construction of store keys, so no domain spells a key by hand.

/// `projects/<id>`.
pub fn project(id: &str) -> String {
    format!("projects/{id}")
}

pub const PROJECTS: &str = "projects/";

/// `deleted-projects/<id>`: a deleted project's id, which is never given out
/// again (its history stays readable at old revisions; a new project under the
/// id would inherit it, and watch replays would mix the two).
pub fn deleted_project(id: &str) -> String {
    format!("deleted-projects/{id}")
}

/// `p/<id>/`: everything the project owns.
pub fn project_data(id: &str) -> String {
    format!("p/{id}/")
}

/// A key inside a project: `p/<id>/<path>`.
pub fn in_project(id: &str, path: &str) -> String {
    format!("p/{id}/{path}")
}

/// The resource path of a project key (the part after `p/<id>/`).
pub fn resource_path<'a>(project: &str, key: &'a str) -> &'a str {
    key.strip_prefix("p/").and_then(|k| k.strip_prefix(project)).and_then(|k| k.strip_prefix('/')).unwrap_or(key)
}

/// Resource paths of project data that snapshots cover (diff and restore).
/// The requirement id counter (`_meta/requirements`) is not among them: ids
/// are never reused, so a restore never takes the counter back.
pub const SNAPSHOT_PATHS: [&str; 3] = ["requirements/", "contracts/", "memory/"];

/// `lease-owners/<id>`: who was granted a lease (attached to the lease, so it goes with it).
pub fn lease_owner(lease: u64) -> String {
    format!("lease-owners/{lease:020}")
}
