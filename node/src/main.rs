//! `dynostore`: the node and its command-line client in one binary.

mod cli_trust;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use libp2p::Multiaddr;

use dynostore_node::client::Client;
use dynostore_node::config::{Config, DEFAULT_K, DEFAULT_M, IDENTITY_FILE};
use dynostore_node::container::ContainerSpec;
use dynostore_node::json::{list_json, stat_json, status_json};
use dynostore_node::objects::{self, Output, Progress, PutParams};
use dynostore_node::{crypt, keys, node, shard_proto};
use dynostore_protocol::durability::Durability;
use dynostore_protocol::erasure::CodecKind;
use dynostore_protocol::wire::{
    ClientRequest, ClientResponse, ControlRequest, ControlResponse, StatusReport,
};
use dynostore_protocol::{NodeId, ObjectId, ShardId};

/// DynoStore: erasure-coded peer-to-peer storage across sites.
#[derive(Debug, Parser)]
#[command(name = "dynostore", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a node directory: config.toml and the node's identity.
    Init(Box<InitArgs>),
    /// Run the node in DIR until SIGINT or SIGTERM.
    Node {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Write a new random network key to FILE (never overwrites).
    NetworkKey { file: PathBuf },
    /// Show a node's membership view.
    Status {
        #[command(flatten)]
        conn: ConnArgs,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Store files; prints each object's ID (its BLAKE3, as b3sum prints it).
    Put(PutArgs),
    /// Fetch an object by ID; verifies every byte against the ID. With -i,
    /// decrypts it (or the object a share opens) while streaming.
    Get(GetArgs),
    /// Write a new age X25519 identity to FILE (mode 0600, never
    /// overwrites); prints its recipient (age1...), for --encrypt-to.
    Keygen { file: PathBuf },
    /// Let more recipients read an encrypted object without re-uploading
    /// it: stores a small share object (a new age header for the same
    /// payload) and prints its ID, which the recipients get with -i.
    Share(ShareArgs),
    /// Show an object's geometry, shard holders and health.
    Stat {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Remove an object (by ID: its shards and its manifest replicas), or
    /// a name (BUCKET/KEY: the object goes once no name refers to it, if
    /// it was stored with `put --name` or through S3).
    Rm {
        id: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// List the objects the network holds, or with BUCKET[/PREFIX] the
    /// names in a bucket.
    Ls {
        /// A bucket, optionally with a key prefix: BUCKET or BUCKET/PREFIX.
        target: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Re-hash every shard a node stores now; corrupt copies are deleted and rebuilt.
    Scrub {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        json: bool,
    },
    /// Replace a node's deny-list: it refuses and closes connections to
    /// these node IDs until the next `deny` (none: heal). Not kept across
    /// restarts. Quarantines a member, or partitions a test network.
    Deny {
        /// Node IDs to deny; none clears the list.
        ids: Vec<NodeId>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Low-level shard operations against one node (for operators and tests).
    #[command(subcommand)]
    Shard(ShardCommand),
    /// A site's admin key: create it, print its federation-file line.
    #[command(subcommand)]
    Site(cli_trust::SiteCommand),
    /// Node certificates: issue (signed by a site admin key), install, inspect.
    #[command(subcommand)]
    Cert(cli_trust::CertCommand),
    /// User tokens: issue (site admin), attenuate (any holder), inspect.
    #[command(subcommand)]
    Token(cli_trust::TokenCommand),
    /// The S3 endpoint: keys from a user token.
    #[command(subcommand)]
    S3(S3Command),
}

#[derive(Debug, Subcommand)]
enum S3Command {
    /// Register a user token with the federation and print the S3 key
    /// pair it gives (access key ID and secret; the S3 requests signed
    /// with it carry exactly the token's rights).
    /// The token is the one the command acts with (`--token FILE` or
    /// `DYNOSTORE_TOKEN`, from `token issue` or `token attenuate`).
    Keys {
        /// One JSON object instead of two lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

#[derive(Debug, Args)]
struct PutArgs {
    /// Files to store (with -r: one directory).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Store every file under the directory, each named by its relative path.
    #[arg(short = 'r', long)]
    recursive: bool,
    /// Data shards per stripe (default: the entry peer's choice, see
    /// --durability; its default_k, 4 unless configured).
    #[arg(long, conflicts_with = "durability")]
    k: Option<u16>,
    /// Parity shards per stripe: the number of node losses survived
    /// (default: the entry peer's choice; its default_m, 2 unless configured).
    #[arg(long, conflicts_with = "durability")]
    m: Option<u16>,
    /// Annual durability target, e.g. 0.999999: the entry peer picks the
    /// k and m with the least overhead that meet it for the members and
    /// sites it sees (default: the entry peer's site default, if any).
    #[arg(long, env = "DYNOSTORE_DURABILITY")]
    durability: Option<f64>,
    /// Erasure codec: reed-solomon-simd or reed-solomon-novelpoly.
    #[arg(long, default_value = "reed-solomon-simd")]
    codec: CodecKind,
    /// Segment size in bytes (default: k MiB, i.e. 1 MiB shards).
    #[arg(long)]
    segment_size: Option<u32>,
    /// Name recorded in the manifest (default: the file name). A name
    /// BUCKET/KEY also names the object in that bucket (created when
    /// absent), as S3 sees it; `get BUCKET/KEY` fetches it.
    #[arg(long)]
    name: Option<String>,
    /// One JSON object per file instead of the ID.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    recipients: RecipientArgs,
    /// The default recipients when none is given on the command line
    /// (age1..., separated by commas or spaces).
    #[arg(
        long,
        env = "DYNOSTORE_ENCRYPT_TO",
        hide_env_values = true,
        value_name = "RECIPIENTS"
    )]
    default_encrypt_to: Option<String>,
    /// Store in clear even when DYNOSTORE_ENCRYPT_TO is set.
    #[arg(long, conflicts_with_all = ["encrypt_to", "recipients_file"])]
    plaintext: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

/// Recipients to encrypt to.
#[derive(Debug, Args)]
struct RecipientArgs {
    /// Encrypt to this age X25519 recipient (age1...; repeatable; commas
    /// or spaces separate several in one value).
    #[arg(long = "encrypt-to", value_name = "RECIPIENT")]
    encrypt_to: Vec<String>,
    /// Encrypt to every recipient in FILE (one age1... per line, # comments).
    #[arg(short = 'R', long = "recipients-file", value_name = "FILE")]
    recipients_file: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct GetArgs {
    id: String,
    /// Output file ('-' for standard output). Written as FILE.partial
    /// and renamed only once the whole object is verified (and, with -i,
    /// authenticated).
    #[arg(short, long, default_value = "-")]
    output: PathBuf,
    /// Decrypt with the age identity file IDENTITY (from `keygen` or
    /// age-keygen). A share object is followed to the object it opens.
    #[arg(short = 'i', long = "identity", value_name = "IDENTITY")]
    identity: Option<PathBuf>,
    /// Write the age file without decrypting; a share object is followed
    /// and written as a standard age file (its header, the target's payload).
    #[arg(long, conflicts_with = "identity")]
    raw: bool,
    /// With -i: the first plaintext byte to write.
    #[arg(long, requires = "identity")]
    offset: Option<u64>,
    /// With -i: how many plaintext bytes to write (default: to the end).
    #[arg(long, requires = "identity")]
    length: Option<u64>,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, Args)]
struct ShareArgs {
    /// The encrypted object (or a share of it).
    id: String,
    /// Give access to this recipient (age1...; repeatable).
    #[arg(long = "to", value_name = "RECIPIENT")]
    to: Vec<String>,
    /// Give access to every recipient in FILE.
    #[arg(short = 'R', long = "recipients-file", value_name = "FILE")]
    recipients_file: Vec<PathBuf>,
    /// Your identity file: one of the object's recipients.
    #[arg(short = 'i', long = "identity", value_name = "IDENTITY")]
    identity: PathBuf,
    /// Name of the share object (default: "share of ID").
    #[arg(long)]
    name: Option<String>,
    /// One JSON object instead of the share's ID.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, Subcommand)]
enum ShardCommand {
    /// Store FILE as one shard on the node; prints its shard ID.
    Put {
        file: PathBuf,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Fetch a shard by ID and verify it.
    Get {
        id: String,
        /// Output file ('-' for standard output).
        #[arg(short, long, default_value = "-")]
        output: PathBuf,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Node directory to create (may exist, but must not hold a config).
    #[arg(long)]
    dir: PathBuf,
    /// Multiaddr to listen on, e.g. /ip4/0.0.0.0/tcp/4001 (repeatable).
    #[arg(long, required = true)]
    listen: Vec<String>,
    /// Site label (hospital, observatory, ...).
    #[arg(long, default_value = "default")]
    site: String,
    /// Full multiaddr of a node to join through (repeatable).
    #[arg(long)]
    bootstrap: Vec<String>,
    /// Data container, e.g. dir:/data/shards:100GiB, mem:1GiB, s3:... (repeatable).
    #[arg(long = "container", required = true)]
    containers: Vec<ContainerSpec>,
    /// The network's key file (copied into DIR).
    #[arg(long, env = "DYNOSTORE_NETWORK_KEY")]
    network_key: Option<PathBuf>,
    #[arg(long)]
    announce_interval_ms: Option<u64>,
    #[arg(long)]
    suspect_after_ms: Option<u64>,
    #[arg(long)]
    down_after_ms: Option<u64>,
    #[arg(long)]
    repair_interval_ms: Option<u64>,
    #[arg(long)]
    scrub_interval_ms: Option<u64>,
    #[arg(long)]
    repair_rate_bytes_per_sec: Option<u64>,
    /// Deadline of requests to other nodes, and the idle deadline of streams.
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    /// Bytes of put and get buffers the node holds at most.
    #[arg(long)]
    memory_budget_bytes: Option<u64>,
    /// How often unreferenced shard copies are looked for.
    #[arg(long)]
    gc_interval_ms: Option<u64>,
    /// Age of an upload before its unreferenced copies are collected.
    #[arg(long)]
    gc_grace_ms: Option<u64>,
    /// Create the node with automatic repair off.
    #[arg(long)]
    no_repair: bool,
    /// Address of the HTTP admin API (loopback only; default 127.0.0.1:0).
    #[arg(long)]
    admin_listen: Option<String>,
    /// The geometry the node's /health judges writes by (default: put's).
    #[arg(long)]
    default_k: Option<u16>,
    #[arg(long)]
    default_m: Option<u16>,
    /// This site's default annual durability target for puts that name
    /// no k, m or target.
    #[arg(long)]
    default_durability: Option<f64>,
    /// Annual failure rate of a node, for durability targets (default 0.04).
    #[arg(long)]
    afr: Option<f64>,
    /// WAN emulation matrix (tests and scenarios only; absolute path).
    #[arg(long)]
    wan_emulation: Option<PathBuf>,
    /// Reads take data shards first whatever their site (for comparisons).
    #[arg(long)]
    site_blind_reads: bool,
    /// Serve S3 on this IP:PORT (needs --federation-style trust set up
    /// and a network key; see README).
    #[arg(long)]
    s3_listen: Option<String>,
    /// Abort multipart uploads untouched for this long.
    #[arg(long)]
    s3_upload_expiry_ms: Option<u64>,
    /// Name multipart uploads of up to this many parts as their parts;
    /// store larger ones whole (0: store every upload whole, one ID each).
    #[arg(long)]
    s3_max_pieces: Option<usize>,
    /// Objects up to this many bytes are stored inside their manifest (0: never).
    #[arg(long)]
    inline_max_bytes: Option<u64>,
    /// Reclaim an S3 object this long after the last name referring to it went.
    #[arg(long)]
    reclaim_grace_ms: Option<u64>,
    /// Wait this long between condemning an unnamed object and removing it.
    #[arg(long)]
    reclaim_wait_ms: Option<u64>,
    /// Fault injection for tests: delay between a put and its name's reference.
    #[arg(long, hide = true)]
    fault_ref_delay_ms: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct ConnArgs {
    /// Multiaddr of any node (the entry peer). Several (repeated or
    /// comma-separated): all are dialled and the first to answer is used,
    /// which is the nearest one (the handshake takes a few round trips).
    #[arg(long, env = "DYNOSTORE_PEER", required = true, value_delimiter = ',')]
    peer: Vec<Multiaddr>,
    /// The network's key file.
    #[arg(long, env = "DYNOSTORE_NETWORK_KEY")]
    network_key: Option<PathBuf>,
    /// Seconds to wait for the node.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// The user token to act with: a token file, or the token's text
    /// (required by a federation that admits nodes by certificate; an
    /// admin token for scrub, deny and a full status).
    #[arg(
        long,
        env = "DYNOSTORE_TOKEN",
        value_name = "FILE|TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

impl ConnArgs {
    async fn connect(&self) -> Result<Client> {
        let psk = match &self.network_key {
            Some(p) => Some(keys::load_network_key(p)?),
            None => None,
        };
        let timeout = self.timeout();
        let tries = self
            .peer
            .iter()
            .map(|a| Box::pin(Client::connect(a.clone(), psk.as_ref(), timeout)));
        // The losers' connections close as their futures are dropped.
        let first = futures::future::select_ok(tries).await;
        let (client, _) = first?;
        let token = self.token.as_deref().map(load_token).transpose()?;
        Ok(client.with_token(token))
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }
}

/// A token from a file or from the text itself (a file that exists wins).
fn load_token(arg: &str) -> Result<Vec<u8>> {
    let path = Path::new(arg);
    let text = if path.is_file() {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token {}", path.display()))?
    } else {
        arg.to_string()
    };
    dynostore_protocol::token::token_bytes(&text).with_context(|| {
        if path.is_file() {
            format!("{} does not hold a token", path.display())
        } else {
            "--token / DYNOSTORE_TOKEN is neither a token file nor a token".to_string()
        }
    })
}

/// mimalloc rather than glibc's malloc: glibc raises its mmap threshold
/// after freeing a large block, so later segment-sized buffers come from
/// arenas it seldom trims, and a node's RSS stayed ~60 MiB above what its
/// put and get buffers held (measured by the memory-budget test).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Node { .. }) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init(args) => init(*args),
        Command::Site(cmd) => cli_trust::site(cmd),
        Command::Cert(cmd) => cli_trust::cert(cmd),
        Command::Token(cli_trust::TokenCommand::Revoke {
            site_key,
            federation,
            token_file,
            ids,
            conn,
        }) => {
            let revocation =
                cli_trust::revocation(&site_key, &federation, token_file.as_deref(), ids)?;
            let client = conn.connect().await?;
            match objects::request(&client, ClientRequest::Revoke { revocation }).await? {
                ClientResponse::Revoked { added } => {
                    println!("revoked ({added} identifiers new to the entry peer; members learn it from its announcements)");
                    Ok(())
                }
                other => bail!("unexpected answer: {other:?}"),
            }
        }
        Command::Token(cmd) => cli_trust::token_cmd(cmd),
        Command::Node { dir } => Ok(node::run(&dir, shutdown_signal()).await?),
        Command::NetworkKey { file } => {
            keys::create_network_key(&file)?;
            println!("wrote a new network key to {}", file.display());
            Ok(())
        }
        Command::Status { conn, json } => status(conn, json).await,
        Command::Put(args) => put(args).await,
        Command::Get(args) => get(args).await,
        Command::Keygen { file } => {
            let recipient = crypt::keygen(&file)?;
            eprintln!(
                "wrote a new identity to {} (keep it secret)",
                file.display()
            );
            println!("{recipient}");
            Ok(())
        }
        Command::Share(args) => share(args).await,
        Command::Stat { id, json, conn } => stat(&id, json, conn).await,
        Command::Rm { id, conn } if !id.contains('/') => {
            let object = parse_object(&id)?;
            let client = conn.connect().await?;
            match objects::request(&client, ClientRequest::Remove { object }).await? {
                ClientResponse::Removed { shards, manifests } => {
                    println!("removed {object}: {shards} shards, {manifests} manifest replicas");
                    Ok(())
                }
                other => bail!("unexpected answer: {other:?}"),
            }
        }
        Command::Rm { id, conn } => {
            let unname = |bucket, key| ClientRequest::Unname { bucket, key };
            match name_request(&conn, &id, unname).await? {
                ClientResponse::Unnamed => {
                    println!("removed the name {id}");
                    Ok(())
                }
                other => bail!("unexpected answer: {other:?}"),
            }
        }
        Command::Ls {
            target: Some(t),
            json,
            conn,
        } => ls_names(&t, json, conn).await,
        Command::Ls {
            target: None,
            json,
            conn,
        } => ls(json, conn).await,
        Command::S3(S3Command::Keys { json, conn }) => s3_keys(json, conn).await,
        Command::Scrub { conn, json } => {
            let client = conn.connect().await?;
            match client.control(ControlRequest::Scrub).await? {
                ControlResponse::Scrubbed { checked, corrupt } if json => {
                    println!(
                        "{}",
                        serde_json::json!({"checked": checked, "corrupt": corrupt})
                    );
                    Ok(())
                }
                ControlResponse::Scrubbed { checked, corrupt } => {
                    println!("scrubbed {checked} shards, {corrupt} corrupt (deleted; they will be rebuilt)");
                    Ok(())
                }
                ControlResponse::Error(e) => bail!("the node refused: {e}"),
                other => bail!("unexpected answer: {other:?}"),
            }
        }
        Command::Deny { ids, conn } => {
            let client = conn.connect().await?;
            match client.control(ControlRequest::Deny { peers: ids }).await? {
                ControlResponse::Denied { count } => {
                    println!("the node now denies {count} peers");
                    Ok(())
                }
                ControlResponse::Error(e) => bail!("the node refused: {e}"),
                other => bail!("unexpected answer: {other:?}"),
            }
        }
        Command::Shard(ShardCommand::Put { file, conn }) => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let id = ShardId::of(&bytes);
            let client = conn.connect().await?;
            let mut streams = client.streams();
            // A tool's copy belongs to no object: it is owned by a
            // reference named after the shard itself, which no object's
            // release ever matches.
            let slot = dynostore_protocol::manifest::ShardSlot {
                shard: id,
                owner: dynostore_protocol::manifest::ShardRef {
                    object: ObjectId::from_bytes(*id.as_bytes()),
                    generation: Default::default(),
                    segment: 0,
                    index: 0,
                },
            };
            shard_proto::put_shard(&mut streams, client.peer(), slot, &bytes, conn.timeout())
                .await?;
            println!("{id}");
            Ok(())
        }
        Command::Shard(ShardCommand::Get { id, output, conn }) => {
            let id: ShardId = id.parse()?;
            let client = conn.connect().await?;
            let mut streams = client.streams();
            let bytes =
                shard_proto::get_shard(&mut streams, client.peer(), id, conn.timeout()).await?;
            write_output(&output, &bytes)
        }
    }
}

fn parse_object(id: &str) -> Result<ObjectId> {
    id.parse::<ObjectId>()
        .with_context(|| format!("{id:?} is not an object ID"))
}

/// An indicatif bar on a terminal; nothing when piped or with --json.
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn new(quiet: bool, what: &str) -> Bar {
        use std::io::IsTerminal;
        if quiet || !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_message(what.to_string());
        Bar(Some(pb))
    }

    fn finish(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn set_len(&mut self, len: u64) {
        if let Some(pb) = &self.0 {
            pb.set_length(len);
        }
    }
    fn advance(&mut self, done: u64) {
        if let Some(pb) = &self.0 {
            pb.set_position(done);
        }
    }
}

/// The files of a put, each with the name it is stored under.
fn put_targets(args: &PutArgs) -> Result<Vec<(PathBuf, String)>> {
    if !args.recursive {
        return Ok(args
            .files
            .iter()
            .map(|f| {
                let name = args.name.clone().unwrap_or_else(|| {
                    f.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| f.display().to_string())
                });
                (f.clone(), name)
            })
            .collect());
    }
    let mut out = Vec::new();
    for root in &args.files {
        if !root.is_dir() {
            bail!(
                "{} is not a directory (put -r takes directories)",
                root.display()
            );
        }
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir)
                .with_context(|| format!("cannot read {}", dir.display()))?;
            for e in entries {
                let p = e
                    .with_context(|| format!("cannot read {}", dir.display()))?
                    .path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p
                        .strip_prefix(root)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .into_owned();
                    out.push((p, rel));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The recipients of a put: the command line's, else DYNOSTORE_ENCRYPT_TO's
/// (none with --plaintext).
fn put_recipients(args: &PutArgs) -> Result<Vec<crypt::Recipient>> {
    let r = &args.recipients;
    if !r.encrypt_to.is_empty() || !r.recipients_file.is_empty() {
        let out = crypt::parse_recipients(&r.encrypt_to, &r.recipients_file)?;
        if out.is_empty() {
            bail!("the recipients files hold no recipient");
        }
        return Ok(out);
    }
    match &args.default_encrypt_to {
        Some(v) if !args.plaintext && !v.trim().is_empty() => {
            Ok(crypt::parse_recipients(std::slice::from_ref(v), &[])
                .context("DYNOSTORE_ENCRYPT_TO")?)
        }
        _ => Ok(Vec::new()),
    }
}

async fn put(args: PutArgs) -> Result<()> {
    let targets = put_targets(&args)?;
    let total = targets.len();
    let recipients = put_recipients(&args)?;
    // Neither k, m nor a target: k = m = 0, the entry peer's defaults.
    let (k, m) = match (args.k, args.m) {
        (None, None) => (0, 0),
        (k, m) => (k.unwrap_or(DEFAULT_K), m.unwrap_or(DEFAULT_M)),
    };
    let durability = args
        .durability
        .map(Durability::target)
        .transpose()
        .context("--durability")?;
    let client = args.conn.connect().await?;
    let mut failures = 0;
    for (path, name) in targets {
        let params = PutParams {
            codec: args.codec,
            k,
            m,
            segment_size: args.segment_size,
            name: Some(name.clone()),
            durability,
            reclaimable: args.name.as_deref().and_then(bucket_key).is_some(),
        };
        let mut bar = Bar::new(args.json, &name);
        let r = if recipients.is_empty() {
            objects::put_file(&client, &path, &params, &mut bar)
                .await
                .map_err(anyhow::Error::from)
        } else {
            crypt::put_encrypted(&client, &path, &params, &recipients, &mut bar)
                .await
                .map_err(anyhow::Error::from)
        };
        bar.finish();
        // An explicit BUCKET/KEY name also goes into the bucket.
        let r = match (r, args.name.as_deref().and_then(bucket_key)) {
            (Ok(r), Some((bucket, key))) => {
                let etag = if recipients.is_empty() {
                    file_md5(&path)?
                } else {
                    // Encrypted: the stored bytes are not the file's.
                    r.object.to_string()[..32].to_string()
                };
                let req = ClientRequest::Name {
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                    object: r.object,
                    size: r.size,
                    etag,
                    content_type: None,
                };
                match objects::request(&client, req).await {
                    Ok(ClientResponse::Named) => Ok(r),
                    Ok(other) => Err(anyhow::anyhow!("unexpected answer: {other:?}")),
                    Err(e) => Err(anyhow::Error::from(e).context(format!(
                        "stored as {} but not named {bucket}/{key}",
                        r.object
                    ))),
                }
            }
            (r, _) => r,
        };
        match r {
            Ok(r) if args.json => println!(
                "{}",
                serde_json::json!({
                    "id": r.object.to_string(), "size": r.size, "k": r.k, "m": r.m,
                    "name": name, "segments": r.segments, "existed": r.existed,
                    "manifest_replicas": r.manifest_replicas,
                    "encrypted": !recipients.is_empty(),
                })
            ),
            Ok(r) => println!("{}", r.object),
            Err(e) if total == 1 => bail!("{}: {e:#}", path.display()),
            Err(e) => {
                failures += 1;
                eprintln!("error: {}: {e:#}", path.display());
            }
        }
    }
    if failures > 0 {
        bail!("{failures} of {total} files not stored");
    }
    Ok(())
}

/// MD5 of a file in hex: the ETag S3 clients expect of a single-part object.
fn file_md5(path: &Path) -> Result<String> {
    dynostore_node::s3::md5_file(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Sends the request `make(bucket, key)` makes of `BUCKET/KEY`.
async fn name_request(
    conn: &ConnArgs,
    name: &str,
    make: impl FnOnce(String, String) -> ClientRequest,
) -> Result<ClientResponse> {
    let Some((bucket, key)) = bucket_key(name) else {
        bail!("{name:?} is neither an object ID nor a BUCKET/KEY name");
    };
    let client = conn.connect().await?;
    Ok(objects::request(&client, make(bucket.to_string(), key.to_string())).await?)
}

/// Resolves `BUCKET/KEY` to the object it names (or the pieces, in order,
/// of a multipart object stored as its parts).
async fn resolve_name(conn: &ConnArgs, name: &str) -> Result<Vec<ObjectId>> {
    let resolve = |bucket, key| ClientRequest::Resolve { bucket, key };
    match name_request(conn, name, resolve).await? {
        ClientResponse::Resolved { object, .. } => Ok(vec![object]),
        ClientResponse::ResolvedPieces { pieces, .. } if !pieces.is_empty() => Ok(pieces),
        other => bail!("unexpected answer: {other:?}"),
    }
}

async fn ls_names(target: &str, json: bool, conn: ConnArgs) -> Result<()> {
    let (bucket, prefix) = target.split_once('/').unwrap_or((target, ""));
    let client = conn.connect().await?;
    let mut after: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let req = ClientRequest::ListNames {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            after: after.clone(),
        };
        let (names, truncated) = match objects::request(&client, req).await? {
            ClientResponse::Names { names, truncated } => (names, truncated),
            other => bail!("unexpected answer: {other:?}"),
        };
        after = names.last().map(|r| r.key.clone());
        for r in names {
            let e = r.entry.unwrap_or_default();
            if json {
                all.push(serde_json::json!({
                    "key": r.key, "size": e.size, "etag": e.etag,
                    "id": e.object.map(|o| o.to_string()),
                    "pieces": e.pieces.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
                    "modified_ms": r.version.ms,
                }));
            } else {
                let id = match (e.object, e.pieces.len()) {
                    (Some(o), _) => o.to_string(),
                    (None, 0) => String::new(),
                    (None, n) => format!("({n} parts)"),
                };
                println!("{}  {:>12}  {}", id, human_bytes(e.size), r.key);
            }
        }
        if !truncated || after.is_none() {
            break;
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}

async fn s3_keys(json: bool, conn: ConnArgs) -> Result<()> {
    let Some(token) = conn.token.as_deref() else {
        bail!("s3 keys needs the token to register: --token FILE or DYNOSTORE_TOKEN");
    };
    let bytes = load_token(token)?;
    let client = conn.connect().await?;
    match objects::request(&client, ClientRequest::S3Keys { token: bytes }).await? {
        ClientResponse::S3Keys { access_key, secret } if json => {
            println!(
                "{}",
                serde_json::json!({"access_key_id": access_key, "secret_access_key": secret})
            );
            Ok(())
        }
        ClientResponse::S3Keys { access_key, secret } => {
            println!("access key id:     {access_key}");
            println!("secret access key: {secret}");
            Ok(())
        }
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// `BUCKET/KEY` of a name, when it has that form.
fn bucket_key(name: &str) -> Option<(&str, &str)> {
    let (b, k) = name.split_once('/')?;
    (!b.is_empty() && !k.is_empty()).then_some((b, k))
}

async fn get(args: GetArgs) -> Result<()> {
    let GetArgs {
        id,
        output,
        identity,
        raw,
        offset,
        length,
        conn,
    } = args;
    let ids = match id.parse::<ObjectId>() {
        Ok(o) => vec![o],
        Err(_) if id.contains('/') => resolve_name(&conn, &id).await?,
        Err(_) => vec![parse_object(&id)?],
    };
    let object = ids[0];
    let out = if output == Path::new("-") {
        Output::Stdout
    } else {
        Output::File(output)
    };
    let mode = match &identity {
        Some(path) => Some(crypt::GetMode::Decrypt(std::sync::Arc::new(
            crypt::Identities::load(path)?,
        ))),
        None if raw => Some(crypt::GetMode::Raw),
        None => None,
    };
    if ids.len() > 1 && (mode.is_some() || offset.is_some() || length.is_some()) {
        bail!(
            "{id} is a multipart object stored as its {} parts: get it whole, or read ranges through S3",
            ids.len()
        );
    }
    if let Some(mode) = mode {
        let range = (offset.is_some() || length.is_some()).then(|| crypt::Range {
            offset: offset.unwrap_or(0),
            len: length,
        });
        let client = conn.connect().await?;
        let mut bar = Bar::new(matches!(out, Output::Stdout), &object.short());
        let r = crypt::get(&client, object, &out, mode, range, &mut bar).await;
        bar.finish();
        r?;
        return Ok(());
    }
    let client = conn.connect().await?;
    let mut bar = Bar::new(matches!(out, Output::Stdout), &object.short());
    let r = objects::get_objects(&client, &ids, &out, &mut bar).await;
    bar.finish();
    let (_, skipped) = r?;
    for s in skipped {
        eprintln!(
            "warning: segment {}: shard {} on {} skipped: {}",
            s.segment,
            s.shard.short(),
            s.holder,
            s.reason
        );
    }
    Ok(())
}

async fn share(args: ShareArgs) -> Result<()> {
    let object = parse_object(&args.id)?;
    let identities = crypt::Identities::load(&args.identity)?;
    let recipients = crypt::parse_recipients(&args.to, &args.recipients_file)?;
    if recipients.is_empty() {
        bail!("share needs at least one recipient: --to age1... or -R FILE");
    }
    let params = PutParams {
        codec: CodecKind::default(),
        k: DEFAULT_K,
        m: DEFAULT_M,
        segment_size: None,
        name: args.name.clone(),
        durability: None,
        reclaimable: false,
    };
    let client = args.conn.connect().await?;
    let s = crypt::share(&client, object, &identities, &recipients, &params).await?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "id": s.receipt.object.to_string(),
                "target": s.target.to_string(),
                "recipients": recipients.len(),
                "existed": s.receipt.existed,
            })
        );
    } else {
        println!("{}", s.receipt.object);
    }
    Ok(())
}

async fn stat(id: &str, json: bool, conn: ConnArgs) -> Result<()> {
    let object = parse_object(id)?;
    let client = conn.connect().await?;
    let st = objects::stat(&client, object, None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stat_json(&st))?);
        return Ok(());
    }
    println!("object   {}", st.object);
    if let Some(n) = &st.meta.name {
        println!("name     {n}");
    }
    println!("size     {} ({})", st.size, human_bytes(st.size));
    println!(
        "codec    {} k={} m={} segment {}",
        st.codec,
        st.k,
        st.m,
        human_bytes(u64::from(st.segment_size))
    );
    println!("segments {}", st.segments.len());
    if let Some(t) = st.durability_target {
        println!("target   {t} per year");
    }
    if let Some(d) = st.durability_now {
        println!("durable  {d} per year by its current holders");
    }
    if !st.inline_replicas.is_empty() {
        println!(
            "inline   in the manifest, on {} replicas:",
            st.inline_replicas.len()
        );
        for n in &st.inline_replicas {
            println!("    {n}");
        }
    }
    println!(
        "health   {}",
        serde_json::to_value(st.health)?.as_str().unwrap_or("?")
    );
    for (i, seg) in st.segments.iter().enumerate() {
        let ok = seg.shards.iter().filter(|s| s.ok).count();
        println!("  segment {i}: {ok}/{} shards verified", seg.shards.len());
        for (j, sh) in seg.shards.iter().enumerate() {
            println!(
                "    {j:>3} {} on {} {}",
                sh.id.short(),
                sh.holder,
                if sh.ok { "ok" } else { "MISSING" }
            );
        }
    }
    Ok(())
}

/// Objects per page of `ls`.
const LS_PAGE: u32 = 1000;

async fn ls(json: bool, conn: ConnArgs) -> Result<()> {
    let client = conn.connect().await?;
    let mut objects = Vec::new();
    let mut after = None;
    loop {
        let req = ClientRequest::List {
            after,
            limit: LS_PAGE,
        };
        let (page, next) = match objects::request(&client, req).await? {
            ClientResponse::List { objects, next } => (objects, next),
            other => bail!("unexpected answer: {other:?}"),
        };
        if json {
            objects.extend(page);
        } else {
            for o in page {
                println!(
                    "{}  {:>12}  {}",
                    o.object,
                    human_bytes(o.size),
                    o.name.unwrap_or_default()
                );
            }
        }
        match next {
            Some(n) if Some(n) != after => after = Some(n),
            _ => break,
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&list_json(&objects))?);
    }
    Ok(())
}

fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if path == Path::new("-") {
        std::io::stdout().write_all(bytes)?;
        return Ok(());
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn init(args: InitArgs) -> Result<()> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if dir.join(dynostore_node::config::CONFIG_FILE).exists() {
        bail!("{} already holds a node configuration", dir.display());
    }
    let mut cfg = Config::new(args.listen, args.containers);
    cfg.site = args.site;
    cfg.bootstrap = args.bootstrap;
    if let Some(v) = args.request_timeout_ms {
        cfg.request_timeout_ms = v;
    }
    cfg.memory_budget_bytes = args.memory_budget_bytes;
    if let Some(v) = args.gc_interval_ms {
        cfg.gc_interval_ms = v;
    }
    if let Some(v) = args.gc_grace_ms {
        cfg.gc_grace_ms = v;
    }
    if let Some(v) = args.announce_interval_ms {
        cfg.announce_interval_ms = v;
    }
    if let Some(v) = args.suspect_after_ms {
        cfg.suspect_after_ms = v;
    }
    if let Some(v) = args.down_after_ms {
        cfg.down_after_ms = v;
    }
    if let Some(v) = args.repair_interval_ms {
        cfg.repair_interval_ms = v;
    }
    if let Some(v) = args.scrub_interval_ms {
        cfg.scrub_interval_ms = v;
    }
    if let Some(v) = args.repair_rate_bytes_per_sec {
        cfg.repair_rate_bytes_per_sec = v;
    }
    cfg.repair_enabled = !args.no_repair;
    if let Some(v) = args.admin_listen {
        cfg.admin_listen = v;
    }
    if let Some(v) = args.default_k {
        cfg.default_k = v;
    }
    if let Some(v) = args.default_m {
        cfg.default_m = v;
    }
    cfg.default_durability = args.default_durability;
    if let Some(v) = args.afr {
        cfg.afr = v;
    }
    cfg.wan_emulation = args.wan_emulation;
    cfg.site_aware_reads = !args.site_blind_reads;
    cfg.s3_listen = args.s3_listen;
    if let Some(v) = args.s3_upload_expiry_ms {
        cfg.s3_upload_expiry_ms = v;
    }
    if let Some(v) = args.s3_max_pieces {
        cfg.s3_max_pieces = v;
    }
    if let Some(v) = args.inline_max_bytes {
        cfg.inline_max_bytes = v;
    }
    if let Some(v) = args.reclaim_grace_ms {
        cfg.reclaim_grace_ms = v;
    }
    if let Some(v) = args.reclaim_wait_ms {
        cfg.reclaim_wait_ms = v;
    }
    if let Some(v) = args.fault_ref_delay_ms {
        cfg.fault_ref_delay_ms = v;
    }
    if let Some(key) = &args.network_key {
        // Check it before copying it next to the node.
        let psk = keys::load_network_key(key)?;
        let local = PathBuf::from("network.key");
        let dest = dir.join(&local);
        if dest.exists() {
            if keys::load_network_key(&dest)? != psk {
                bail!("{} holds a different network key", dest.display());
            }
        } else {
            keys::write_network_key(&dest, &psk)?;
        }
        cfg.network_key = Some(local);
    }
    cfg.validate()?;
    let id_path = dir.join(IDENTITY_FILE);
    let kp = if id_path.exists() {
        keys::load_identity(&id_path)?
    } else {
        keys::create_identity(&id_path)?
    };
    cfg.save(dir)?;
    println!("{}", kp.public().to_peer_id());
    Ok(())
}

async fn status(conn: ConnArgs, json: bool) -> Result<()> {
    let client = conn.connect().await?;
    let report = match client.control(ControlRequest::Status).await? {
        ControlResponse::Status(r) => r,
        ControlResponse::Error(e) => bail!("the node refused: {e}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status_json(&report))?);
    } else {
        print_status(&report);
    }
    Ok(())
}

fn print_status(r: &StatusReport) {
    println!("node {}  ({} shards stored)", r.node, r.shards_stored);
    let rp = &r.repair;
    println!(
        "repair: queue {}, {} shards / {} rebuilt (from {} read), {} pending deletions, last scrub {}",
        rp.queue_len,
        rp.shards_repaired,
        human_bytes(rp.bytes_repaired),
        human_bytes(rp.bytes_read),
        rp.pending_deletes,
        rp.last_scrub_ms_ago
            .map_or("never".to_string(), |ms| format!(
                "{:.0}s ago ({} checked, {} corrupt)",
                ms as f64 / 1000.0,
                rp.last_scrub_checked,
                rp.last_scrub_corrupt
            ))
    );
    println!(
        "{:<54} {:<14} {:<8} {:<8} {:>12} {:>12} {:>9}",
        "member", "site", "state", "storage", "capacity", "free", "seen ago"
    );
    for m in &r.members {
        println!(
            "{:<54} {:<14} {:<8} {:<8} {:>12} {:>12} {:>8.1}s",
            m.id.to_string(),
            m.site,
            m.state.as_str(),
            if m.volatile { "memory" } else { "durable" },
            human_bytes(m.capacity_bytes),
            human_bytes(m.free_bytes),
            m.last_seen_ms as f64 / 1000.0
        );
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Clap checks argument definitions only when a command is parsed;
    /// this checks every subcommand's at once (a duplicate argument name
    /// once surfaced only when a test ran `token revoke`).
    #[test]
    fn every_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
