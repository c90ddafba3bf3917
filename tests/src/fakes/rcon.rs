//! A fake game server speaking RCON over TCP. It records every command it
//! runs, counts concurrent sessions, and can misbehave on demand: answer
//! slowly, refuse the password, drop the connection after reading a command,
//! send its answers one byte at a time, or send a malformed packet — and has
//! the habits of real third-party servers: one request handled per TCP read,
//! any non-EXEC packet taken as a login, no reply to commands without output,
//! requests over 1,460 bytes dropping the connection, their error texts and
//! player listings, Source servers that never split.
//!
//! Commands it understands: `big <n>` answers with `n` bytes (split into
//! 4096-byte packets, as real servers do); anything else answers
//! `ok: <command>`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_shared::rcon::Dialect;
use courier_shared::rcon::codec::{self, TYPE_AUTH, TYPE_EXEC, TYPE_RESPONSE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Switches; change them at any time with `FakeGameServer::set`.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Wait this long before answering each command.
    pub delay: Duration,
    /// Answer every login with "wrong password".
    pub refuse_auth: bool,
    /// Close the connection after reading a command, without answering
    /// (the command counts as run, like a server that crashed right after).
    pub drop_after_command: bool,
    /// Write answers one byte at a time.
    pub fragment: bool,
    /// Answer commands with a packet declaring size 3.
    pub malformed: bool,
    /// Close this many new connections at once, before login (a server restarting).
    pub reject_connections: usize,
    /// When set, `list` (Minecraft) and `status` (Source) answer with these
    /// players online, and are not recorded as commands.
    pub players: Option<Vec<String>>,
    /// Answer every command "Unknown or incomplete command".
    pub unknown_command: bool,
    /// Handle one request per TCP read: a second packet in the same read
    /// sits unread until more bytes arrive.
    pub one_request_per_read: bool,
    /// After the login, take any packet but EXEC for a login attempt: answer
    /// id -1 and close the connection.
    pub non_exec_is_login: bool,
    /// Send nothing at all for a command (as many servers do for `say` and
    /// plugin commands without output).
    pub silent: bool,
    /// Close the connection when one read brings more than this many bytes.
    pub max_request_bytes: Option<usize>,
    /// Answer every command with this text (a server's own error message).
    pub error_answer: Option<String>,
    /// Answer `list`/`status` with exactly this text (not recorded as a command).
    pub list_answer: Option<String>,
    /// Source servers that never split: an answer of any size in one packet.
    pub never_split: bool,
}

#[derive(Default)]
struct State {
    behaviour: Mutex<Behaviour>,
    commands: Mutex<Vec<String>>,
    changed: Notify,
    sessions: AtomicUsize,
    max_sessions: AtomicUsize,
    logins: AtomicUsize,
}

pub struct FakeGameServer {
    pub addr: std::net::SocketAddr,
    pub password: String,
    pub dialect: Dialect,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl FakeGameServer {
    pub async fn start(password: &str, dialect: Dialect) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0", password, dialect, false).await
    }

    /// `echo`: print each command to stdout (the demo's server does).
    pub async fn start_on(
        bind: &str,
        password: &str,
        dialect: Dialect,
        echo: bool,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let (pw, st) = (password.to_owned(), state.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (pw, st) = (pw.clone(), st.clone());
                {
                    let mut b = st.behaviour.lock().unwrap_or_else(|e| e.into_inner());
                    if b.reject_connections > 0 {
                        b.reject_connections -= 1;
                        drop(stream);
                        continue;
                    }
                }
                // A session is open, as the server sees it, from the accept
                // until the server's side closes: counted here rather than
                // when the task first runs, and given back before the socket
                // is dropped (the client can see the close only after that).
                let now = st.sessions.fetch_add(1, Ordering::SeqCst) + 1;
                st.max_sessions.fetch_max(now, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut stream = stream;
                    let _ = session(&mut stream, &pw, dialect, &st, echo).await;
                    st.sessions.fetch_sub(1, Ordering::SeqCst);
                    drop(stream);
                });
            }
        });
        Ok(FakeGameServer {
            addr,
            password: password.to_owned(),
            dialect,
            state,
            task,
        })
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self
            .state
            .behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = behaviour;
    }

    /// Every command run so far, in order.
    pub fn commands(&self) -> Vec<String> {
        self.state
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until at least `n` commands were run, or panics after `limit`.
    pub async fn wait_for_commands(&self, n: usize, limit: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.state.changed.notified();
            let cmds = self.commands();
            if cmds.len() >= n {
                return cmds;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "expected {n} commands within {limit:?}, got {:?}",
                    self.commands()
                );
            }
        }
    }

    /// The most sessions that were open at once.
    pub fn max_concurrent_sessions(&self) -> usize {
        self.state.max_sessions.load(Ordering::SeqCst)
    }

    pub fn logins(&self) -> usize {
        self.state.logins.load(Ordering::SeqCst)
    }
}

impl Drop for FakeGameServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn send(stream: &mut TcpStream, bytes: &[u8], fragment: bool) -> std::io::Result<()> {
    if fragment {
        for b in bytes {
            stream.write_all(std::slice::from_ref(b)).await?;
            stream.flush().await?;
        }
        Ok(())
    } else {
        stream.write_all(bytes).await
    }
}

async fn session(
    stream: &mut TcpStream,
    password: &str,
    dialect: Dialect,
    st: &State,
    echo: bool,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut authed = false;
    // Bytes arrived since the last request was handled.
    let mut fresh = false;
    loop {
        let packet = loop {
            let one_per_read = st
                .behaviour
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .one_request_per_read;
            if fresh || !one_per_read {
                match codec::decode(&buf) {
                    Ok(Some((p, used))) => {
                        buf.drain(..used);
                        fresh = false;
                        break p;
                    }
                    Ok(None) => {}
                    Err(_) => return Ok(()),
                }
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            let max = st
                .behaviour
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .max_request_bytes;
            if max.is_some_and(|m| n > m) {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            fresh = true;
        };
        let b = st
            .behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match packet.kind {
            TYPE_AUTH => {
                st.logins.fetch_add(1, Ordering::SeqCst);
                let ok = !b.refuse_auth && packet.body == password.as_bytes();
                let mut out = Vec::new();
                if dialect == Dialect::Source {
                    out.extend(codec::encode(packet.id, TYPE_RESPONSE, b""));
                }
                out.extend(codec::encode(
                    if ok { packet.id } else { -1 },
                    TYPE_EXEC,
                    b"",
                ));
                send(stream, &out, b.fragment).await?;
                authed = ok;
            }
            TYPE_EXEC if authed => {
                let command = String::from_utf8_lossy(&packet.body).into_owned();
                if let Some(answer) = &b.list_answer
                    && (command == "list" || command == "status")
                {
                    send(
                        stream,
                        &codec::encode(packet.id, TYPE_RESPONSE, answer.as_bytes()),
                        b.fragment,
                    )
                    .await?;
                    continue;
                }
                if let Some(players) = &b.players
                    && (command == "list" || command == "status")
                {
                    let listing = match dialect {
                        Dialect::Minecraft => format!(
                            "There are {} of a max of 20 players online: {}",
                            players.len(),
                            players.join(", ")
                        ),
                        Dialect::Source => players
                            .iter()
                            .enumerate()
                            .map(|(i, p)| {
                                format!("# {} \"{p}\" STEAM_1:0:{i} 00:10 50 0 active\n", i + 2)
                            })
                            .collect(),
                    };
                    send(
                        stream,
                        &codec::encode(packet.id, TYPE_RESPONSE, listing.as_bytes()),
                        b.fragment,
                    )
                    .await?;
                    continue;
                }
                if echo {
                    println!("game server received: {command}");
                }
                st.commands
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(command.clone());
                st.changed.notify_waiters();
                if b.drop_after_command {
                    return Ok(());
                }
                if !b.delay.is_zero() {
                    tokio::time::sleep(b.delay).await;
                }
                if b.malformed {
                    send(stream, &[3, 0, 0, 0, 1, 2, 3], b.fragment).await?;
                    continue;
                }
                if b.silent {
                    continue;
                }
                let body = match command
                    .strip_prefix("big ")
                    .and_then(|n| n.parse::<usize>().ok())
                {
                    _ if b.unknown_command => {
                        b"Unknown or incomplete command, see below for error".to_vec()
                    }
                    _ if b.error_answer.is_some() => {
                        b.error_answer.clone().unwrap_or_default().into_bytes()
                    }
                    Some(n) => vec![b'x'; n],
                    None => format!("ok: {command}").into_bytes(),
                };
                let mut out = Vec::new();
                let split = if b.never_split { usize::MAX } else { 4096 };
                for part in body.chunks(split) {
                    out.extend(codec::encode(packet.id, TYPE_RESPONSE, part));
                }
                if body.is_empty() {
                    out.extend(codec::encode(packet.id, TYPE_RESPONSE, b""));
                }
                send(stream, &out, b.fragment).await?;
            }
            _ if authed && b.non_exec_is_login => {
                send(stream, &codec::encode(-1, TYPE_EXEC, b""), false).await?;
                return Ok(());
            }
            TYPE_RESPONSE if authed => {
                // The client's end-of-response marker.
                let out = match dialect {
                    Dialect::Minecraft => {
                        codec::encode(packet.id, TYPE_RESPONSE, b"Unknown request 0")
                    }
                    Dialect::Source => {
                        let mut out = codec::encode(packet.id, TYPE_RESPONSE, b"");
                        out.extend(codec::encode(packet.id, TYPE_RESPONSE, &[0, 1, 0, 0]));
                        out
                    }
                };
                send(stream, &out, b.fragment).await?;
            }
            _ => {
                // Not logged in: real servers answer -1 or hang up.
                send(stream, &codec::encode(-1, TYPE_EXEC, b""), false).await?;
            }
        }
    }
}
