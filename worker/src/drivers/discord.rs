//! The Discord driver: add (or, on revoke, remove) a guild member's role.
//!
//! Requests are built with serenity's routes and request builder (its API
//! paths, auth header and user agent) and sent with its HTTP client, but the
//! response is read here: serenity's own rate limiter must be off for a
//! custom base URL (tests), and with it off serenity drops the headers of an
//! error response — exactly the `Retry-After`/`X-RateLimit-*` we need. So the
//! rate limiting is ours and shared through Redis (`Limits`): a 429 pauses the
//! route (or the whole bot, when global) for every replica, a bucket at zero
//! pauses its route until reset, and all replicas together stay under
//! `discord.global_per_second`.

use std::sync::Arc;
use std::time::Duration;

use courier_shared::config::DiscordSettings;
use courier_shared::domain::action::{DiscordPayload, parse_snowflake};
use courier_shared::error::ErrorClass;
use courier_shared::limits::Limits;
use serenity::http::{LightMethod, Request, Route};
use serenity::model::id::{GuildId, RoleId, UserId};
use sha2::{Digest, Sha256};

use super::DriverOutcome;

/// A wait announced by Discord, clamped: a remote value (inf, 1e300, negative)
/// must neither panic nor pause us for ever.
fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.clamp(0.0, 3600.0)).unwrap_or(Duration::from_secs(3600))
}

/// 429s waited out inside one attempt before handing the delivery to the retry schedule.
const MAX_WAITS: usize = 3;
/// A pause longer than this is not slept through inside an attempt.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(10);

pub struct DiscordDriver {
    /// The reqwest client serenity itself uses (same crate version).
    client: reqwest::Client,
    settings: DiscordSettings,
    limits: Arc<Limits>,
}

fn failed(class: ErrorClass, error: impl Into<String>) -> DriverOutcome {
    DriverOutcome::Failed {
        class,
        error: error.into(),
        response: None,
        maybe_sent: false,
    }
}

impl DiscordDriver {
    pub fn new(settings: DiscordSettings, limits: Arc<Limits>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .build()
            .unwrap_or_default();
        DiscordDriver {
            client,
            settings,
            limits,
        }
    }

    pub async fn run(&self, payload: &serde_json::Value) -> DriverOutcome {
        let p: DiscordPayload = match serde_json::from_value(payload.clone()) {
            Ok(p) => p,
            Err(e) => return DriverOutcome::permanent(format!("invalid Discord payload: {e}")),
        };
        let Some(token) = self
            .settings
            .bot_token
            .as_ref()
            .map(|t| t.expose().to_owned())
        else {
            return DriverOutcome::permanent("discord.bot_token is not configured");
        };
        let (Some(guild), Some(role), Some(user)) = (
            parse_snowflake(&p.guild_id),
            parse_snowflake(&p.role_id),
            parse_snowflake(&p.user_id),
        ) else {
            return DriverOutcome::permanent("guild, role and user ids must be Discord snowflakes");
        };
        let bot = hex::encode(&Sha256::digest(token.as_bytes())[..6]);
        let unauthorized = format!("discord:{bot}:unauthorized");
        if self.limits.blocked_for(&unauthorized).await.is_some() {
            return DriverOutcome::permanent(
                "Discord rejected the bot token (401) recently; requests are paused to avoid a ban. Fix discord.bot_token, then retry",
            );
        }
        let global = format!("discord:{bot}:global");
        let route = format!("discord:{bot}:guild:{guild}:member-roles");
        let auth = format!("Bot {token}");
        for _ in 0..=MAX_WAITS {
            self.limits.wait_unblocked(&global).await;
            self.limits.wait_unblocked(&route).await;
            self.limits
                .throttle(
                    &format!("discord:{bot}:rate"),
                    self.settings.global_per_second,
                )
                .await;
            let method = if p.revoke {
                LightMethod::Delete
            } else {
                LightMethod::Put
            };
            let request = Request::new(
                Route::GuildMemberRole {
                    guild_id: GuildId::new(guild),
                    user_id: UserId::new(user),
                    role_id: RoleId::new(role),
                },
                method,
            );
            let built = match request
                .build(&self.client, &auth, Some(self.settings.api_base.as_str()))
                .and_then(|b| b.build().map_err(Into::into))
            {
                Ok(r) => r,
                Err(e) => {
                    return DriverOutcome::permanent(format!(
                        "could not build the Discord request: {e}"
                    ));
                }
            };
            let response = match self.client.execute(built).await {
                Ok(r) => r,
                Err(e) => {
                    return failed(ErrorClass::Transient, format!("Discord unreachable: {e}"));
                }
            };
            let status = response.status();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let remaining = header("x-ratelimit-remaining").and_then(|v| v.parse::<u64>().ok());
            let reset_after = header("x-ratelimit-reset-after").and_then(|v| v.parse::<f64>().ok());
            let is_global = header("x-ratelimit-global").is_some_and(|v| v == "true")
                || header("x-ratelimit-scope").is_some_and(|v| v == "global");
            let retry_header = header("retry-after").and_then(|v| v.parse::<f64>().ok());
            if let (Some(0), Some(reset)) = (remaining, reset_after) {
                self.limits.block(&route, seconds(reset)).await;
            }
            let body = response.text().await.unwrap_or_default();
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if status.is_success() {
                return DriverOutcome::Succeeded {
                    response: format!(
                        "{} {}",
                        status.as_u16(),
                        if p.revoke {
                            "role removed"
                        } else {
                            "role added"
                        }
                    ),
                };
            }
            if status.as_u16() == 429 {
                let wait = json["retry_after"]
                    .as_f64()
                    .or(retry_header)
                    .unwrap_or(1.0)
                    .max(0.0);
                let wait = seconds(wait);
                let scope = if is_global || json["global"].as_bool() == Some(true) {
                    &global
                } else {
                    &route
                };
                self.limits.block(scope, wait).await;
                if wait > MAX_INLINE_WAIT {
                    // A pause Courier keeps for every replica: backpressure,
                    // re-queued without spending the retry budget.
                    return failed(
                        ErrorClass::Busy,
                        format!(
                            "Discord rate limit: retry after {:.1} s",
                            wait.as_secs_f64()
                        ),
                    );
                }
                continue;
            }
            let code = json["code"].as_i64().unwrap_or(0);
            let message = json["message"].as_str().unwrap_or("").to_owned();
            return match (status.as_u16(), code) {
                (401, _) => {
                    self.limits
                        .block(&unauthorized, Duration::from_secs(600))
                        .await;
                    DriverOutcome::permanent(
                        "Discord rejected the bot token (401 Unauthorized); fix discord.bot_token",
                    )
                }
                (_, 50013) => DriverOutcome::permanent(format!(
                    "Discord 50013 Missing Permissions: give the bot Manage Roles and move its highest role above role {} in guild {}",
                    p.role_id, p.guild_id
                )),
                (_, 10011) => DriverOutcome::permanent(format!(
                    "Discord 10011 Unknown Role: role {} does not exist in guild {}",
                    p.role_id, p.guild_id
                )),
                (_, 10004) => DriverOutcome::permanent(format!(
                    "Discord 10004 Unknown Guild {}: is the bot in that server?",
                    p.guild_id
                )),
                (_, 10007) if p.revoke => DriverOutcome::Succeeded {
                    response: "10007 Unknown Member: the member left; nothing to remove".into(),
                },
                (_, 10007) => failed(
                    ErrorClass::Waiting,
                    format!(
                        "Discord 10007 Unknown Member: user {} has not joined guild {} yet",
                        p.user_id, p.guild_id
                    ),
                ),
                (s, _) if s >= 500 => {
                    failed(ErrorClass::Transient, format!("Discord {s}: {message}"))
                }
                (s, c) => DriverOutcome::permanent(format!("Discord {s} (code {c}): {message}")),
            };
        }
        failed(
            ErrorClass::Transient,
            "Discord kept rate limiting this request",
        )
    }
}
