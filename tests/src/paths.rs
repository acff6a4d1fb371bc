//! Where things are: the workspace and the client and server scenarios of `tests/scenarios`.

use std::path::{Path, PathBuf};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// A file of `tests/scenarios`.
pub fn scenario(name: &str) -> PathBuf {
    workspace_root().join("tests/scenarios").join(name)
}
