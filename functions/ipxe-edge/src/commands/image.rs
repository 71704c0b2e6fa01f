//! `ipxe-edge image …`: a gateway's iPXE script, and a bootable UEFI disk image around it.

use crate::ops::image::{self, EfiArch, EfiBinaries, ScriptOptions, DEFAULT_NTP_SERVER};
use crate::ops::{Deployment, OpError};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Write a bootable UEFI disk image for gateway NAME: GPT + FAT32 ESP with Debian's
    /// iPXE as EFI/BOOT/BOOTX64.EFI (BOOTAA64.EFI with --arch arm64) and an autoexec.ipxe
    /// holding the gateway's certificate and key that chains to the boot URL, retrying forever.
    ///
    /// The image holds the gateway's private key: it is written 0600; treat it as a secret.
    ///
    /// Example: ipxe-edge image build gw-berlin-1 --boot-url https://boot.example.org/boot.ipxe --out gw-berlin-1.img
    Build {
        name: String,
        #[arg(long)]
        boot_url: String,
        #[arg(long)]
        out: PathBuf,
        /// The gateway's processor: x86_64 or arm64.
        #[arg(long, value_enum, default_value = "x86_64")]
        arch: EfiArch,
        /// The iPXE EFI binary, for --arch (default: Debian's ipxe package, 1.21.1 or newer:
        /// /usr/lib/ipxe/ipxe.efi, or ipxe-arm64.efi for arm64; or a signed iPXE 2.0 build).
        #[arg(long, alias = "ipxe-efi")]
        efi: Option<PathBuf>,
        /// A signed UEFI shim for Secure Boot (e.g. iPXE 2.0's): it becomes the boot file and
        /// loads the --efi binary, placed beside it as ipxe.efi.
        #[arg(long)]
        shim: Option<PathBuf>,
        #[command(flatten)]
        script: ScriptArgs,
    },
    /// Print the iPXE script of gateway NAME (certificate, key, chain loop): the autoexec.ipxe of
    /// `image build`, or the EMBED= script of a custom iPXE build. It holds the private key.
    ///
    /// Example: ipxe-edge image script gw-berlin-1 --boot-url https://boot.example.org/boot.ipxe > embed.ipxe
    Script {
        name: String,
        #[arg(long)]
        boot_url: String,
        #[command(flatten)]
        script: ScriptArgs,
    },
}

pub async fn run(ctx: &Deployment, command: ImageCommand) -> Result<(), OpError> {
    match command {
        ImageCommand::Build { name, boot_url, out, arch, efi, shim, script } => {
            let efi = efi.unwrap_or_else(|| PathBuf::from(arch.debian_ipxe()));
            let binaries = EfiBinaries { arch, efi, shim };
            let built = image::build(ctx, &name, &boot_url, &out, &binaries, &script.options()).await?;
            for warning in &built.warnings {
                eprintln!("warning: {warning}");
            }
            let mib = built.bytes / (1024 * 1024);
            println!("wrote {} ({mib} MiB): boots gateway {name} from {boot_url}", out.display());
            println!(
                "it holds the gateway's private key: it is written 0600; treat it, and any copy of it, as a secret"
            );
            Ok(())
        }
        ImageCommand::Script { name, boot_url, script } => {
            print!("{}", image::script(ctx, &name, &boot_url, &script.options()).await?);
            Ok(())
        }
    }
}

/// What a gateway script does besides carrying the identity: `image build`, `image script` and
/// `gateway renew` take the same options.
#[derive(Debug, Clone, clap::Args)]
pub struct ScriptArgs {
    /// Where iPXE fetches cross-signed certificates (default: iPXE's own, ca.ipxe.org).
    #[arg(long)]
    pub crosscert: Option<String>,
    /// NTP server the script sets the clock from before each attempt (iPXE checks certificate
    /// dates against it; builds without `ntp`, such as iPXE before 2.0, skip the line).
    #[arg(long, default_value = DEFAULT_NTP_SERVER, conflicts_with = "no_ntp")]
    pub ntp: String,
    /// Leave the gateway's clock alone.
    #[arg(long)]
    pub no_ntp: bool,
}

impl ScriptArgs {
    pub fn options(&self) -> ScriptOptions {
        ScriptOptions { crosscert: self.crosscert.clone(), ntp: (!self.no_ntp).then(|| self.ntp.clone()) }
    }
}
