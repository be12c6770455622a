//! Command-line parsing; each group of commands lives in its own module and takes the
//! shared [`Global`] flags: sprites, exec (and sessions), checkpoints, transfer (cp,
//! port forwarding), images (and admin); services in `crate::services`.

mod access;
mod checkpoints;
mod exec;
mod images;
mod sprites;
mod transfer;

use crate::settings;
use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use sprite_client::Client;

#[derive(Debug, Parser)]
#[command(name = "sprite", version, about = "Disposable Linux computers that sleep when idle", after_help = EXAMPLES)]
pub struct Args {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The flags every command takes: the shared context of the commands.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// API base URL (default: $SPRITES_API_URL or http://127.0.0.1:7070).
    #[arg(long, global = true)]
    pub api_url: Option<String>,
    /// API token (default: $SPRITE_TOKEN or the local daemon's admin token); for
    /// `sprite daemon`, the admin token it accepts.
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Print data as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Global {
    /// A client of the daemon these flags name.
    pub fn client(&self) -> Result<Client> {
        Ok(Client::new(
            &settings::api_url(self.api_url.as_deref()),
            &settings::token(self.token.as_deref())?,
        ))
    }
}

/// The sprite a command acts on, the same on every command: `-s NAME`, else the
/// `.sprite` file of this directory or a parent (written by `sprite use`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SpriteArg {
    /// The sprite (default: the one `sprite use` chose for this directory).
    #[arg(short = 's', long = "sprite", value_name = "NAME")]
    pub sprite: Option<String>,
}

impl SpriteArg {
    /// The sprite named by `-s`, or by this directory.
    pub fn name(&self) -> Result<String> {
        settings::sprite_name(self.sprite.as_deref())
    }

    /// The sprite named by a positional argument, else as [`SpriteArg::name`].
    pub fn or(&self, positional: Option<&str>) -> Result<String> {
        settings::sprite_name(positional.or(self.sprite.as_deref()))
    }
}

const EXAMPLES: &str = "Examples:
  sprite create dev             create a sprite named dev and open its console
  sprite exec -s dev -- uname -a
  tar c src | sprite exec -s dev -- tar x -C /tmp
  sprite list --json
  sprite destroy dev --force";

#[derive(Debug, Subcommand)]
// Parsed once per run: the daemon's many flags make its variant large, harmlessly.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the sprite daemon (the API server).
    Daemon(crate::daemon::DaemonArgs),
    /// The per-host storage process (started by the daemon).
    #[command(hide = true)]
    Storage(crate::storage::StorageArgs),
    /// Create a sprite and open its console.
    #[command(
        after_help = "Examples:\n  sprite create\n  sprite create dev --skip-console --label team=web"
    )]
    Create(sprites::CreateArgs),
    /// List sprites.
    #[command(alias = "ls")]
    List(sprites::ListArgs),
    /// Show one sprite.
    Info(sprites::InfoArgs),
    /// Make NAME the sprite of this directory (writes ./.sprite).
    Use(sprites::UseArgs),
    /// Open an interactive shell (detach with Ctrl+\).
    #[command(alias = "c")]
    Console(exec::ConsoleArgs),
    /// Run a command in a sprite.
    #[command(
        alias = "x",
        after_help = "Examples:\n  sprite exec -s dev -- ls -la /\n  sprite x --tty -- top\n  echo hi | sprite exec -- cat"
    )]
    Exec(exec::ExecArgs),
    /// List, attach to, or kill exec sessions.
    #[command(subcommand)]
    Sessions(exec::SessionsCommand),
    /// Destroy a sprite and everything in it.
    Destroy(sprites::DestroyArgs),
    /// Create, list, show or delete checkpoints of a sprite's filesystem.
    #[command(subcommand)]
    Checkpoint(checkpoints::CheckpointCommand),
    /// Restore a checkpoint (the sprite's sessions end; it restarts on the checkpoint).
    Restore(checkpoints::RestoreArgs),
    /// Move a sprite onto the newest version of its image (`sprite images update`):
    /// a checkpoint first, then it restarts on the new image with its own files and
    /// /home. `sprite restore CHECKPOINT` undoes it.
    #[command(
        after_help = "Examples:\n  sprite images update dev\n  sprite upgrade -s work\n  sprite restore v3 -s work      # undo, with the checkpoint the upgrade printed"
    )]
    Upgrade(checkpoints::UpgradeArgs),
    /// Long-running processes of a sprite: started at boot and cold wake in `needs`
    /// order, restarted when they exit, logged to /.sprite/logs/services.
    #[command(subcommand)]
    Services(crate::services::ServicesCommand),
    /// Forward local ports to ports in a sprite, or stdin/stdout to one with -W.
    #[command(
        after_help = "Examples:\n  sprite proxy 5432 -s db            127.0.0.1:5432 → port 5432 in db\n  sprite proxy 8000:3000 9229 -s dev\n  ssh -o ProxyCommand='sprite proxy -W localhost:22 -s dev' sprite@dev"
    )]
    Proxy(transfer::ProxyArgs),
    /// Copy files and directories between this machine and a sprite.
    #[command(
        after_help = "Paths in a sprite are SPRITE:PATH, or :PATH for the current sprite (relative ones start in /home/sprite).\n\nExamples:\n  sprite cp notes.txt dev:/home/sprite/\n  sprite cp -r ./src dev:project/src\n  sprite cp -rL ./project dev:project   # copy what symlinks point at\n  sprite cp -r dev:/var/log/app ./logs\n  sprite cp :/etc/hosts . -s dev"
    )]
    Cp(transfer::CpArgs),
    /// Show a sprite's URL (and who may open it), or change that with `update`.
    #[command(
        after_help = "Examples:\n  sprite url -s dev\n  sprite url update --auth public -s dev"
    )]
    Url(sprites::UrlArgs),
    /// Put a sprite to sleep now: warm (frozen, memory kept, wakes in milliseconds) or,
    /// with --cold, cold (stopped, disk in the object store, no memory used).
    #[command(after_help = "Examples:\n  sprite sleep dev\n  sprite sleep dev --cold")]
    Sleep(sprites::SleepArgs),
    /// Wake a sleeping sprite (any command that needs it also wakes it).
    Wake(sprites::WakeArgs),
    /// Move a sprite to another host of the cluster: its disk is flushed to the
    /// object store and it wakes on the target at the next request.
    #[command(after_help = "Examples:\n  sprite move dev --to host-b\n  sprite move -s dev")]
    Move(sprites::MoveArgs),
    /// Storage a sprite uses: bytes stored in the object store, per checkpoint too.
    Usage(sprites::UsageArgs),
    /// Templates: named copies of a sprite's checkpoint that new sprites start from.
    #[command(
        subcommand,
        after_help = "Examples:\n  sprite templates create node-app --from dev:v3\n  sprite create api --template node-app\n  sprite templates list"
    )]
    Templates(sprites::TemplatesCommand),
    /// Administration of the daemon.
    #[command(subcommand)]
    Admin(images::AdminCommand),
    /// API tokens: mint one per organization, person or CI job; list; revoke.
    #[command(subcommand)]
    Tokens(access::TokensCommand),
    /// Organizations and their limits (sprites awake and in warm sleep at once).
    #[command(subcommand)]
    Orgs(access::OrgsCommand),
    /// Show the images and their build state, or import one.
    #[command(
        after_help = "Examples:\n  sprite images\n  sprite images import alpine alpine-minirootfs.tar.gz\n  docker export $(docker create ubuntu) | sprite images import ubuntu -\n  sprite create --image alpine"
    )]
    Images(images::ImagesArgs),
    /// Serve the MCP tools over stdin/stdout, for desktop agents (Claude Desktop,
    /// Claude Code...) that start a process; the daemon serves the same at /mcp.
    #[command(
        after_help = "Claude Desktop (claude_desktop_config.json):\n  {\"mcpServers\": {\"sprites\": {\"command\": \"sprite\", \"args\": [\"mcp\"], \"env\": {\"SPRITE_TOKEN\": \"...\"}}}}\nClaude Code:\n  claude mcp add sprites -- sprite mcp\n  claude mcp add --transport http sprites http://127.0.0.1:7070/mcp --header \"Authorization: Bearer $SPRITE_TOKEN\""
    )]
    Mcp,
    /// Print version information.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

/// Prints an error with its cause chain and a hint.
pub fn print_error(error: &anyhow::Error) {
    let mut text = format!("error: {error}");
    for cause in error.chain().skip(1) {
        text.push_str(&format!("\n  caused by: {cause}"));
    }
    eprintln!("{text}");
    if let Some(hint) = hint_for(error) {
        eprintln!("hint: {hint}");
    }
}

fn hint_for(error: &anyhow::Error) -> Option<&'static str> {
    for cause in error.chain() {
        if let Some(client) = cause.downcast_ref::<sprite_client::ClientError>() {
            return Some(match client {
                sprite_client::ClientError::Unreachable { .. } => {
                    "start the daemon with `sprite daemon` (as root), or set SPRITES_API_URL"
                }
                sprite_client::ClientError::Api { status: 401, .. } => {
                    "check --token / SPRITE_TOKEN"
                }
                sprite_client::ClientError::Api { status: 403, .. } => {
                    "this needs the admin token (the daemon's, or one made with `sprite tokens create --scope admin`)"
                }
                sprite_client::ClientError::Api { status: 404, .. } => {
                    "`sprite list` shows the sprites that exist"
                }
                sprite_client::ClientError::Api { status: 409, .. } => {
                    "pick another name, or `sprite destroy` the existing sprite"
                }
                _ => return None,
            });
        }
    }
    None
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("encode JSON")?
    );
    Ok(())
}

pub async fn run(args: Args) -> Result<u8> {
    let cx = &args.global;
    match &args.command {
        Command::Daemon(_) => {
            let token = args.global.token.clone();
            let Command::Daemon(daemon) = args.command else {
                return Ok(1);
            };
            crate::daemon::run(daemon, token).await
        }
        Command::Storage(_) => {
            let Command::Storage(storage) = args.command else {
                return Ok(1);
            };
            crate::storage::run(storage).await
        }
        Command::Mcp => {
            // Only MCP messages go to stdout; anything else to stderr.
            crate::console::ensure_local_daemon(cx).await?;
            let api = crate::settings::api_url(cx.api_url.as_deref());
            let token = crate::settings::token(cx.token.as_deref())?;
            crate::mcp::serve_stdio(&api, &token).await?;
            Ok(0)
        }
        Command::Version => {
            if cx.json {
                print_json(
                    &serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "api": sprite_api::SERVER_VERSION }),
                )?;
            } else {
                println!("sprite {}", env!("CARGO_PKG_VERSION"));
            }
            Ok(0)
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Args::command(),
                "sprite",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Use(command) => command.run(cx).await,
        Command::Create(command) => command.run(cx).await,
        Command::List(command) => command.run(cx).await,
        Command::Info(command) => command.run(cx).await,
        Command::Cp(command) => command.run(cx).await,
        Command::Proxy(command) => command.run(cx).await,
        Command::Url(command) => command.run(cx).await,
        Command::Sleep(command) => command.run(cx).await,
        Command::Wake(command) => command.run(cx).await,
        Command::Move(command) => command.run(cx).await,
        Command::Console(command) => command.run(cx).await,
        Command::Exec(command) => command.run(cx).await,
        Command::Sessions(sessions) => exec::sessions(cx, sessions).await,
        Command::Destroy(command) => command.run(cx).await,
        Command::Checkpoint(command) => checkpoints::run(cx, command).await,
        Command::Services(command) => crate::services::run(cx, command).await,
        Command::Restore(command) => command.run(cx).await,
        Command::Upgrade(command) => command.run(cx).await,
        Command::Usage(command) => command.run(cx).await,
        Command::Admin(command) => images::admin(cx, command).await,
        Command::Tokens(command) => access::tokens(cx, command).await,
        Command::Orgs(command) => access::orgs(cx, command).await,
        Command::Templates(command) => command.run(cx).await,
        Command::Images(images) => images.run(cx).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    /// Every command that acts on one sprite takes the same `-s/--sprite NAME`.
    #[test]
    fn every_sprite_command_takes_the_same_sprite_flag() {
        let command = Args::command();
        let mut checked = 0;
        let mut stack: Vec<&clap::Command> = vec![&command];
        while let Some(command) = stack.pop() {
            stack.extend(command.get_subcommands());
            if let Some(flag) = command.get_arguments().find(|a| a.get_id() == "sprite") {
                assert_eq!(flag.get_short(), Some('s'), "{}", command.get_name());
                assert_eq!(flag.get_long(), Some("sprite"), "{}", command.get_name());
                let help = flag.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    help.contains("sprite use"),
                    "{}: {help}",
                    command.get_name()
                );
                checked += 1;
            }
        }
        assert!(checked >= 25, "only {checked} commands take -s");
        for line in [
            "sprite exec -s dev -- true",
            "sprite checkpoint create -s dev",
            "sprite services list -s dev",
            "sprite url update --auth public -s dev",
            "sprite cp :/etc/hosts . -s dev",
        ] {
            let parsed = Args::try_parse_from(line.split(' '));
            assert!(parsed.is_ok(), "{line}: {:?}", parsed.err());
        }
    }
}
