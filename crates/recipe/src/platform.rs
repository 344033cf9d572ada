//! Device platform attributes and the manifest `Platform` matching rules (spec §1.4).

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;

pub(crate) const OS_KEY: &str = "os";
pub(crate) const ARCHITECTURE_KEY: &str = "architecture";
pub(crate) const ARCHITECTURE_DETAIL_KEY: &str = "architecture.detail";

/// `uname -m` values the Java nucleus reports as `architecture.detail` (arm only).
const ARM_DETAILS: [&str; 6] = ["armv6l", "armv7l", "armv8l", "armv6b", "armv7b", "armv8b"];

/// The attributes a device reports for manifest selection: `os`, `architecture`,
/// `architecture.detail` (arm only) and any string `platformOverride` entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Platform {
    pub attributes: BTreeMap<String, String>,
}

impl Platform {
    /// The host's platform as the Java nucleus names it: `os` is `linux`, `darwin`, `windows` or
    /// `unknown`; `architecture` is `amd64`, `x86`, `arm`, `aarch64` or `unknown`;
    /// `architecture.detail` is set only on arm/aarch64 when `uname -m` is one of
    /// `armv6l armv7l armv8l armv6b armv7b armv8b`.
    pub fn detect() -> Self {
        let os = match std::env::consts::OS {
            "linux" | "android" => "linux",
            "macos" => "darwin",
            "windows" => "windows",
            _ => "unknown",
        };
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "x86",
            "arm" => "arm",
            "aarch64" => "aarch64",
            _ => "unknown",
        };
        let mut attributes = BTreeMap::new();
        attributes.insert(OS_KEY.to_string(), os.to_string());
        attributes.insert(ARCHITECTURE_KEY.to_string(), arch.to_string());
        if matches!(arch, "arm" | "aarch64")
            && let Some(machine) = uname_machine()
        {
            let machine = machine.to_ascii_lowercase();
            if ARM_DETAILS.contains(&machine.as_str()) {
                attributes.insert(ARCHITECTURE_DETAIL_KEY.to_string(), machine);
            }
        }
        Platform { attributes }
    }

    /// Parses `os=linux,architecture=amd64` (entries separated by `,`, key and value by the first
    /// `=`, surrounding blanks trimmed). The empty string is the empty platform.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut attributes = BTreeMap::new();
        for entry in s.split(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let (key, value) = entry.split_once('=').ok_or_else(|| {
                format!("platform entry '{entry}' has no '='; expected key=value as in os=linux,architecture=amd64")
            })?;
            let key = key.trim();
            if key.is_empty() {
                return Err(format!(
                    "platform entry '{entry}' has an empty key; expected key=value as in os=linux"
                ));
            }
            attributes.insert(key.to_string(), value.trim().to_string());
        }
        Ok(Platform { attributes })
    }

    /// This platform with `overrides` (Nucleus `platformOverride`) replacing or adding attributes.
    pub fn with_overrides(mut self, overrides: &BTreeMap<String, String>) -> Self {
        for (k, v) in overrides {
            self.attributes.insert(k.clone(), v.clone());
        }
        self
    }

    /// The device value for a manifest key: exact key first, then ignoring ASCII case.
    fn get(&self, key: &str) -> Option<&str> {
        self.attributes
            .get(key)
            .or_else(|| {
                self.attributes
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v)
            })
            .map(String::as_str)
    }

    /// Whether a manifest `Platform` map is satisfied by this device (spec §1.4 rules 1–8).
    pub(crate) fn satisfies(&self, requirement: &BTreeMap<String, Option<String>>) -> bool {
        requirement
            .iter()
            .all(|(key, template)| self.satisfies_one(key, template.as_deref()))
    }

    fn satisfies_one(&self, key: &str, template: Option<&str>) -> bool {
        // Rule 3: `*` or null matches anything, even a missing device value.
        let template = match template {
            None | Some("*") => return true,
            Some(t) => t,
        };
        // Rule 4: otherwise a missing or empty device value fails.
        let actual = match self.get(key) {
            Some(a) if !a.is_empty() => a,
            _ => return false,
        };
        // Rule 5: /regex/ is a full match.
        if template.len() >= 2 && template.starts_with('/') && template.ends_with('/') {
            let pattern = &template[1..template.len() - 1];
            return Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|re| re.is_match(actual));
        }
        // Rule 6: legacy `all`/`any` for os and architecture.
        if (key.eq_ignore_ascii_case(OS_KEY) || key.eq_ignore_ascii_case(ARCHITECTURE_KEY))
            && matches!(template, "all" | "any")
        {
            return true;
        }
        // Rule 7: other leading characters are reserved for future templates.
        if !template.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return false;
        }
        // Rule 8: exact, case-sensitive.
        template == actual
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.attributes {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(unix)]
fn uname_machine() -> Option<String> {
    // SAFETY: `utsname` is plain old data; zeroed is a valid value and `uname` fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    // SAFETY: uname NUL-terminates `machine` within the array on success.
    let machine = unsafe { std::ffi::CStr::from_ptr(uts.machine.as_ptr()) };
    Some(machine.to_string_lossy().into_owned())
}

#[cfg(not(unix))]
fn uname_machine() -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn rules() {
        let linux = Platform::parse("os=linux, architecture=amd64").unwrap();
        assert!(linux.satisfies(&req(&[])), "rule 1: empty platform");
        assert!(linux.satisfies(&req(&[("os", Some("linux"))])));
        assert!(!linux.satisfies(&req(&[
            ("os", Some("linux")),
            ("architecture", Some("arm"))
        ])));
        assert!(linux.satisfies(&req(&[("runtime", Some("*"))])), "rule 3");
        assert!(linux.satisfies(&req(&[("runtime", None)])), "rule 3 null");
        assert!(!linux.satisfies(&req(&[("runtime", Some("x"))])), "rule 4");
        assert!(linux.satisfies(&req(&[("os", Some("/lin.x/"))])), "rule 5");
        assert!(
            !linux.satisfies(&req(&[("os", Some("/lin/"))])),
            "rule 5 full match"
        );
        assert!(!linux.satisfies(&req(&[("os", Some("/(/"))])), "bad regex");
        assert!(linux.satisfies(&req(&[("os", Some("all"))])), "rule 6");
        assert!(
            linux.satisfies(&req(&[("architecture", Some("any"))])),
            "rule 6"
        );
        let custom = linux.clone().with_overrides(&BTreeMap::from([(
            "flavour".to_string(),
            "all".to_string(),
        )]));
        assert!(
            !custom.satisfies(&req(&[("flavour", Some("any"))])),
            "rule 6 only os/arch"
        );
        assert!(
            custom.satisfies(&req(&[("flavour", Some("all"))])),
            "exact still works"
        );
        assert!(!linux.satisfies(&req(&[("os", Some("!linux"))])), "rule 7");
        assert!(!linux.satisfies(&req(&[("os", Some(""))])), "rule 7 empty");
        assert!(
            !linux.satisfies(&req(&[("os", Some("Linux"))])),
            "rule 8 case"
        );
    }

    #[test]
    fn parse_and_display() {
        let p = Platform::parse("os=linux,architecture=arm,architecture.detail=armv7l").unwrap();
        assert_eq!(p.attributes["architecture.detail"], "armv7l");
        assert_eq!(
            p.to_string(),
            "architecture=arm,architecture.detail=armv7l,os=linux"
        );
        assert_eq!(Platform::parse("").unwrap(), Platform::default());
        assert!(Platform::parse("os").is_err());
        assert!(Platform::parse("=linux").is_err());
        let o = p.with_overrides(&BTreeMap::from([("os".to_string(), "darwin".to_string())]));
        assert_eq!(o.attributes["os"], "darwin");
    }

    #[test]
    fn detect_names_the_host() {
        let p = Platform::detect();
        let os = &p.attributes["os"];
        assert!(["linux", "darwin", "windows", "unknown"].contains(&os.as_str()));
        let arch = &p.attributes["architecture"];
        assert!(["amd64", "x86", "arm", "aarch64", "unknown"].contains(&arch.as_str()));
        if let Some(detail) = p.attributes.get("architecture.detail") {
            assert!(ARM_DETAILS.contains(&detail.as_str()));
        }
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        assert_eq!((os.as_str(), arch.as_str()), ("linux", "amd64"));
    }
}
