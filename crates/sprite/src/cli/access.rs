//! `sprite tokens` (mint, list, revoke API tokens) and `sprite orgs` (organizations
//! and their limits). Both need the admin token.

use super::{print_json, Global};
use anyhow::{bail, Result};
use clap::Subcommand;
use sprite_api::admin::{CreateTokenRequest, SetOrgLimits, TokenScope};

/// The organization of the daemon's own admin token.
const DEFAULT_ORG: &str = "default";

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Mint a token; it is printed once (only its hash is kept).
    #[command(
        after_help = "Examples:\n  sprite tokens create --org acme --description \"CI\"\n  SPRITE_TOKEN=$(sprite tokens create --org acme --json | jq -r .token)\n  sprite tokens create --scope admin --description \"second operator\""
    )]
    Create {
        /// The organization the token acts for (its sprites, templates, limits).
        #[arg(long, default_value = DEFAULT_ORG)]
        org: String,
        /// `organization` (its sprites only) or `admin` (also images, hosts, tokens,
        /// limits and garbage collection).
        #[arg(long, default_value = "organization", value_parser = parse_scope)]
        scope: TokenScope,
        /// What the token is for (shown by `list`).
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (never the tokens themselves).
    #[command(
        alias = "ls",
        after_help = "Examples:\n  sprite tokens list\n  sprite tokens list --org acme --json"
    )]
    List {
        /// One organization's (default: every organization's).
        #[arg(long)]
        org: Option<String>,
    },
    /// Revoke a token: every request with it is refused from now on.
    #[command(after_help = "Examples:\n  sprite tokens revoke 3f2a9c01b4d5e6f7 --org acme")]
    Revoke {
        /// The token's id (`sprite tokens list`), or the token itself.
        id: String,
        #[arg(long, default_value = DEFAULT_ORG)]
        org: String,
    },
}

fn parse_scope(text: &str) -> Result<TokenScope, String> {
    TokenScope::parse(text).ok_or_else(|| {
        format!("unknown scope {text:?}: use organization (its sprites only) or admin")
    })
}

pub async fn tokens(cx: &Global, command: &TokensCommand) -> Result<u8> {
    let client = cx.client()?;
    match command {
        TokensCommand::Create {
            org,
            scope,
            description,
        } => {
            let created = client
                .create_token(
                    org,
                    &CreateTokenRequest {
                        description: Some(description.clone()),
                        scope: Some(*scope),
                        invite_code: None,
                    },
                )
                .await?;
            if cx.json {
                print_json(&created)?;
            } else {
                println!("{}", created.token);
                eprintln!(
                    "token {} for organization {} ({} scope); it is shown only now: keep it (SPRITE_TOKEN=...)",
                    created.info.id,
                    created.info.org,
                    created.info.scope.as_str()
                );
            }
        }
        TokensCommand::List { org } => {
            let list = client.tokens(org.as_deref()).await?;
            if cx.json {
                print_json(&list)?;
            } else if list.tokens.is_empty() {
                eprintln!("no tokens minted (the daemon's admin token is not listed); sprite tokens create --org ORG mints one");
            } else {
                println!(
                    "{:<18} {:<20} {:<13} {:<21} DESCRIPTION",
                    "ID", "ORG", "SCOPE", "CREATED"
                );
                for token in &list.tokens {
                    println!(
                        "{:<18} {:<20} {:<13} {:<21} {}",
                        token.id,
                        token.org,
                        token.scope.as_str(),
                        token.created_at.get(..19).unwrap_or(&token.created_at),
                        token.description
                    );
                }
            }
        }
        TokensCommand::Revoke { id, org } => {
            client.revoke_token(org, id).await?;
            if cx.json {
                print_json(&serde_json::json!({ "revoked": id, "org": org }))?;
            } else {
                eprintln!("revoked token {id} of organization {org}");
            }
        }
    }
    Ok(0)
}

#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// Organizations with their limits.
    #[command(alias = "ls")]
    List,
    /// Set an organization's limits: sprites awake at once (past it, creates and wakes
    /// get a 429) and sprites in warm sleep (past it, sleeping sprites go cold).
    #[command(
        after_help = "Examples:\n  sprite orgs set acme --running-limit 10 --warm-limit 20\n  sprite orgs set acme --reset"
    )]
    Set {
        org: String,
        #[arg(long)]
        running_limit: Option<u64>,
        #[arg(long)]
        warm_limit: Option<u64>,
        /// Back to the host's defaults (`running_limit`, `warm_limit` in the config).
        #[arg(long, conflicts_with_all = ["running_limit", "warm_limit"])]
        reset: bool,
    },
}

pub async fn orgs(cx: &Global, command: &OrgsCommand) -> Result<u8> {
    let client = cx.client()?;
    match command {
        OrgsCommand::List => {
            let list = client.organizations().await?;
            if cx.json {
                print_json(&list)?;
            } else {
                println!("{:<24} {:>14} {:>11}", "ORG", "RUNNING LIMIT", "WARM LIMIT");
                for org in &list.organizations {
                    println!(
                        "{:<24} {:>14} {:>11}{}",
                        org.name,
                        org.running_limit,
                        org.warm_limit,
                        if org.default { "  (defaults)" } else { "" }
                    );
                }
            }
        }
        OrgsCommand::Set {
            org,
            running_limit,
            warm_limit,
            reset,
        } => {
            if running_limit.is_none() && warm_limit.is_none() && !reset {
                bail!("nothing to set: pass --running-limit N, --warm-limit N or --reset");
            }
            let limits = client
                .set_org_limits(
                    org,
                    &SetOrgLimits {
                        running_limit: *running_limit,
                        warm_limit: *warm_limit,
                        reset: *reset,
                    },
                )
                .await?;
            if cx.json {
                print_json(&limits)?;
            } else {
                eprintln!(
                    "organization {}: running limit {}, warm limit {}{}",
                    limits.name,
                    limits.running_limit,
                    limits.warm_limit,
                    if limits.default {
                        " (the defaults)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(0)
}
