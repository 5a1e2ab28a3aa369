//! Certificates for the security tests: the development CA that
//! `scripts/certs.sh` makes (so the script is exercised too), and the
//! hostile ones an attacker would bring (another CA, an expired certificate),
//! made with rcgen.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A folder of PEM files made by `scripts/certs.sh`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// Runs `scripts/certs.sh` for `nodes` in a fresh folder.
    pub fn make(nodes: &[&str]) -> Result<Self> {
        let dir = super::scratch_dir("pki");
        let out = Command::new("bash")
            .arg(super::workspace_root().join("scripts/certs.sh"))
            .arg(&dir)
            .args(nodes)
            .output()
            .context("cannot run scripts/certs.sh")?;
        if !out.status.success() {
            bail!(
                "scripts/certs.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self { dir })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// `path` as a string, for flags.
    pub fn arg(&self, file: &str) -> String {
        self.path(file).to_string_lossy().into_owned()
    }

    fn read(&self, file: &str) -> Result<String> {
        std::fs::read_to_string(self.path(file)).with_context(|| format!("reading {file}"))
    }

    /// Trusts the CA; with `identity`, presents `{identity}.pem`.
    pub fn client(&self, identity: Option<&str>) -> Result<ClientTlsConfig> {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.read("ca.pem")?));
        if let Some(name) = identity {
            tls = tls.identity(Identity::from_pem(
                self.read(&format!("{name}.pem"))?,
                self.read(&format!("{name}.key"))?,
            ));
        }
        Ok(tls)
    }

    /// The flags a claim-service needs to serve TLS and require node
    /// certificates, with `admin` as the admin identity.
    pub fn service_flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.arg("claim-service.pem"),
            "--tls-key".into(),
            self.arg("claim-service.key"),
            "--client-ca".into(),
            self.arg("ca.pem"),
            "--admin-identity".into(),
            "admin".into(),
        ]
    }

    /// A client certificate for `name` signed by this CA but expired a
    /// year ago; written as `{file}.pem/.key`.
    pub fn expired(&self, name: &str, file: &str) -> Result<()> {
        let ca_key = KeyPair::from_pem(&self.read("ca.key")?)?;
        let issuer = Issuer::from_ca_cert_pem(&self.read("ca.pem")?, ca_key)?;
        let mut params = leaf_params(name)?;
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2025, 1, 1);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        self.write(file, &cert.pem(), &key.serialize_pem())
    }

    /// A client certificate for `name` from a CA this stack does not trust;
    /// written as `{file}.pem/.key`.
    pub fn foreign(&self, name: &str, file: &str) -> Result<()> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Mallory CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate()?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let cert = leaf_params(name)?.signed_by(&key, &issuer)?;
        self.write(file, &cert.pem(), &key.serialize_pem())
    }

    fn write(&self, file: &str, cert: &str, key: &str) -> Result<()> {
        std::fs::write(self.path(&format!("{file}.pem")), cert)?;
        std::fs::write(self.path(&format!("{file}.key")), key)?;
        Ok(())
    }
}

fn leaf_params(name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
