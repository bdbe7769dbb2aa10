//! Who may use a daemon: users, their bearer tokens and per-project roles.
//! The API's authorization layer (`api::auth`) asks this module who a token
//! belongs to; `maestrod user …` manages the users.

mod users;

pub use users::{ALL_PROJECTS, AuthError, Grant, Role, User, Users, token_hash};
