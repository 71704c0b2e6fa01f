//! Imports a farm from the reference deployment (valve-infra's ipxe-boot-server).
//!
//! Its data root holds `files/<sha1 fingerprint>/{boot.ipxe,kernel,initrd,secrets}` and its
//! Makefile leaves each gateway's certificate as `ci-gateway-NAME.iso.crt` (X.509 v1). Each
//! certificate is matched to its folder by SHA-1 fingerprint, enrolled under its SHA-256
//! identity, pinned to a release made of its kernel, initrd and converted `boot.ipxe`, and given
//! its secrets. [`plan`] writes nothing; [`apply`] carries a plan out.

use super::upload::Progress;
use super::{file_error, Deployment, OpError};
use ipxe_edge_core::domain::identity::{pem_certificates, ChainVerifier, Fingerprint, TrustBundle};
use ipxe_edge_core::domain::model::{new_gateway, valid_name};
use ipxe_edge_core::domain::secret_template;
use sha1::{Digest, Sha1};
use std::path::{Path, PathBuf};

/// Variables the reference server substituted that mean the same here.
const KNOWN_VARS: &[&str] = &["secrets_url", "kernel_url", "initrd_url", "gateway", "fingerprint", "release"];

/// `string.Template` syntax to ours: `$name` and `${name}` of a `known` name become `${name}`,
/// `$$` becomes `$`; other names stay as written and are returned.
fn substitute_names(text: &str, known: &[&str]) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut unknown = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let ident = |s: &[char]| -> usize {
        if s.first().is_some_and(|c| c.is_ascii_alphabetic() || *c == '_') {
            s.iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '_').count()
        } else {
            0
        }
    };
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        if chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
            continue;
        }
        let (name_start, braced) = if chars.get(i + 1) == Some(&'{') { (i + 2, true) } else { (i + 1, false) };
        let len = ident(&chars[name_start.min(chars.len())..]);
        let closes = !braced || chars.get(name_start + len) == Some(&'}');
        if len == 0 || !closes {
            out.push('$');
            i += 1;
            continue;
        }
        let name: String = chars[name_start..name_start + len].iter().collect();
        let end = name_start + len + usize::from(braced);
        if known.contains(&name.as_str()) {
            out.push_str(&format!("${{{name}}}"));
        } else {
            if !unknown.contains(&name) {
                unknown.push(name.clone());
            }
            out.extend(&chars[i..end]);
        }
        i = end;
    }
    (out, unknown)
}

/// A valve-infra `secrets` file to our secrets template: its `$s3_*` variables (and the
/// fingerprint) become ours, filled at each redemption with a freshly minted scratch key.
/// Returns the converted secret and the names nothing fills. Non-UTF-8 secrets are kept as they are.
pub fn convert_secrets(bytes: Vec<u8>) -> (Vec<u8>, Vec<String>) {
    let Ok(text) = String::from_utf8(bytes.clone()) else { return (bytes, Vec::new()) };
    let known: Vec<&str> =
        secret_template::SCRATCH_VARIABLES.iter().chain(secret_template::BUILT_IN_VARIABLES.iter()).copied().collect();
    let (out, unknown) = substitute_names(&text, &known);
    (out.into_bytes(), unknown)
}

/// Converts a Python `string.Template` boot script (`$var`, `${var}`, `$$`) to ours. Known
/// names become `${name}`; unknown ones stay as written (as `safe_substitute` left them); the
/// reference server's `/files/kernel` and `/files/initrd` URLs become `${kernel_url}` and
/// `${initrd_url}`. Returns the template and the unknown names.
pub fn convert_template(text: &str) -> (String, Vec<String>) {
    let (out, unknown) = substitute_names(text, KNOWN_VARS);
    let converted: Vec<String> = out
        .lines()
        .map(|line| {
            line.split(' ')
                .map(|word| {
                    if word.ends_with("/files/kernel") {
                        "${kernel_url}".to_string()
                    } else if word.ends_with("/files/initrd") {
                        "${initrd_url}".to_string()
                    } else {
                        word.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let mut template = converted.join("\n");
    template.push('\n');
    if !template.starts_with("#!ipxe") {
        template.insert_str(0, "#!ipxe\n");
    }
    (template, unknown)
}

/// One gateway an import would bring over.
pub struct Planned {
    pub name: String,
    pub fingerprint: Fingerprint,
    pub folder: PathBuf,
    pub template: Option<String>,
    pub has_secrets: bool,
    /// The secrets use valve-infra's `${s3_*}` scratch-storage variables.
    pub scratch: bool,
}

/// What an import of a valve-infra farm would do, and what it cannot map.
pub struct Plan {
    /// The folder holding one subfolder per gateway.
    pub root: PathBuf,
    pub planned: Vec<Planned>,
    pub problems: Vec<String>,
    ca_pem: Vec<u8>,
}

/// A gateway [`apply`] enrolled, pinned to its release.
pub struct Imported {
    pub name: String,
    pub fingerprint: Fingerprint,
    pub release: String,
}

/// Reads a valve-infra farm and plans its import; writes nothing.
pub fn plan(files: &Path, certs: &Path, ca: &Path) -> Result<Plan, OpError> {
    let root = if files.join("files").is_dir() { files.join("files") } else { files.to_path_buf() };
    let ca_pem = std::fs::read(ca).map_err(file_error(ca))?;
    // Old farms' clocks drift: a wider tolerance than at boot time, for this one-off check.
    let verifier = ChainVerifier::new(TrustBundle::from_pem(&ca_pem)?, std::time::Duration::from_secs(300));
    let now = ipxe_edge_core::domain::clock::unix_now() as i64;

    let mut problems: Vec<String> = Vec::new();
    let mut planned: Vec<Planned> = Vec::new();
    let mut matched_folders = Vec::new();
    let mut entries: Vec<_> =
        std::fs::read_dir(certs).map_err(file_error(certs))?.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
        let Some(name) = file_name.strip_prefix("ci-gateway-").and_then(|n| n.strip_suffix(".iso.crt")) else {
            continue;
        };
        if !valid_name(name) {
            problems.push(format!("{file_name}: gateway name {name:?} is not a valid name"));
            continue;
        }
        let pem = std::fs::read(&path).map_err(file_error(&path))?;
        let der = match pem_certificates(&pem) {
            Ok(mut d) => d.remove(0),
            Err(e) => {
                problems.push(format!("{file_name}: {e}"));
                continue;
            }
        };
        if let Err(e) = verifier.verify_der_chain(std::slice::from_ref(&der), now) {
            problems.push(format!("{file_name}: {e}"));
            continue;
        }
        let sha1 = hex::encode(Sha1::digest(&der));
        let folder = [sha1.clone(), sha1.to_uppercase()].into_iter().map(|f| root.join(f)).find(|p| p.is_dir());
        let Some(folder) = folder else {
            problems.push(format!("{file_name}: no folder {}/{sha1}", root.display()));
            continue;
        };
        matched_folders.push(folder.clone());
        for required in ["kernel", "initrd"] {
            if !folder.join(required).is_file() {
                problems.push(format!("{name}: {} is missing", folder.join(required).display()));
            }
        }
        let template = match std::fs::read_to_string(folder.join("boot.ipxe")) {
            Ok(text) => {
                let (template, unknown) = convert_template(&text);
                if !unknown.is_empty() {
                    problems.push(format!("{name}: boot.ipxe uses variables left as they are: {}", unknown.join(", ")));
                }
                Some(template)
            }
            Err(_) => None,
        };
        let mut scratch = false;
        if let Ok(secrets) = std::fs::read(folder.join("secrets")) {
            let (converted, unknown) = convert_secrets(secrets);
            scratch = secret_template::uses_scratch(&converted);
            if !unknown.is_empty() {
                problems.push(format!("{name}: secrets use variables left as they are: {}", unknown.join(", ")));
            }
        }
        planned.push(Planned {
            name: name.to_string(),
            fingerprint: Fingerprint::of_der(&der),
            folder: folder.clone(),
            template,
            has_secrets: folder.join("secrets").is_file(),
            scratch,
        });
    }
    if let Ok(dirs) = std::fs::read_dir(&root) {
        for dir in dirs.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
            if !matched_folders.contains(&dir) {
                problems.push(format!("{}: no certificate matches this folder", dir.display()));
            }
        }
    }

    Ok(Plan { root, planned, problems, ca_pem })
}

/// Carries out a plan: trusts the farm's CA, then per gateway its release, record and secrets.
/// Gateways without a kernel and an initrd are left out.
pub async fn apply(ctx: &Deployment, plan: Plan, progress: &dyn Progress) -> Result<Vec<Imported>, OpError> {
    let mut imported = Vec::new();
    super::ca::add_to_bundle(&ctx.records, &plan.ca_pem).await?;
    for p in plan.planned {
        if !p.folder.join("kernel").is_file() || !p.folder.join("initrd").is_file() {
            continue;
        }
        let release_id = format!("valve-{}", p.name);
        if !ctx.records.release_exists(&release_id).await? {
            super::release::create(
                ctx,
                super::release::CreateRequest {
                    id: release_id.clone(),
                    arches: vec![("x86_64".into(), p.folder.join("kernel"), p.folder.join("initrd"))],
                    cmdline: String::new(),
                    template: p.template.clone(),
                    description: Some(format!("imported from valve-infra {}", p.folder.display())),
                    health_gate: Default::default(),
                    skip_digest_check: false,
                },
                progress,
            )
            .await?;
        }
        if ctx.records.gateway(&p.fingerprint).await?.is_none() {
            let mut record = new_gateway(&p.name, p.fingerprint.clone());
            record.pinned_release = Some(release_id.clone());
            ctx.records.put_gateway(&record).await?;
        }
        if p.has_secrets {
            let secrets = std::fs::read(p.folder.join("secrets")).map_err(file_error(&p.folder))?;
            ctx.records.put_secrets(&p.fingerprint, convert_secrets(secrets).0).await?;
        }
        imported.push(Imported { name: p.name, fingerprint: p.fingerprint, release: release_id });
    }
    Ok(imported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valve_infra_secrets_map_onto_scratch_variables() {
        let (out, unknown) = convert_secrets(
            b"b2c.minio=\"bbz,$s3_endpoint,${s3_access_key_id},$s3_access_key\" mirror=bbz/$s3_bucket_name fp=$client_cert_fingerprint x=$other cost=$$5"
                .to_vec(),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "b2c.minio=\"bbz,${s3_endpoint},${s3_access_key_id},${s3_access_key}\" mirror=bbz/${s3_bucket_name} fp=${client_cert_fingerprint} x=$other cost=$5"
        );
        assert_eq!(unknown, ["other"]);
        let binary = vec![0u8, 0xff, b'$'];
        assert_eq!(convert_secrets(binary.clone()).0, binary);
    }

    #[test]
    fn converts_python_templates() {
        let text = "#!ipxe\nkernel https://old.example/files/kernel b2c.extra_args_url=\"${secrets_url}\" mac=${netX/mac} x=$unknown y=$$HOME\ninitrd /files/initrd\nboot\n";
        let (template, unknown) = convert_template(text);
        assert_eq!(
            template,
            "#!ipxe\nkernel ${kernel_url} b2c.extra_args_url=\"${secrets_url}\" mac=${netX/mac} x=$unknown y=$HOME\ninitrd ${initrd_url}\nboot\n"
        );
        assert_eq!(unknown, vec!["unknown".to_string()]);
        let (template, _) = convert_template("kernel $secrets_url\n");
        assert_eq!(template, "#!ipxe\nkernel ${secrets_url}\n");
    }
}
