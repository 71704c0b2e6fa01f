//! Gateway boot images: the iPXE script that carries a gateway's identity, and a bootable UEFI
//! disk image around it, without compiling iPXE.
//!
//! GPT with one FAT32 EFI system partition, as real firmware expects, holding Debian's
//! `ipxe.efi` as `EFI/BOOT/BOOTX64.EFI` and an `autoexec.ipxe` beside it that loads the gateway's
//! certificate and key and chains to the boot URL, retrying forever. iPXE runs `autoexec.ipxe`
//! found next to itself when firmware loads it from a disk.

use super::{file_error, Deployment, OpError};
use crate::datadir::{self, write_atomic};
use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};
use gpt::disk::LogicalBlockSize;
use ipxe_edge_pki::KeyType;
use pkcs8::der::Decode;
use std::io::{Cursor, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The processor a gateway image boots on: which iPXE binary it takes and the file name UEFI
/// firmware starts from a removable disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EfiArch {
    #[value(name = "x86_64")]
    X86_64,
    Arm64,
}

impl EfiArch {
    /// The removable-media boot file of this architecture (UEFI specification, 3.5.1.1).
    pub fn boot_file(self) -> &'static str {
        match self {
            EfiArch::X86_64 => "EFI/BOOT/BOOTX64.EFI",
            EfiArch::Arm64 => "EFI/BOOT/BOOTAA64.EFI",
        }
    }

    /// Where Debian's `ipxe` package puts its iPXE for this architecture (HTTPS included).
    pub fn debian_ipxe(self) -> &'static str {
        match self {
            EfiArch::X86_64 => "/usr/lib/ipxe/ipxe.efi",
            EfiArch::Arm64 => "/usr/lib/ipxe/ipxe-arm64.efi",
        }
    }

    /// The name `--arch` takes.
    pub fn name(self) -> &'static str {
        match self {
            EfiArch::X86_64 => "x86_64",
            EfiArch::Arm64 => "arm64",
        }
    }

    /// The PE machine type of this architecture's binaries.
    fn pe_machine(self) -> u16 {
        match self {
            EfiArch::X86_64 => 0x8664,
            EfiArch::Arm64 => 0xaa64,
        }
    }
}

/// The PE machine type of an EFI binary, or `None` when it is not a PE file.
pub fn pe_machine(binary: &[u8]) -> Option<u16> {
    ipxe_edge_pki::authenticode::pe_machine(binary)
}

const SECTOR: u64 = 512;
/// 64 MiB disk: FAT32 needs at least 65525 clusters, i.e. ~33 MiB with 512-byte clusters.
const DISK_BYTES: u64 = 64 * 1024 * 1024;
const PARTITION_START_LBA: u64 = 2048;

fn hex_colons(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The private key as iPXE's `privkey` setting takes it, DER: PKCS#1 for RSA, PKCS#8 for
/// ECDSA (iPXE 2.0 reads both forms; older iPXE speaks RSA only).
pub fn ipxe_private_key_der(pem: &str, path: &Path) -> Result<(KeyType, Vec<u8>), OpError> {
    let bad = |reason: String| OpError::Refused(format!("{}: {reason}", path.display()));
    let (label, der) = pkcs8::der::pem::decode_vec(pem.as_bytes()).map_err(|e| bad(format!("not a PEM key: {e}")))?;
    match label {
        "RSA PRIVATE KEY" => Ok((KeyType::Rsa2048, der)),
        "EC PRIVATE KEY" => Ok((KeyType::EcdsaP256, der)),
        "PRIVATE KEY" => {
            let info = pkcs8::PrivateKeyInfo::from_der(&der).map_err(|e| bad(format!("not a PKCS#8 key: {e}")))?;
            if info.algorithm.oid == RSA_ENCRYPTION {
                Ok((KeyType::Rsa2048, info.private_key.to_vec()))
            } else if info.algorithm.oid == EC_PUBLIC_KEY {
                Ok((KeyType::EcdsaP256, der))
            } else {
                Err(bad("iPXE needs an RSA or an ECDSA key".into()))
            }
        }
        other => Err(bad(format!("unsupported key type {other}"))),
    }
}

const RSA_ENCRYPTION: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

/// The NTP server gateway scripts set the clock from unless told otherwise.
pub const DEFAULT_NTP_SERVER: &str = "pool.ntp.org";

/// What a gateway's script does besides carrying its identity.
#[derive(Clone, Debug, Default)]
pub struct ScriptOptions {
    /// Where iPXE fetches cross-signed certificates (iPXE's own default when `None`).
    pub crosscert: Option<String>,
    /// The NTP server to set the clock from before each attempt (`None`: leave the clock alone).
    /// iPXE checks the server certificate's dates against it, so a dead CMOS battery would
    /// otherwise end every HTTPS boot; a build without `ntp` skips the line and goes on.
    pub ntp: Option<String>,
}

/// The script iPXE runs at start: identity, then chain to the boot URL until it works.
pub fn autoexec_script(cert_der: &[u8], key_der: &[u8], boot_url: &str, options: &ScriptOptions) -> String {
    let mut script = String::from("#!ipxe\n");
    if let Some(url) = &options.crosscert {
        script.push_str(&format!("set crosscert {url}\n"));
    }
    script.push_str(&format!("set cert:hex {}\n", hex_colons(cert_der)));
    script.push_str(&format!("set privkey:hex {}\n", hex_colons(key_der)));
    script.push_str(":retry\nifconf || goto fail\n");
    if let Some(server) = &options.ntp {
        script.push_str(&format!("ntp {server} || echo ipxe-edge: clock not set from {server}\n"));
    }
    script.push_str(&format!(
        "chain {boot_url}?mac=${{netX/mac}}&platform=${{platform}}&buildarch=${{buildarch}}&version=${{version:uristring}} || goto fail\n:fail\necho ipxe-edge: boot failed, retrying in 5 s\nsleep 5\ngoto retry\n"
    ));
    script
}

/// A GPT disk image with one FAT32 ESP holding `files` (path inside the ESP, content).
pub fn disk_image(files: &[(&str, &[u8])]) -> std::io::Result<Vec<u8>> {
    fn other<E: std::fmt::Display>(e: E) -> std::io::Error {
        std::io::Error::other(e.to_string())
    }
    let mut disk = Cursor::new(vec![0u8; DISK_BYTES as usize]);
    let total_lba = DISK_BYTES / SECTOR;
    gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(total_lba - 1).unwrap_or(u32::MAX))
        .overwrite_lba0(&mut disk)
        .map_err(other)?;
    let mut gpt_disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(disk, None)
        .map_err(other)?;
    // Leave room for the backup GPT (33 sectors) at the end.
    let length = total_lba - PARTITION_START_LBA - 34;
    gpt_disk
        .add_partition_at("EFI system partition", 1, PARTITION_START_LBA, length, gpt::partition_types::EFI, 0)
        .map_err(other)?;
    let mut disk = gpt_disk.write().map_err(other)?;

    let mut esp = Cursor::new(vec![0u8; (length * SECTOR) as usize]);
    fatfs::format_volume(
        &mut esp,
        FormatVolumeOptions::new().fat_type(FatType::Fat32).bytes_per_cluster(512).volume_label(*b"IPXE-EDGE  "),
    )?;
    {
        let fs = FileSystem::new(&mut esp, FsOptions::new())?;
        for (path, content) in files {
            let root = fs.root_dir();
            let mut dir = root.clone();
            let parts: Vec<&str> = path.split('/').collect();
            for part in &parts[..parts.len() - 1] {
                dir = match dir.open_dir(part) {
                    Ok(d) => d,
                    Err(_) => dir.create_dir(part)?,
                };
            }
            let mut file = dir.create_file(parts[parts.len() - 1])?;
            file.truncate()?;
            file.write_all(content)?;
        }
        fs.unmount()?;
    }
    disk.seek(SeekFrom::Start(PARTITION_START_LBA * SECTOR))?;
    disk.write_all(esp.get_ref())?;
    Ok(disk.into_inner())
}

/// Refuses a boot URL, cross-signing URL or NTP server that cannot go into an iPXE script.
pub fn check_script(boot_url: &str, options: &ScriptOptions) -> Result<(), OpError> {
    check_boot_url(boot_url, options.crosscert.as_deref())?;
    if let Some(server) = &options.ntp {
        let host_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
        if server.is_empty() || server.len() > 253 || !server.chars().all(host_chars) {
            return Err(OpError::Invalid(format!("--ntp must be a host name or address, got {server:?}")));
        }
    }
    Ok(())
}

/// Refuses a boot URL or cross-signing URL that cannot go into an iPXE script.
pub fn check_boot_url(boot_url: &str, crosscert: Option<&str>) -> Result<(), OpError> {
    if !boot_url.starts_with("https://")
        || boot_url.contains(|c: char| c.is_whitespace() || c.is_control())
        || boot_url.contains('?')
    {
        return Err(OpError::Invalid(format!("--boot-url must be an https:// URL without a query, got {boot_url:?}")));
    }
    if let Some(url) = crosscert {
        if url.contains(|c: char| c.is_whitespace() || c.is_control())
            || !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(OpError::Invalid(format!("--crosscert must be an http(s) URL, got {url:?}")));
        }
    }
    Ok(())
}

/// The gateway's autoexec script, from its certificate and key in the data directory.
pub async fn script(
    deployment: &Deployment,
    name: &str,
    boot_url: &str,
    options: &ScriptOptions,
) -> Result<String, OpError> {
    check_script(boot_url, options)?;
    deployment.gateway(name).await?;
    let (cert_path, key_path) = (deployment.dir.gateway_cert(name), deployment.dir.gateway_key(name));
    let cert_der = ipxe_edge_core::domain::identity::pem_certificates(&datadir::read(&cert_path)?)?.remove(0);
    if !key_path.exists() {
        return Err(OpError::Refused(format!(
            "{} is missing: only gateways enrolled here have their key",
            key_path.display()
        )));
    }
    let (_, key_der) = ipxe_private_key_der(&datadir::read_private_string(&key_path)?, &key_path)?;
    Ok(autoexec_script(&cert_der, &key_der, boot_url, options))
}

/// The EFI binaries an image boots: iPXE alone, or a Secure Boot shim that loads it, both for
/// `arch`.
pub struct EfiBinaries {
    pub arch: EfiArch,
    pub efi: PathBuf,
    pub shim: Option<PathBuf>,
}

/// Where each file goes on the ESP. Firmware starts the architecture's boot file
/// (`BOOTX64.EFI`, `BOOTAA64.EFI`); the iPXE shim loads `ipxe.efi` from its own folder; iPXE
/// runs the `autoexec.ipxe` beside itself.
pub fn esp_layout<'a>(
    arch: EfiArch,
    efi: &'a [u8],
    shim: Option<&'a [u8]>,
    script: &'a [u8],
) -> Vec<(&'static str, &'a [u8])> {
    match shim {
        None => vec![(arch.boot_file(), efi), ("EFI/BOOT/autoexec.ipxe", script)],
        Some(shim) => vec![(arch.boot_file(), shim), ("EFI/BOOT/ipxe.efi", efi), ("EFI/BOOT/autoexec.ipxe", script)],
    }
}

/// Writes the disk image of gateway `name` to `out` (0600: it holds the private key); returns
/// its size in bytes.
pub async fn build(
    deployment: &Deployment,
    name: &str,
    boot_url: &str,
    out: &Path,
    binaries: &EfiBinaries,
    options: &ScriptOptions,
) -> Result<Built, OpError> {
    let script = script(deployment, name, boot_url, options).await?;
    let efi = std::fs::read(&binaries.efi).map_err(|e| {
        OpError::Refused(format!(
            "{}: {e} (install Debian's ipxe package, 1.21.1 or newer, or pass --efi)",
            binaries.efi.display()
        ))
    })?;
    let shim = match &binaries.shim {
        Some(path) => Some(std::fs::read(path).map_err(file_error(path))?),
        None => None,
    };
    for (path, bytes) in std::iter::once((&binaries.efi, &efi)).chain(binaries.shim.as_ref().zip(shim.as_ref())) {
        match pe_machine(bytes) {
            None => return Err(OpError::Invalid(format!("{} is not an EFI binary (no PE header)", path.display()))),
            Some(machine) if machine != binaries.arch.pe_machine() => {
                return Err(OpError::Invalid(format!(
                    "{} is not an {} EFI binary (PE machine type {machine:#06x}); pass --arch to match it",
                    path.display(),
                    binaries.arch.name()
                )))
            }
            Some(_) => {}
        }
    }
    let layout = esp_layout(binaries.arch, &efi, shim.as_deref(), script.as_bytes());
    let image = disk_image(&layout).map_err(file_error(out))?;
    write_atomic(out, &image, 0o600)?;
    let mut warnings = Vec::new();
    if has_own_kernel_loader(&efi) {
        warnings.push(format!(
            "{} carries iPXE's own bzImage loader, which starts a kernel without the firmware's signature \
             check: under Secure Boot it boots unsigned kernels (Debian's ipxe builds do not carry it)",
            binaries.efi.display()
        ));
    }
    Ok(Built { bytes: image.len() as u64, warnings })
}

/// A disk image written, and what its operator should know about it.
pub struct Built {
    pub bytes: u64,
    pub warnings: Vec<String>,
}

/// Whether an iPXE EFI binary has iPXE's bzImage image type (its name, NUL-terminated, is in
/// every build that has it): such a build loads Linux itself instead of through the firmware's
/// LoadImage, so Secure Boot's signature check never sees the kernel.
pub fn has_own_kernel_loader(efi: &[u8]) -> bool {
    efi.windows(8).any(|w| w == b"bzImage\0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_is_gpt_with_a_fat32_esp_holding_the_files() {
        let image =
            disk_image(&[("EFI/BOOT/BOOTX64.EFI", b"MZ-efi"), ("EFI/BOOT/autoexec.ipxe", b"#!ipxe\n")]).unwrap();
        assert_eq!(&image[510..512], &[0x55, 0xaa], "protective MBR");
        assert_eq!(&image[512..520], b"EFI PART", "GPT header");
        let disk = gpt::GptConfig::new().writable(false).open_from_device(Cursor::new(image.clone())).unwrap();
        let part = disk.partitions().get(&1).unwrap();
        assert_eq!(part.part_type_guid, gpt::partition_types::EFI);
        let start = (part.first_lba * SECTOR) as usize;
        let end = ((part.last_lba + 1) * SECTOR) as usize;
        let fs = FileSystem::new(Cursor::new(image[start..end].to_vec()), FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), FatType::Fat32);
        let mut content = String::new();
        use std::io::Read;
        fs.root_dir().open_file("EFI/BOOT/autoexec.ipxe").unwrap().read_to_string(&mut content).unwrap();
        assert_eq!(content, "#!ipxe\n");
    }

    #[test]
    fn secure_boot_layout_puts_the_shim_first_and_ipxe_beside_it() {
        let layout = esp_layout(EfiArch::X86_64, b"MZ-ipxe", Some(b"MZ-shim"), b"#!ipxe\n");
        let image = disk_image(&layout).unwrap();
        let disk = gpt::GptConfig::new().writable(false).open_from_device(Cursor::new(image.clone())).unwrap();
        let part = disk.partitions().get(&1).unwrap();
        let (start, end) = ((part.first_lba * SECTOR) as usize, ((part.last_lba + 1) * SECTOR) as usize);
        let fs = FileSystem::new(Cursor::new(image[start..end].to_vec()), FsOptions::new()).unwrap();
        let read = |path: &str| {
            let mut content = Vec::new();
            use std::io::Read;
            fs.root_dir().open_file(path).unwrap().read_to_end(&mut content).unwrap();
            content
        };
        assert_eq!(read("EFI/BOOT/BOOTX64.EFI"), b"MZ-shim");
        assert_eq!(read("EFI/BOOT/ipxe.efi"), b"MZ-ipxe");
        assert_eq!(read("EFI/BOOT/autoexec.ipxe"), b"#!ipxe\n");
        assert_eq!(esp_layout(EfiArch::X86_64, b"MZ-ipxe", None, b"s")[0], ("EFI/BOOT/BOOTX64.EFI", &b"MZ-ipxe"[..]));
        assert_eq!(esp_layout(EfiArch::Arm64, b"MZ-ipxe", None, b"s")[0], ("EFI/BOOT/BOOTAA64.EFI", &b"MZ-ipxe"[..]));
        assert_eq!(esp_layout(EfiArch::Arm64, b"MZ-ipxe", Some(b"MZ-shim"), b"s")[0].0, "EFI/BOOT/BOOTAA64.EFI");
    }

    use ipxe_edge_tests::minimal_pe as pe;

    #[test]
    fn pe_machine_reads_the_coff_header_and_refuses_what_is_not_pe() {
        assert_eq!(pe_machine(&pe(0x8664)), Some(0x8664));
        assert_eq!(pe_machine(&pe(0xaa64)), Some(0xaa64));
        let mut pointing_past_the_end = pe(0x8664);
        pointing_past_the_end[0x3c..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        for bad in [&b""[..], b"MZ", b"MZ-efi", &pointing_past_the_end, &pe(0x8664)[..0x45], b"\x7fELF"] {
            assert_eq!(pe_machine(bad), None, "{bad:?}");
        }
        let mut no_signature = pe(0x8664);
        no_signature[0x40] = b'X';
        assert_eq!(pe_machine(&no_signature), None);
    }

    #[test]
    fn script_sets_identity_and_retries() {
        let options = ScriptOptions { crosscert: Some("http://127.0.0.1:9/".into()), ntp: Some("10.0.2.2".into()) };
        let s = autoexec_script(&[1, 2, 255], &[16], "https://boot.example.org/boot.ipxe", &options);
        assert!(s.starts_with("#!ipxe\nset crosscert http://127.0.0.1:9/\nset cert:hex 01:02:ff\nset privkey:hex 10\n"));
        assert!(s.contains(
            ":retry\nifconf || goto fail\nntp 10.0.2.2 || echo ipxe-edge: clock not set from 10.0.2.2\nchain "
        ));
        assert!(s.contains("chain https://boot.example.org/boot.ipxe?mac=${netX/mac}&platform=${platform}&buildarch=${buildarch}&version=${version:uristring} || goto fail"));
        assert!(s.contains("goto retry"));
        let without = autoexec_script(&[1], &[2], "https://b/boot.ipxe", &ScriptOptions::default());
        assert!(!without.contains("ntp") && !without.contains("crosscert"));
    }

    #[test]
    fn ntp_servers_that_would_break_the_script_are_refused() {
        let with = |ntp: &str| ScriptOptions { crosscert: None, ntp: Some(ntp.into()) };
        assert!(check_script("https://b/boot.ipxe", &with("pool.ntp.org")).is_ok());
        assert!(check_script("https://b/boot.ipxe", &with("[2001:db8::1]")).is_ok());
        for bad in ["", "a b", "x\nchain http://evil", "x||shell", "${evil}"] {
            assert!(check_script("https://b/boot.ipxe", &with(bad)).is_err(), "{bad:?}");
        }
    }
}
