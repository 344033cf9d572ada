//! Which status of each cloud deployment the link has taken (durably) for the cloud, so the
//! reports survive restarts: `<root>/work/DeploymentService/cloud-reported.json`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

pub struct Reported {
    path: PathBuf,
    map: Mutex<BTreeMap<String, String>>,
}

impl Reported {
    pub fn open(root: &std::path::Path) -> Reported {
        let path = root
            .join("work")
            .join("DeploymentService")
            .join("cloud-reported.json");
        let map = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Reported {
            path,
            map: Mutex::new(map),
        }
    }

    pub fn get(&self, id: &str) -> Option<String> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Records `status` for `id` (temp file + fsync + rename); keeps at most 200 ids (the
    /// engine keeps fewer records, so an evicted id has no record left to report).
    pub fn set(&self, id: &str, status: &str) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(id.to_string(), status.to_string());
        while map.len() > 200 {
            let Some(first) = map.keys().next().cloned() else {
                break;
            };
            map.remove(&first);
        }
        let text = serde_json::to_vec(&*map).unwrap_or_default();
        if let Err(e) = write_atomic(&self.path, &text) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot record reported deployment status");
        }
    }
}

fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
