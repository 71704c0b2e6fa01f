//! The boot request's query string: what iPXE's `${netX/mac}`, `${platform}`, `${buildarch}` and
//! `${version}` expanded to. Every value is checked against what iPXE can actually produce.

use crate::domain::model::DEFAULT_ARCH;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("query parameter {0} is given more than once")]
    Repeated(&'static str),
    #[error("query parameter mac must be six colon-separated hex octets")]
    BadMac,
    #[error("query parameter platform must be one of pcbios, efi")]
    BadPlatform,
    #[error("query parameter buildarch must be one of i386, x86_64, arm32, arm64, riscv32, riscv64, loong64")]
    BadArch,
    #[error("query string is too long")]
    TooLong,
}

/// Architectures iPXE reports in `${buildarch}`.
pub const KNOWN_ARCHES: &[&str] = &["i386", "x86_64", "arm32", "arm64", "riscv32", "riscv64", "loong64"];
/// Platforms iPXE reports in `${platform}` that we boot.
pub const KNOWN_PLATFORMS: &[&str] = &["pcbios", "efi"];

/// A validated boot query. Unknown parameters are ignored (older scripts may add their own).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootQuery {
    /// Lowercase, colon-separated.
    pub mac: Option<String>,
    pub platform: Option<&'static str>,
    pub buildarch: Option<&'static str>,
    /// The iPXE version the gateway runs (`version=${version:uristring}`), when it says and the
    /// value starts with one; anything else reads as unknown, like an older script that does not
    /// send it.
    pub version: Option<IpxeVersion>,
}

/// An iPXE release number, as `${version}` starts (`2.0.0+ (g…)`, `1.21.1+git…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpxeVersion {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl IpxeVersion {
    /// The first iPXE that checks image digests (`sha256sum --set`), speaks ECDSA and has `ntp`.
    pub const V2: IpxeVersion = IpxeVersion { major: 2, minor: 0, patch: 0 };

    /// Reads the leading `MAJOR.MINOR.PATCH` of a version string.
    pub fn parse(text: &str) -> Option<Self> {
        let mut numbers = text.trim_start().splitn(3, '.');
        let mut next = |last: bool| -> Option<u16> {
            let part = numbers.next()?;
            let digits =
                if last { &part[..part.find(|c: char| !c.is_ascii_digit()).unwrap_or(part.len())] } else { part };
            if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()
        };
        Some(IpxeVersion { major: next(false)?, minor: next(false)?, patch: next(true)? })
    }
}

impl std::fmt::Display for IpxeVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl BootQuery {
    /// The architecture to boot: the client's, or the default when it did not say.
    pub fn arch(&self) -> &'static str {
        self.buildarch.unwrap_or(DEFAULT_ARCH)
    }

    /// Validates already-decoded query pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, QueryError> {
        let mut query = BootQuery::default();
        let mut seen_version = false;
        for (name, value) in pairs {
            match name {
                "mac" => {
                    if query.mac.is_some() {
                        return Err(QueryError::Repeated("mac"));
                    }
                    query.mac = Some(parse_mac(value)?);
                }
                "platform" => {
                    if query.platform.is_some() {
                        return Err(QueryError::Repeated("platform"));
                    }
                    query.platform = Some(pick(KNOWN_PLATFORMS, value).ok_or(QueryError::BadPlatform)?);
                }
                "buildarch" => {
                    if query.buildarch.is_some() {
                        return Err(QueryError::Repeated("buildarch"));
                    }
                    query.buildarch = Some(pick(KNOWN_ARCHES, value).ok_or(QueryError::BadArch)?);
                }
                "version" => {
                    if seen_version {
                        return Err(QueryError::Repeated("version"));
                    }
                    seen_version = true;
                    query.version = IpxeVersion::parse(value);
                }
                _ => {}
            }
        }
        Ok(query)
    }

    /// Parses a raw (still percent-encoded) query string.
    pub fn parse(raw: &str) -> Result<Self, QueryError> {
        if raw.len() > 2048 {
            return Err(QueryError::TooLong);
        }
        let decoded: Vec<(String, String)> = raw
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (decode(k), decode(v))
            })
            .collect();
        Self::from_pairs(decoded.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// A release's architecture key: an architecture, optionally with a platform (`x86_64-efi`).
pub fn valid_arch_key(key: &str) -> bool {
    let (arch, platform) = key.split_once('-').map(|(a, p)| (a, Some(p))).unwrap_or((key, None));
    KNOWN_ARCHES.contains(&arch) && platform.is_none_or(|p| KNOWN_PLATFORMS.contains(&p))
}

fn decode(s: &str) -> String {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space).decode_utf8_lossy().into_owned()
}

fn pick(known: &[&'static str], value: &str) -> Option<&'static str> {
    known.iter().copied().find(|k| *k == value)
}

fn parse_mac(value: &str) -> Result<String, QueryError> {
    let octets: Vec<&str> = value.split(':').collect();
    let ok = octets.len() == 6 && octets.iter().all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(QueryError::BadMac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_what_ipxe_sends() {
        let v = |text: &str| BootQuery::parse(&format!("version={text}")).unwrap().version;
        assert_eq!(v("2.0.0%2B%20%28g1a2b3%29"), Some(IpxeVersion::V2));
        assert_eq!(v("1.21.1%2Bgit20250501.dad20602"), Some(IpxeVersion { major: 1, minor: 21, patch: 1 }));
        assert!(v("1.21.1+").unwrap() < IpxeVersion::V2);
        for unknown in ["", "x", "2.0", "2..0", "99999.0.0", "%24%7Bversion%7D"] {
            assert_eq!(v(unknown), None, "{unknown:?}");
        }
        assert_eq!(BootQuery::parse("version=2.0.0&version=2.0.0"), Err(QueryError::Repeated("version")));
    }

    #[test]
    fn accepts_what_ipxe_sends() {
        let q = BootQuery::parse("mac=52%3A54%3A00%3AAB%3Acd%3A01&platform=efi&buildarch=x86_64").unwrap();
        assert_eq!(q.mac.as_deref(), Some("52:54:00:ab:cd:01"));
        assert_eq!(q.platform, Some("efi"));
        assert_eq!(q.arch(), "x86_64");
        let q = BootQuery::parse("mac=52:54:00:ab:cd:01&buildarch=arm64").unwrap();
        assert_eq!(q.arch(), "arm64");
    }

    #[test]
    fn empty_query_means_defaults() {
        let q = BootQuery::parse("").unwrap();
        assert_eq!(q, BootQuery::default());
        assert_eq!(q.arch(), DEFAULT_ARCH);
    }

    #[test]
    fn refuses_bad_values() {
        assert_eq!(BootQuery::parse("mac=52:54:00:ab:cd"), Err(QueryError::BadMac));
        assert_eq!(BootQuery::parse("mac=52:54:00:ab:cd:zz"), Err(QueryError::BadMac));
        assert_eq!(BootQuery::parse("mac=52:54:00:ab:cd:01%0Aboot"), Err(QueryError::BadMac));
        assert_eq!(BootQuery::parse("mac="), Err(QueryError::BadMac));
        assert_eq!(BootQuery::parse("platform=efi%00"), Err(QueryError::BadPlatform));
        assert_eq!(BootQuery::parse("platform=EFI"), Err(QueryError::BadPlatform));
        assert_eq!(BootQuery::parse("buildarch=../../x"), Err(QueryError::BadArch));
        assert_eq!(BootQuery::parse("buildarch=x86_64&buildarch=arm64"), Err(QueryError::Repeated("buildarch")));
        assert_eq!(BootQuery::parse(&"a=b&".repeat(600)), Err(QueryError::TooLong));
    }

    #[test]
    fn architecture_keys() {
        for good in ["x86_64", "arm64", "x86_64-efi", "i386-pcbios"] {
            assert!(valid_arch_key(good), "{good}");
        }
        for bad in ["", "sparc", "x86_64-", "x86_64-uboot", "arm64-efi-x", "../x"] {
            assert!(!valid_arch_key(bad), "{bad}");
        }
    }

    #[test]
    fn ignores_unknown_parameters() {
        let q = BootQuery::parse("serial=123&buildarch=x86_64").unwrap();
        assert_eq!(q.buildarch, Some("x86_64"));
    }
}
