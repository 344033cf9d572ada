//! Reading log files from where the last upload stopped: a source is a log file and its
//! size-rotated predecessors (`<name>.log`, `<name>.log.1`, … oldest last); progress is the
//! inode and byte offset of the last line uploaded, kept per source in one JSON file written
//! with fsync and an atomic rename, so an upload that was acknowledged is never read again and one
//! that was not is read again (at-least-once).

use serde_json::{Map, Value, json};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where reading stopped in one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub inode: u64,
    pub offset: u64,
}

/// One log line (or a line with its continuation lines) to upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub timestamp_ms: i64,
    pub message: String,
    /// Where reading stands once this line is uploaded.
    pub mark: Mark,
}

/// The log levels a line may carry, lowest first.
const LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];

pub fn level_rank(level: &str) -> Option<usize> {
    let l = level.to_ascii_uppercase();
    let l = if l == "WARNING" {
        "WARN".to_string()
    } else {
        l
    };
    LEVELS.iter().position(|x| *x == l)
}

/// The files of a source, oldest first: `<base>.<keep>` … `<base>.1`, `<base>`.
fn files(base: &Path) -> Vec<(PathBuf, u64)> {
    let mut numbered = vec![];
    for n in 1..=64 {
        let p = PathBuf::from(format!("{}.{n}", base.display()));
        match std::fs::metadata(&p) {
            Ok(m) => numbered.push((p, m.ino())),
            Err(_) => break,
        }
    }
    numbered.reverse();
    if let Ok(m) = std::fs::metadata(base) {
        numbered.push((base.to_path_buf(), m.ino()));
    }
    numbered
}

/// The timestamp and level at the start of a line: `<RFC 3339> <LEVEL> …` (component logs and
/// the core's log), or a Greengrass JSON log line (`{"timestamp": ms, "level": …}`).
fn parse_head(line: &str) -> (Option<i64>, Option<usize>) {
    if line.starts_with('{')
        && let Ok(Value::Object(m)) = serde_json::from_str::<Value>(line)
    {
        let ts = m.get("timestamp").and_then(Value::as_i64);
        let level = m.get("level").and_then(Value::as_str).and_then(level_rank);
        return (ts, level);
    }
    let mut words = line.split_whitespace();
    let ts = words.next().and_then(|w| {
        time::OffsetDateTime::parse(w, &time::format_description::well_known::Rfc3339).ok()
    });
    let level = words.next().and_then(level_rank);
    (
        ts.map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64),
        level,
    )
}

/// Reads complete lines after `from`, at most `max_bytes` of them, oldest file first. Lines
/// below `min_level` are skipped (their bytes still count as read); a line that starts with
/// whitespace continues the one before. `fallback_ms` stamps lines without a timestamp.
pub fn read_after(
    base: &Path,
    from: Option<Mark>,
    min_level: usize,
    max_bytes: usize,
    fallback_ms: i64,
) -> std::io::Result<(Vec<Line>, Option<Mark>)> {
    let all = files(base);
    // Start in the file we stopped in; if it is gone (rotated away), every file left is newer.
    let (start, mut offset) = match from {
        Some(m) => match all.iter().position(|(_, ino)| *ino == m.inode) {
            Some(i) => (i, m.offset),
            None => (0, 0),
        },
        None => (0, 0),
    };
    let mut lines: Vec<Line> = vec![];
    let mut last_mark = from;
    let mut budget = max_bytes;
    let mut last_ts = fallback_ms;
    let mut keep_continuations = true;
    for (path, inode) in all.iter().skip(start) {
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        if offset > len {
            // Truncated in place: start over.
            offset = 0;
        }
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![];
        f.take((budget as u64).min(len - offset))
            .read_to_end(&mut buf)?;
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            // No complete line here yet; the next file (if any) is newer.
            if !buf.is_empty() || *inode == all.last().map_or(0, |l| l.1) {
                break;
            }
            offset = 0;
            continue;
        };
        let mut pos = offset;
        for raw in buf[..=end].split_inclusive(|b| *b == b'\n') {
            pos += raw.len() as u64;
            let text = String::from_utf8_lossy(raw)
                .trim_end_matches(['\n', '\r'])
                .to_string();
            let mark = Mark {
                inode: *inode,
                offset: pos,
            };
            last_mark = Some(mark);
            if text.trim().is_empty() {
                continue;
            }
            if text.starts_with([' ', '\t']) {
                if keep_continuations && let Some(prev) = lines.last_mut() {
                    prev.message.push('\n');
                    prev.message.push_str(&text);
                    prev.mark = mark;
                }
                continue;
            }
            let (ts, level) = parse_head(&text);
            keep_continuations = level.is_none_or(|l| l >= min_level);
            if !keep_continuations {
                continue;
            }
            // Never before the line above: CloudWatch wants a batch in time order.
            let ts = ts.unwrap_or(last_ts).max(last_ts);
            last_ts = ts;
            lines.push(Line {
                timestamp_ms: ts,
                message: text,
                mark,
            });
        }
        budget = budget.saturating_sub(end + 1);
        if budget == 0 {
            break;
        }
        offset = 0;
    }
    Ok((lines, last_mark))
}

/// Progress of every source, by source name, in `<dir>/progress.json`.
pub struct Progress {
    path: PathBuf,
    marks: Map<String, Value>,
}

impl Progress {
    pub fn open(dir: &Path) -> std::io::Result<Progress> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("progress.json");
        let marks = match std::fs::read(&path) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(Value::Object(m)) => m,
                _ => {
                    tracing::warn!(path = %path.display(), "log upload progress unreadable; starting over (lines may be uploaded again)");
                    Map::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(e) => return Err(e),
        };
        Ok(Progress { path, marks })
    }

    pub fn get(&self, source: &str) -> Option<Mark> {
        let v = self.marks.get(source)?;
        Some(Mark {
            inode: v["inode"].as_u64()?,
            offset: v["offset"].as_u64()?,
        })
    }

    /// Records `mark` for `source` durably: written, fsynced, renamed over, directory fsynced.
    pub fn set(&mut self, source: &str, mark: Mark) -> std::io::Result<()> {
        self.marks.insert(
            source.to_string(),
            json!({"inode": mark.inode, "offset": mark.offset}),
        );
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(Value::Object(self.marks.clone()).to_string().as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_complete_lines_across_rotation_filters_levels_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("c.log");
        std::fs::write(
            &base,
            "2026-12-03T10:00:00.000Z INFO [c] stdout: one\n\
             2026-12-03T10:00:01.000Z DEBUG [c] stdout: noise\n  noise continued\n\
             2026-12-03T10:00:02.000Z ERROR [c] stdout: two\n  at frame\npartial",
        )
        .unwrap();
        let info = level_rank("INFO").unwrap();
        let (lines, mark) = read_after(&base, None, info, 1 << 20, 0).unwrap();
        let msgs: Vec<_> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "2026-12-03T10:00:00.000Z INFO [c] stdout: one",
                "2026-12-03T10:00:02.000Z ERROR [c] stdout: two\n  at frame"
            ]
        );
        assert_eq!(lines[0].timestamp_ms, 1_796_292_000_000);
        // The partial last line waits; after rotation it is read from the rotated file.
        let mark = mark.unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&base)
            .unwrap()
            .write_all(b" three\n")
            .unwrap();
        std::fs::rename(&base, dir.path().join("c.log.1")).unwrap();
        std::fs::write(&base, "2026-12-03T10:00:03.000Z WARN [c] stdout: four\n").unwrap();
        let (lines, _) = read_after(&base, Some(mark), info, 1 << 20, 0).unwrap();
        let msgs: Vec<_> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "partial three",
                "2026-12-03T10:00:03.000Z WARN [c] stdout: four"
            ]
        );
        // Progress survives reopening.
        let mut p = Progress::open(dir.path()).unwrap();
        p.set("c", lines[1].mark).unwrap();
        assert_eq!(
            Progress::open(dir.path()).unwrap().get("c"),
            Some(lines[1].mark)
        );
    }
}
