//! The command line: `init`, `serve`, `demo`, `tenant`, `user`, `credential`, `framework`,
//! `app`, `hub`, `federation`, `config`, `doctor`, `backup`, `restore`. Errors here are `anyhow` and end the process with a message.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::app::{self, AppState};
use crate::auth::{self, Authorized, OPERATOR_SETUP};
use crate::config::{self, Config, Overrides};
use crate::store::backup;
use crate::store::tenant::{self as tenant_sql, UserFields};
use crate::store::{self, Database, StoreMetrics, system};
use crate::tenant::roster::{self, Progress, RosterFiles};
use crate::tenant::{self, Role};
use crate::{doctor, identity, server, tls};

#[derive(Debug, Parser)]
#[command(
    name = "ceredis",
    version,
    about = "CEREDIS Edge: the school-site appliance in one binary"
)]
pub struct Cli {
    /// Configuration file (default: ./ceredis.toml when present; env CEREDIS_CONFIG).
    #[arg(long, global = true, env = "CEREDIS_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides the configuration).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args, Default)]
struct ServeArgs {
    /// HTTPS address, e.g. 0.0.0.0:443 (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Plain-HTTP redirect address, or "" to disable.
    #[arg(long)]
    redirect_listen: Option<String>,
    /// Address people type, used in printed links.
    #[arg(long)]
    public_url: Option<String>,
    /// Serve plain HTTP (development only).
    #[arg(long)]
    insecure_http: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// First boot: data directory, site identity, local CA, one-time setup link.
    Init {
        /// On an initialised appliance with no operator yet: print a fresh setup link.
        #[arg(long)]
        new_setup_link: bool,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Serve the web UI and API.
    Serve(ServeArgs),
    /// Initialise (if needed) a demo appliance with a demo school, then serve it.
    Demo(ServeArgs),
    #[command(subcommand)]
    Tenant(TenantCommand),
    #[command(subcommand)]
    User(UserCommand),
    /// Machine credentials of a tenant (xAPI clients).
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Competency frameworks of a tenant: import CaSS JSON-LD or CASE, export CaSS JSON-LD.
    #[command(subcommand)]
    Framework(FrameworkCommand),
    /// Tenant apps (WebAssembly components): install or upgrade, list, remove.
    #[command(subcommand)]
    App(AppCommand),
    /// The federation hub (the federation's side of sync): serve it, issue enrolment
    /// tokens, list and revoke sites. Its data directory is its own.
    Hub {
        /// Keep the hub's records in PostgreSQL (a connection string, `host=… dbname=…` or
        /// `postgresql://…`) instead of `hub.db` in the data directory. Overrides
        /// `hub.postgres` of the configuration (env CEREDIS_HUB__POSTGRES).
        #[arg(long, global = true)]
        postgres: Option<String>,
        #[command(subcommand)]
        command: HubCommand,
    },
    /// This site's link to its federation hub: join it, check it, push, pull, export and
    /// import by hand (also `ceredis sync …`).
    #[command(subcommand, visible_alias = "sync")]
    Federation(FederationCommand),
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check the appliance and say how to fix what is wrong.
    Doctor,
    /// Back up every database (consistent online snapshots) and the local CA.
    Backup {
        #[arg(long)]
        to: PathBuf,
    },
    /// Verify a backup and restore it into an empty data directory, with a new identity.
    Restore {
        #[arg(long)]
        from: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its one-time admin setup link.
    Create {
        slug: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    List,
    Suspend {
        slug: String,
    },
    Resume {
        slug: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Teacher,
    Student,
    Researcher,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Admin => Role::Admin,
            RoleArg::Teacher => Role::Teacher,
            RoleArg::Student => Role::Student,
            RoleArg::Researcher => Role::Researcher,
        }
    }
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add one user and print their one-time password.
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        username: String,
        #[arg(long)]
        given_name: String,
        #[arg(long)]
        family_name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Import OneRoster 1.1 CSV files (a directory holding them, the files, or a zip bundle).
    Import {
        #[arg(long)]
        tenant: String,
        /// Report what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum CredentialCommand {
    /// Create a credential and print its key id and secret (shown once).
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        label: String,
        /// xAPI scopes: statements/write, statements/read, statements/read/mine, state,
        /// define, profile, all/read, all.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum FrameworkCommand {
    /// Import a framework from a CaSS JSON-LD or CASE 1.0 JSON file.
    Import {
        #[arg(long)]
        tenant: String,
        file: PathBuf,
    },
    /// Print a framework as CaSS JSON-LD.
    Export {
        #[arg(long)]
        tenant: String,
        /// The framework's URI (`ceredis framework list` shows them).
        uri: String,
    },
    /// List the tenant's frameworks.
    List {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
enum HubCommand {
    /// Serve the hub over HTTPS (its data directory, CA and identity are made on first use).
    Serve(ServeArgs),
    /// Issue a one-time enrolment token for one site; give it to that site's operator.
    Token {
        /// Who it is for, e.g. the school's name (shown in `ceredis hub sites`).
        #[arg(long)]
        label: String,
        /// Hours until the token expires.
        #[arg(long, default_value_t = 72)]
        valid_hours: u32,
    },
    /// The enrolled sites: id, name, label, enrolment, last contact, revocation.
    Sites,
    /// Revoke a site: every request it signs is refused from now on.
    Revoke { site_id: String },
    /// Import the batches a site wrote with `ceredis federation export` (carried by hand):
    /// each sub-folder of DIR that holds a signed batch.
    Import { dir: PathBuf },
    /// Publish to every site of the federation a competency framework (CaSS JSON-LD or a
    /// CASE package; the schools whose admin chose to adopt them do at their next sync), or
    /// a tenant app (its manifest and component; a school installs it when its operator
    /// adopts it, and its admin grants what it asks).
    Publish {
        #[arg(long, conflicts_with_all = ["app_manifest", "app_component"])]
        framework: Option<PathBuf>,
        /// The app's `ceredis-app.toml`.
        #[arg(long, requires = "app_component")]
        app_manifest: Option<PathBuf>,
        /// The app's WebAssembly component.
        #[arg(long, requires = "app_manifest")]
        app_component: Option<PathBuf>,
    },
    /// What the federation publishes.
    Publications,
    /// The aggregates schools published: per school and skill, pupils per CEFR level.
    Aggregates,
    /// Write, for a site with no link, what the hub holds for it (the other holders'
    /// batches of the schools it holds, and every publication), signed with the hub's key,
    /// into a folder of DIR: `ceredis federation import` there.
    Export {
        #[arg(long)]
        site: String,
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum FederationCommand {
    /// Join a federation hub with a one-time token from the hub's operator.
    Join {
        /// The hub's address, e.g. https://hub.academie.example:8443
        url: String,
        /// The token `ceredis hub token` printed (`ceh1.…`).
        token: String,
        /// This site's name at the hub (default: the machine's host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Check the link: a signed request to the hub, and what the hub knows of this site;
    /// then each tenant's continuity copy.
    Status,
    /// Enable a tenant's encrypted continuity copy at the hub; prints its recovery key,
    /// once.
    Enable {
        #[arg(long)]
        tenant: String,
    },
    /// Push the continuity copy (of one tenant, or of every tenant that has it enabled): the
    /// changes since the last push as batches, or a new generation when none is at the hub
    /// or an erasure requires it; an interrupted push is finished first.
    Push {
        #[arg(long)]
        tenant: Option<String>,
        /// Push a whole new generation even if batches would do (the hub then drops the
        /// older generation and every batch it holds).
        #[arg(long)]
        full: bool,
    },
    /// Apply the changes of the other sites that hold a tenant (of one tenant, or of every
    /// tenant that has its copy enabled), then tell the hub how far this site went.
    Pull {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Fetch what the federation publishes (competency frameworks), list it, and adopt it
    /// into the tenants whose admin chose to.
    Publications,
    /// Import what the hub wrote for this site by hand (`ceredis hub export`): the other
    /// holders' batches and the publications, after checking the hub's signature.
    Import { dir: PathBuf },
    /// Publish a school's pseudonymised aggregates now (if its admin chose to publish them).
    Aggregates {
        #[arg(long)]
        tenant: String,
    },
    /// Adopt one publication into a tenant now, whatever its policy.
    Adopt {
        #[arg(long)]
        tenant: String,
        id: i64,
    },
    /// Write each enabled tenant's new generation, signed, into DIR, for a hub this site
    /// cannot reach (USB stick): `ceredis hub import DIR` there.
    Export {
        #[arg(long)]
        to: PathBuf,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Restore a tenant from the hub's continuity copy with its recovery key.
    Restore {
        /// The name the restored tenant gets on this appliance.
        #[arg(long)]
        tenant: String,
        /// The recovery key shown when the copy was enabled (`cer1.…`).
        #[arg(long, env = "RECOVERY_KEY", hide_env_values = true)]
        recovery_key: String,
        /// Hold the tenant beside the sites that hold it (a second campus) instead of
        /// replacing them: the sites then exchange their changes through the hub.
        #[arg(long)]
        alongside: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AppCommand {
    /// Install an app in a tenant, or upgrade it (its storage is kept). Prints what the
    /// app requests, in words, and what was granted.
    Install {
        #[arg(long)]
        tenant: String,
        /// The app's `ceredis-app.toml`.
        #[arg(long)]
        manifest: PathBuf,
        /// The app's WebAssembly component (`.wasm`, built for wasm32-wasip2).
        #[arg(long)]
        component: PathBuf,
        /// A capability to grant (repeat); only capabilities the manifest requests.
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// Grant every capability the manifest requests.
        #[arg(long, conflicts_with = "grants")]
        grant_requested: bool,
    },
    /// List a tenant's apps with their versions, hashes and grants.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Remove an app from a tenant, with its storage.
    Remove {
        #[arg(long)]
        tenant: String,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the commented example configuration (all defaults).
    Example,
    /// Print the effective configuration, secrets redacted.
    Show,
}

pub fn main() -> ExitCode {
    // Every file this process creates (databases, WAL, keys, backups) is private to its user.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli, serve: Option<&ServeArgs>) -> Result<Config> {
    let overrides = Overrides {
        data_dir: cli.data_dir.clone(),
        listen: serve.and_then(|s| s.listen),
        redirect_listen: serve.and_then(|s| s.redirect_listen.clone()),
        public_url: serve.and_then(|s| s.public_url.clone()),
        insecure_http: serve.map(|s| s.insecure_http).unwrap_or(false),
    };
    Ok(Config::load(
        cli.config.as_deref(),
        std::env::vars(),
        &overrides,
    )?)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CEREDIS_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> Result<ExitCode> {
    let serve_args = match &cli.command {
        Command::Serve(a)
        | Command::Demo(a)
        | Command::Init { serve: a, .. }
        | Command::Hub {
            command: HubCommand::Serve(a),
            ..
        } => Some(a),
        _ => None,
    };
    let config = load_config(&cli, serve_args)?;
    init_logging(&config);
    let rt = runtime()?;
    match cli.command {
        Command::Config(ConfigCommand::Example) => {
            print!("{}", config::EXAMPLE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Show) => {
            print!("{}", config.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Init { new_setup_link, .. } => {
            let path = rt.block_on(init(&config, new_setup_link))?;
            print_init(&config, &path);
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(_) => rt.block_on(serve(config, None)).map(|_| ExitCode::SUCCESS),
        Command::Demo(_) => rt.block_on(demo(config)).map(|_| ExitCode::SUCCESS),
        Command::Tenant(t) => rt
            .block_on(tenant_command(config, t))
            .map(|_| ExitCode::SUCCESS),
        Command::User(u) => rt.block_on(user_command(config, u)),
        Command::Credential(c) => rt.block_on(credential_command(config, c)),
        Command::Framework(f) => rt.block_on(framework_command(config, f)),
        Command::App(a) => rt.block_on(app_command(config, a)),
        Command::Hub { postgres, command } => {
            rt.block_on(hub_command(config, postgres.as_deref(), command))
        }
        Command::Federation(f) => rt.block_on(federation_command(config, f)),
        Command::Doctor => {
            let checks = doctor::full(&config);
            let mut failed = 0;
            for c in &checks {
                println!(
                    "[{}] {}: {}",
                    if c.ok { " ok " } else { "FAIL" },
                    c.name,
                    c.detail
                );
                if let Some(fix) = &c.fix {
                    println!("       fix: {fix}");
                }
                failed += usize::from(!c.ok);
            }
            println!("{} checks, {failed} problem(s)", checks.len());
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Backup { to } => rt
            .block_on(backup_command(&config, &to))
            .map(|_| ExitCode::SUCCESS),
        Command::Restore { from } => rt
            .block_on(restore_command(&config, &from))
            .map(|_| ExitCode::SUCCESS),
    }
}

fn base_url(config: &Config) -> String {
    config.base_url(config.listen)
}

/// Creates the data directory, system database, site identity and local CA, and issues a
/// one-time setup link for the operator account. Returns the link's path (`/setup/…`).
pub async fn init(config: &Config, new_setup_link: bool) -> Result<String> {
    let dir = &config.data_dir;
    let system_path = dir.join(app::SYSTEM_DB);
    let fresh = !system_path.exists();
    if !fresh && !new_setup_link {
        bail!(
            "{} is already initialised; use `ceredis init --new-setup-link` for a new operator setup link",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let db = Database::open(
        "system",
        &system_path,
        system::MIGRATIONS,
        app::db_options(config),
        StoreMetrics::default(),
    )?;
    if fresh {
        let id = identity::generate(dir)?;
        let (site_id, public_key) = (id.site_id.clone(), id.public_key.clone());
        db.write(move |c| system::set_site(c, &site_id, &public_key, None))
            .await?;
        tls::ensure_ca(
            dir,
            &id.site_id,
            &tls::server_names(&config.tls.server_names),
        )?;
        eprintln!("Initialised {} as site {}", dir.display(), id.site_id);
    } else if db.read(system::operator_count).await? > 0 {
        bail!(
            "an operator account already exists; sign in at {}/operator/login",
            base_url(config)
        );
    }
    let token = auth::issue_setup_token(&db, OPERATOR_SETUP, 24 * 3600)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    Ok(format!("/setup/{token}"))
}

fn print_init(config: &Config, setup_path: &str) {
    println!(
        "Create the operator account (this link works once, for 24 hours):\n  {}{setup_path}",
        base_url(config)
    );
    if !config.insecure_http {
        println!(
            "School PCs can trust this appliance by installing {}",
            config.data_dir.join(tls::CA_CERT).display()
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn serve(config: Config, banner: Option<String>) -> Result<()> {
    let state = AppState::open(config.clone())?;
    server::prepare_tls(&state)?;
    tokio::spawn(crate::federation::sync::run(state.clone()));
    let main = server::bind(config.listen)?;
    let bound = main.local_addr()?;
    let redirect = match (config.insecure_http, config.redirect_addr()) {
        (false, Some(addr)) => Some(server::bind(addr)?),
        _ => None,
    };
    let url = config.base_url(bound);
    // A stable line that scripts and tests wait for.
    println!("ceredis: listening on {url}");
    if config.insecure_http {
        println!(
            "WARNING: --insecure-http: plain HTTP, passwords and sessions travel in clear. \
             Development only — never on a school network."
        );
    }
    if let Some(b) = banner {
        println!("{}", b.replace(BASE_PLACEHOLDER, &url));
    }
    server::run(
        state,
        server::Listeners { main, redirect },
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

const DEMO_TENANT: &str = "demo";
/// Replaced in the demo banner by the address actually bound.
const BASE_PLACEHOLDER: &str = "{base}";

async fn demo(config: Config) -> Result<()> {
    let mut banner = String::new();
    if !config.data_dir.join(app::SYSTEM_DB).exists() {
        let path = init(&config, false).await?;
        banner.push_str(&format!(
            "Operator setup link (once): {BASE_PLACEHOLDER}{path}\n"
        ));
    }
    let state = AppState::open(config.clone())?;
    if state.tenants.get(DEMO_TENANT).await?.is_none() {
        state
            .tenants
            .create(DEMO_TENANT, "École de démonstration")
            .await?;
        let handle = state
            .tenants
            .handle(DEMO_TENANT, &Authorized::console())
            .await?;
        let class = handle
            .db
            .write(|c| {
                tenant_sql::insert_class(
                    c,
                    &tenant_sql::ClassFields {
                        sourced_id: None,
                        title: "CM2 A — Anglais".into(),
                        class_code: Some("CM2A-EN".into()),
                        org_sourced_id: None,
                        active: true,
                    },
                )
            })
            .await?;
        let people: [(&str, &str, &str, Role); 7] = [
            ("mme.martin", "Claire", "Martin", Role::Teacher),
            ("amel.benali", "Amel", "Benali", Role::Student),
            ("lucas.bernard", "Lucas", "Bernard", Role::Student),
            ("ines.dubois", "Inès", "Dubois", Role::Student),
            ("noah.petit", "Noah", "Petit", Role::Student),
            ("lea.robert", "Léa", "Robert", Role::Student),
            ("yanis.moreau", "Yanis", "Moreau", Role::Student),
        ];
        banner.push_str(
            "Demo school `demo`: one-time passwords (each must be replaced at first sign-in):\n",
        );
        let mut pupils = Vec::new();
        for (username, given, family, role) in people {
            let fields = UserFields {
                sourced_id: None,
                username: username.into(),
                given_name: given.into(),
                family_name: family.into(),
                email: None,
                role,
                active: true,
            };
            let (user, otp) = tenant::create_user_with_otp(&handle, &state.hasher, fields)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
            let role_in_class = if role == Role::Teacher {
                "teacher"
            } else {
                "student"
            };
            let uid = user.id;
            handle
                .db
                .write(move |c| tenant_sql::enrol(c, None, class, uid, role_in_class))
                .await?;
            banner.push_str(&format!("  {:<8} {:<14} {otp}\n", role.as_str(), username));
            if role == Role::Student {
                pupils.push(user);
            }
        }
        let home = handle.home_page.to_string();
        handle
            .db
            .write(move |c| {
                for (path, competency) in DEMO_ALIGNMENTS {
                    let id = crate::store::competency::competency_id(c, competency)?
                        .ok_or(crate::store::StoreError::NotFound)?;
                    crate::store::competency::align(c, &format!("{home}activities/{path}"), id)?;
                }
                Ok(())
            })
            .await
            .context("aligning the demo activities to CEFR descriptors")?;
        crate::lrs::record(
            &handle,
            demo_activity(&handle.home_page, &pupils),
            &demo_storer(&handle.home_page),
            crate::competency::Actor::System,
        )
        .await
        .context("recording the demo school's sample activity")?;
        let token = auth::issue_tenant_setup_token(&state, DEMO_TENANT)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        banner.push_str(&format!(
            "Demo school admin setup link (once): {}/t/{DEMO_TENANT}/setup/{token}\n",
            BASE_PLACEHOLDER
        ));
    } else {
        banner.push_str("The demo school already exists: its one-time passwords were printed when it was created.\n");
    }
    banner.push_str(&demo_apps(&state).await?);
    drop(state);
    banner.push_str(&format!(
        "Sign in at {}/t/{DEMO_TENANT}/login",
        BASE_PLACEHOLDER
    ));
    if !config.insecure_http {
        banner.push_str(&format!(
            "\n(the certificate comes from this appliance's own CA: trust {} or accept the browser warning)",
            config.data_dir.join(tls::CA_CERT).display()
        ));
    }
    serve(config, Some(banner)).await
}

/// The example apps the demo school gets, each with the capabilities it requests.
const DEMO_APPS: [&str; 3] = ["quiz", "portfolio", "class-summary"];

/// Where built example apps may be: the folder `scripts/test` builds them into, then the
/// plugins workspace's own target folder.
fn built_apps_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("PLUGINS_TARGET_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cache/ceredis/plugins-target"));
    }
    dirs.push(PathBuf::from("plugins/target"));
    dirs.into_iter()
        .map(|d| d.join("wasm32-wasip2/release"))
        .collect()
}

/// Installs (or upgrades) the example apps in the demo school when they are built in
/// `plugins/`; returns the banner's lines about them.
async fn demo_apps(state: &AppState) -> Result<String> {
    let handle = state
        .tenants
        .handle(DEMO_TENANT, &Authorized::console())
        .await?;
    let installed = handle.db.read(crate::store::apps::apps).await?;
    let dirs = built_apps_dirs();
    let mut lines = String::new();
    let mut missing = Vec::new();
    for name in DEMO_APPS {
        let manifest = PathBuf::from("plugins").join(name).join("ceredis-app.toml");
        let file = format!("{}.wasm", name.replace('-', "_"));
        let (Ok(text), Some(bytes)) = (
            std::fs::read_to_string(&manifest),
            dirs.iter().find_map(|d| std::fs::read(d.join(&file)).ok()),
        ) else {
            if !installed.iter().any(|a| a.name == name) {
                missing.push(name);
            }
            continue;
        };
        let sha = crate::apps::component_hash(&bytes);
        if installed.iter().any(|a| a.name == name && a.sha256 == sha) {
            continue;
        }
        let grants = crate::apps::Manifest::parse(&text)?.capabilities;
        let done = crate::apps::install(&state.apps, &handle, &text, bytes, &grants, "demo")
            .await
            .with_context(|| format!("installing the example app `{name}`"))?;
        lines.push_str(&format!(
            "Example app `{name}` {} {}: {BASE_PLACEHOLDER}/t/{DEMO_TENANT}/apps/{name}/\n",
            done.version,
            if done.upgrade {
                "upgraded"
            } else {
                "installed"
            },
        ));
    }
    if !missing.is_empty() {
        lines.push_str(&format!(
            "Example apps not built ({}): run `rustup target add wasm32-wasip2 && (cd plugins \
             && cargo build --release --target wasm32-wasip2)`, then the demo again from the \
             project's folder to install them.\n",
            missing.join(", ")
        ));
    }
    Ok(lines)
}

/// The authority of the demo school's sample statements.
fn demo_storer(home: &str) -> crate::lrs::statement::Storer {
    crate::lrs::statement::Storer {
        authority: serde_json::json!({"objectType": "Agent", "name": "CEREDIS demo",
            "account": {"homePage": home, "name": "demo"}}),
        key: "urn:ceredis:tenant:demo:demo".into(),
    }
}

/// The CEFR descriptor each demo activity gives evidence on: its results become evidence.
const DEMO_ALIGNMENTS: [(&str, &str); 4] = [
    ("listening/market", "urn:ceredis:cefr:reception:A2:1"),
    ("vocabulary/house", "urn:ceredis:cefr:reception:A1:2"),
    ("reading/letter", "urn:ceredis:cefr:reception:B1:2"),
    ("speaking/introduce", "urn:ceredis:cefr:production:A1:1"),
];

/// A fortnight of sample activity for the demo pupils: listening and vocabulary exercises,
/// attempted, completed, passed or not, so that the statement browser and the pupils'
/// histories show something on first start.
fn demo_activity(home: &str, pupils: &[tenant_sql::User]) -> Vec<serde_json::Value> {
    const ACTIVITIES: [(&str, &str, &str); 4] = [
        (
            "listening/market",
            "Écoute : au marché",
            "Listening: at the market",
        ),
        (
            "vocabulary/house",
            "Vocabulaire : la maison",
            "Vocabulary: the house",
        ),
        (
            "reading/letter",
            "Lecture : une lettre de Londres",
            "Reading: a letter from London",
        ),
        (
            "speaking/introduce",
            "Oral : se présenter",
            "Speaking: introducing yourself",
        ),
    ];
    let now = crate::lrs::now_ms();
    let mut out = Vec::new();
    for (i, pupil) in pupils.iter().enumerate() {
        for (j, (path, fr, en)) in ACTIVITIES.iter().enumerate() {
            let scaled = 0.35 + 0.1 * ((i * 3 + j * 5) % 7) as f64;
            let passed = scaled >= 0.6;
            let (verb, verb_fr, verb_en) = if passed {
                ("passed", "a réussi", "passed")
            } else {
                ("completed", "a terminé", "completed")
            };
            let at = now - ((14 - 3 * j as i64) * 86_400_000) - (i as i64 * 3_600_000);
            out.push(serde_json::json!({
                "actor": crate::lrs::learner(home, &pupil.agent_name),
                "verb": {"id": format!("http://adlnet.gov/expapi/verbs/{verb}"),
                         "display": {"fr-FR": verb_fr, "en-US": verb_en}},
                "object": {"id": format!("{home}activities/{path}"),
                           "definition": {"name": {"fr-FR": fr, "en-US": en},
                                          "type": "http://adlnet.gov/expapi/activities/assessment"}},
                "result": {"score": {"scaled": (scaled * 100.0).round() / 100.0},
                           "success": passed, "completion": true},
                "timestamp": crate::lrs::statement::format_millis(at),
            }));
        }
    }
    out
}

async fn tenant_command(config: Config, command: TenantCommand) -> Result<()> {
    let state = AppState::open(config.clone())?;
    match command {
        TenantCommand::Create { slug, name } => {
            let t = state.tenants.create(&slug, &name).await?;
            let token = auth::issue_tenant_setup_token(&state, &t.slug)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
            println!("Created tenant `{}` ({})", t.slug, t.name);
            println!(
                "Give this one-time link (valid 7 days) to the school's administrator:\n  {}/t/{}/setup/{token}",
                base_url(&config),
                t.slug
            );
        }
        TenantCommand::List => {
            for t in state.tenants.list().await? {
                println!("{:<24} {:<10} {}", t.slug, t.status, t.name);
            }
        }
        TenantCommand::Suspend { slug } => {
            state.tenants.set_status(&slug, true).await?;
            println!(
                "Suspended `{slug}`: its users cannot sign in and its credentials stop working."
            );
        }
        TenantCommand::Resume { slug } => {
            state.tenants.set_status(&slug, false).await?;
            println!("Resumed `{slug}`.");
        }
    }
    Ok(())
}

fn read_roster(paths: &[PathBuf]) -> Result<RosterFiles> {
    let mut files = RosterFiles::default();
    for p in paths {
        if p.is_dir() {
            for name in roster::FILES {
                let f = p.join(name);
                if f.is_file() {
                    files
                        .add(
                            name,
                            std::fs::read_to_string(&f)
                                .with_context(|| format!("cannot read {}", f.display()))?,
                        )
                        .map_err(anyhow::Error::msg)?;
                }
            }
        } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("zip")) {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            files
                .add_zip(&p.display().to_string(), &bytes)
                .map_err(anyhow::Error::msg)?;
        } else {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            files
                .add(&p.display().to_string(), text)
                .map_err(anyhow::Error::msg)?;
        }
    }
    if files.is_empty() {
        bail!(
            "no OneRoster file found; expected some of {}",
            roster::FILES.join(", ")
        );
    }
    Ok(files)
}

async fn user_command(config: Config, command: UserCommand) -> Result<ExitCode> {
    let state = AppState::open(config)?;
    match command {
        UserCommand::Add {
            tenant,
            username,
            given_name,
            family_name,
            role,
        } => {
            let handle = state
                .tenants
                .handle(&tenant, &Authorized::console())
                .await?;
            let fields = UserFields {
                sourced_id: None,
                username,
                given_name,
                family_name,
                email: None,
                role: role.into(),
                active: true,
            };
            let (user, otp) = tenant::create_user_with_otp(&handle, &state.hasher, fields)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
            println!(
                "Added {} ({}) to `{tenant}`. One-time password: {otp}",
                user.username,
                user.role.as_str()
            );
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Import {
            tenant,
            dry_run,
            paths,
        } => {
            let handle = state
                .tenants
                .handle(&tenant, &Authorized::console())
                .await?;
            let files = read_roster(&paths)?;
            let progress = std::sync::Arc::new(Progress::default());
            let watcher = {
                let p = progress.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        let v = p.snapshot();
                        if v.total > 0 {
                            eprintln!(
                                "{}: {}/{} rows ({} %)",
                                v.phase,
                                v.done,
                                v.total,
                                v.done * 100 / v.total.max(1)
                            );
                        }
                    }
                })
            };
            let report = roster::run(&handle, files, dry_run, progress).await;
            watcher.abort();
            let report = report?;
            for e in &report.errors {
                println!("error   {}:{}: {}", e.file, e.line, e.message);
            }
            for w in &report.warnings {
                println!("warning {}:{}: {}", w.file, w.line, w.message);
            }
            for (name, c) in [
                ("orgs", &report.orgs),
                ("users", &report.users),
                ("classes", &report.classes),
                ("enrollments", &report.enrollments),
            ] {
                println!(
                    "{name:<12} created {:>6}  updated {:>6}  unchanged {:>6}  removed {:>6}",
                    c.created, c.updated, c.unchanged, c.removed
                );
            }
            if !report.errors.is_empty() {
                println!("{} error(s): nothing was written.", report.errors.len());
                return Ok(ExitCode::FAILURE);
            }
            println!(
                "{}",
                if dry_run {
                    "Dry run: nothing was written."
                } else {
                    "Import applied."
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn credential_command(config: Config, command: CredentialCommand) -> Result<ExitCode> {
    let state = AppState::open(config)?;
    let CredentialCommand::Add {
        tenant,
        label,
        scopes,
    } = command;
    let handle = state
        .tenants
        .handle(&tenant, &Authorized::console())
        .await?;
    let created = tenant::create_credential(&handle, label, scopes, None)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    println!("key_id={}", created.key_id);
    println!("secret={}", created.secret);
    println!("scopes={}", created.scopes.join(" "));
    eprintln!(
        "The secret is shown only now. xAPI endpoint: <appliance URL>/t/{tenant}/xapi/ (HTTP Basic: key_id as user, secret as password)."
    );
    Ok(ExitCode::SUCCESS)
}

async fn framework_command(config: Config, command: FrameworkCommand) -> Result<ExitCode> {
    let state = AppState::open(config)?;
    let slug = match &command {
        FrameworkCommand::Import { tenant, .. }
        | FrameworkCommand::Export { tenant, .. }
        | FrameworkCommand::List { tenant } => tenant.clone(),
    };
    let handle = state.tenants.handle(&slug, &Authorized::console()).await?;
    match command {
        FrameworkCommand::Import { file, .. } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let doc: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let (_, f) = crate::competency::import_framework(&handle, &doc)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
            println!(
                "Imported {} ({}): {} competencies, {} relations, {} levels",
                f.uri,
                f.source,
                f.competencies.len(),
                f.relations.len(),
                f.competencies.iter().map(|c| c.levels.len()).sum::<usize>()
            );
        }
        FrameworkCommand::Export { uri, .. } => {
            let found = handle
                .db
                .read(move |c| crate::store::competency::load_framework(c, &uri))
                .await?
                .ok_or_else(|| anyhow::anyhow!("no such framework in `{slug}`"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::competency::interchange::to_cass(&found))?
            );
        }
        FrameworkCommand::List { .. } => {
            for f in handle.db.read(crate::store::competency::frameworks).await? {
                println!("{:<8} {:<60} {}", f.source, f.uri, f.name.get("fr"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn hub_command(
    config: Config,
    postgres: Option<&str>,
    command: HubCommand,
) -> Result<ExitCode> {
    use crate::federation::hub::{HubState, router};
    let names = tls::server_names(&config.tls.server_names);
    let postgres = postgres
        .map(str::to_string)
        .or_else(|| Some(config.hub.postgres.expose().to_string()).filter(|p| !p.is_empty()));
    let state = HubState::open(&config.data_dir, &names, postgres.as_deref()).await?;
    match command {
        HubCommand::Serve(_) => {
            let listener = server::bind(config.listen)?;
            let url = config.base_url(listener.local_addr()?);
            // A stable line that scripts and tests wait for.
            println!("ceredis hub: listening on {url}");
            println!(
                "hub id {}, records in {}",
                state.hub_id,
                state.store.engine()
            );
            let tls = tls::server_config(&config.data_dir)?;
            server::serve_router(router(state), listener, tls, shutdown_signal()).await?;
        }
        HubCommand::Token { label, valid_hours } => {
            let label = label.trim().to_string();
            if label.is_empty() {
                anyhow::bail!("--label names who the token is for");
            }
            let token = state
                .issue_token(label.clone(), i64::from(valid_hours) * 3600)
                .await?;
            println!("{token}");
            eprintln!(
                "One-time enrolment token for `{label}`, valid {valid_hours} h. On the site: \
                 ceredis federation join <this hub's https:// address> <token>"
            );
        }
        HubCommand::Sites => {
            for s in state.store.sites().await? {
                let when = |t: Option<i64>| {
                    t.map_or_else(
                        || "-".to_string(),
                        |t| crate::lrs::statement::format_millis(t * 1000),
                    )
                };
                println!(
                    "{}  {}  [{}]  enrolled {}  last seen {}{}",
                    s.site_id,
                    s.name,
                    s.label,
                    when(Some(s.enrolled_at)),
                    when(s.last_seen),
                    s.revoked_at
                        .map(|t| format!("  REVOKED {}", when(Some(t))))
                        .unwrap_or_default()
                );
            }
        }
        HubCommand::Publish {
            framework: None,
            app_manifest: Some(manifest),
            app_component: Some(component),
        } => {
            let text = std::fs::read_to_string(&manifest)
                .with_context(|| format!("reading {}", manifest.display()))?;
            let parsed = crate::apps::Manifest::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.display()))?;
            let bytes = std::fs::read(&component)
                .with_context(|| format!("reading {}", component.display()))?;
            if !crate::federation::publications::is_component(&bytes) {
                bail!(
                    "{} is not a WebAssembly component (built for wasm32-wasip2)",
                    component.display()
                );
            }
            let uri = format!("app:{}@{}", parsed.name, parsed.version);
            let data = crate::federation::publications::app_envelope(&text, &bytes);
            let (id, fresh) = state
                .store
                .publish("app".into(), parsed.name.clone(), uri.clone(), data)
                .await?;
            if fresh {
                println!("Published {uri} as publication {id}.");
            } else {
                println!("{uri} is publication {id} already: nothing changed.");
            }
        }
        HubCommand::Publish {
            framework: None, ..
        } => bail!("publish what: --framework FILE, or --app-manifest and --app-component"),
        HubCommand::Publish {
            framework: Some(framework),
            ..
        } => {
            let data = std::fs::read(&framework)
                .with_context(|| format!("reading {}", framework.display()))?;
            let doc: serde_json::Value = serde_json::from_slice(&data)
                .with_context(|| format!("{} is not JSON", framework.display()))?;
            let f = crate::competency::interchange::import(&doc).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a framework this appliance reads: {e}",
                    framework.display()
                )
            })?;
            let name = f.name.get("fr").to_string();
            let (id, fresh) = state
                .store
                .publish("framework".into(), name.clone(), f.uri.clone(), data)
                .await?;
            if fresh {
                println!("Published {} ({name}) as publication {id}.", f.uri);
            } else {
                println!("{} is publication {id} already: nothing changed.", f.uri);
            }
        }
        HubCommand::Export { site, to } => {
            let key = crate::identity::key_pair(&config.data_dir)?;
            let out =
                crate::federation::bundle::export(&state.store, &state.hub_id, &key, &site, &to)
                    .await?;
            println!("{}", out.display());
        }
        HubCommand::Aggregates => {
            for row in state.store.aggregates().await? {
                let a: crate::federation::aggregates::Aggregates = serde_json::from_str(&row.body)?;
                println!(
                    "{} ({}, {}):",
                    row.school,
                    row.site_id,
                    crate::lrs::statement::format_millis(row.received_at * 1000)
                );
                for s in a.skills {
                    let levels: Vec<String> = s
                        .levels
                        .iter()
                        .map(|(l, n)| {
                            format!(
                                "{l} {}",
                                n.map_or(format!("<{}", a.min_cell), |n| n.to_string())
                            )
                        })
                        .collect();
                    println!("  {}: {}", s.competency, levels.join(", "));
                }
            }
        }
        HubCommand::Publications => {
            for p in state.store.publications().await? {
                println!(
                    "{:>4}  {}  {}  {}  {} bytes  sha256 {}  {}",
                    p.id,
                    p.kind,
                    p.uri,
                    p.name,
                    p.bytes,
                    &p.sha256[..16],
                    crate::lrs::statement::format_millis(p.published_at * 1000)
                );
            }
        }
        HubCommand::Import { dir } => {
            let mut folders: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join(crate::federation::continuity::BATCH_FILE).exists())
                .collect();
            if dir.join(crate::federation::continuity::BATCH_FILE).exists() {
                folders.push(dir.clone());
            }
            folders.sort();
            if folders.is_empty() {
                bail!("{} holds no batch (folders with batch.json)", dir.display());
            }
            let mut failed = false;
            for folder in folders {
                match crate::federation::hub::import_batch(&state.store, &folder).await {
                    Ok(crate::federation::hub::Imported::Committed { generation, .. }) => {
                        println!("{}: generation {generation} committed", folder.display())
                    }
                    Ok(crate::federation::hub::Imported::AlreadyThere { generation, .. }) => {
                        println!(
                            "{}: generation {generation} already there",
                            folder.display()
                        )
                    }
                    Err(e) => {
                        failed = true;
                        eprintln!("{}: refused ({}): {}", folder.display(), e.code, e.message);
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        HubCommand::Revoke { site_id } => {
            if !state.store.revoke(site_id.clone()).await? {
                anyhow::bail!("no enrolled, unrevoked site {site_id}: see `ceredis hub sites`");
            }
            println!("Revoked {site_id}: its requests are refused from now on.");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn federation_command(config: Config, command: FederationCommand) -> Result<ExitCode> {
    use crate::federation::{client, continuity};
    let state = AppState::open(config.clone())?;
    match command {
        FederationCommand::Join { url, token, name } => {
            let name = name.unwrap_or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .map(|h| h.trim().to_string())
                    .ok()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "ceredis".into())
            });
            let joined = client::join(&state.system, &config.data_dir, &url, &token, &name).await?;
            println!(
                "Joined hub {} as {} ({name}, token `{}`). The hub's certificate is pinned.",
                joined.hub_id, joined.site_id, joined.label
            );
        }
        FederationCommand::Status => {
            // What this site knows is shown even when the hub cannot be asked.
            let link = match client::status(&state.system, &config.data_dir).await {
                Ok((m, v)) => {
                    println!(
                        "hub {} at {}: reachable, this site ({}) is enrolled as `{}`",
                        m.hub_id,
                        m.hub_url,
                        v["site"]["site_id"].as_str().unwrap_or_default(),
                        v["site"]["name"].as_str().unwrap_or_default()
                    );
                    Ok(())
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Err(e)
                }
            };
            for (slug, c) in state.system.read(continuity::states).await? {
                let when = |t: Option<i64>| {
                    t.map_or_else(
                        || "never".to_string(),
                        |t| crate::lrs::statement::format_millis(t * 1000),
                    )
                };
                let handle = state.tenants.handle(&slug, &Authorized::console()).await?;
                let waiting = continuity::pending(&handle, c.batched).await?;
                let awaited = continuity::awaited(&handle).await?;
                println!(
                    "  {}: continuity copy generation {} committed {}; changes through {} sent \
                     {}, {waiting} waiting; other sites' changes pulled {}{}{}{}",
                    slug,
                    c.committed,
                    when(c.committed_at),
                    c.batched,
                    when(c.batched_at),
                    when(c.pulled_at),
                    c.lacking
                        .map(|l| format!("; not here (only in a generation): {l}"))
                        .unwrap_or_default(),
                    if awaited.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; other sites' changes waiting for records not here yet: {}",
                            awaited.join(", ")
                        )
                    },
                    c.last_error
                        .map(|e| format!("; last sync failed {}: {e}", when(c.last_error_at)))
                        .unwrap_or_default()
                );
            }
            if link.is_err() {
                return Ok(ExitCode::FAILURE);
            }
        }
        FederationCommand::Enable { tenant } => {
            // The tenant must exist (and be active).
            state
                .tenants
                .handle(&tenant, &Authorized::console())
                .await?;
            let recovery = continuity::enable(&state.system, &tenant).await?;
            println!("{recovery}");
            eprintln!(
                "Continuity copy of `{tenant}` enabled. The line above is its RECOVERY KEY, \
                 shown this once: keep it offline (printed, in a safe). Without it nobody, not \
                 even the hub, can restore this school. Push with `ceredis federation push`."
            );
        }
        FederationCommand::Push { tenant, full } => {
            let (hub, _) = client::client(&state.system, &config.data_dir).await?;
            let hub = hub.rate_limited(config.federation.max_kib_per_sec * 1024);
            let slugs = with_copy(&state, tenant).await?;
            let mut failed = false;
            for slug in slugs {
                let handle = state.tenants.handle(&slug, &Authorized::console()).await?;
                let progress = |line: String| eprintln!("{line}");
                match continuity::push(
                    &hub,
                    &state.system,
                    &handle,
                    &config.data_dir,
                    full,
                    &progress,
                )
                .await
                {
                    Ok(p) if p.chunks > 0 => println!(
                        "{slug}: generation {} committed ({} chunks, {} sent now, {} bytes{}); \
                         {} batches; the hub holds the changes through {}",
                        p.generation,
                        p.chunks,
                        p.sent,
                        p.bytes_sent,
                        if p.resumed { ", resumed" } else { "" },
                        p.batches,
                        p.batched
                    ),
                    Ok(p) => println!(
                        "{slug}: {} batches sent ({} bytes) after generation {}; the hub holds \
                         the changes through {}{}",
                        p.batches,
                        p.bytes_sent,
                        p.generation,
                        p.batched,
                        if p.holders > 1 {
                            format!(" (the school is held by {} sites)", p.holders)
                        } else {
                            String::new()
                        }
                    ),
                    Err(e) => {
                        failed = true;
                        eprintln!("{slug}: push failed: {e}");
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        FederationCommand::Pull { tenant } => {
            let (hub, _) = client::client(&state.system, &config.data_dir).await?;
            let mut failed = false;
            for slug in with_copy(&state, tenant).await? {
                let handle = state.tenants.handle(&slug, &Authorized::console()).await?;
                let progress = |line: String| eprintln!("{line}");
                match continuity::pull(&hub, &state.system, &handle, &config.data_dir, &progress)
                    .await
                {
                    Ok(p) => {
                        println!(
                            "{slug}: {} batches from other sites applied: {} statements, {} \
                             field changes ({} conflicts recorded), {} documents, {} erasures",
                            p.batches, p.statements, p.fields, p.conflicts, p.documents, p.erasures
                        );
                        if !p.lacking.is_empty() {
                            println!(
                                "{slug}: changes that only a generation carries were made at \
                                 {}; they are in the hub's copy, not here",
                                p.lacking.join("; ")
                            );
                        }
                        if !p.awaiting.is_empty() {
                            println!(
                                "{slug}: changes from other sites wait for records not here yet \
                                 (their sites' batches will bring them): {}",
                                p.awaiting.join(", ")
                            );
                        }
                    }
                    Err(e) => {
                        failed = true;
                        eprintln!("{slug}: pull failed: {e}");
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        FederationCommand::Publications => {
            use crate::federation::publications;
            let (hub, _) = client::client(&state.system, &config.data_dir).await?;
            let fresh = publications::fetch(&hub, &state.system).await?;
            println!("{} new publications fetched", fresh.len());
            for p in publications::held(&state.system).await? {
                println!(
                    "{:>4}  {}  {}  {}  {} bytes",
                    p.id, p.kind, p.uri, p.name, p.bytes
                );
            }
            for t in state.tenants.list().await? {
                let Ok(handle) = state.tenants.handle(&t.slug, &Authorized::console()).await else {
                    continue;
                };
                for uri in publications::adopt_all(&handle, &state.system).await? {
                    println!("{}: adopted {uri}", t.slug);
                }
            }
        }
        FederationCommand::Import { dir } => {
            let done = crate::federation::bundle::import(
                &state.system,
                &state.tenants,
                &config.data_dir,
                &dir,
            )
            .await?;
            println!(
                "Imported {} batches ({} statements) and {} new publications from the hub.",
                done.batches, done.statements, done.publications
            );
        }
        FederationCommand::Aggregates { tenant } => {
            let (hub, _) = client::client(&state.system, &config.data_dir).await?;
            let handle = state
                .tenants
                .handle(&tenant, &Authorized::console())
                .await?;
            match crate::federation::aggregates::publish(&hub, &handle).await? {
                Some(a) => println!(
                    "{tenant}: aggregates of {} skills published ({})",
                    a.skills.len(),
                    serde_json::to_string(&a.skills)?
                ),
                None => println!(
                    "{tenant}: its admin has not chosen to publish aggregates; nothing sent"
                ),
            }
        }
        FederationCommand::Adopt { tenant, id } => {
            let handle = state
                .tenants
                .handle(&tenant, &Authorized::console())
                .await?;
            let uri = crate::federation::publications::adopt(
                &handle,
                &state.system,
                Some(&state.apps),
                id,
            )
            .await?;
            println!("{tenant}: adopted {uri}");
        }
        FederationCommand::Export { to, tenant } => {
            let slugs = with_copy(&state, tenant).await?;
            if slugs.is_empty() {
                bail!("no tenant with its continuity copy enabled to export");
            }
            for slug in slugs {
                let handle = state.tenants.handle(&slug, &Authorized::console()).await?;
                let out = continuity::export(&state.system, &handle, &config.data_dir, &to).await?;
                println!("{slug}: {}", out.display());
            }
        }
        FederationCommand::Restore {
            tenant,
            recovery_key,
            alongside,
        } => {
            let recovery = continuity::RecoveryKey::parse(&recovery_key)?;
            let (hub, _) = client::client(&state.system, &config.data_dir).await?;
            let progress = |line: String| eprintln!("{line}");
            let r = continuity::restore(
                &hub,
                &state.tenants,
                &config.data_dir,
                &recovery,
                &tenant,
                alongside,
                &progress,
            )
            .await?;
            println!(
                "Restored `{}` ({}) from generation {} ({} bytes) and {} batches of later \
                 changes. {}",
                r.slug,
                r.name,
                r.generation,
                r.bytes,
                r.batches,
                if alongside {
                    "This appliance holds the school beside the other sites that hold it: \
                     each pull brings their changes."
                } else {
                    "This appliance now keeps its continuity copy."
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The tenants whose continuity copy is enabled: `tenant` alone (which must be one), or all.
async fn with_copy(state: &AppState, tenant: Option<String>) -> Result<Vec<String>> {
    let enabled: Vec<String> = state
        .system
        .read(crate::federation::continuity::states)
        .await?
        .into_iter()
        .map(|(slug, _)| slug)
        .collect();
    Ok(match tenant {
        Some(t) if enabled.contains(&t) => vec![t],
        Some(t) => {
            return Err(crate::federation::continuity::ContinuityError::NotEnabled(t).into());
        }
        None => enabled,
    })
}

async fn app_command(config: Config, command: AppCommand) -> Result<ExitCode> {
    use crate::apps::{Capability, Manifest};
    let state = AppState::open(config)?;
    let slug = match &command {
        AppCommand::Install { tenant, .. }
        | AppCommand::List { tenant }
        | AppCommand::Remove { tenant, .. } => tenant.clone(),
    };
    let handle = state.tenants.handle(&slug, &Authorized::console()).await?;
    let lang = crate::http::i18n::Lang::En;
    match command {
        AppCommand::Install {
            manifest,
            component,
            grants,
            grant_requested,
            ..
        } => {
            let text = std::fs::read_to_string(&manifest)
                .with_context(|| format!("reading {}", manifest.display()))?;
            let bytes = std::fs::read(&component)
                .with_context(|| format!("reading {}", component.display()))?;
            let parsed = Manifest::parse(&text)?;
            let grants: Vec<String> = if grant_requested {
                parsed.capabilities.clone()
            } else {
                grants
            };
            let installed =
                crate::apps::install(&state.apps, &handle, &text, bytes, &grants, "console")
                    .await?;
            println!(
                "{} {} {} in `{slug}`",
                if installed.upgrade {
                    "Upgraded"
                } else {
                    "Installed"
                },
                installed.name,
                installed.version
            );
            println!("sha256 {}", installed.sha256);
            for c in parsed.requested() {
                let mark = if installed.grants.iter().any(|g| g == c.code()) {
                    "granted "
                } else {
                    "withheld"
                };
                println!("  {mark} {:<31} {}", c.code(), c.describe(lang));
            }
            println!(
                "Open it at <appliance URL>/t/{slug}/apps/{}/",
                installed.name
            );
        }
        AppCommand::List { .. } => {
            for a in handle.db.read(crate::store::apps::apps).await? {
                let grants: Vec<&str> = a
                    .grants
                    .iter()
                    .filter(|g| Capability::parse(g).is_some())
                    .map(String::as_str)
                    .collect();
                println!(
                    "{:<20} {:<10} {} {}",
                    a.name,
                    a.version,
                    a.sha256,
                    grants.join(",")
                );
            }
        }
        AppCommand::Remove { name, .. } => {
            let at = crate::store::now();
            let n = name.clone();
            let removed = handle
                .db
                .write(move |c| crate::store::apps::remove(c, &n, "console", at))
                .await?;
            if !removed {
                anyhow::bail!("no app `{name}` in `{slug}`");
            }
            println!("Removed {name} and its storage from `{slug}`");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn backup_command(config: &Config, to: &Path) -> Result<()> {
    let site = {
        let db = app::open_system(config, StoreMetrics::default())?;
        db.read(system::site).await?.map(|s| s.site_id)
    };
    let data_dir = config.data_dir.clone();
    let out = to.to_path_buf();
    let manifest = tokio::task::spawn_blocking(move || {
        backup::backup(&data_dir, &out, &[tls::CA_CERT, tls::CA_KEY], site, |p| {
            eprintln!("snapshot {}", p.display())
        })
    })
    .await??;
    println!(
        "Backed up {} files to {}",
        manifest.files.len(),
        to.display()
    );
    Ok(())
}

async fn restore_command(config: &Config, from: &Path) -> Result<()> {
    let (from, dir) = (from.to_path_buf(), config.data_dir.clone());
    let manifest = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok::<_, anyhow::Error>(backup::restore(&from, &dir)?)
    })
    .await??;
    // A restored appliance is a new site: it must never sync as the one it was copied from.
    let id = identity::generate(&config.data_dir)?;
    let db = Database::open(
        "system",
        &config.data_dir.join(app::SYSTEM_DB),
        store::system::MIGRATIONS,
        app::db_options(config),
        StoreMetrics::default(),
    )?;
    let (site_id, key, from_site) = (
        id.site_id.clone(),
        id.public_key.clone(),
        manifest.site_id.clone(),
    );
    db.write(move |c| system::set_site(c, &site_id, &key, from_site.as_deref()))
        .await?;
    println!(
        "Restored {} files into {}; integrity verified. New site identity {} (was {}).",
        manifest.files.len(),
        config.data_dir.display(),
        id.site_id,
        manifest.site_id.unwrap_or_else(|| "unknown".into())
    );
    Ok(())
}
