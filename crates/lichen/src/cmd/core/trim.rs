//! Keeps the core's resident memory to what it uses. Start-up (and a deployment that starts
//! services) runs code that an idle core never runs again, and the kernel maps executable pages
//! around each fault (fault-around), so after start-up most of the text stays resident: measured
//! with `bench/core.py --breakdown` on x86_64, 5–6 MiB of 7.7 MiB of text, of which an idle core
//! touches about 150 KiB. Once the core is ready, and after each deployment ends, the executable's
//! clean file-backed pages are dropped from the process's page tables (`MADV_DONTNEED`); the page
//! cache keeps them, and code that runs again faults back in (a minor fault).
//!
//! Invariant: only the executable's own private read-only or read-execute mappings that hold no
//! private copy of a page (`Anonymous` and `Swap` both 0) are touched — never relocated data
//! (RELRO), `.data`/`.bss`, the heap or stacks, whose contents `MADV_DONTNEED` would discard.

use std::time::Duration;

/// Drops the executable's clean read-only and code pages from the page tables; returns the bytes
/// that were mapped in those ranges (resident or not).
pub fn release_executable_pages() -> usize {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return 0;
    };
    let exe = exe.to_string_lossy().into_owned();
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut released = 0;
    let mut current: Option<(usize, usize)> = None;
    let mut clean = true;
    let mut finish = |range: Option<(usize, usize)>, clean: bool| {
        if let Some((start, end)) = range
            && clean
        {
            // SAFETY: the range is a whole mapping of our executable that is read-only or
            // read-execute and holds no private page, so its contents equal the file's: dropping
            // the pages loses nothing, and the next access maps them again from the page cache.
            let r = unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
            };
            if r == 0 {
                released += end - start;
            }
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if first.ends_with(':') {
            // A field of the current mapping. A copied (written) page is anonymous, or swapped
            // out; `Private_Dirty` also counts file pages not yet written back, which are fine.
            if matches!(first, "Anonymous:" | "Swap:") && fields.next().is_some_and(|kb| kb != "0")
            {
                clean = false;
            }
            continue;
        }
        // A mapping's header: range, perms, offset, device, inode, path.
        finish(current.take(), clean);
        clean = true;
        let perms = fields.next().unwrap_or("");
        let path = fields.nth(3).map(|_| ()).and_then(|()| {
            // The path is the rest of the line after the inode (it may contain spaces).
            line.splitn(6, char::is_whitespace)
                .nth(5)
                .map(|p| p.trim_start())
        });
        if path != Some(exe.as_str()) || !matches!(perms, "r--p" | "r-xp") {
            continue;
        }
        if let Some((lo, hi)) = first.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            current = Some((lo, hi));
        }
    }
    finish(current.take(), clean);
    released
}

/// Releases the pages now, and again shortly after each deployment ends (a burst of deployments
/// releases once).
pub fn keep_trimmed(engine: &lichen_deploy::DeploymentEngine) {
    let bytes = release_executable_pages();
    tracing::debug!(
        kib = bytes / 1024,
        "released start-up pages of the executable"
    );
    let mut records = engine.subscribe();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match records.recv().await {
                Ok(r)
                    if !matches!(
                        r.status,
                        lichen_deploy::DeploymentStatus::Queued
                            | lichen_deploy::DeploymentStatus::InProgress
                    ) => {}
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            }
            // Let the deployment's services settle, then release once for the whole burst.
            tokio::time::sleep(Duration::from_secs(1)).await;
            while records.try_recv().is_ok() {}
            release_executable_pages();
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn releasing_keeps_the_code_running() {
        let before = std::hint::black_box(super::release_executable_pages());
        // The test binary's own code and read-only data come back on use.
        let again = super::release_executable_pages();
        assert!(before > 0 && again > 0, "{before} {again}");
        assert_eq!(format!("{}", 6 * 7), "42");
    }
}
