//! The fleet's own object store on disk: `<root>/objects/<bucket>/` per bucket; each object is a
//! data file with a unique name plus a metadata file named after the SHA-256 of its key.
//!
//! A write lands in a temporary file, is fsynced, renamed to a fresh unique data file, and is
//! committed by atomically replacing the key's metadata file (then the folder is fsynced): a
//! crash leaves either the old object or the new one, never a mix, and at worst an orphan data
//! file. Keys never become paths, so no key can reach outside the bucket folder.

use md5::Digest as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use sha2::Sha256;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What is kept about one object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Quoted, as S3 answers it (`"<md5 hex>"`, or `"<md5 of part md5s>-<parts>"`).
    pub etag: String,
    /// Base64 SHA-256 of the content (the Greengrass artifact `Digest`).
    pub sha256: String,
    pub content_type: Option<String>,
    pub last_modified_ms: i64,
    /// The data file's name in the bucket folder.
    pub data: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the bucket {0:?} does not exist")]
    NoSuchBucket(String),
    #[error("the object {0:?} does not exist")]
    NoSuchKey(String),
    #[error("the multipart upload {0:?} does not exist (completed, aborted, or never created)")]
    NoSuchUpload(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the bucket {0:?} is not empty")]
    BucketNotEmpty(String),
    #[error("object store I/O at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type StoreResult<T> = Result<T, StoreError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Bucket names as S3 allows them (3–63 of lower-case letters, digits, `.` and `-`).
pub fn check_bucket_name(name: &str) -> StoreResult<()> {
    let ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "bucket name {name:?} is invalid: use 3 to 63 lower-case letters, digits, '.' and '-', \
             starting and ending with a letter or digit"
        )))
    }
}

fn check_key(key: &str) -> StoreResult<()> {
    if key.is_empty() || key.len() > 1024 {
        return Err(StoreError::Invalid(format!(
            "object key {key:?} must be 1 to 1024 bytes"
        )));
    }
    Ok(())
}

/// A body being received: written to a temporary file while its MD5 and SHA-256 are computed.
pub struct Incoming {
    file: std::fs::File,
    path: PathBuf,
    md5: md5::Md5,
    sha256: Sha256,
    crc32: crc32fast::Hasher,
    pub size: u64,
}

impl Incoming {
    pub fn write(&mut self, data: &[u8]) -> StoreResult<()> {
        self.md5.update(data);
        self.sha256.update(data);
        self.crc32.update(data);
        self.size += data.len() as u64;
        self.file.write_all(data).map_err(io(&self.path))
    }

    /// Base64 of the big-endian CRC32 of what was written (`x-amz-checksum-crc32`).
    pub fn crc32_b64(&self) -> String {
        b64(&self.crc32.clone().finalize().to_be_bytes())
    }

    /// Hex SHA-256 of what was written (to check a declared payload hash).
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256.clone().finalize())
    }

    fn finish(mut self) -> StoreResult<(PathBuf, [u8; 16], [u8; 32], u64)> {
        self.file.sync_all().map_err(io(&self.path))?;
        let md5: [u8; 16] = self.md5.clone().finalize().into();
        let sha: [u8; 32] = self.sha256.clone().finalize().into();
        // The caller renames the file: Drop must no longer remove it.
        let path = std::mem::take(&mut self.path);
        Ok((path, md5, sha, self.size))
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Finished bodies were renamed away (path emptied); an abandoned one is removed.
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn sync_dir(dir: &Path) -> StoreResult<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the folder).
fn write_atomic(path: &Path, bytes: &[u8]) -> StoreResult<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(dir)
}

/// Multipart upload state, kept as `upload.json` in the upload's folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Upload {
    bucket: String,
    key: String,
    content_type: Option<String>,
}

/// One uploaded part.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartMeta {
    size: u64,
    md5: String,
}

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Opens (creating) `<dir>`; leftovers of interrupted writes are removed.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(dir.join(".uploads")).map_err(io(dir))?;
        let tmp = dir.join(".tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        Ok(LocalStore {
            root: dir.to_owned(),
        })
    }

    fn bucket_dir(&self, bucket: &str) -> StoreResult<PathBuf> {
        check_bucket_name(bucket)?;
        let d = self.root.join(bucket);
        if d.is_dir() {
            Ok(d)
        } else {
            Err(StoreError::NoSuchBucket(bucket.into()))
        }
    }

    fn meta_path(dir: &Path, key: &str) -> PathBuf {
        dir.join(format!("{}.meta", lichen_sigv4::hex_sha256(key.as_bytes())))
    }

    /// CreateBucket; Ok(false) when it already existed.
    pub fn create_bucket(&self, bucket: &str) -> StoreResult<bool> {
        check_bucket_name(bucket)?;
        let d = self.root.join(bucket);
        if d.is_dir() {
            return Ok(false);
        }
        std::fs::create_dir(&d).map_err(io(&d))?;
        sync_dir(&self.root)?;
        Ok(true)
    }

    pub fn bucket_exists(&self, bucket: &str) -> bool {
        self.bucket_dir(bucket).is_ok()
    }

    pub fn list_buckets(&self) -> StoreResult<Vec<(String, i64)>> {
        let mut out = vec![];
        for e in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let e = e.map_err(io(&self.root))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.path().is_dir() {
                continue;
            }
            let created = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as i64);
            out.push((name, created));
        }
        out.sort();
        Ok(out)
    }

    pub fn delete_bucket(&self, bucket: &str) -> StoreResult<()> {
        let d = self.bucket_dir(bucket)?;
        let has_objects = std::fs::read_dir(&d)
            .map_err(io(&d))?
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(".meta"));
        if has_objects {
            return Err(StoreError::BucketNotEmpty(bucket.into()));
        }
        std::fs::remove_dir_all(&d).map_err(io(&d))?;
        sync_dir(&self.root)
    }

    /// A new body to receive (call [`LocalStore::put`] or [`LocalStore::put_part`] with it).
    pub fn incoming(&self) -> StoreResult<Incoming> {
        let path = self
            .root
            .join(".tmp")
            .join(uuid::Uuid::new_v4().simple().to_string());
        let file = std::fs::File::create(&path).map_err(io(&path))?;
        Ok(Incoming {
            file,
            path,
            md5: md5::Md5::new(),
            sha256: Sha256::new(),
            crc32: crc32fast::Hasher::new(),
            size: 0,
        })
    }

    /// Commits `body` as `bucket/key`, replacing what was there.
    pub fn put(
        &self,
        bucket: &str,
        key: &str,
        content_type: Option<String>,
        body: Incoming,
    ) -> StoreResult<ObjectMeta> {
        let dir = self.bucket_dir(bucket)?;
        check_key(key)?;
        let (tmp, md5, sha, size) = body.finish()?;
        self.commit(
            &dir,
            key,
            content_type,
            &tmp,
            format!("\"{}\"", hex(&md5)),
            sha,
            size,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        dir: &Path,
        key: &str,
        content_type: Option<String>,
        tmp: &Path,
        etag: String,
        sha: [u8; 32],
        size: u64,
    ) -> StoreResult<ObjectMeta> {
        let data = format!("{}.data", uuid::Uuid::new_v4().simple());
        let data_path = dir.join(&data);
        std::fs::rename(tmp, &data_path).map_err(io(&data_path))?;
        let meta = ObjectMeta {
            key: key.into(),
            size,
            etag,
            sha256: b64(&sha),
            content_type,
            last_modified_ms: now_ms(),
            data,
        };
        let meta_path = Self::meta_path(dir, key);
        let old = self.read_meta(&meta_path)?;
        let json = serde_json::to_vec(&meta).unwrap_or_default();
        write_atomic(&meta_path, &json)?;
        if let Some(old) = old {
            let _ = std::fs::remove_file(dir.join(old.data));
        }
        Ok(meta)
    }

    fn read_meta(&self, path: &Path) -> StoreResult<Option<ObjectMeta>> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Io {
                    path: path.to_owned(),
                    source: std::io::Error::other(e),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(path)(e)),
        }
    }

    /// The object's metadata and its data file.
    pub fn head(&self, bucket: &str, key: &str) -> StoreResult<(ObjectMeta, PathBuf)> {
        let dir = self.bucket_dir(bucket)?;
        let meta = self
            .read_meta(&Self::meta_path(&dir, key))?
            .ok_or_else(|| StoreError::NoSuchKey(key.into()))?;
        let data = dir.join(&meta.data);
        Ok((meta, data))
    }

    pub fn delete(&self, bucket: &str, key: &str) -> StoreResult<()> {
        let dir = self.bucket_dir(bucket)?;
        let meta_path = Self::meta_path(&dir, key);
        if let Some(old) = self.read_meta(&meta_path)? {
            std::fs::remove_file(&meta_path).map_err(io(&meta_path))?;
            sync_dir(&dir)?;
            let _ = std::fs::remove_file(dir.join(old.data));
        }
        Ok(())
    }

    /// Every object of the bucket whose key starts with `prefix`, in key order.
    pub fn list(&self, bucket: &str, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        let dir = self.bucket_dir(bucket)?;
        let mut out = vec![];
        for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            if !e.file_name().to_string_lossy().ends_with(".meta") {
                continue;
            }
            if let Some(m) = self.read_meta(&e.path())?
                && m.key.starts_with(prefix)
            {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn upload_dir(&self, upload_id: &str) -> StoreResult<PathBuf> {
        let ok = !upload_id.is_empty() && upload_id.bytes().all(|b| b.is_ascii_alphanumeric());
        let d = self.root.join(".uploads").join(upload_id);
        if ok && d.is_dir() {
            Ok(d)
        } else {
            Err(StoreError::NoSuchUpload(upload_id.into()))
        }
    }

    pub fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        content_type: Option<String>,
    ) -> StoreResult<String> {
        self.bucket_dir(bucket)?;
        check_key(key)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let d = self.root.join(".uploads").join(&id);
        std::fs::create_dir(&d).map_err(io(&d))?;
        let u = Upload {
            bucket: bucket.into(),
            key: key.into(),
            content_type,
        };
        write_atomic(
            &d.join("upload.json"),
            &serde_json::to_vec(&u).unwrap_or_default(),
        )?;
        Ok(id)
    }

    fn upload(&self, upload_id: &str, bucket: &str, key: &str) -> StoreResult<(PathBuf, Upload)> {
        let d = self.upload_dir(upload_id)?;
        let p = d.join("upload.json");
        let u: Upload = std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| StoreError::NoSuchUpload(upload_id.into()))?;
        if u.bucket != bucket || u.key != key {
            return Err(StoreError::NoSuchUpload(upload_id.into()));
        }
        Ok((d, u))
    }

    /// UploadPart: the part's quoted ETag.
    pub fn put_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part: u32,
        body: Incoming,
    ) -> StoreResult<String> {
        if !(1..=10_000).contains(&part) {
            return Err(StoreError::Invalid(format!(
                "partNumber {part} is out of range; use 1 to 10000"
            )));
        }
        let (d, _) = self.upload(upload_id, bucket, key)?;
        let (tmp, md5, _, size) = body.finish()?;
        let data = d.join(format!("part-{part}"));
        std::fs::rename(&tmp, &data).map_err(io(&data))?;
        let meta = PartMeta {
            size,
            md5: hex(&md5),
        };
        write_atomic(
            &d.join(format!("part-{part}.json")),
            &serde_json::to_vec(&meta).unwrap_or_default(),
        )?;
        Ok(format!("\"{}\"", meta.md5))
    }

    /// CompleteMultipartUpload with the (part number, ETag) list the client sends.
    pub fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> StoreResult<ObjectMeta> {
        let (d, u) = self.upload(upload_id, bucket, key)?;
        let dir = self.bucket_dir(bucket)?;
        if parts.is_empty() {
            return Err(StoreError::Invalid(
                "CompleteMultipartUpload needs at least one part".into(),
            ));
        }
        if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(StoreError::Invalid(
                "the parts must be listed in ascending part-number order (InvalidPartOrder)".into(),
            ));
        }
        let mut body = self.incoming()?;
        let mut md5s = md5::Md5::new();
        for (n, etag) in parts {
            let meta: PartMeta = std::fs::read(d.join(format!("part-{n}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| {
                    StoreError::Invalid(format!("part {n} was not uploaded (InvalidPart)"))
                })?;
            if etag.trim_matches('"') != meta.md5 {
                return Err(StoreError::Invalid(format!(
                    "part {n}'s ETag {etag} is not the one its upload answered (InvalidPart)"
                )));
            }
            let p = d.join(format!("part-{n}"));
            let mut f = std::fs::File::open(&p).map_err(io(&p))?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let k = std::io::Read::read(&mut f, &mut buf).map_err(io(&p))?;
                if k == 0 {
                    break;
                }
                body.write(&buf[..k])?;
            }
            let raw: Vec<u8> = (0..meta.md5.len() / 2)
                .filter_map(|i| u8::from_str_radix(&meta.md5[2 * i..2 * i + 2], 16).ok())
                .collect();
            md5s.update(&raw);
        }
        let (tmp, _, sha, size) = body.finish()?;
        let etag = format!("\"{}-{}\"", hex(&md5s.finalize()), parts.len());
        let meta = self.commit(&dir, key, u.content_type, &tmp, etag, sha, size)?;
        let _ = std::fs::remove_dir_all(&d);
        Ok(meta)
    }

    pub fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> StoreResult<()> {
        let (d, _) = self.upload(upload_id, bucket, key)?;
        std::fs::remove_dir_all(&d).map_err(io(&d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &LocalStore, key: &str, data: &[u8]) -> ObjectMeta {
        let mut b = s.incoming().unwrap();
        b.write(data).unwrap();
        s.put("bkt", key, None, b).unwrap()
    }

    #[test]
    fn objects_are_replaced_listed_and_deleted() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::open(d.path()).unwrap();
        assert!(matches!(
            s.head("bkt", "a").unwrap_err(),
            StoreError::NoSuchBucket(_)
        ));
        assert!(s.create_bucket("bkt").unwrap());
        assert!(!s.create_bucket("bkt").unwrap());
        let m = put(&s, "dir/a", b"hello");
        assert_eq!(m.etag, "\"5d41402abc4b2a76b9719d911017c592\"");
        assert_eq!(m.sha256, "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=");
        put(&s, "dir/a", b"hello again");
        put(&s, "../b", b"x");
        let (m, data) = s.head("bkt", "dir/a").unwrap();
        assert_eq!(std::fs::read(data).unwrap(), b"hello again");
        assert_eq!(m.size, 11);
        let keys: Vec<String> = s
            .list("bkt", "")
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["../b", "dir/a"]);
        assert_eq!(s.list("bkt", "dir/").unwrap().len(), 1);
        // One data file per object: the replaced one is gone.
        let datas = std::fs::read_dir(d.path().join("bkt"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".data")
            })
            .count();
        assert_eq!(datas, 2);
        assert!(matches!(
            s.delete_bucket("bkt").unwrap_err(),
            StoreError::BucketNotEmpty(_)
        ));
        s.delete("bkt", "dir/a").unwrap();
        assert!(matches!(
            s.head("bkt", "dir/a").unwrap_err(),
            StoreError::NoSuchKey(_)
        ));
        assert!(check_bucket_name("Bad_Name").is_err());
    }

    #[test]
    fn an_abandoned_body_leaves_the_committed_object_and_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::open(d.path()).unwrap();
        s.create_bucket("bkt").unwrap();
        put(&s, "k", b"committed");
        let mut b = s.incoming().unwrap();
        b.write(b"half of a new bo").unwrap();
        drop(b);
        let (_, data) = s.head("bkt", "k").unwrap();
        assert_eq!(std::fs::read(data).unwrap(), b"committed");
        assert_eq!(std::fs::read_dir(d.path().join(".tmp")).unwrap().count(), 0);
        // A restart clears what a crash left in the temporary folder.
        std::fs::write(d.path().join(".tmp/leftover"), b"x").unwrap();
        let s = LocalStore::open(d.path()).unwrap();
        assert_eq!(std::fs::read_dir(d.path().join(".tmp")).unwrap().count(), 0);
        assert_eq!(s.list("bkt", "").unwrap().len(), 1);
    }

    #[test]
    fn a_multipart_upload_joins_its_parts_in_order() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::open(d.path()).unwrap();
        s.create_bucket("bkt").unwrap();
        let id = s.create_upload("bkt", "big", None).unwrap();
        let mut etags = vec![];
        for (n, data) in [(1, b"abc".as_slice()), (2, b"def".as_slice())] {
            let mut b = s.incoming().unwrap();
            b.write(data).unwrap();
            etags.push((n, s.put_part("bkt", "big", &id, n, b).unwrap()));
        }
        let wrong = vec![(1, etags[0].1.clone()), (2, "\"00\"".to_string())];
        assert!(s.complete_upload("bkt", "big", &id, &wrong).is_err());
        let m = s.complete_upload("bkt", "big", &id, &etags).unwrap();
        assert!(m.etag.ends_with("-2\""), "{}", m.etag);
        let (_, data) = s.head("bkt", "big").unwrap();
        assert_eq!(std::fs::read(data).unwrap(), b"abcdef");
        assert!(matches!(
            s.complete_upload("bkt", "big", &id, &etags).unwrap_err(),
            StoreError::NoSuchUpload(_)
        ));
    }
}
