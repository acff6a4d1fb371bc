//! `GET /healthz` while the daemon is healthy (an unhealthy one answers an [`super::ApiError`]).

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Always "ok".
    pub status: String,
}

impl Health {
    pub fn ok() -> Health {
        Health { status: "ok".into() }
    }
}
