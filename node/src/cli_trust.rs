//! `dynostore site ...` and `dynostore cert ...`: a site's admin key and the
//! certificates that admit its nodes (see `dynostore_node::trust`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use dynostore_node::config::{Config, IDENTITY_FILE};
use dynostore_node::container::ByteSize;
use dynostore_node::keys;
use dynostore_node::manifests::wall_ms;
use dynostore_node::trust::{
    fresh_seed, load_cert, load_federation, load_site_key, new_site_key, write_site_key,
};
use dynostore_protocol::token::{self, Grant, Op, Restriction, Token};
use dynostore_protocol::trust::{check_label, NodeCert, NodeCertBody, Revocation, CERT_VERSION};
use dynostore_protocol::NodeId;

/// The files `cert install` puts into a node directory.
const FEDERATION_FILE: &str = "federation.toml";
const CERT_FILE: &str = "node.cert";

#[derive(Debug, Subcommand)]
pub(crate) enum SiteCommand {
    /// Create a site's admin key (mode 0600, never overwritten) and print
    /// the line that lists the site in the federation file.
    Init {
        /// The site's label (letters, digits, '-', '_', '.').
        #[arg(long)]
        site: String,
        /// Where to write the secret key.
        #[arg(long)]
        key: PathBuf,
    },
    /// Print the federation-file line of an existing site key.
    Pubkey {
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Sign a node certificate with a site's admin key. With --dir, the
    /// certificate and the federation file are installed into that node
    /// directory; with --node and --out, written to a file for `cert install`.
    Issue {
        /// The site admin key (from `site init`).
        #[arg(long)]
        site_key: PathBuf,
        /// The federation file (its name and each site's public key).
        #[arg(long)]
        federation: PathBuf,
        /// The node directory to certify and install into.
        #[arg(long, conflicts_with_all = ["node", "out"], required_unless_present = "node")]
        dir: Option<PathBuf>,
        /// The node ID to certify (what `init` printed).
        #[arg(long, requires = "out")]
        node: Option<NodeId>,
        /// Where to write the certificate (with --node).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The most capacity the node's announcements may count for.
        #[arg(long)]
        capacity: ByteSize,
        /// Days the certificate is valid from now (fractions allowed).
        #[arg(long, default_value_t = 365.0)]
        days: f64,
    },
    /// Install a certificate into a node directory after checking it
    /// against the federation file and the node's identity.
    Install {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        federation: PathBuf,
        cert: PathBuf,
    },
    /// Print a certificate; with --federation, also check it.
    Inspect {
        cert: PathBuf,
        #[arg(long)]
        federation: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Issue a user token signed by a site's admin key (written 0600).
    Issue {
        #[arg(long)]
        site_key: PathBuf,
        #[arg(long)]
        federation: PathBuf,
        /// The user the token names.
        #[arg(long)]
        user: String,
        /// Operations allowed: put, get, ls, rm, admin (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        ops: Vec<Op>,
        /// Name prefixes covered (repeatable; default: every name).
        #[arg(long = "prefix")]
        prefixes: Vec<String>,
        #[arg(long, default_value_t = 30.0)]
        days: f64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Restrict a token offline (fewer operations, one prefix, an earlier
    /// expiry) to hand it to a colleague; needs no admin key.
    Attenuate {
        #[arg(long)]
        federation: PathBuf,
        token: PathBuf,
        #[arg(long, value_delimiter = ',')]
        ops: Option<Vec<Op>>,
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        days: Option<f64>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke tokens (signed with a site's admin key) through any node;
    /// every member learns it from the others within a few announcement
    /// intervals and keeps it on disk. Revokes the token file's own
    /// identifier (its last block: an attenuated copy, or the whole token
    /// when it is not attenuated) and any --id given.
    Revoke {
        #[arg(long)]
        site_key: PathBuf,
        #[arg(long)]
        federation: PathBuf,
        /// A token file to revoke (its last block's identifier).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Revocation identifiers (hex, as `token issue` / `inspect` print them).
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
        #[command(flatten)]
        conn: crate::ConnArgs,
    },
    /// Check a token against the federation and print what it allows and
    /// its revocation IDs.
    Inspect {
        #[arg(long)]
        federation: PathBuf,
        token: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn expiry_secs(days: f64) -> Result<u64> {
    if !(days > 0.0 && days <= 36_500.0) {
        bail!("--days {days}: give a validity from above 0 up to 36500 days");
    }
    Ok(wall_ms() / 1000 + (days * 86_400.0) as u64)
}

fn read_token(path: &Path, fed: &dynostore_protocol::trust::Federation) -> Result<Token> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token {}", path.display()))?;
    Token::decode_base64(text.trim(), fed)
        .with_context(|| format!("{} is not a token of this federation", path.display()))
}

fn write_token(path: &Path, t: &Token) -> Result<()> {
    keys::write_secret_file(path, format!("{}\n", t.to_base64()?).as_bytes())?;
    Ok(())
}

/// A site-signed revocation of `token`'s last block and of `ids`.
pub(crate) fn revocation(
    site_key: &Path,
    federation: &Path,
    token: Option<&Path>,
    mut ids: Vec<String>,
) -> Result<Vec<u8>> {
    let (site, sk) = load_site_key(site_key)?;
    let fed = load_federation(federation)?;
    if fed.site_key(&site) != Some(&sk.public()) {
        bail!(
            "{} does not list this key for site {site}",
            federation.display()
        );
    }
    if let Some(path) = token {
        let t = read_token(path, &fed)?;
        ids.extend(t.revocation_ids().last().cloned());
    }
    if ids.is_empty() {
        bail!("nothing to revoke: give --token-file FILE or --id ID");
    }
    let r = Revocation::sign(fed.name(), &site, &sk, ids, wall_ms())?;
    Ok(r.encode())
}

pub(crate) fn token_cmd(cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Revoke { .. } => bail!("token revoke is handled by the caller"),
        TokenCommand::Issue {
            site_key,
            federation,
            user,
            ops,
            prefixes,
            days,
            out,
        } => {
            let (site, sk) = load_site_key(&site_key)?;
            let fed = load_federation(&federation)?;
            if fed.site_key(&site) != Some(&sk.public()) {
                bail!(
                    "{} does not list this key for site {site}",
                    federation.display()
                );
            }
            let grant = Grant {
                user,
                ops: ops.into_iter().collect(),
                prefixes: if prefixes.is_empty() {
                    vec![String::new()]
                } else {
                    prefixes
                },
                expires_secs: expiry_secs(days)?,
            };
            let t = token::issue(&site, &sk, &grant, fresh_seed())?;
            write_token(&out, &t)?;
            println!("{}", t.revocation_ids()[0]);
            Ok(())
        }
        TokenCommand::Attenuate {
            federation,
            token,
            ops,
            prefix,
            days,
            out,
        } => {
            let fed = load_federation(&federation)?;
            let t = read_token(&token, &fed)?;
            let r = Restriction {
                ops: ops.map(|o| o.into_iter().collect()),
                prefix,
                expires_secs: days.map(expiry_secs).transpose()?,
            };
            let narrower = t.attenuate(&r, fresh_seed())?;
            write_token(&out, &narrower)?;
            println!(
                "{}",
                narrower
                    .revocation_ids()
                    .last()
                    .cloned()
                    .unwrap_or_default()
            );
            Ok(())
        }
        TokenCommand::Inspect {
            federation,
            token,
            json,
        } => {
            let fed = load_federation(&federation)?;
            let t = read_token(&token, &fed)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"revocation_ids": t.revocation_ids(), "datalog": t.print()})
                );
            } else {
                println!("signed by a site of {}", fed.name());
                println!(
                    "revocation ids (authority first): {}",
                    t.revocation_ids().join(" ")
                );
                println!("{}", t.print());
            }
            Ok(())
        }
    }
}

pub(crate) fn site(cmd: SiteCommand) -> Result<()> {
    match cmd {
        SiteCommand::Init { site, key } => {
            check_label("site label", &site)?;
            let sk = new_site_key();
            write_site_key(&key, &site, &sk)?;
            eprintln!(
                "wrote the admin key of site {site} to {} (keep it secret); \
                 add this line under [sites] in every member's federation file:",
                key.display()
            );
            println!("{site} = \"{}\"", sk.public());
            Ok(())
        }
        SiteCommand::Pubkey { key } => {
            let (site, sk) = load_site_key(&key)?;
            println!("{site} = \"{}\"", sk.public());
            Ok(())
        }
    }
}

pub(crate) fn cert(cmd: CertCommand) -> Result<()> {
    match cmd {
        CertCommand::Issue {
            site_key,
            federation,
            dir,
            node,
            out,
            capacity,
            days,
        } => {
            let (site, sk) = load_site_key(&site_key)?;
            let fed = load_federation(&federation)?;
            match fed.site_key(&site) {
                Some(k) if *k == sk.public() => {}
                Some(_) => bail!(
                    "{} lists another key for site {site}: this key would certify nodes nobody admits",
                    federation.display()
                ),
                None => bail!(
                    "{} does not list site {site}: add the line `dynostore site pubkey` prints",
                    federation.display()
                ),
            }
            let node = match (&dir, node) {
                (Some(d), _) => node_of(d)?,
                (None, Some(n)) => n,
                (None, None) => bail!("give --dir or --node"),
            };
            if !(days > 0.0 && days <= 36_500.0) {
                bail!("--days {days}: give a validity from above 0 up to 36500 days");
            }
            let now = wall_ms();
            let body = NodeCertBody {
                version: CERT_VERSION,
                federation: fed.name().to_string(),
                site,
                node: node.as_bytes().to_vec(),
                capacity_max_bytes: capacity.bytes(),
                issued_ms: now,
                expires_ms: now.saturating_add((days * 86_400_000.0) as u64),
            };
            let cert = sk.issue(&body);
            match (dir, out) {
                (Some(d), _) => install(&d, &federation, &cert),
                (None, Some(out)) => {
                    write_new(&out, &cert.encode())?;
                    println!("wrote the certificate of {node} to {}", out.display());
                    Ok(())
                }
                (None, None) => bail!("give --dir or --out"),
            }
        }
        CertCommand::Install {
            dir,
            federation,
            cert,
        } => install(&dir, &federation, &load_cert(&cert)?),
        CertCommand::Inspect {
            cert,
            federation,
            json,
        } => {
            let c = load_cert(&cert)?;
            let b = c.body();
            let node = b.node_id()?;
            let verdict = match &federation {
                Some(f) => Some(match c.verify(&load_federation(f)?, &node, wall_ms()) {
                    Ok(_) => "valid".to_string(),
                    Err(e) => format!("refused: {e}"),
                }),
                None => None,
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "federation": b.federation, "site": b.site, "node": node.to_string(),
                        "capacity_max_bytes": b.capacity_max_bytes, "issued_ms": b.issued_ms,
                        "expires_ms": b.expires_ms, "verdict": verdict,
                    })
                );
            } else {
                println!("federation  {}", b.federation);
                println!("site        {}", b.site);
                println!("node        {node}");
                println!("capacity    at most {} bytes", b.capacity_max_bytes);
                println!("valid       {} .. {} (Unix ms)", b.issued_ms, b.expires_ms);
                if let Some(v) = verdict {
                    println!("check       {v}");
                }
            }
            Ok(())
        }
    }
}

/// The node ID of a node directory (its identity key).
fn node_of(dir: &Path) -> Result<NodeId> {
    let kp = keys::load_identity(&dir.join(IDENTITY_FILE)).with_context(|| {
        format!(
            "{} is not a node directory (run `dynostore init`)",
            dir.display()
        )
    })?;
    Ok(NodeId::from_bytes(kp.public().to_peer_id().to_bytes())?)
}

/// Checks `cert` against the federation and the node's identity, copies
/// both into `dir` and names them in its config (with the certificate's site).
fn install(dir: &Path, federation: &Path, cert: &NodeCert) -> Result<()> {
    let fed = load_federation(federation)?;
    let node = node_of(dir)?;
    cert.verify(&fed, &node, wall_ms())
        .context("the certificate would not admit this node")?;
    let mut cfg = Config::load(dir)?;
    std::fs::copy(federation, dir.join(FEDERATION_FILE)).with_context(|| {
        format!(
            "cannot copy {} into {}",
            federation.display(),
            dir.display()
        )
    })?;
    let cert_path = dir.join(CERT_FILE);
    std::fs::write(&cert_path, cert.encode())
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    cfg.federation = Some(FEDERATION_FILE.into());
    cfg.cert = Some(CERT_FILE.into());
    cfg.site.clone_from(&cert.body().site);
    cfg.validate()?;
    cfg.save(dir)?;
    println!(
        "installed the certificate of {node} (site {}, at most {} bytes) in {}",
        cert.body().site,
        cert.body().capacity_max_bytes,
        dir.display()
    );
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist)", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
