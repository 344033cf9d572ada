//! The Python modules the V1 `greengrasssdk` imports from its runtime (`greengrass_common`,
//! `greengrass_ipc_python_sdk`): Lichen's own, written out for the function instances'
//! `PYTHONPATH`. They speak [`crate::v1_api`].

use std::path::Path;

const FILES: &[(&str, &str)] = &[
    (
        "greengrass_common/__init__.py",
        include_str!("../python/greengrass_common/__init__.py"),
    ),
    (
        "greengrass_common/env_vars.py",
        include_str!("../python/greengrass_common/env_vars.py"),
    ),
    (
        "greengrass_common/function_arn_fields.py",
        include_str!("../python/greengrass_common/function_arn_fields.py"),
    ),
    (
        "greengrass_ipc_python_sdk/__init__.py",
        include_str!("../python/greengrass_ipc_python_sdk/__init__.py"),
    ),
    (
        "greengrass_ipc_python_sdk/ipc_client.py",
        include_str!("../python/greengrass_ipc_python_sdk/ipc_client.py"),
    ),
];

/// Writes the modules under `dir` (the directory to put on `PYTHONPATH`).
pub fn install(dir: &Path) -> std::io::Result<()> {
    for (name, text) in FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if std::fs::read_to_string(&path).ok().as_deref() != Some(*text) {
            std::fs::write(&path, text)?;
        }
    }
    Ok(())
}
