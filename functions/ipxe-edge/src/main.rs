//! `ipxe-edge`: the operator's tool. `serve` runs the whole service on one machine; the other
//! commands manage certificates, gateways, releases and channels in the embedded store
//! (`--data DIR`) or a real bucket (`--bucket NAME`).

mod datadir;
mod ops;
mod serve;

use clap::{Parser, Subcommand};
use ipxe_edge_core::model::GatewayState;
use ops::context::{file_error, StoreArgs};
use ops::{CliError, Context};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "ipxe-edge", version, about = "Serverless iPXE boot server for CI farm gateways: operator tool and local server")]
struct Cli {
    /// Data directory: local PKI, keys, and the embedded store.
    #[arg(long, global = true, default_value = "./ipxe-edge-data", env = "IPXE_EDGE_DATA")]
    data: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the boot service locally: mTLS boot endpoint, secrets endpoint, embedded S3 and ledger.
    ///
    /// The first start on an empty data directory creates a CA, a server certificate, a demo
    /// gateway with its certificate and key, a placeholder release and the token key, then
    /// prints a curl command that boots as the demo gateway.
    ///
    /// Example: ipxe-edge serve --data ./ipxe-edge-data --public-host 10.0.2.2
    Serve(serve::ServeArgs),
    /// The deployment CA and the trust bundle.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Enroll, inspect, pin and revoke gateways.
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Publish and inspect releases (kernel + initrd per architecture).
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Point channels at releases: promote, roll back, history.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// The boot script gateway NAME would receive now, URLs and token redacted.
    ///
    /// Example: ipxe-edge preview gw-berlin-1
    Preview {
        name: String,
        /// Architecture to render for [default: the gateway's].
        #[arg(long)]
        arch: Option<String>,
        /// Platform (pcbios or efi).
        #[arg(long)]
        platform: Option<String>,
    },
    /// Import a farm from another deployment.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Gateway boot images.
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Write a bootable UEFI disk image for gateway NAME: GPT + FAT32 ESP with Debian's
    /// ipxe.efi as EFI/BOOT/BOOTX64.EFI and an autoexec.ipxe holding the gateway's certificate
    /// and key that chains to the boot URL, retrying forever.
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
        /// The iPXE EFI binary (Debian's ipxe package, 1.21.1 or newer).
        #[arg(long, default_value = ops::image::DEBIAN_IPXE_EFI)]
        ipxe_efi: PathBuf,
        /// Where iPXE fetches cross-signed certificates (default: iPXE's own, ca.ipxe.org).
        #[arg(long)]
        crosscert: Option<String>,
    },
    /// Print the iPXE script of gateway NAME (certificate, key, chain loop): the autoexec.ipxe of
    /// `image build`, or the EMBED= script of a custom iPXE build. It holds the private key.
    ///
    /// Example: ipxe-edge image script gw-berlin-1 --boot-url https://boot.example.org/boot.ipxe > embed.ipxe
    Script {
        name: String,
        #[arg(long)]
        boot_url: String,
        #[arg(long)]
        crosscert: Option<String>,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the deployment CA (RSA, as iPXE requires) and add it to the trust bundle.
    ///
    /// The key is written 0600 to DIR/pki/ca.key and never leaves this machine. Refuses to
    /// overwrite an existing CA.
    ///
    /// Example: ipxe-edge ca init
    Init {
        /// Validity in days.
        #[arg(long, default_value_t = ops::ca::CA_DAYS)]
        days: u32,
    },
    /// Print (or write) the PEM bundle to upload as the API Gateway mTLS truststore.
    ///
    /// Example: ipxe-edge --bucket my-boot-bucket ca truststore --out truststore.pem
    Truststore {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Trust another CA (e.g. an existing farm's), so that its gateways' certificates verify.
    ///
    /// Example: ipxe-edge ca trust ./valve-infra/ca_cert/ca.crt
    Trust { file: PathBuf },
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// Issue a client certificate (RSA 2048, clientAuth) for a new gateway and enroll it.
    ///
    /// Writes DIR/pki/gateways/NAME.crt and NAME.key (0600). Whoever holds the key boots as the
    /// gateway: build it into the gateway's image and keep it secret.
    ///
    /// Example: ipxe-edge gateway enroll gw-berlin-1 --channel canary --days 730
    Enroll {
        name: String,
        #[arg(long)]
        channel: Option<String>,
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// The gateway's architecture (checked against releases it is given).
        #[arg(long, default_value = "x86_64")]
        arch: String,
    },
    /// Enroll an existing certificate (it must chain to the trust bundle; v1 certificates work).
    ///
    /// Example: ipxe-edge gateway import gw-old --cert ci-gateway-old.iso.crt
    Import {
        name: String,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        channel: Option<String>,
        #[arg(long, default_value = "x86_64")]
        arch: String,
    },
    /// Table of gateways: name, fingerprint prefix, channel or pin, state.
    ///
    /// Example: ipxe-edge gateway list
    List,
    /// A gateway's record.
    ///
    /// Example: ipxe-edge gateway show gw-berlin-1
    Show { name: String },
    /// Refuse every boot of this gateway from now on (a stolen or retired image).
    ///
    /// Example: ipxe-edge gateway revoke gw-berlin-1
    Revoke { name: String },
    /// Let a disabled gateway boot again (revoked gateways must be re-enrolled).
    ///
    /// Example: ipxe-edge gateway enable gw-berlin-1
    Enable { name: String },
    /// Refuse boots for now, without revoking the certificate.
    ///
    /// Example: ipxe-edge gateway disable gw-berlin-1
    Disable { name: String },
    /// Boot this gateway from RELEASE whatever its channel says (canary, hold).
    ///
    /// Example: ipxe-edge gateway pin gw-berlin-1 2026-11-26.1
    Pin { name: String, release: String },
    /// Follow the channel again.
    ///
    /// Example: ipxe-edge gateway unpin gw-berlin-1
    Unpin { name: String },
    /// Store the gateway's secrets (kernel-cmdline syntax, served once per boot). Never echoed.
    ///
    /// Example: ipxe-edge gateway set-secrets gw-berlin-1 --file - < secrets.txt
    SetSecrets {
        name: String,
        /// File to read, or - for standard input.
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ReleaseCommand {
    /// Upload a kernel and initrd (content-addressed, skipped when already stored) and write
    /// the release manifest last, so an interrupted upload leaves no release.
    ///
    /// Repeat --arch/--kernel/--initrd for several architectures.
    ///
    /// Example: ipxe-edge release create 2026-11-26.1 --kernel vmlinuz --initrd initrd.img --cmdline "console=ttyS0 b2c.container=docker://x"
    Create {
        id: String,
        /// Architecture of each kernel/initrd pair (x86_64, arm64, …, optionally -efi/-pcbios).
        #[arg(long)]
        arch: Vec<String>,
        #[arg(long, required = true)]
        kernel: Vec<PathBuf>,
        #[arg(long, required = true)]
        initrd: Vec<PathBuf>,
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Boot script template (iPXE syntax with ${kernel_url}, ${initrd_url}, ${secrets_url}, …).
        #[arg(long)]
        template: Option<PathBuf>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Table of releases.
    ///
    /// Example: ipxe-edge release list
    List,
    /// A release's manifest.
    ///
    /// Example: ipxe-edge release show 2026-11-26.1
    Show { id: String },
}

#[derive(Subcommand)]
enum ChannelCommand {
    /// Point CHANNEL at RELEASE in one atomic write (the previous release goes to history).
    ///
    /// Example: ipxe-edge channel promote stable 2026-11-26.1
    Promote { channel: String, release: String },
    /// Point CHANNEL back at the release it had before.
    ///
    /// Example: ipxe-edge channel rollback stable
    Rollback { channel: String },
    /// The channel's current release and the ones before it.
    ///
    /// Example: ipxe-edge channel history stable
    History { channel: String },
}

#[derive(Subcommand)]
enum ImportCommand {
    /// Migrate a valve-infra ipxe-boot-server farm (dry run unless --apply).
    ///
    /// Example: ipxe-edge import valve-infra --files /srv/ipxe --certs ./certs --ca ./ca_cert/ca.crt --apply
    ValveInfra {
        /// Its data root (holding files/<sha1>/…) or the files folder itself.
        #[arg(long)]
        files: PathBuf,
        /// Folder of ci-gateway-NAME.iso.crt certificates.
        #[arg(long)]
        certs: PathBuf,
        /// Its CA certificate (ca_cert/ca.crt).
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        apply: bool,
    },
}

async fn run(cli: Cli) -> Result<(), CliError> {
    if let Command::Serve(args) = cli.command {
        return serve::run(cli.data, args).await.map_err(|e| CliError::Usage(e.to_string()));
    }
    let ctx = Context::open(cli.data, &cli.store).await?;
    match cli.command {
        Command::Serve(_) => unreachable!("handled above"),
        Command::Ca(CaCommand::Init { days }) => ops::ca::init(&ctx, days).await,
        Command::Ca(CaCommand::Truststore { out }) => ops::ca::truststore(&ctx, out.as_deref()).await,
        Command::Ca(CaCommand::Trust { file }) => ops::ca::trust(&ctx, &file).await,
        Command::Gateway(cmd) => match cmd {
            GatewayCommand::Enroll { name, channel, days, arch } => ops::gateway::enroll(&ctx, &name, channel.as_deref(), days, &arch).await,
            GatewayCommand::Import { name, cert, channel, arch } => ops::gateway::import(&ctx, &name, &cert, channel.as_deref(), &arch).await.map(|_| ()),
            GatewayCommand::List => ops::gateway::list(&ctx).await,
            GatewayCommand::Show { name } => ops::gateway::show(&ctx, &name).await,
            GatewayCommand::Revoke { name } => ops::gateway::set_state(&ctx, &name, GatewayState::Revoked).await,
            GatewayCommand::Disable { name } => ops::gateway::set_state(&ctx, &name, GatewayState::Disabled).await,
            GatewayCommand::Enable { name } => {
                if ctx.gateway(&name).await?.state == GatewayState::Revoked {
                    return Err(CliError::Usage(format!("gateway {name} is revoked; enroll a new certificate instead")));
                }
                ops::gateway::set_state(&ctx, &name, GatewayState::Enabled).await
            }
            GatewayCommand::Pin { name, release } => ops::gateway::pin(&ctx, &name, Some(&release)).await,
            GatewayCommand::Unpin { name } => ops::gateway::pin(&ctx, &name, None).await,
            GatewayCommand::SetSecrets { name, file } => ops::gateway::set_secrets(&ctx, &name, &file).await,
        },
        Command::Release(ReleaseCommand::Create { id, arch, kernel, initrd, cmdline, template, description }) => {
            if kernel.len() != initrd.len() || (!arch.is_empty() && arch.len() != kernel.len()) {
                return Err(CliError::Usage("give one --kernel and one --initrd (and one --arch, if any) per architecture".into()));
            }
            let arches: Vec<String> = if arch.is_empty() { vec![ipxe_edge_core::model::DEFAULT_ARCH.to_string(); kernel.len()] } else { arch };
            let template = match template {
                Some(path) => Some(std::fs::read_to_string(&path).map_err(file_error(&path))?),
                None => None,
            };
            let arches = arches.into_iter().zip(kernel).zip(initrd).map(|((a, k), i)| (a, k, i)).collect();
            ops::release::create(&ctx, ops::release::CreateRequest { id, arches, cmdline, template, description }).await.map(|_| ())
        }
        Command::Release(ReleaseCommand::List) => ops::release::list(&ctx).await,
        Command::Release(ReleaseCommand::Show { id }) => ops::release::show(&ctx, &id).await,
        Command::Channel(ChannelCommand::Promote { channel, release }) => ops::channel::promote(&ctx, &channel, &release).await,
        Command::Channel(ChannelCommand::Rollback { channel }) => ops::channel::rollback(&ctx, &channel).await,
        Command::Channel(ChannelCommand::History { channel }) => ops::channel::history(&ctx, &channel).await,
        Command::Preview { name, arch, platform } => {
            let script = ops::preview::preview(&ctx, &name, arch.as_deref(), platform.as_deref()).await?;
            print!("{script}");
            Ok(())
        }
        Command::Import(ImportCommand::ValveInfra { files, certs, ca, apply }) => ops::import::valve_infra(&ctx, &files, &certs, &ca, apply).await,
        Command::Image(ImageCommand::Build { name, boot_url, out, ipxe_efi, crosscert }) => {
            ops::image::build(&ctx, &name, &boot_url, &out, &ipxe_efi, crosscert.as_deref()).await
        }
        Command::Image(ImageCommand::Script { name, boot_url, crosscert }) => {
            print!("{}", ops::image::script(&ctx, &name, &boot_url, crosscert.as_deref()).await?);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        ipxe_edge_core::logging::init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ipxe-edge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipxe-edge: {}", e.to_string().replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
