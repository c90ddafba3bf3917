//! One RCON connection: connect, log in, run commands.
//!
//! Servers differ in how an answer ends, so the framing is a setting of the
//! game server ([`Framing`]):
//! - `exec_only` (the default for Minecraft): only the command packet is
//!   sent, and an answer is expected. Minecraft splits output into packets of
//!   [`SPLIT`] bytes, so a packet shorter than that is the last one and the
//!   answer is complete at once; after a full-size packet the answer is
//!   settled after the server's quiet time. Nothing but EXEC packets is ever
//!   sent after the login, so servers that take any other packet for a
//!   login, or that read one request per TCP read, work too.
//! - `exec_quiet`: the same, for servers that send nothing at all for a
//!   command without output: silence for the quiet time settles the command
//!   with an empty answer. The price: an answer slower than the quiet time
//!   is taken for silence (the command ran; its late answer is not kept).
//! - `sentinel` (the default for Source): right after the command an empty
//!   `RESPONSE` packet with a second id is written; Source mirrors it after
//!   the whole answer (however it splits, or does not), Minecraft answers it
//!   "Unknown request". The answer is complete when the mirror arrives.
//!
//! Packets with other ids (a Source server's extra packet after the mirror,
//! a late answer to a command settled by its quiet time) are stale and
//! skipped, since ids only grow on a connection. Detection is not attempted:
//! the only safe probe of a server's habits is a command, and a probe must
//! not run one.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::codec::{self, DecodeError, Packet, TYPE_AUTH, TYPE_EXEC, TYPE_RESPONSE};
use crate::domain::text_enum;
use crate::error::ErrorClass;

text_enum!(
    /// Which server family's RCON quirks to expect.
    Dialect, "RCON dialect" {
        Minecraft => "minecraft",
        Source => "source",
    }
);

impl Dialect {
    /// Longest command body the server accepts — the one place these limits
    /// live. Minecraft servers read requests into a 1460-byte buffer (1446
    /// bytes of body; some drop the connection past it); Source allows
    /// 4096-byte packets.
    pub fn max_command_len(self) -> usize {
        match self {
            Dialect::Minecraft => 1446,
            Dialect::Source => 4086,
        }
    }
}

/// The size at which Minecraft splits an answer into several packets: a
/// shorter packet is the last one.
pub const SPLIT: usize = 4096;

/// How long a connection whose login failed waits for the server to close
/// its side before the slot it held is given back.
const LOGIN_CLOSE_WAIT: Duration = Duration::from_secs(1);

text_enum!(
    /// How the end of an answer is found (see the module documentation).
    Framing, "RCON framing" {
        Auto => "auto",
        ExecOnly => "exec_only",
        ExecQuiet => "exec_quiet",
        Sentinel => "sentinel",
    }
);

// `text_enum!` cannot mark a `#[default]` variant.
#[allow(clippy::derivable_impls)]
impl Default for Framing {
    fn default() -> Self {
        Framing::Auto
    }
}

impl Framing {
    /// `auto` is `exec_only` for Minecraft and `sentinel` for Source.
    pub fn resolve(self, dialect: Dialect) -> Framing {
        match (self, dialect) {
            (Framing::Auto, Dialect::Minecraft) => Framing::ExecOnly,
            (Framing::Auto, Dialect::Source) => Framing::Sentinel,
            (f, _) => f,
        }
    }
}

/// Where and how to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct RconTarget {
    pub host: String,
    pub port: u16,
    pub password: String,
    pub dialect: Dialect,
    pub framing: Framing,
    /// How long an answer may pause before it is taken as complete (and how
    /// long a command without output is waited for) under `exec_only`.
    pub quiet: Duration,
}

impl fmt::Debug for RconTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RconTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dialect", &self.dialect)
            .field("framing", &self.framing)
            .field("quiet", &self.quiet)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
    pub max_response_bytes: usize,
    /// How long a command may wait for a free connection slot (backpressure,
    /// within the lease) before it is reported `Busy`.
    pub slot_wait: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RconError {
    #[error("could not connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out after {0:?} while {1}")]
    Timeout(Duration, &'static str),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("the server rejected the RCON password")]
    AuthFailed,
    #[error("the command is {len} bytes; this server accepts at most {max}")]
    CommandTooLong { len: usize, max: usize },
    #[error("the server sent a malformed packet: {0}")]
    Malformed(#[from] DecodeError),
    #[error("the response exceeded {0} bytes")]
    ResponseTooLarge(usize),
    #[error("all {0} connections to this server are in use across the workers")]
    Busy(usize),
    #[error(
        "the server answered id -1 after a successful login: it took a request for a new login attempt (servers that treat any packet but EXEC as a login do this under framing `sentinel`; set the game server's framing to `exec_only`)"
    )]
    Refused,
}

impl RconError {
    /// Whether trying again later can help.
    pub fn class(&self) -> ErrorClass {
        match self {
            RconError::AuthFailed | RconError::CommandTooLong { .. } | RconError::Refused => {
                ErrorClass::Permanent
            }
            // Waiting for a slot Courier itself limits is not a failure.
            RconError::Busy(_) => ErrorClass::Busy,
            _ => ErrorClass::Transient,
        }
    }
}

/// A failed `exec`, saying whether the command may have reached the server
/// (it was written before the failure), which makes a retry a possible repeat.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ExecError {
    #[source]
    pub error: RconError,
    pub maybe_sent: bool,
    /// What the server had answered before the failure, if anything.
    pub partial: Option<String>,
}

impl ExecError {
    pub fn before_sending(error: RconError) -> Self {
        ExecError {
            error,
            maybe_sent: false,
            partial: None,
        }
    }
}

/// An authenticated connection. Not `Clone`: one command at a time.
#[derive(Debug)]
pub struct RconConnection {
    stream: TcpStream,
    buf: Vec<u8>,
    next_id: i32,
    dialect: Dialect,
    framing: Framing,
    quiet: Duration,
    timeouts: Timeouts,
}

impl RconConnection {
    /// Connects and logs in, each step within the connect timeout.
    pub async fn connect(target: &RconTarget, timeouts: Timeouts) -> Result<Self, RconError> {
        let addr = (target.host.as_str(), target.port);
        let stream = timeout(timeouts.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| RconError::Timeout(timeouts.connect, "connecting"))?
            .map_err(RconError::Connect)?;
        let _ = stream.set_nodelay(true);
        let mut conn = RconConnection {
            stream,
            buf: Vec::with_capacity(4096),
            next_id: 1,
            dialect: target.dialect,
            framing: target.framing.resolve(target.dialect),
            quiet: target.quiet,
            timeouts,
        };
        let login = timeout(timeouts.connect, conn.login(&target.password))
            .await
            .map_err(|_| RconError::Timeout(timeouts.connect, "logging in"))
            .and_then(|r| r);
        match login {
            Ok(()) => Ok(conn),
            Err(error) => {
                // The server holds this session until it sees the close: wait
                // for that (briefly) before the caller gives the slot back, or
                // another worker's connection would be one too many there.
                conn.close(LOGIN_CLOSE_WAIT).await;
                Err(error)
            }
        }
    }

    fn take_id(&mut self) -> i32 {
        let id = self.next_id;
        // Wrap before i32::MAX and never use -1 (the failed-login id) or 0.
        self.next_id = if id >= i32::MAX - 1 { 1 } else { id + 1 };
        id
    }

    async fn login(&mut self, password: &str) -> Result<(), RconError> {
        if password.len() > self.dialect.max_command_len() {
            return Err(RconError::AuthFailed);
        }
        let id = self.take_id();
        self.stream
            .write_all(&codec::encode(id, TYPE_AUTH, password.as_bytes()))
            .await?;
        loop {
            let packet = self.read_packet().await?;
            // Source sends an empty RESPONSE before the login answer; Minecraft does not.
            if packet.id == -1 {
                return Err(RconError::AuthFailed);
            }
            if packet.id == id && packet.kind == TYPE_EXEC {
                return Ok(());
            }
        }
    }

    /// Runs one command and returns its whole output, within the command
    /// timeout (an empty string: the server answered nothing).
    pub async fn exec(&mut self, command: &str) -> Result<String, ExecError> {
        let max = self.dialect.max_command_len();
        if command.len() > max {
            return Err(ExecError::before_sending(RconError::CommandTooLong {
                len: command.len(),
                max,
            }));
        }
        let limit = self.timeouts.command;
        let mut written = false;
        let mut output = Vec::new();
        let result = timeout(limit, self.exec_inner(command, &mut written, &mut output)).await;
        let partial =
            || (!output.is_empty()).then(|| String::from_utf8_lossy(&output).into_owned());
        match result {
            Ok(Ok(())) => Ok(String::from_utf8_lossy(&output).into_owned()),
            Ok(Err(error)) => Err(ExecError {
                error,
                maybe_sent: written,
                partial: partial(),
            }),
            Err(_) => Err(ExecError {
                error: RconError::Timeout(limit, "waiting for the command's response"),
                maybe_sent: written,
                partial: partial(),
            }),
        }
    }

    fn append(&self, output: &mut Vec<u8>, body: &[u8]) -> Result<(), RconError> {
        if output.len() + body.len() > self.timeouts.max_response_bytes {
            return Err(RconError::ResponseTooLarge(
                self.timeouts.max_response_bytes,
            ));
        }
        output.extend_from_slice(body);
        Ok(())
    }

    async fn exec_inner(
        &mut self,
        command: &str,
        written: &mut bool,
        output: &mut Vec<u8>,
    ) -> Result<(), RconError> {
        let id = self.take_id();
        let mut request = codec::encode(id, TYPE_EXEC, command.as_bytes());
        let sentinel = match self.framing {
            Framing::Sentinel => {
                let sentinel = self.take_id();
                request.extend_from_slice(&codec::encode(sentinel, TYPE_RESPONSE, b""));
                Some(sentinel)
            }
            _ => None,
        };
        // From the first byte on, the server may have the command.
        *written = true;
        self.stream.write_all(&request).await?;
        let mut answered = false;
        loop {
            // Without a sentinel, a pause of the quiet time ends an answer
            // that has begun (after a full-size packet) — or, under
            // `exec_quiet`, says there is none.
            let quiet = sentinel.is_none() && (answered || self.framing == Framing::ExecQuiet);
            let packet = if quiet {
                match timeout(self.quiet, self.read_packet()).await {
                    Ok(packet) => packet?,
                    Err(_) => return Ok(()),
                }
            } else {
                self.read_packet().await?
            };
            if packet.id == -1 {
                return Err(RconError::Refused);
            }
            if Some(packet.id) == sentinel {
                return Ok(());
            }
            if packet.id == id {
                answered = true;
                self.append(output, &packet.body)?;
                if sentinel.is_none() && packet.body.len() < SPLIT {
                    return Ok(());
                }
            }
        }
    }

    async fn read_packet(&mut self) -> Result<Packet, RconError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((packet, used)) = codec::decode(&self.buf)? {
                self.buf.drain(..used);
                return Ok(packet);
            }
            // `decode` rejects sizes over MAX_SIZE, so the buffer stays below MAX_SIZE + 4 + 4096.
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(RconError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Closes the connection and waits (up to `wait`) until the server has
    /// closed its side too, so that a slot handed on after this never means
    /// one session more at the server than its limit.
    pub async fn close(mut self, wait: Duration) {
        let _ = self.stream.shutdown().await;
        let mut sink = [0u8; 512];
        let _ = timeout(wait, async {
            loop {
                match self.stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    /// Whether the server has closed (or broken) an idle connection. A pooled
    /// connection is checked before each use, so a command is never sent on a
    /// socket already known to be dead (where its fate would be ambiguous).
    pub fn is_closed(&mut self) -> bool {
        let mut probe = [0u8; 64];
        match self.stream.try_read(&mut probe) {
            Ok(0) => true,
            // Unsolicited bytes on an idle connection: keep them for the id filter.
            Ok(n) => {
                self.buf.extend_from_slice(&probe[..n]);
                self.buf.len() > codec::MAX_SIZE as usize
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(_) => true,
        }
    }
}
