//! Authenticode signatures of PE images (EFI binaries, kernels with an EFI stub): which
//! certificates signed an image, each signature checked against the image's own bytes the way
//! UEFI firmware checks it under Secure Boot, so that what a release records is what a gateway's
//! firmware will find.

use cms::cert::x509::der::{Decode, Encode};
use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use object::pe;
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader};
use object::LittleEndian as LE;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

const OID_SIGNED_DATA: &str = "1.2.840.113549.1.7.2";
const OID_SPC_INDIRECT_DATA: &str = "1.3.6.1.4.1.311.2.1.4";
const OID_MESSAGE_DIGEST: &str = "1.2.840.113549.1.9.4";
const OID_SHA256: &str = "2.16.840.1.101.3.4.2.1";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
const OID_ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
/// `WIN_CERTIFICATE.wCertificateType` of a PKCS#7 SignedData.
const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;

/// What a PE image carries in its certificate table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeSignature {
    /// Not a PE image at all: no UEFI firmware starts it under Secure Boot.
    NotPe(String),
    /// A PE image without a signature.
    Unsigned,
    /// Every signature of the image, each checked against the image's bytes (at least one).
    Signed(Vec<Signer>),
    /// A signature is there but does not hold (the image changed after signing, or it is
    /// malformed); why.
    Invalid(String),
}

/// The certificate that made one of an image's signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub subject: String,
    pub issuer: String,
    /// SHA-256 of the certificate's DER, lowercase hex.
    pub sha256: String,
    pub der: Vec<u8>,
}

impl Signer {
    /// A signing certificate from its DER (an image's signer, or the certificate a channel
    /// requires).
    pub fn from_der(der: Vec<u8>) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| e.to_string())?;
        Ok(Signer {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            sha256: hex(&Sha256::digest(&der)),
            der,
        })
    }
}

/// The PE machine type of an image (`IMAGE_FILE_MACHINE_*`), or `None` when it is not PE.
pub fn pe_machine(image: &[u8]) -> Option<u16> {
    let dos = pe::ImageDosHeader::parse(image).ok()?;
    let mut at = dos.nt_headers_offset().into();
    let (nt, _) = pe::ImageNtHeaders64::parse(image, &mut at)
        .map(|(nt, d)| (nt.file_header().machine.get(LE), d))
        .or_else(|_| {
            let mut at = dos.nt_headers_offset().into();
            pe::ImageNtHeaders32::parse(image, &mut at).map(|(nt, d)| (nt.file_header().machine.get(LE), d))
        })
        .ok()?;
    Some(nt)
}

/// Reads an image's signatures and checks each one: the Authenticode digest of the image
/// against the signed content, the signed attributes against that content, and the signature
/// against the signer certificate's key (RSA PKCS #1 v1.5 or ECDSA P-256, with SHA-256, what
/// `sbsign` and the distributions' signing services produce).
pub fn examine(image: &[u8]) -> PeSignature {
    let layout = match Layout::read(image) {
        Ok(l) => l,
        Err(e) => return PeSignature::NotPe(e),
    };
    let Some((table_start, table_end)) = layout.cert_table else {
        return PeSignature::Unsigned;
    };
    let digest = match layout.authenticode_sha256(image) {
        Ok(d) => d,
        Err(e) => return PeSignature::Invalid(e),
    };
    let mut signers = Vec::new();
    let mut at = table_start;
    // WIN_CERTIFICATE entries, each 8-byte aligned.
    while at + 8 <= table_end {
        let len = u32::from_le_bytes(image[at..at + 4].try_into().unwrap()) as usize;
        let kind = u16::from_le_bytes(image[at + 6..at + 8].try_into().unwrap());
        if len < 8 || at + len > table_end {
            return PeSignature::Invalid(format!("certificate table entry at {at:#x} is {len} bytes long"));
        }
        if kind == WIN_CERT_TYPE_PKCS_SIGNED_DATA {
            match check_signed_data(&image[at + 8..at + len], &digest) {
                Ok(mut s) => signers.append(&mut s),
                Err(e) => return PeSignature::Invalid(e),
            }
        }
        at += len.div_ceil(8) * 8;
    }
    if signers.is_empty() {
        PeSignature::Unsigned
    } else {
        PeSignature::Signed(signers)
    }
}

/// Whether `signer` is `ca` itself or was issued by it (its signature checked with `ca`'s key):
/// what a certificate in a firmware's db authorizes.
pub fn issued_by(signer: &[u8], ca: &[u8]) -> bool {
    if signer == ca {
        return true;
    }
    let (Ok((_, signer)), Ok((_, ca))) = (X509Certificate::from_der(signer), X509Certificate::from_der(ca)) else {
        return false;
    };
    signer.issuer() == ca.subject() && signer.verify_signature(Some(ca.public_key())).is_ok()
}

/// The parts of a PE image Authenticode hashes around, as file offsets.
struct Layout {
    checksum: usize,
    security_entry: usize,
    size_of_headers: usize,
    /// `(offset, size)` of each section's raw data, in file order.
    sections: Vec<(usize, usize)>,
    /// The certificate table's `[start, end)`: at the end of the file, outside every section.
    cert_table: Option<(usize, usize)>,
}

impl Layout {
    fn read(image: &[u8]) -> Result<Self, String> {
        let dos = pe::ImageDosHeader::parse(image).map_err(|_| "no DOS header (MZ)".to_string())?;
        let nt_at = dos.nt_headers_offset() as usize;
        let mut at = nt_at as u64;
        if let Ok((nt, dirs)) = pe::ImageNtHeaders64::parse(image, &mut at) {
            Self::of(image, nt_at, nt, dirs, 112)
        } else {
            let mut at = nt_at as u64;
            let (nt, dirs) = pe::ImageNtHeaders32::parse(image, &mut at).map_err(|e| format!("no PE headers: {e}"))?;
            Self::of(image, nt_at, nt, dirs, 96)
        }
    }

    fn of<H: ImageNtHeaders>(
        image: &[u8],
        nt_at: usize,
        nt: &H,
        dirs: object::read::pe::DataDirectories<'_>,
        dirs_in_optional: usize,
    ) -> Result<Self, String> {
        let optional = nt_at + 4 + std::mem::size_of::<pe::ImageFileHeader>();
        if dirs.len() <= pe::IMAGE_DIRECTORY_ENTRY_SECURITY {
            return Err("its optional header has no certificate table entry".into());
        }
        let mut sections = Vec::new();
        let at = (optional + nt.file_header().size_of_optional_header.get(LE) as usize) as u64;
        let table = nt.sections(image, at).map_err(|e| format!("bad section table: {e}"))?;
        for s in table.iter() {
            let (offset, size) = (s.pointer_to_raw_data.get(LE) as usize, s.size_of_raw_data.get(LE) as usize);
            if size > 0 {
                if offset.checked_add(size).is_none_or(|end| end > image.len()) {
                    return Err("a section runs past the end of the file".into());
                }
                sections.push((offset, size));
            }
        }
        sections.sort();
        let cert_table = match dirs.get(pe::IMAGE_DIRECTORY_ENTRY_SECURITY) {
            Some(d) if d.size.get(LE) > 0 => {
                // The only data directory whose address is a file offset.
                let (start, size) = (d.virtual_address.get(LE) as usize, d.size.get(LE) as usize);
                let end = start.checked_add(size).filter(|&e| e <= image.len());
                let after_sections = sections.iter().all(|(o, s)| o + s <= start);
                match end {
                    Some(end) if after_sections => Some((start, end)),
                    _ => return Err("its certificate table is outside the file or overlaps a section".into()),
                }
            }
            _ => None,
        };
        let size_of_headers = nt.optional_header().size_of_headers() as usize;
        let security_entry = optional + dirs_in_optional + pe::IMAGE_DIRECTORY_ENTRY_SECURITY * 8;
        if size_of_headers > image.len() || security_entry + 8 > size_of_headers {
            return Err("its headers are truncated".into());
        }
        Ok(Layout { checksum: optional + 64, security_entry, size_of_headers, sections, cert_table })
    }

    /// The Authenticode SHA-256 of the image (Microsoft's "Windows Authenticode Portable
    /// Executable Signature Format"): the headers without the checksum and the certificate
    /// table's entry, each section in file order, then what follows the sections except the
    /// certificate table.
    fn authenticode_sha256(&self, image: &[u8]) -> Result<[u8; 32], String> {
        let mut h = Sha256::new();
        h.update(&image[..self.checksum]);
        h.update(&image[self.checksum + 4..self.security_entry]);
        h.update(&image[self.security_entry + 8..self.size_of_headers]);
        let mut end = self.size_of_headers;
        for &(offset, size) in &self.sections {
            h.update(&image[offset..offset + size]);
            end = end.max(offset + size);
        }
        let tail_end = match self.cert_table {
            Some((start, table_end)) if table_end == image.len() => start,
            Some(_) => return Err("its certificate table is not at the end of the file".into()),
            None => image.len(),
        };
        if tail_end > end {
            h.update(&image[end..tail_end]);
        }
        Ok(h.finalize().into())
    }
}

/// The signers of one PKCS #7 SignedData whose content is the image's digest.
fn check_signed_data(der: &[u8], image_digest: &[u8; 32]) -> Result<Vec<Signer>, String> {
    let info = ContentInfo::from_der(der).map_err(|e| format!("signature is not PKCS #7: {e}"))?;
    if info.content_type.to_string() != OID_SIGNED_DATA {
        return Err(format!("signature is a PKCS #7 {}, not SignedData", info.content_type));
    }
    let signed: SignedData = info.content.decode_as().map_err(|e| format!("malformed SignedData: {e}"))?;
    let content = &signed.encap_content_info;
    if content.econtent_type.to_string() != OID_SPC_INDIRECT_DATA {
        return Err(format!("signed content is {}, not an Authenticode digest", content.econtent_type));
    }
    let econtent = content.econtent.as_ref().ok_or("signed content is empty")?;
    let (alg, signed_digest) = spc_digest(econtent.value())?;
    if alg != OID_SHA256 {
        return Err(format!("image digest algorithm {alg} is not SHA-256"));
    }
    if signed_digest != image_digest {
        return Err("the image changed after it was signed (its Authenticode digest differs)".into());
    }
    let certificates: Vec<_> = signed
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .filter_map(|c| match c {
            CertificateChoices::Certificate(cert) => Some(cert),
            _ => None,
        })
        .collect();
    let mut signers = Vec::new();
    for signer in signed.signer_infos.0.iter() {
        let SignerIdentifier::IssuerAndSerialNumber(id) = &signer.sid else {
            return Err("a signer is named by key identifier, which firmware does not match".into());
        };
        let cert = certificates
            .iter()
            .find(|c| c.tbs_certificate.issuer == id.issuer && c.tbs_certificate.serial_number == id.serial_number)
            .ok_or("the signer's certificate is not in the signature")?;
        let cert_der = cert.to_der().map_err(|e| format!("signer certificate: {e}"))?;
        check_signer(signer, econtent.value(), &cert_der)?;
        signers.push(Signer::from_der(cert_der).map_err(|e| format!("signer certificate: {e}"))?);
    }
    Ok(signers)
}

/// `SpcIndirectDataContent ::= SEQUENCE { data ANY, messageDigest DigestInfo }`: the digest's
/// algorithm and value.
fn spc_digest(content: &[u8]) -> Result<(String, &[u8]), String> {
    use x509_parser::der_parser::ber::BerObjectContent;
    use x509_parser::der_parser::der::parse_der;
    let bad = || "malformed Authenticode digest".to_string();
    // `content` is the SEQUENCE's value; its two elements follow one another.
    let (rest, _data) = parse_der(content).map_err(|_| bad())?;
    let (_, digest_info) = parse_der(rest).map_err(|_| bad())?;
    let BerObjectContent::Sequence(parts) = &digest_info.content else { return Err(bad()) };
    let [alg, digest] = parts.as_slice() else { return Err(bad()) };
    let BerObjectContent::Sequence(alg) = &alg.content else { return Err(bad()) };
    let oid = alg.first().and_then(|o| o.as_oid().ok()).ok_or_else(bad)?.to_id_string();
    let BerObjectContent::OctetString(value) = digest.content else { return Err(bad()) };
    Ok((oid, value))
}

/// The signer's signed attributes hold the content's digest, and its signature over them is
/// made by the certificate's key.
fn check_signer(signer: &SignerInfo, content: &[u8], cert_der: &[u8]) -> Result<(), String> {
    if signer.digest_alg.oid.to_string() != OID_SHA256 {
        return Err(format!("signer digest algorithm {} is not SHA-256", signer.digest_alg.oid));
    }
    let attrs = signer.signed_attrs.as_ref().ok_or("the signer signed no attributes")?;
    let content_digest = Sha256::digest(content);
    let message_digest = attrs
        .iter()
        .find(|a| a.oid.to_string() == OID_MESSAGE_DIGEST)
        .and_then(|a| a.values.iter().next())
        .ok_or("the signer's attributes hold no message digest")?;
    if message_digest.value() != content_digest.as_slice() {
        return Err("the signer's message digest does not match the signed content".into());
    }
    // What is signed is the attributes' DER as a SET OF (tag 0x31), not as the [0] they sit in.
    let signed_bytes = attrs.to_der().map_err(|e| format!("signed attributes: {e}"))?;
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| format!("signer certificate: {e}"))?;
    let key = &cert.public_key().subject_public_key.data;
    let algorithm: &dyn ring::signature::VerificationAlgorithm =
        match signer.signature_algorithm.oid.to_string().as_str() {
            OID_RSA | OID_SHA256_WITH_RSA => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            OID_ECDSA_SHA256 => &ring::signature::ECDSA_P256_SHA256_ASN1,
            other => return Err(format!("signature algorithm {other} is not supported")),
        };
    ring::signature::UnparsedPublicKey::new(algorithm, key)
        .verify(&signed_bytes, signer.signature.as_bytes())
        .map_err(|_| format!("the signature of {} does not verify", cert.subject()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
